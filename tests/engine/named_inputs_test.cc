// Datasets with further forward arguments (issue 18: "several inputs per
// example"): "inputs.attention_mask" beside "inputs", passed to the model's
// forward by keyword in every job kind. The model takes the mask as a
// required argument, so any forward that dropped it would fail, and its
// padded data change every number when the mask is ignored. Model, data and
// reference numbers from tests/fixtures/make_masked_model.py (Debian's
// /usr/bin/python3): the loss and accuracy in plain PyTorch, the exact
// Hessian of the classifier, and the saved models reloaded by torch.jit.load.
#include <torch/script.h>

#include <cmath>
#include <cstdlib>
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
#include "server/engine/prune/prune.h"
#include "server/engine/quant/quantize.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Python() { return "/usr/bin/python3 " + FixturePath("make_masked_model.py"); }

class NamedInputsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("test -x /usr/bin/python3") != 0) return;
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = Python() + " make " + *dir_;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    expected_ =
        new nlohmann::json(nlohmann::json::parse(testutil::ReadFile(*dir_ + "/masked.json")));
  }
  void SetUp() override {
    if (expected_ == nullptr) GTEST_SKIP() << "no /usr/bin/python3 or no models";
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }
  static double Expected(const char* key) { return (*expected_)[key].get<double>(); }

  // What stock PyTorch says of a saved model on `data` (mask by keyword).
  static nlohmann::json Check(const std::string& model, const std::string& data) {
    const std::string out = MakeTempDir() + "/check.json";
    const std::string cmd = Python() + " check " + model + " " + Path(data) + " " + out;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return nlohmann::json::parse(testutil::ReadFile(out));
  }

  static std::string* dir_;
  static nlohmann::json* expected_;
};

std::string* NamedInputsTest::dir_ = nullptr;
nlohmann::json* NamedInputsTest::expected_ = nullptr;

void ExpectRelativelyNear(double got, double want, double tolerance) {
  EXPECT_LE(std::abs(got - want), tolerance * std::abs(want)) << got << " vs " << want;
}

TEST_F(NamedInputsTest, BothFormatsDescribeAndLoadTheMask) {
  for (const char* file : {"calib.pt", "eval.safetensors"}) {
    absl::StatusOr<DatasetSummary> s = DescribeDatasetFile(Path(file));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->named_inputs.size(), 1u) << file;
    EXPECT_EQ(s->named_inputs[0].name, "attention_mask");
    EXPECT_THAT(s->named_inputs[0].shape, ElementsAre(16));
    EXPECT_EQ(s->named_inputs[0].dtype, "int64");
    absl::StatusOr<LoadedDataset> d = LoadDataset(Path(file), 10);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(d->inputs.named.size(), 1u);
    EXPECT_EQ(d->inputs.named[0].first, "attention_mask");
    EXPECT_THAT(d->inputs.named[0].second.sizes(), ElementsAre(10, 16));
    // The fixture pads with token 0 where the mask is 0.
    const torch::Tensor pad = d->inputs.named[0].second.eq(0);
    EXPECT_GT(pad.sum().item<int64_t>(), 0);
    EXPECT_TRUE(d->inputs.first.masked_select(pad).eq(0).all().item<bool>());
  }
}

TEST(NamedInputsSummaryTest, RefusesBadNamesAndExampleCounts) {
  const TensorDescription inputs{{4, 16}, "int64"};
  const absl::StatusOr<DatasetSummary> fewer = SummarizeDataset(
      DatasetFileFormat::kTorchSave, inputs, nullptr, {{"inputs.attention_mask", {{3, 16}, "int64"}}});
  EXPECT_EQ(fewer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(fewer.status().message(), HasSubstr("\"inputs.attention_mask\" has 3 examples"));
  for (const char* key : {"inputs.", "inputs.1mask", "inputs.mask-2"}) {
    const absl::StatusOr<DatasetSummary> bad = SummarizeDataset(
        DatasetFileFormat::kTorchSave, inputs, nullptr, {{key, {{4, 16}, "int64"}}});
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(bad.status().message(), HasSubstr("forward argument's name")) << key;
  }
  std::vector<NamedTensorDescription> many;
  for (int i = 0; i <= kMaxNamedInputs; ++i) {
    many.push_back({"inputs.m" + std::to_string(i), {{4}, "int64"}});
  }
  EXPECT_THAT(SummarizeDataset(DatasetFileFormat::kTorchSave, inputs, nullptr, many)
                  .status()
                  .message(),
              HasSubstr("at most 8"));
}

TEST_F(NamedInputsTest, InspectPassesTheMaskByKeyword) {
  InspectOptions o;
  o.input_shape = {1, 16};
  o.input_dtype = "int64";
  absl::StatusOr<Inspection> without = InspectModelFile(Path("masked.pt"), o);
  EXPECT_EQ(without.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(without.status().message(), HasSubstr("attention_mask"));
  o.named_inputs = {{"attention_mask", {1, 16}, "int64"}};
  absl::StatusOr<Inspection> with = InspectModelFile(Path("masked.pt"), o);
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_EQ(with->summary.num_parameters, (*expected_)["num_parameters"].get<int64_t>());
  EXPECT_EQ(with->total_macs, (*expected_)["macs_per_example"].get<int64_t>());
  EXPECT_THAT(with->output_shape, ElementsAre(1, 2));
}

TEST_F(NamedInputsTest, LossAndAccuracyAreThoseOfPyTorchWithTheMask) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(Path("masked.pt"));
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LoadedDataset> calib = LoadDataset(Path("calib.pt"), 0);
  ASSERT_TRUE(calib.ok()) << calib.status();
  absl::StatusOr<PreparedBatches> p =
      PrepareBatches(*m, calib->inputs, calib->targets, 48, LossKind::kAuto);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->batches.size(), 3u);  // 48 + 48 + 32: the mask is split alike
  double loss = 0;
  for (const Batch& b : p->batches) {
    ASSERT_EQ(b.inputs.named.size(), 1u);
    EXPECT_EQ(b.inputs.named[0].second.size(0), b.size);
    absl::StatusOr<torch::Tensor> out = RunForward(*m, b.inputs);
    ASSERT_TRUE(out.ok()) << out.status();
    absl::StatusOr<torch::Tensor> l = ComputeLoss(p->loss, *out, b.targets);
    ASSERT_TRUE(l.ok()) << l.status();
    loss += l->item<double>() * static_cast<double>(b.size) / 128.0;
  }
  ExpectRelativelyNear(loss, Expected("calib_loss"), 1e-5);
  // The fixture's padding matters: ignoring the mask changes the loss.
  EXPECT_GT(std::abs(Expected("calib_loss_unmasked") - Expected("calib_loss")), 0.05);

  absl::StatusOr<LoadedDataset> eval = LoadDataset(Path("eval.safetensors"), 0);
  ASSERT_TRUE(eval.ok()) << eval.status();
  absl::StatusOr<double> acc = TopOneAccuracy(*m, eval->inputs, eval->targets);
  ASSERT_TRUE(acc.ok()) << acc.status();
  EXPECT_DOUBLE_EQ(*acc, Expected("eval_accuracy"));
  // Without the mask the model does not run.
  EXPECT_EQ(TopOneAccuracy(*m, eval->inputs.first, eval->targets).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(NamedInputsTest, AnalyzeFindsTheClassifiersTopEigenvalue) {
  AnalyzeOptions o;
  o.model_path = Path("masked.pt");
  o.dataset = Path("calib.pt");
  o.num_samples = 0;
  o.batch_size = 64;
  o.traces.max_probes = 4;
  o.traces.min_probes = 4;
  o.eigen_enabled = true;
  o.eigen_scope = EigenScope::kLayer;
  o.eigen.method = EigenMethod::kLanczos;
  o.eigen.tolerance = 1e-6;
  o.eigen.max_iterations = 40;  // the classifier block has 66 dimensions
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  bool found = false;
  for (const LayerSensitivity& l : r->layers) {
    EXPECT_TRUE(std::isfinite(l.trace)) << l.name;
    if (l.name != "classifier") continue;
    found = true;
    ASSERT_FALSE(l.top_eigenvalues.empty());
    ExpectRelativelyNear(std::abs(l.top_eigenvalues[0]), Expected("classifier_top_eigenvalue"),
                         1e-4);
  }
  EXPECT_TRUE(found);
}

QuantizeOptions FourBits(const std::string& model, const std::string& calib,
                         const std::string& eval) {
  QuantizeOptions o;
  o.model_path = model;
  o.calibration_dataset = calib;
  o.eval_dataset = eval;
  o.num_samples = 128;
  o.batch_size = 32;
  o.trace_tolerance = 0.2;
  o.trace_max_probes = 20;
  o.output_dir = MakeTempDir();
  o.budget = QuantBudget::AverageBits(4);
  return o;
}

TEST_F(NamedInputsTest, QuantizeWithRoundingToNearestAndGptqReloadsInPyTorch) {
  for (bool gptq : {false, true}) {
    QuantizeOptions o = FourBits(Path("masked.pt"), Path("calib.pt"), Path("eval.safetensors"));
    o.gptq = gptq;
    absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->accuracy_before.has_value());
    ASSERT_TRUE(r->accuracy_after.has_value());
    EXPECT_DOUBLE_EQ(*r->accuracy_before, Expected("eval_accuracy"));
    const nlohmann::json saved = Check(r->model_path, "eval.safetensors");
    EXPECT_DOUBLE_EQ(*r->accuracy_after, saved["accuracy"].get<double>()) << "gptq " << gptq;
    EXPECT_LT(r->bytes_after, r->bytes_before);
    std::printf("%s: accuracy %.2f -> %.2f %%\n", gptq ? "GPTQ" : "RTN", *r->accuracy_before,
                *r->accuracy_after);
  }
}

TEST_F(NamedInputsTest, PruneWithRecoveryKeepsTheMaskAndReloadsInPyTorch) {
  PruneOptions o;
  o.model_path = Path("masked.pt");
  o.calibration_dataset = Path("calib.pt");
  o.eval_dataset = Path("eval.safetensors");
  o.num_samples = 128;
  o.saliency_samples = 128;  // the round losses are on all of calib.pt
  o.batch_size = 32;
  o.target = PruneTargetKind::kFlops;
  o.target_fraction = 0.3;
  o.steps = 2;
  o.mlp_group = 8;
  o.min_mlp = 8;
  o.recovery_steps = 20;
  o.learning_rate = 1e-3;
  o.measure_latency = true;  // blocks timed alone (their mask defaults to None)
  o.latency_batch = 8;
  o.output_dir = MakeTempDir();
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->target_met);
  ASSERT_TRUE(r->accuracy_before.has_value());
  ASSERT_TRUE(r->accuracy_after.has_value());
  EXPECT_DOUBLE_EQ(*r->accuracy_before, Expected("eval_accuracy"));
  const nlohmann::json saved = Check(r->model_path, "eval.safetensors");
  EXPECT_DOUBLE_EQ(*r->accuracy_after, saved["accuracy"].get<double>());
  const nlohmann::json on_calib = Check(r->model_path, "calib.pt");
  ExpectRelativelyNear(r->rounds.back().loss_after_recovery, on_calib["loss"].get<double>(),
                       1e-4);
}

}  // namespace
}  // namespace compress::engine
