// Token-id models (issue 18): a GPT-style decoder whose head is its token
// embedding and a BERT-style classifier, both taking int64 token ids,
// through INSPECT, the language-modeling loss, ANALYZE and QUANTIZE. The
// models, the data and every reference number come from
// tests/fixtures/make_text_models.py, run here with Debian's
// /usr/bin/python3 (eager PyTorch: parameters(), F.cross_entropy on
// shifted tokens, perplexity, top-1 accuracy, and torch.jit.load of the
// saved model.pt).
#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
#include "server/engine/quant/quantize.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Python() { return "/usr/bin/python3 " + FixturePath("make_text_models.py"); }

class TextModelsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("test -x /usr/bin/python3") != 0) return;
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = Python() + " make " + *dir_;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    expected_ = new nlohmann::json(nlohmann::json::parse(testutil::ReadFile(*dir_ + "/text.json")));
  }
  void SetUp() override {
    if (expected_ == nullptr) GTEST_SKIP() << "no /usr/bin/python3 or no models";
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }
  static const nlohmann::json& Expected() { return *expected_; }

  // What stock PyTorch says of `model` (a saved model.pt) on `data`.
  static nlohmann::json Check(const std::string& model, const std::string& data) {
    const std::string out = MakeTempDir() + "/check.json";
    const std::string cmd = Python() + " check " + model + " " + Path(data) + " " + out;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return nlohmann::json::parse(testutil::ReadFile(out));
  }

  static std::string* dir_;
  static nlohmann::json* expected_;
};

std::string* TextModelsTest::dir_ = nullptr;
nlohmann::json* TextModelsTest::expected_ = nullptr;

void ExpectRelativelyNear(double got, double want, double tolerance) {
  EXPECT_LE(std::abs(got - want), tolerance * std::abs(want)) << got << " vs " << want;
}

// The probe input is int64 token ids (zeros); float zeros are refused by
// the embedding, and the message says which dtype was tried.
TEST_F(TextModelsTest, InspectFeedsTokenIdsAndCountsParametersAsPyTorch) {
  for (const char* model : {"gpt", "bert"}) {
    SCOPED_TRACE(model);
    InspectOptions options;
    options.input_shape = {1, 16};
    options.input_dtype = "int64";
    absl::StatusOr<Inspection> ins =
        InspectModelFile(Path(std::string(model) + ".pt"), options);
    ASSERT_TRUE(ins.ok()) << ins.status();
    EXPECT_EQ(ins->summary.num_parameters, Expected()[model]["num_parameters"].get<int64_t>());
    if (std::string(model) == "gpt") {
      EXPECT_THAT(ins->output_shape, ElementsAre(1, 16, 32));
    } else {
      EXPECT_THAT(ins->output_shape, ElementsAre(1, 2));
    }
    options.input_dtype = "float32";
    absl::StatusOr<Inspection> floats =
        InspectModelFile(Path(std::string(model) + ".pt"), options);
    ASSERT_FALSE(floats.ok());
    EXPECT_THAT(floats.status().message(), HasSubstr("float32 input of shape [1, 16]"));
  }
  InspectOptions bad;
  bad.input_shape = {1, 16};
  bad.input_dtype = "int65";
  absl::StatusOr<Inspection> refused = InspectModelFile(Path("gpt.pt"), bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("input_dtype \"int65\""));
}

// The loss ANALYZE differentiates: next-token cross-entropy of the first
// batch, as eager PyTorch computes it, with and without an ignored id.
TEST_F(TextModelsTest, LanguageModelingLossEqualsEagerPyTorch) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(Path("gpt.pt"));
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LoadedDataset> data = LoadDataset(Path("lm_calib.safetensors"), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->inputs.first.scalar_type(), torch::kLong);
  const nlohmann::json& want = Expected()["gpt"];
  const int64_t batch = want["batch"].get<int64_t>();
  for (bool ignoring : {false, true}) {
    SCOPED_TRACE(ignoring ? "ignoring" : "all tokens");
    std::optional<int64_t> ignore;
    if (ignoring) ignore = want["ignore"].get<int64_t>();
    absl::StatusOr<PreparedBatches> prepared =
        PrepareBatches(*m, data->inputs, data->targets, batch, LossKind::kLanguageModeling, ignore);
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    EXPECT_EQ(prepared->loss, LossKind::kLanguageModeling);
    ASSERT_EQ(prepared->batches.size(), 4u);
    const Batch& first = prepared->batches[0];
    EXPECT_EQ(first.inputs.first.scalar_type(), torch::kLong);  // never cast to float
    EXPECT_THAT(first.targets.sizes().vec(), ElementsAre(batch, 15));
    absl::StatusOr<torch::Tensor> out = RunForward(*m, first.inputs);
    ASSERT_TRUE(out.ok()) << out.status();
    absl::StatusOr<torch::Tensor> loss =
        ComputeLoss(LossKind::kLanguageModeling, *out, first.targets);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const double expected =
        want[ignoring ? "first_batch_loss_ignoring" : "first_batch_loss"].get<double>();
    std::printf("first batch loss %.7f (PyTorch %.7f)\n", loss->item<double>(), expected);
    ExpectRelativelyNear(loss->item<double>(), expected, 1e-5);
  }
  absl::StatusOr<LoadedDataset> eval = LoadDataset(Path("lm_eval.safetensors"), 0);
  ASSERT_TRUE(eval.ok()) << eval.status();
  absl::StatusOr<double> ppl = Perplexity(*m, eval->inputs);
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  ExpectRelativelyNear(*ppl, want["perplexity"].get<double>(), 1e-5);
}

TEST_F(TextModelsTest, LanguageModelingRefusesTargetsOtherThanTheInputs) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(Path("gpt.pt"));
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LoadedDataset> data = LoadDataset(Path("cls_calib.pt"), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  absl::StatusOr<PreparedBatches> prepared =
      PrepareBatches(*m, data->inputs, data->targets, 16, LossKind::kLanguageModeling);
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(prepared.status().message(), HasSubstr("differ from its inputs"));
  prepared = PrepareBatches(*m, data->inputs.first.to(torch::kFloat), torch::Tensor(), 16,
                            LossKind::kLanguageModeling);
  EXPECT_THAT(prepared.status().message(), HasSubstr("integer token ids"));
}

// ANALYZE of the decoder with the language-modeling loss: exact HVPs
// through the embedding (token ids are never differentiated), the tied
// matrix in the embedding's group.
TEST_F(TextModelsTest, AnalyzeRunsWithTheLanguageModelingLoss) {
  AnalyzeOptions o;
  o.model_path = Path("gpt.pt");
  o.dataset = Path("lm_calib.safetensors");
  o.num_samples = 32;
  o.batch_size = 16;
  o.loss = LossKind::kLanguageModeling;
  o.traces.max_probes = 8;
  o.traces.min_probes = 8;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->loss, LossKind::kLanguageModeling);
  EXPECT_EQ(r->num_parameters, Expected()["gpt"]["num_parameters"].get<int64_t>());
  bool saw_embed = false;
  for (const LayerSensitivity& l : r->layers) {
    EXPECT_TRUE(std::isfinite(l.trace)) << l.name;
    if (l.name == "embed") {
      saw_embed = true;
      EXPECT_EQ(l.kind, "Embedding");
      EXPECT_THAT(l.tied, ElementsAre("head.weight"));
      EXPECT_GT(l.trace, 0);
    }
  }
  EXPECT_TRUE(saw_embed);
}

QuantizeOptions FourBits(const std::string& model, const std::string& calib,
                         const std::string& eval) {
  QuantizeOptions o;
  o.model_path = model;
  o.calibration_dataset = calib;
  o.eval_dataset = eval;
  o.num_samples = 64;
  o.batch_size = 16;
  o.trace_tolerance = 0.2;
  o.trace_max_probes = 20;
  o.output_dir = MakeTempDir();
  o.budget = QuantBudget::AverageBits(4);
  return o;
}

// The embedding is a quantized layer (per-row scales), kind "Embedding".
void ExpectQuantizedEmbedding(const QuantizeReport& r, const std::vector<std::string>& tied) {
  bool found = false;
  for (const QuantizedLayerReport& l : r.layers) {
    std::printf("%-14s %-9s %2d bits %s\n", l.name.c_str(), l.kind.c_str(), l.bits,
                l.rounding.c_str());
    if (l.name != "embed") continue;
    found = true;
    EXPECT_EQ(l.kind, "Embedding");
    EXPECT_LE(l.bits, 8);
    EXPECT_LT(l.bytes_after, l.bytes_before);
    EXPECT_EQ(l.tied, tied);
  }
  EXPECT_TRUE(found);
}

TEST_F(TextModelsTest, QuantizeTheDecoderAtFourBitsReportsPerplexity) {
  QuantizeOptions o =
      FourBits(Path("gpt.pt"), Path("lm_calib.safetensors"), Path("lm_eval.safetensors"));
  o.loss = LossKind::kLanguageModeling;
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectQuantizedEmbedding(*r, {"head"});
  EXPECT_FALSE(r->accuracy_before.has_value());
  ASSERT_TRUE(r->perplexity_before.has_value());
  ASSERT_TRUE(r->perplexity_after.has_value());
  std::printf("decoder: %lld -> %lld bytes, perplexity %.4f -> %.4f (PyTorch before %.4f)\n",
              static_cast<long long>(r->bytes_before), static_cast<long long>(r->bytes_after),
              *r->perplexity_before, *r->perplexity_after,
              Expected()["gpt"]["perplexity"].get<double>());
  ExpectRelativelyNear(*r->perplexity_before, Expected()["gpt"]["perplexity"].get<double>(), 1e-4);
  const nlohmann::json saved = Check(r->model_path, "lm_eval.safetensors");
  ExpectRelativelyNear(*r->perplexity_after, saved["perplexity"].get<double>(), 1e-4);
  EXPECT_NE(*r->perplexity_after, *r->perplexity_before);  // the weights did change
}

TEST_F(TextModelsTest, QuantizeTheClassifierAtFourBits) {
  QuantizeOptions o = FourBits(Path("bert.pt"), Path("cls_calib.pt"), Path("cls_eval.pt"));
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectQuantizedEmbedding(*r, {});
  ASSERT_TRUE(r->accuracy_before.has_value());
  ASSERT_TRUE(r->accuracy_after.has_value());
  EXPECT_FALSE(r->perplexity_before.has_value());
  std::printf("classifier: %lld -> %lld bytes, accuracy %.2f -> %.2f %%\n",
              static_cast<long long>(r->bytes_before), static_cast<long long>(r->bytes_after),
              *r->accuracy_before, *r->accuracy_after);
  EXPECT_DOUBLE_EQ(*r->accuracy_before, Expected()["bert"]["accuracy"].get<double>());
  const nlohmann::json saved = Check(r->model_path, "cls_eval.pt");
  EXPECT_DOUBLE_EQ(*r->accuracy_after, saved["accuracy"].get<double>());
}

TEST_F(TextModelsTest, BisectionIsRefusedForALanguageModel) {
  QuantizeOptions o =
      FourBits(Path("gpt.pt"), Path("lm_calib.safetensors"), Path("lm_eval.safetensors"));
  o.loss = LossKind::kLanguageModeling;
  o.search = QuantSearch::kBisection;
  o.tolerance = {QuantTolerance::Kind::kMaxDropPoints, 1};
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("search: bisection"));
}

}  // namespace
}  // namespace compress::engine
