// model.pt with integer codes (compact_model.h) and encodings.json
// (packing.h): the saved file is smaller than the float model and loads,
// in LibTorch and in stock PyTorch (Debian's /usr/bin/python3), as the
// simulated model (float weights rounded to the grid), which the test
// builds itself from the packed weights file.
#include <torch/script.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/compact_model.h"
#include "server/engine/quant/packing.h"
#include "server/engine/quant/quantize.h"
#include "server/engine/quant/quantizer.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::MakeTempDir;
using ::compress::engine::testing::SourceDir;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;

constexpr int64_t kImages = 64;

bool HavePython() { return std::system("test -x /usr/bin/python3") == 0; }

int64_t FileBytes(const std::string& path) {
  return static_cast<int64_t>(std::filesystem::file_size(path));
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

void SetParameter(torch::jit::Module& m, const std::string& name, const torch::Tensor& value) {
  torch::NoGradGuard no_grad;
  for (const auto& p : m.named_parameters(true)) {
    if (p.name == name) {
      p.value.copy_(value);
      return;
    }
  }
  for (const auto& b : m.named_buffers(true)) {
    if (b.name == name) {
      b.value.copy_(value);
      return;
    }
  }
  ADD_FAILURE() << "no parameter or buffer " << name;
}

// The simulated model, built here: the float model with BatchNorm folded
// and every tensor of the packed file (dequantized) copied in.
torch::jit::Module Simulated(const std::string& float_model, const std::string& packed_path) {
  absl::StatusOr<torch::jit::Module> folded = FoldBatchNorm(torch::jit::load(float_model));
  EXPECT_TRUE(folded.ok()) << folded.status();
  absl::StatusOr<PackedModel> packed = ReadPackedModel(packed_path);
  EXPECT_TRUE(packed.ok()) << packed.status();
  absl::StatusOr<std::map<std::string, torch::Tensor>> state = DequantizedTensors(*packed);
  EXPECT_TRUE(state.ok()) << state.status();
  for (const auto& [name, t] : *state) SetParameter(*folded, name, t);
  folded->eval();
  return *folded;
}

torch::Tensor Forward(torch::jit::Module m, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return m.forward({x}).toTensor();
}

// run_model.py's output for `path` on the first kImages test images.
torch::Tensor PythonOutput(const std::string& path, const std::string& dir) {
  const std::string out = dir + "/python_out.txt";
  const std::string cmd = "/usr/bin/python3 " + FixturePath("run_model.py") + " " + path + " " +
                          std::to_string(kImages) + " " + out;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  FILE* f = std::fopen(out.c_str(), "r");
  EXPECT_NE(f, nullptr);
  if (f == nullptr) return torch::Tensor();
  int64_t rows = 0, cols = 0;
  EXPECT_EQ(std::fscanf(f, "%ld %ld", &rows, &cols), 2);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float& v : values) EXPECT_EQ(std::fscanf(f, "%f", &v), 1);
  std::fclose(f);
  return torch::tensor(values).reshape({rows, cols});
}

// encodings.json holds, for every packed layer, its bits, quantizer and
// exactly the packed file's scales and zero points.
void CheckEncodings(const QuantizeReport& r) {
  const nlohmann::json enc = nlohmann::json::parse(ReadFile(r.encodings_path));
  EXPECT_EQ(enc["version"], "1.0.0");
  EXPECT_TRUE(enc["activation_encodings"].is_array());
  EXPECT_TRUE(enc["activation_encodings"].empty());
  absl::StatusOr<PackedModel> packed = ReadPackedModel(r.weights_path);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_EQ(enc["param_encodings"].size(), packed->layers.size());
  for (const nlohmann::json& e : enc["param_encodings"]) {
    const std::string name = e["name"];
    SCOPED_TRACE(name);
    const QuantizedTensor& q = packed->layers.at(name.substr(0, name.size() - 7));
    EXPECT_EQ(e["bw"].get<int>(), q.params.spec.bits);
    EXPECT_EQ(e["is_sym"].get<bool>(), q.params.spec.symmetric);
    EXPECT_EQ(e["dtype"], "INT");
    const std::string kind = e["enc_type"];
    switch (q.params.spec.granularity) {
      case QuantGranularity::kPerTensor:
        EXPECT_EQ(kind, "PER_TENSOR");
        break;
      case QuantGranularity::kPerChannel:
        EXPECT_EQ(kind, "PER_CHANNEL");
        break;
      case QuantGranularity::kGroup:
        EXPECT_EQ(kind, "PER_BLOCK");
        EXPECT_EQ(e["block_size"].get<int64_t>(), q.params.spec.group_size);
        break;
    }
    const torch::Tensor scale = q.params.scale.reshape({-1}).contiguous();
    const torch::Tensor zero = q.params.zero_point.to(torch::kLong).reshape({-1}).contiguous();
    ASSERT_EQ(e["scale"].size(), static_cast<size_t>(scale.numel()));
    ASSERT_EQ(e["offset"].size(), static_cast<size_t>(zero.numel()));
    for (int64_t i = 0; i < scale.numel(); ++i) {
      EXPECT_EQ(static_cast<float>(e["scale"][i].get<double>()), scale[i].item<float>()) << i;
      EXPECT_EQ(e["offset"][i].get<int64_t>(), -zero[i].item<int64_t>()) << i;
      EXPECT_EQ(e["zero_point"][i].get<int64_t>(), zero[i].item<int64_t>()) << i;
    }
  }
}

// model.pt against the simulated model, in LibTorch and in stock PyTorch;
// returns the largest difference.
double CheckModelPt(const QuantizeOptions& o, const QuantizeReport& r) {
  EXPECT_EQ(FileBytes(r.model_path), r.model_bytes);
  EXPECT_LT(r.model_bytes, FileBytes(o.model_path));
  absl::StatusOr<LoadedDataset> data = LoadDataset("builtin:fashion-mnist/test", kImages);
  EXPECT_TRUE(data.ok()) << data.status();
  torch::jit::Module simulated = Simulated(o.model_path, r.weights_path);
  const torch::Tensor want = Forward(simulated, data->inputs.first);
  torch::jit::Module saved = torch::jit::load(r.model_path);
  saved.eval();
  double diff = MaxAbsDiff(Forward(saved, data->inputs.first), want);
  EXPECT_LE(diff, 1e-5);
  // The rebuilt weights are the packed ones, bit for bit.
  std::map<std::string, torch::Tensor> want_params;
  for (const auto& p : simulated.named_parameters(true)) want_params[p.name] = p.value;
  for (const auto& p : saved.named_parameters(true)) {
    EXPECT_TRUE(torch::equal(p.value, want_params.at(p.name))) << p.name;
  }
  if (HavePython()) {
    const double python = MaxAbsDiff(PythonOutput(r.model_path, o.output_dir), want);
    EXPECT_LE(python, 1e-5);
    diff = std::max(diff, python);
  }
  std::printf("float model %lld bytes, model.pt %lld bytes, weights.safetensors %lld bytes, "
              "max |model.pt - simulated| %.3g\n",
              static_cast<long long>(FileBytes(o.model_path)),
              static_cast<long long>(r.model_bytes), static_cast<long long>(r.bytes_after), diff);
  return diff;
}

QuantizeOptions CnnOptions() {
  QuantizeOptions o;
  o.model_path = SourceDir() + "/models/fmnist_cnn.pt";
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = 64;
  o.batch_size = 32;
  // Traces given (as from an ANALYZE report): no Hessian work here.
  for (const char* layer : {"conv1", "block.conv1", "block.conv2", "conv2", "conv3", "fc"}) {
    o.trace_per_param[layer] = 1.0;
  }
  o.output_dir = MakeTempDir();
  return o;
}

TEST(CompactModelTest, CnnFourBitGptqModelPtIsSmallAndIsTheSimulatedModel) {
  QuantizeOptions o = CnnOptions();
  o.gptq = true;
  o.search = QuantSearch::kUniform;
  o.budget = QuantBudget::AverageBits(4);
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const std::string& w : r->warnings) EXPECT_EQ(w.find("model.pt"), std::string::npos) << w;
  CheckModelPt(o, *r);
  // Codes at 4 bits take half a byte per weight: under half the float
  // file, although the methods' code and debug info take about 30 KB.
  EXPECT_LT(r->model_bytes, FileBytes(o.model_path) / 2);
  CheckEncodings(*r);

  // Saved again as loaded, the file keeps the codes; LoadModel's copy is a
  // plain float model whose edits are saved.
  const std::string again = o.output_dir + "/again.pt";
  torch::jit::load(r->model_path).save(again);
  EXPECT_LT(FileBytes(again), FileBytes(o.model_path) / 2);
  absl::StatusOr<torch::jit::Module> loaded = LoadModel(r->model_path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  SetParameter(*loaded, "fc.weight", torch::full({10, 1568}, 0.25));
  const std::string edited = o.output_dir + "/edited.pt";
  loaded->save(edited);
  torch::Tensor fc;
  for (const auto& p : torch::jit::load(edited).named_parameters(true)) {
    if (p.name == "fc.weight") fc = p.value;
  }
  ASSERT_TRUE(fc.defined());
  EXPECT_TRUE(torch::equal(fc, torch::full({10, 1568}, 0.25)));
}

TEST(CompactModelTest, GroupAsymmetricThreeBitsAndEightBitClassifier) {
  QuantizeOptions o = CnnOptions();
  o.symmetric = false;
  o.granularity = "group";
  o.group_size = 32;
  o.search = QuantSearch::kUniform;
  o.candidate_bits = {3, 8};
  o.pins = std::map<std::string, int>{{"fc", 8}};
  o.budget = QuantBudget::AverageBits(6);
  o.eval_dataset = "builtin:fashion-mnist/test";
  o.eval_samples = 500;
  o.int8_model = true;
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  std::map<std::string, int> bits;
  for (const QuantizedLayerReport& l : r->layers) bits[l.name] = l.bits;
  EXPECT_EQ(bits.at("fc"), 8);
  EXPECT_EQ(bits.at("conv2"), 3);
  CheckModelPt(o, *r);
  CheckEncodings(*r);

  // model_int8.pt: the report's numbers are the file's.
  ASSERT_TRUE(r->int8.has_value());
  const Int8ModelReport& int8 = *r->int8;
  EXPECT_EQ(int8.path, o.output_dir + "/model_int8.pt");
  EXPECT_EQ(int8.bytes, FileBytes(int8.path));
  EXPECT_GE(int8.quantized_ops, 7);
  absl::StatusOr<LoadedDataset> eval = LoadDataset(o.eval_dataset, o.eval_samples);
  ASSERT_TRUE(eval.ok()) << eval.status();
  torch::jit::Module file = torch::jit::load(int8.path);
  absl::StatusOr<double> top1 = TopOneAccuracy(file, eval->inputs, eval->targets);
  ASSERT_TRUE(top1.ok()) << top1.status();
  ASSERT_TRUE(int8.accuracy.has_value());
  EXPECT_DOUBLE_EQ(*int8.accuracy, *top1);
  EXPECT_EQ(int8.latency_batch, 64);
  EXPECT_GT(int8.latency_ms, 0);
  EXPECT_GT(int8.float_latency_ms, 0);
  std::printf("int8 (%s): top-1 %.2f%% (float %.2f%%) on %lld images, %.3f ms vs float %.3f ms "
              "at batch 64 on %d threads\n",
              int8.engine.c_str(), *int8.accuracy, *r->accuracy_before,
              static_cast<long long>(o.eval_samples), int8.latency_ms, int8.float_latency_ms,
              int8.threads);
}

// SaveCompactModel on a model with nested modules, a second method, two
// inputs, a tuple output and a float layer sharing its TorchScript type
// with a quantized one; per-tensor 2 bits, per-channel 4, group 3, 8 bits.
TEST(CompactModelTest, EveryMethodAndEveryLayoutInStockPyTorch) {
  if (!HavePython()) GTEST_SKIP() << "no /usr/bin/python3";
  const std::string dir = MakeTempDir();
  const std::string script = "/usr/bin/python3 " + FixturePath("compact_model.py");
  ASSERT_EQ(std::system((script + " make " + dir + "/net.pt").c_str()), 0);
  torch::jit::Module net = torch::jit::load(dir + "/net.pt");
  struct Choice {
    const char* layer;
    int bits;
    QuantGranularity granularity;
    bool symmetric;
  };
  const Choice choices[] = {{"body.0", 4, QuantGranularity::kPerChannel, true},
                            {"body.2", 3, QuantGranularity::kGroup, false},
                            {"conv", 2, QuantGranularity::kPerTensor, true},
                            {"head", 8, QuantGranularity::kPerChannel, false}};
  std::map<std::string, QuantizedTensor> layers;
  std::map<std::string, torch::Tensor> weights;
  for (const auto& p : net.named_parameters(true)) weights[p.name] = p.value;
  for (const Choice& c : choices) {
    QuantizerSpec spec;
    spec.bits = c.bits;
    spec.granularity = c.granularity;
    spec.symmetric = c.symmetric;
    spec.group_size = 32;
    const std::string name = std::string(c.layer) + ".weight";
    absl::StatusOr<QuantizedTensor> q = Quantize(weights.at(name).detach(), spec);
    ASSERT_TRUE(q.ok()) << q.status();
    absl::StatusOr<torch::Tensor> w = Dequantize(*q);
    ASSERT_TRUE(w.ok()) << w.status();
    SetParameter(net, name, *w);
    layers[c.layer] = *q;
  }
  const std::string simulated = dir + "/simulated.pt";
  net.save(simulated);
  const std::string compact = dir + "/compact.pt";
  absl::StatusOr<CompactModelInfo> info = SaveCompactModel(net, layers, compact);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->modules, 4);
  EXPECT_EQ(info->file_bytes, FileBytes(compact));
  EXPECT_LT(info->file_bytes, FileBytes(simulated));
  // The twin layer (the type of body.2, kept in float) is unchanged.
  torch::jit::Module loaded = torch::jit::load(compact);
  for (const auto& p : loaded.named_parameters(true)) {
    EXPECT_TRUE(torch::equal(p.value, weights.at(p.name))) << p.name;
    // As in the float file: trainable (and ANALYZE differentiates them).
    EXPECT_TRUE(p.value.requires_grad()) << p.name;
  }
  const std::string out = dir + "/compare.json";
  ASSERT_EQ(std::system((script + " compare " + compact + " " + simulated + " " + out).c_str()),
            0);
  const nlohmann::json result = nlohmann::json::parse(ReadFile(out));
  EXPECT_EQ(result["forward"].get<double>(), 0.0);
  EXPECT_EQ(result["embed"].get<double>(), 0.0);
  EXPECT_EQ(result["parameters"].size(), 10u);  // the same parameters, by name
  // An unknown module path writes nothing.
  EXPECT_EQ(SaveCompactModel(net, {{"nope", layers.at("conv")}}, dir + "/x.pt").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.pt"));
}

}  // namespace
}  // namespace compress::engine
