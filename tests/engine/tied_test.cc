// Tied parameters (one tensor under two names, as a GPT's head and token
// embedding): counted, analyzed, quantized and saved once. The models and
// the reference numbers come from tests/fixtures/make_test_models.py, run
// here with Debian's /usr/bin/python3 (PyTorch's parameters(), an exact
// float64 Hessian of a plain function of the distinct tensors, and
// torch.jit.load of the saved model).
#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
#include "server/engine/quant/packing.h"
#include "server/engine/quant/quantize.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

std::string Python() { return "/usr/bin/python3 " + FixturePath("make_test_models.py"); }

class TiedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = Python() + " tied " + *dir_;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    expected_ = new nlohmann::json(nlohmann::json::parse(testutil::ReadFile(*dir_ + "/tied.json")));
  }
  void SetUp() override {
    if (std::system("test -x /usr/bin/python3") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }
  static const nlohmann::json& Expected() { return *expected_; }

  static std::string* dir_;
  static nlohmann::json* expected_;
};

std::string* TiedTest::dir_ = nullptr;
nlohmann::json* TiedTest::expected_ = nullptr;

TEST_F(TiedTest, DescribeCountsTheGptsTiedMatrixOnceAsPyTorchDoes) {
  absl::StatusOr<ModelSummary> s = DescribeModelFile(Path("tiny_gpt.pt"));
  ASSERT_TRUE(s.ok()) << s.status();
  const nlohmann::json& want = Expected()["gpt"];
  EXPECT_EQ(s->num_parameters, want["num_parameters"].get<int64_t>());
  EXPECT_EQ(s->model_bytes, want["model_bytes"].get<int64_t>());
  EXPECT_THAT(s->tied, ElementsAre(Pair("embed.weight", ElementsAre("head.weight"))));
  int64_t layer_sum = 0;
  for (const LayerInfo& l : s->layers) {
    layer_sum += l.numel;
    if (l.name != "head") continue;
    ASSERT_EQ(l.parameters.size(), 1u);
    EXPECT_EQ(l.parameters[0].tied_to, "embed.weight");
    EXPECT_EQ(l.parameters[0].numel, want["tied_numel"].get<int64_t>());
    EXPECT_EQ(l.numel, 0);
  }
  EXPECT_EQ(layer_sum, s->num_parameters);
}

TEST_F(TiedTest, InspectCountsOnceAndNamesTheTie) {
  InspectOptions options;
  options.input_shape = {2, 1, 28, 28};
  absl::StatusOr<Inspection> ins = InspectModelFile(Path("tied_mlp.pt"), options);
  ASSERT_TRUE(ins.ok()) << ins.status();
  EXPECT_EQ(ins->summary.num_parameters, Expected()["mlp"]["num_parameters"].get<int64_t>());
  EXPECT_EQ(ins->summary.model_bytes, Expected()["mlp"]["model_bytes"].get<int64_t>());
  EXPECT_THAT(ins->summary.tied,
              ElementsAre(Pair("hidden1.weight", ElementsAre("hidden2.weight"))));
}

// ANALYZE's parameter groups: the tied matrix is in its first module's
// group, which names the other use; the second module keeps its bias.
TEST_F(TiedTest, AnalyzeGroupsOfTheGptKeepTheTiedMatrixOnce) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(Path("tiny_gpt.pt"));
  ASSERT_TRUE(m.ok()) << m.status();
  for (const auto& p : m->parameters()) p.requires_grad_(true);
  absl::StatusOr<ParamSet> params = CollectParameters(*m);
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->layout->numel, Expected()["gpt"]["num_parameters"].get<int64_t>());
  std::map<std::string, std::vector<std::string>> tied;
  for (const ParamGroup& g : params->layout->groups) tied[g.name] = g.tied;
  EXPECT_THAT(tied["embed"], ElementsAre("head.weight"));
  EXPECT_EQ(tied.count("head"), 0u);  // the head owns nothing else
}

// The tied group's trace and top eigenvalue are those of the shared tensor,
// summed over both uses: checked against the exact float64 Hessian.
TEST_F(TiedTest, AnalyzeTracesAndEigenvaluesMatchTheExactHessian) {
  AnalyzeOptions o;
  o.model_path = Path("tied_small.pt");
  o.dataset = Path("tied_small_data.pt");
  o.num_samples = 8;
  o.batch_size = 8;
  o.hvp_method = HvpMethod::kExact;
  o.traces.max_probes = 400;
  o.traces.min_probes = 400;
  o.traces.exact_per_layer = true;
  o.eigen_enabled = true;
  o.eigen_scope = EigenScope::kLayer;
  o.eigen.k = 1;
  o.eigen.tolerance = 1e-6;
  o.eigen.max_iterations = 2000;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json& want = Expected()["small"];
  EXPECT_EQ(r->num_parameters, want["num_parameters"].get<int64_t>());
  std::vector<std::string> names;
  for (const LayerSensitivity& l : r->layers) {
    SCOPED_TRACE(l.name);
    names.push_back(l.name);
    const double trace = want["traces"][l.name].get<double>();
    EXPECT_LE(std::abs(l.trace - trace), 3 * l.trace_std_error + 1e-5)
        << l.trace << " ± " << l.trace_std_error << " vs " << trace;
    const double top = want["top_eigenvalue"][l.name].get<double>();
    ASSERT_EQ(l.top_eigenvalues.size(), 1u);
    std::printf("%-8s trace %.6f ± %.6f (exact %.6f), top |eigenvalue| %.6f (exact %.6f)\n",
                l.name.c_str(), l.trace, l.trace_std_error, trace,
                std::abs(l.top_eigenvalues[0]), top);
    EXPECT_NEAR(std::abs(l.top_eigenvalues[0]), top, 1e-3 * top);
    if (l.name == "hidden1") {
      EXPECT_THAT(l.tied, ElementsAre("hidden2.weight"));
      EXPECT_EQ(l.numel, 30);  // the 5x5 matrix once, and its bias
    } else {
      EXPECT_THAT(l.tied, IsEmpty());
    }
  }
  EXPECT_THAT(names, ElementsAre("fc1", "hidden1", "hidden2", "head"));
}

// QUANTIZE: one layer for the tied matrix, stored once in the packed file
// (with the other name in the manifest), and model.pt keeps the tie: stock
// PyTorch loads the two names sharing one storage.
TEST_F(TiedTest, QuantizeStoresTheTiedMatrixOnceAndModelPtKeepsTheTie) {
  QuantizeOptions o;
  o.model_path = Path("tied_mlp.pt");
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = 64;
  o.batch_size = 32;
  o.trace_tolerance = 0.2;
  o.trace_max_probes = 20;
  o.output_dir = MakeTempDir();
  o.budget = QuantBudget::AverageBits(4);
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json& want = Expected()["mlp"];
  EXPECT_EQ(r->bytes_before, want["model_bytes"].get<int64_t>());
  std::map<std::string, std::vector<std::string>> layers;
  for (const QuantizedLayerReport& l : r->layers) layers[l.name] = l.tied;
  EXPECT_THAT(layers, ElementsAre(Pair("fc1", IsEmpty()), Pair("head", IsEmpty()),
                                  Pair("hidden1", ElementsAre("hidden2"))));

  absl::StatusOr<PackedModel> packed = ReadPackedModel(r->weights_path);
  ASSERT_TRUE(packed.ok()) << packed.status();
  EXPECT_THAT(packed->aliases, ElementsAre(Pair("hidden2.weight", "hidden1.weight")));
  int64_t stored = 0;
  for (const auto& [name, q] : packed->layers) stored += q.codes.numel();
  for (const auto& [name, t] : packed->float_tensors) stored += t.numel();
  EXPECT_EQ(stored, want["num_parameters"].get<int64_t>());
  std::printf("bytes_before %lld, weights.safetensors %lld bytes, %lld values stored\n",
              static_cast<long long>(r->bytes_before), static_cast<long long>(r->bytes_after),
              static_cast<long long>(stored));
  EXPECT_EQ(packed->float_tensors.count("hidden2.weight"), 0u);
  const nlohmann::json manifest = nlohmann::json::parse(testutil::ReadFile(r->manifest_path));
  EXPECT_EQ(manifest["tied"], nlohmann::json({{"hidden2.weight", "hidden1.weight"}}));

  // What was saved is what was packed, under both names.
  absl::StatusOr<std::map<std::string, torch::Tensor>> state = DequantizedTensors(*packed);
  ASSERT_TRUE(state.ok()) << state.status();
  absl::StatusOr<torch::jit::Module> saved = LoadModel(r->model_path);
  ASSERT_TRUE(saved.ok()) << saved.status();
  std::map<std::string, torch::Tensor> params;
  for (const auto& item : saved->named_modules()) {
    for (const auto& p : item.value.named_parameters(false)) {
      params[item.name + "." + p.name] = p.value;
    }
  }
  for (const char* name : {"hidden1.weight", "hidden2.weight"}) {
    EXPECT_TRUE(torch::equal(params.at(name), state->at(name))) << name;
  }
  EXPECT_EQ(params.at("hidden1.weight").data_ptr(), params.at("hidden2.weight").data_ptr());

  const std::string out = o.output_dir + "/tie.json";
  const std::string cmd = Python() + " check_tie " + r->model_path +
                          " hidden1.weight hidden2.weight " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json python = nlohmann::json::parse(testutil::ReadFile(out));
  EXPECT_TRUE(python["shared"].get<bool>());
  EXPECT_EQ(python["max_difference"].get<double>(), 0.0);
  EXPECT_EQ(python["num_parameters"].get<int64_t>(), want["num_parameters"].get<int64_t>());
}

}  // namespace
}  // namespace compress::engine
