// PRUNE outside the engine: how a PruneSpec becomes PruneOptions (defaults
// and every field), the result proto and summary, and structure.svg.
#include "server/pipeline/prune.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/pipeline/validate.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::testing::HasSubstr;

class PathResources : public Resources {
 public:
  absl::StatusOr<v1::Model> GetModel(const std::string&) override { return v1::Model(); }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string&) override { return v1::Dataset(); }
  std::string ModelPath(const std::string& id) override { return "/blobs/" + id; }
  std::string DatasetPath(const std::string& id) override { return "data:" + id; }
  std::string BuiltinDataDir() override { return "/idx"; }
  absl::StatusOr<v1::Job> GetJob(const std::string&) override {
    return absl::NotFoundError("no jobs");
  }
};

// Resources holding one model, as the catalog stored it.
class OneModelResources : public PathResources {
 public:
  explicit OneModelResources(v1::Model model) : model_(std::move(model)) {}
  absl::StatusOr<v1::Model> GetModel(const std::string&) override { return model_; }

 private:
  v1::Model model_;
};

v1::PruneSpec SpecFor(const std::string& model_id) {
  v1::PruneSpec spec;
  spec.set_model_id(model_id);
  spec.mutable_data()->set_dataset_id("builtin:fashion-mnist/train");
  spec.mutable_target()->set_flops_fraction(0.5);
  return spec;
}

v1::Model WithLayer(const std::string& layer) {
  v1::Model m;
  m.add_layers()->set_name(layer);
  return m;
}

// The submit check follows the verdict the upload stored (PRUNE's own
// discovery, run in the describing child), not the layer names.
TEST(ValidatePruneSpecTest, TheUploadsVerdictDecidesAndNamesTheRunsReason) {
  const std::string reason = "not a transformer PRUNE can prune: no block with ...";
  v1::Model swin = WithLayer("layers.0.blocks.0.attn.qkv");
  swin.mutable_prune_check()->set_checked(true);
  swin.mutable_prune_check()->set_prunable(false);
  swin.mutable_prune_check()->set_reason(reason);
  OneModelResources refused(swin);
  absl::Status s = ValidatePruneSpec("prune", SpecFor("m1"), refused);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("prune.model_id: model m1"));
  EXPECT_THAT(std::string(s.message()), ::testing::EndsWith(": " + reason));

  v1::Model odd_names = WithLayer("encoder.block0.mixer");
  odd_names.mutable_prune_check()->set_checked(true);
  odd_names.mutable_prune_check()->set_prunable(true);
  OneModelResources passed(odd_names);
  EXPECT_TRUE(ValidatePruneSpec("prune", SpecFor("m2"), passed).ok());
}

// Models stored before the check existed keep the name heuristic.
TEST(ValidatePruneSpecTest, ModelsWithoutAVerdictFallBackToLayerNames) {
  OneModelResources vit(WithLayer("blocks.0.attn.qkv"));
  EXPECT_TRUE(ValidatePruneSpec("prune", SpecFor("m3"), vit).ok());
  OneModelResources bert(WithLayer("layer.0.attention.self.query"));
  EXPECT_TRUE(ValidatePruneSpec("prune", SpecFor("m5"), bert).ok());
  OneModelResources gpt(WithLayer("h.0.attn.q_proj"));
  EXPECT_TRUE(ValidatePruneSpec("prune", SpecFor("m6"), gpt).ok());
  OneModelResources cnn(WithLayer("features.0"));
  absl::Status s = ValidatePruneSpec("compress.prune", SpecFor("m4"), cnn);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("compress.prune.model_id"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("is not a transformer (no attn.qkv"));
}

TEST(ToPruneOptionsTest, DefaultsFillTheGaps) {
  PathResources r;
  v1::PruneSpec spec;
  spec.set_model_id("m");
  spec.mutable_data()->set_dataset_id("d");
  spec.mutable_target()->set_flops_fraction(0.5);
  engine::PruneOptions o = ToPruneOptions(spec, 9, "cpu", r, "/out");
  EXPECT_EQ(o.model_path, "/blobs/m");
  EXPECT_EQ(o.calibration_dataset, "data:d");
  // Engine messages name ids, never the paths above.
  EXPECT_EQ(o.model_name, "model m");
  EXPECT_EQ(o.calibration_name, "dataset d");
  EXPECT_EQ(o.num_samples, 256);
  EXPECT_EQ(o.batch_size, 64);
  EXPECT_EQ(o.saliency_samples, 512);
  EXPECT_EQ(o.eval_dataset, "");
  EXPECT_EQ(o.target, engine::PruneTargetKind::kFlops);
  EXPECT_EQ(o.target_fraction, 0.5);
  EXPECT_EQ(o.saliency, engine::SaliencyKind::kHessian);
  EXPECT_EQ(o.head_group, 1);
  EXPECT_EQ(o.mlp_group, 16);
  EXPECT_EQ(o.min_heads, 1);
  EXPECT_EQ(o.min_mlp, 16);
  EXPECT_EQ(o.steps, 4);
  EXPECT_EQ(o.recovery_steps, 100);
  EXPECT_EQ(o.learning_rate, 1e-4);
  EXPECT_EQ(o.temperature, 1);
  EXPECT_EQ(o.optimizer, "adam");
  EXPECT_EQ(o.latency_batch, 64);
  EXPECT_EQ(o.seed, 9u);
  EXPECT_EQ(o.output_dir, "/out");
  EXPECT_EQ(o.idx_dir, "/idx");
}

TEST(ToPruneOptionsTest, EveryFieldIsCarried) {
  PathResources r;
  v1::PruneSpec spec;
  spec.set_model_id("m");
  spec.mutable_data()->set_dataset_id("d");
  spec.mutable_data()->set_num_samples(1000);
  spec.mutable_data()->set_batch_size(50);
  spec.set_eval_dataset_id("e");
  spec.set_eval_samples(300);
  spec.mutable_target()->set_latency_fraction(0.3);
  spec.set_saliency(v1::SALIENCY_TAYLOR);
  spec.set_latency_weight(0.25);
  spec.set_head_group(2);
  spec.set_mlp_group(8);
  spec.set_min_heads(2);
  spec.set_min_mlp(32);
  spec.set_steps(6);
  spec.set_saliency_samples(128);
  spec.set_latency_batch(16);
  spec.mutable_recovery()->set_steps(0);
  spec.mutable_recovery()->set_learning_rate(0.01);
  spec.mutable_recovery()->set_temperature(3);
  spec.mutable_recovery()->set_optimizer("sgd");
  engine::PruneOptions o = ToPruneOptions(spec, 1, "cuda:0", r, "/out");
  EXPECT_EQ(o.num_samples, 1000);
  EXPECT_EQ(o.batch_size, 50);
  EXPECT_EQ(o.eval_dataset, "data:e");
  EXPECT_EQ(o.eval_name, "dataset e");
  EXPECT_EQ(o.eval_samples, 300);
  EXPECT_EQ(o.target, engine::PruneTargetKind::kLatency);
  EXPECT_EQ(o.target_fraction, 0.3);
  EXPECT_EQ(o.saliency, engine::SaliencyKind::kTaylor);
  EXPECT_EQ(o.latency_weight, 0.25);
  EXPECT_EQ(o.head_group, 2);
  EXPECT_EQ(o.mlp_group, 8);
  EXPECT_EQ(o.min_heads, 2);
  EXPECT_EQ(o.min_mlp, 32);
  EXPECT_EQ(o.steps, 6);
  EXPECT_EQ(o.saliency_samples, 128);
  EXPECT_EQ(o.latency_batch, 16);
  EXPECT_EQ(o.recovery_steps, 0);  // explicit 0 = no recovery, not the default
  EXPECT_EQ(o.learning_rate, 0.01);
  EXPECT_EQ(o.temperature, 3);
  EXPECT_EQ(o.optimizer, "sgd");
  EXPECT_EQ(o.device, "cuda:0");
}

TEST(PruneResultTest, SummaryAndStructureSvg) {
  engine::PruneReport report;
  report.saliency = "hessian";
  report.target = "flops";
  report.target_fraction = 0.5;
  report.achieved_fraction = 0.503;
  report.params_before = 139018;
  report.params_after = 70154;
  report.accuracy_before = 89.07;
  report.accuracy_after = 88.31;
  report.latency_batch = 64;
  report.latency_before_ms = 6.0;
  report.latency_after_ms = 3.0;
  // Synthetic interleaved pairs (no clock in tests): every ratio near 2.
  report.latency_comparison =
      engine::CompareTimings({6.0, 6.2, 5.9, 6.0, 6.1}, {3.0, 3.0, 3.0, 3.1, 3.0});
  engine::PrunedBlock b;
  b.name = "blocks.0";
  b.heads_before = 4;
  b.heads_after = 1;
  b.hidden_before = 128;
  b.hidden_after = 64;
  b.kept_heads = {2};
  report.blocks.push_back(b);
  v1::PruneResult r = ToPruneResult(report);
  ASSERT_EQ(r.blocks_size(), 1);
  EXPECT_EQ(r.blocks(0).kept_heads(0), 2);
  EXPECT_EQ(r.blocks(0).mlp_after(), 64);
  EXPECT_EQ(PruneSummary(r),
            "50.3% of flops removed (hessian saliency), 139,018 → 70,154 parameters, top-1 "
            "89.07% → 88.31% (−0.76 pp), 2.00x faster at batch 64");
  EXPECT_TRUE(r.latency_comparison().reliable());
  EXPECT_EQ(r.latency_comparison().pairs(), 5);
  EXPECT_DOUBLE_EQ(r.latency_comparison().speedup(), 2.0);
  const std::string svg = StructureSvg(r);
  EXPECT_THAT(svg, HasSubstr("<svg"));
  EXPECT_THAT(svg, HasSubstr("1/4"));
  EXPECT_THAT(svg, HasSubstr("64/128"));
}

// Pairs whose ratios wander (a loaded machine): the summary says so and
// prints no ratio; without an A/B comparison it prints none either.
TEST(PruneResultTest, SummaryPrintsNoSpeedupFromUnreliableTimings) {
  engine::PruneReport report;
  report.saliency = "hessian";
  report.target = "flops";
  report.achieved_fraction = 0.3;
  report.params_before = 100;
  report.params_after = 70;
  report.latency_batch = 64;
  report.latency_before_ms = 30.0;
  report.latency_after_ms = 12.0;
  // Ratios 6.6, 0.76, 3.33, 0.82, 5.83, 2.14: q1 1.15, q3 5.21.
  report.latency_comparison =
      engine::CompareTimings({33, 8, 40, 9, 35, 30}, {5, 10.5, 12, 11, 6, 14});
  v1::PruneResult r = ToPruneResult(report);
  EXPECT_FALSE(r.latency_comparison().reliable());
  EXPECT_EQ(PruneSummary(r),
            "30.0% of flops removed (hessian saliency), 100 → 70 parameters, speed-up not "
            "measured reliably at batch 64 (timings too noisy: the middle half of 6 paired "
            "ratios spans 1.15x to 5.21x)");
  report.latency_comparison.reset();
  EXPECT_THAT(PruneSummary(ToPruneResult(report)), ::testing::Not(HasSubstr("faster")));
}

}  // namespace
}  // namespace compress::pipeline
