// The vision families of issue 18, made by the test from torchvision's own
// classes (EfficientNet, ConvNeXt, SwinTransformer) plus a timm-style ViT
// whose qkv has no bias, through INSPECT, the loss, ANALYZE, QUANTIZE and
// (the transformers) PRUNE. Every reference number comes from
// tests/fixtures/make_vision_families.py in plain PyTorch (Debian's
// /usr/bin/python3): parameter counts, the mean loss, the exact trace of the
// classifier's Hessian block, and the saved models reloaded by
// torch.jit.load.
#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

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

std::string Python() { return "/usr/bin/python3 " + FixturePath("make_vision_families.py"); }

std::string* dir = nullptr;
nlohmann::json* expected = nullptr;

class VisionFamiliesTest : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    if (dir != nullptr || std::system("test -x /usr/bin/python3") != 0) return;
    dir = new std::string(MakeTempDir());
    const std::string cmd = Python() + " make " + *dir;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    expected = new nlohmann::json(nlohmann::json::parse(testutil::ReadFile(*dir + "/families.json")));
  }
  void SetUp() override {
    if (expected == nullptr) GTEST_SKIP() << "no /usr/bin/python3 or no models";
  }
  static std::string Path(const std::string& name) { return *dir + "/" + name; }
  std::string Model() const { return Path(std::string(GetParam()) + ".pt"); }
  const nlohmann::json& Want() const { return (*expected)[GetParam()]; }

  // What stock PyTorch says of a saved model on eval.pt.
  static nlohmann::json Check(const std::string& model) {
    const std::string out = MakeTempDir() + "/check.json";
    const std::string cmd = Python() + " check " + model + " " + Path("eval.pt") + " " + out;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return nlohmann::json::parse(testutil::ReadFile(out));
  }
};

TEST_P(VisionFamiliesTest, InspectCountsParametersAsPyTorch) {
  InspectOptions o;
  o.input_shape = {1, 3, 32, 32};
  absl::StatusOr<Inspection> ins = InspectModelFile(Model(), o);
  ASSERT_TRUE(ins.ok()) << ins.status();
  EXPECT_EQ(ins->summary.num_parameters, Want()["num_parameters"].get<int64_t>());
  EXPECT_THAT(ins->output_shape, ElementsAre(1, 10));
  EXPECT_GT(ins->total_macs, 0);
}

TEST_P(VisionFamiliesTest, LossIsPyTorchs) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(Model());
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LoadedDataset> d = LoadDataset(Path("data.pt"), 0);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<PreparedBatches> p = PrepareBatches(*m, d->inputs, d->targets, 32, LossKind::kAuto);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<torch::Tensor> out = RunForward(*m, p->batches[0].inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  absl::StatusOr<torch::Tensor> loss = ComputeLoss(p->loss, *out, p->batches[0].targets);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->item<double>(), Want()["loss"].get<double>(), 1e-5);
}

// Hutchinson's estimate of the classifier's trace against the exact trace
// of its Hessian block, within four of the estimate's standard errors.
TEST_P(VisionFamiliesTest, AnalyzeEstimatesTheClassifiersTrace) {
  AnalyzeOptions o;
  o.model_path = Model();
  o.dataset = Path("data.pt");
  o.num_samples = 0;
  o.batch_size = 32;
  o.traces.min_probes = 200;
  o.traces.max_probes = 200;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_parameters, Want()["num_parameters"].get<int64_t>());
  const std::string head = Want()["head"].get<std::string>();
  const double exact = Want()["head_trace"].get<double>();
  bool found = false;
  for (const LayerSensitivity& l : r->layers) {
    EXPECT_TRUE(std::isfinite(l.trace)) << l.name;
    if (l.name != head) continue;
    found = true;
    std::printf("%s %s: trace %.5f ± %.5f, exact %.5f\n", GetParam(), head.c_str(), l.trace,
                l.trace_std_error, exact);
    EXPECT_LE(std::abs(l.trace - exact), 4 * l.trace_std_error + 1e-9 * exact);
  }
  EXPECT_TRUE(found) << head;
}

TEST_P(VisionFamiliesTest, QuantizeAtFourBitsReloadsInPyTorch) {
  QuantizeOptions o;
  o.model_path = Model();
  o.calibration_dataset = Path("data.pt");
  o.eval_dataset = Path("eval.pt");
  o.num_samples = 32;
  o.batch_size = 16;
  o.trace_tolerance = 0.2;
  o.trace_max_probes = 20;
  o.output_dir = MakeTempDir();
  o.budget = QuantBudget::AverageBits(4);
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->accuracy_after.has_value());
  const nlohmann::json saved = Check(r->model_path);
  EXPECT_DOUBLE_EQ(*r->accuracy_after, saved["accuracy"].get<double>());
  EXPECT_LT(r->bytes_after, r->bytes_before);
}

INSTANTIATE_TEST_SUITE_P(Families, VisionFamiliesTest,
                         ::testing::Values("efficientnet", "convnext", "swin", "vit_nobias"));

class VisionTransformerPruneTest : public VisionFamiliesTest {};

// PRUNE of the ViT without a qkv bias (heads and neurons).
TEST_P(VisionTransformerPruneTest, PrunesAndReloadsInPyTorch) {
  PruneOptions o;
  o.model_path = Model();
  o.calibration_dataset = Path("data.pt");
  o.eval_dataset = Path("eval.pt");
  o.num_samples = 32;
  o.saliency_samples = 32;
  o.batch_size = 16;
  o.target = PruneTargetKind::kFlops;
  o.target_fraction = 0.2;
  o.steps = 1;
  o.head_group = 1;
  o.mlp_group = 8;
  o.min_mlp = 8;
  o.recovery_steps = 0;
  o.measure_latency = false;
  o.output_dir = MakeTempDir();
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->target_met);
  EXPECT_EQ(r->params_before, Want()["num_parameters"].get<int64_t>());
  const nlohmann::json saved = Check(r->model_path);
  EXPECT_EQ(r->params_after, saved["num_parameters"].get<int64_t>());
  EXPECT_LT(r->params_after, r->params_before);
  ASSERT_TRUE(r->accuracy_after.has_value());
  EXPECT_DOUBLE_EQ(*r->accuracy_after, saved["accuracy"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(Transformers, VisionTransformerPruneTest,
                         ::testing::Values("vit_nobias"));

// torchvision's Swin changes width from stage to stage (16, then 32 after
// patch merging): PRUNE refuses it at upload and at the run alike, saying
// why.
class SwinPruneTest : public VisionFamiliesTest {};

TEST_P(SwinPruneTest, HierarchicalSwinIsRefusedWithTheReason) {
  const absl::Status upload = CheckPrunableModelFile(Model());
  EXPECT_EQ(upload.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(upload.message()),
              ::testing::HasSubstr("block features.3.0 looks like a transformer block but its "
                                   "width or head size (32, 8) differs from the first block's "
                                   "(16, 8 in features.1.0)"));
  PruneOptions o;
  o.model_path = Model();
  o.calibration_dataset = Path("data.pt");
  o.output_dir = MakeTempDir();
  const absl::Status run = RunPruning(o, nullptr, nullptr).status();
  EXPECT_EQ(run.code(), upload.code());
  EXPECT_EQ(run.message(), upload.message());
}

INSTANTIATE_TEST_SUITE_P(Hierarchical, SwinPruneTest, ::testing::Values("swin"));

}  // namespace
}  // namespace compress::engine
