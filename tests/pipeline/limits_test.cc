// CheckSpecLimits: every size-like field of every kind against the server's
// limits, with the field's path and the flag in the message; the defaults
// keep the values the README, the demo and the tests use.
#include "server/pipeline/limits.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::testing::HasSubstr;

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

std::string Message(const v1::JobSpec& spec, const ServerLimits& limits = ServerLimits()) {
  absl::Status s = CheckSpecLimits(spec, limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return std::string(s.message());
}

v1::JobSpec Analyze() {
  v1::JobSpec spec;
  spec.mutable_analyze()->set_model_id(std::string(64, 'a'));
  spec.mutable_analyze()->mutable_data()->set_dataset_id("builtin:fashion-mnist/test");
  return spec;
}

TEST(LimitsTest, TheValuesInUsePass) {
  // The README's and demo's largest: --samples 60000, --batch 128,
  // --recovery-steps 2000, --eigen 2; the e2e drain test's endless
  // analysis: 10^6 probes to 1e-9.
  v1::JobSpec spec = Analyze();
  v1::AnalyzeSpec* a = spec.mutable_analyze();
  a->mutable_data()->set_num_samples(60000);
  a->mutable_data()->set_batch_size(128);
  a->mutable_traces()->set_max_probes(1000000);
  a->mutable_traces()->set_tolerance(1e-9);
  a->mutable_eigen()->set_k(3);
  a->mutable_eigen()->set_max_iterations(3000);
  a->mutable_eigen()->set_tolerance(1e-9);
  a->mutable_density()->set_lanczos_steps(90);
  a->mutable_density()->set_grid_points(1000);
  a->mutable_density()->set_max_memory_bytes(int64_t{4} << 30);
  EXPECT_TRUE(CheckSpecLimits(spec, ServerLimits()).ok()) << CheckSpecLimits(spec, {});

  v1::JobSpec prune;
  prune.mutable_prune()->set_steps(6);
  prune.mutable_prune()->mutable_recovery()->set_steps(2000);
  prune.mutable_prune()->set_saliency_samples(128);
  EXPECT_TRUE(CheckSpecLimits(prune, ServerLimits()).ok());

  v1::JobSpec inspect;
  for (int64_t d : {16, 3, 224, 224}) inspect.mutable_inspect()->add_input_shape(d);
  EXPECT_TRUE(CheckSpecLimits(inspect, ServerLimits()).ok());
  EXPECT_TRUE(CheckSpecLimits(v1::JobSpec(), ServerLimits()).ok());
}

TEST(LimitsTest, AnalyzeSizesOverTheLimitsAreRefusedNamingFieldAndFlag) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->mutable_eigen()->set_k(1000000000);
  EXPECT_EQ(Message(spec),
            "spec.analyze.eigen.k: 1000000000 is over the server limit of 64 (--max_eigenvalues)");

  spec = Analyze();
  spec.mutable_analyze()->mutable_eigen()->set_max_iterations(kInt32Max);
  EXPECT_EQ(Message(spec),
            "spec.analyze.eigen.max_iterations: 2147483647 is over the server limit of 10000 "
            "(--max_eigen_iterations)");

  spec = Analyze();
  spec.mutable_analyze()->mutable_density()->set_lanczos_steps(1000000000);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.density.lanczos_steps: 1000000000 is over "
                                       "the server limit of 1000 (--max_lanczos_steps)"));
  spec = Analyze();
  spec.mutable_analyze()->mutable_density()->set_runs(kInt32Max);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.density.runs: 2147483647"));
  EXPECT_THAT(Message(spec), HasSubstr("(--max_density_runs)"));

  spec = Analyze();
  spec.mutable_analyze()->mutable_density()->set_grid_points(kInt32Max);
  EXPECT_EQ(Message(spec),
            "spec.analyze.density.grid_points: 2147483647 is over the server "
            "limit of 100000 (--max_grid_points)");

  spec = Analyze();
  spec.mutable_analyze()->mutable_density()->set_max_memory_bytes(int64_t{1} << 62);
  EXPECT_THAT(Message(spec), HasSubstr("(--max_density_memory_bytes)"));

  spec = Analyze();
  spec.mutable_analyze()->mutable_qbert()->set_subsets(100000);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.qbert.subsets: 100000"));
}

TEST(LimitsTest, ProbesAndTolerancesThatNeverEndAreRefused) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->mutable_traces()->set_max_probes(kInt32Max);
  EXPECT_EQ(Message(spec),
            "spec.analyze.traces.max_probes: 2147483647 is over the server limit "
            "of 1000000 (--max_probes)");
  spec = Analyze();
  spec.mutable_analyze()->mutable_traces()->set_min_probes(1000001);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.traces.min_probes: 1000001"));

  spec = Analyze();
  spec.mutable_analyze()->mutable_traces()->set_tolerance(1e-300);
  EXPECT_EQ(Message(spec),
            "spec.analyze.traces.tolerance: 1e-300 is under the server limit of "
            "1e-09 (--min_tolerance); no run meets a tolerance that small");
  spec = Analyze();
  spec.mutable_analyze()->mutable_eigen()->set_tolerance(1e-12);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.eigen.tolerance: 1e-12 is under"));

  v1::JobSpec q;
  q.mutable_quantize()->set_trace_tolerance(1e-10);
  EXPECT_THAT(Message(q), HasSubstr("spec.quantize.trace_tolerance: 1e-10"));
  q = v1::JobSpec();
  q.mutable_quantize()->set_trace_max_probes(2000000);
  EXPECT_THAT(Message(q), HasSubstr("spec.quantize.trace_max_probes: 2000000"));

  // 0 and negative tolerances are left to the kind's own range check.
  spec = Analyze();
  spec.mutable_analyze()->mutable_traces()->set_tolerance(0);
  EXPECT_TRUE(CheckSpecLimits(spec, ServerLimits()).ok());
}

TEST(LimitsTest, ExamplesBatchesAndStepsOfEveryKind) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->mutable_data()->set_num_samples(int64_t{1} << 40);
  EXPECT_EQ(Message(spec),
            "spec.analyze.data.num_samples: 1099511627776 is over the server "
            "limit of 1048576 (--max_samples)");
  spec = Analyze();
  spec.mutable_analyze()->mutable_data()->set_batch_size(4097);
  EXPECT_THAT(Message(spec), HasSubstr("spec.analyze.data.batch_size: 4097 is over the server "
                                       "limit of 4096 (--max_batch_size)"));

  v1::JobSpec q;
  q.mutable_quantize()->set_eval_samples(int64_t{1} << 30);
  EXPECT_THAT(Message(q), HasSubstr("spec.quantize.eval_samples"));

  v1::JobSpec p;
  p.mutable_prune()->set_steps(kInt32Max);
  EXPECT_EQ(Message(p),
            "spec.prune.steps: 2147483647 is over the server limit of 100 (--max_prune_steps)");
  p = v1::JobSpec();
  p.mutable_prune()->mutable_recovery()->set_steps(kInt32Max);
  EXPECT_THAT(Message(p), HasSubstr("(--max_recovery_steps)"));
  p = v1::JobSpec();
  p.mutable_prune()->set_saliency_samples(int64_t{1} << 21);
  EXPECT_THAT(Message(p), HasSubstr("spec.prune.saliency_samples"));
  p = v1::JobSpec();
  p.mutable_prune()->set_latency_batch(100000);
  EXPECT_THAT(Message(p), HasSubstr("spec.prune.latency_batch: 100000"));

  // COMPRESS: both halves, with their paths.
  v1::JobSpec c;
  c.mutable_compress()->mutable_prune()->set_steps(101);
  EXPECT_THAT(Message(c), HasSubstr("spec.compress.prune.steps: 101"));
  c = v1::JobSpec();
  c.mutable_compress()->mutable_quantize()->mutable_data()->set_num_samples(int64_t{1} << 21);
  EXPECT_THAT(Message(c), HasSubstr("spec.compress.quantize.data.num_samples"));
}

TEST(LimitsTest, InspectInputElements) {
  v1::JobSpec spec;
  for (int64_t d : {20000, 1, 28, 28}) spec.mutable_inspect()->add_input_shape(d);
  EXPECT_EQ(Message(spec),
            "spec.inspect.input_shape: [20000,1,28,28] is over the server limit "
            "of 4194304 input elements (--max_inspect_elements)");
  // A product past int64 is refused, not wrapped around.
  spec = v1::JobSpec();
  for (int i = 0; i < 4; ++i) spec.mutable_inspect()->add_input_shape(int64_t{1} << 40);
  EXPECT_THAT(Message(spec), HasSubstr("--max_inspect_elements"));
  // Exactly at the limit passes; a negative dimension is the kind's to name.
  spec = v1::JobSpec();
  for (int64_t d : {4, 1024, 1024}) spec.mutable_inspect()->add_input_shape(d);
  EXPECT_TRUE(CheckSpecLimits(spec, ServerLimits()).ok());
  spec.mutable_inspect()->set_input_shape(0, -1);
  EXPECT_TRUE(CheckSpecLimits(spec, ServerLimits()).ok());
}

TEST(LimitsTest, StringsAndListsOfASpecAreBounded) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->set_model_id(std::string(1 << 20, 'm'));
  EXPECT_EQ(Message(spec),
            "spec.analyze.model_id: 1048576 bytes is over the server limit of "
            "256 (--max_name_bytes)");

  v1::JobSpec q;
  q.mutable_quantize()->add_pins()->set_layer("fc");
  q.mutable_quantize()->add_pins()->set_layer(std::string(300, 'x'));
  EXPECT_THAT(Message(q), HasSubstr("spec.quantize.pins[1].layer: 300 bytes"));

  q = v1::JobSpec();
  for (int i = 0; i < 1025; ++i) q.mutable_quantize()->add_candidate_bits(4);
  EXPECT_EQ(Message(q),
            "spec.quantize.candidate_bits: 1025 is over the server limit of 1024 "
            "(--max_list_items)");
}

TEST(LimitsTest, LimitsComeFromTheOptions) {
  ServerLimits tight;
  tight.max_eigenvalues = 2;
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->mutable_eigen()->set_k(3);
  EXPECT_THAT(Message(spec, tight), HasSubstr("over the server limit of 2 (--max_eigenvalues)"));
  tight.max_eigenvalues = 3;
  EXPECT_TRUE(CheckSpecLimits(spec, tight).ok());

  EXPECT_TRUE(CheckNameLength("request_id", std::string(256, 'r'), ServerLimits()).ok());
  EXPECT_EQ(CheckNameLength("request_id", std::string(257, 'r'), ServerLimits()).message(),
            "request_id: 257 bytes is over the server limit of 256 (--max_name_bytes)");
}

}  // namespace
}  // namespace compress::pipeline
