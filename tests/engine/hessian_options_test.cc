// The facade header is torch-free (this target does not see LibTorch's
// include paths) and its defaults are AnalyzeSpec's (compress.proto).
#include "gtest/gtest.h"
#include "server/engine/hessian/analyze.h"

namespace compress::engine {
namespace {

TEST(AnalyzeOptionsTest, DefaultsFollowTheProto) {
  AnalyzeOptions o;
  EXPECT_EQ(o.loss, LossKind::kAuto);
  EXPECT_EQ(o.fallback, HvpFallback::kFiniteDifference);
  EXPECT_FALSE(o.hvp_method.has_value());
  EXPECT_EQ(o.traces.tolerance, 0.05);
  EXPECT_EQ(o.traces.max_probes, 200);
  EXPECT_EQ(o.traces.min_probes, 10);
  EXPECT_FALSE(o.traces.exact_per_layer);
  EXPECT_EQ(o.eigen.k, 1);
  EXPECT_EQ(o.eigen.tolerance, 1e-3);
  EXPECT_EQ(o.eigen.max_iterations, 100);
  EXPECT_EQ(o.eigen_scope, EigenScope::kModel);
  EXPECT_EQ(o.density.lanczos_steps, 90);
  EXPECT_EQ(o.density.runs, 1);
  EXPECT_EQ(o.density.grid_points, 1000);
  EXPECT_EQ(o.density.sigma, 1e-5);
  EXPECT_EQ(o.qbert_subsets, 4);
  EXPECT_EQ(o.device, "cpu");
  EXPECT_STREQ(HvpMethodName(kDefaultHvpMethod), "exact");
  EXPECT_TRUE(o.fd_in_float64);
  EXPECT_STREQ(LossKindName(LossKind::kPseudoLabel), "pseudo_label");
}

}  // namespace
}  // namespace compress::engine
