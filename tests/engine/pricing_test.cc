// The search's sensitivity hygiene (pricing.h), checked against values
// worked out by hand here.
#include "server/engine/search/pricing.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::engine {
namespace {

using ::testing::HasSubstr;

LayerSensitivityEstimate Estimate(double omega2, double se2, double err2, double omega4,
                                  double se4, double err4) {
  LayerSensitivityEstimate e;
  e.omega = {{2, omega2}, {4, omega4}};
  e.std_error = {{2, se2}, {4, se4}};
  e.error = {{2, err2}, {4, err4}};
  return e;
}

TEST(PriceLayers, ResolvedLayersKeepOmega) {
  // Both layers' Ω exceed 2 SE at both widths: prices are Ω itself.
  PricingResult r = PriceLayers({Estimate(1.0, 0.1, 10, 0.2, 0.05, 2),
                                 Estimate(3.0, 1.0, 5, 0.5, 0.2, 1)});
  EXPECT_EQ(r.fallback_count, 0);
  EXPECT_FALSE(r.none_resolved);
  EXPECT_DOUBLE_EQ(r.layers[0].price.at(2), 1.0);
  EXPECT_DOUBLE_EQ(r.layers[1].price.at(4), 0.5);
  EXPECT_TRUE(r.curvature.empty());
}

TEST(PriceLayers, NegativeAndNoisyLayersGetTheMedianCurvature) {
  // Ratios Ω/‖δ‖² of the layers resolved at every width, at 2 bits: 0.1,
  // 0.6, 0.2 → median 0.2; at 4 bits: 0.1, 0.5, 0.4 → 0.4.
  std::vector<LayerSensitivityEstimate> layers = {
      Estimate(1.0, 0.1, 10, 0.2, 0.05, 2),   // resolved
      Estimate(3.0, 1.0, 5, 0.5, 0.2, 1),     // resolved
      Estimate(0.4, 0.1, 2, 0.4, 0.1, 1),     // resolved
      Estimate(-2.0, 0.1, 8, 0.1, 0.05, 1),   // negative at 2 bits
      Estimate(0.5, 0.6, 4, 0.1, 0.01, 3),    // 0.5 <= 1·SE at 2 bits, below κ‖δ‖² = 0.8
      Estimate(2.0, 3.0, 1, 0.3, 0.01, 0.5),  // noisy at 2 bits but above κ‖δ‖² = 0.2
  };
  PricingResult r = PriceLayers(layers);
  EXPECT_EQ(r.fallback_count, 2);
  EXPECT_FALSE(r.none_resolved);
  EXPECT_DOUBLE_EQ(r.curvature.at(2), 0.2);
  EXPECT_DOUBLE_EQ(r.curvature.at(4), 0.4);
  // Negative somewhere: κ·‖δ‖² at every width.
  EXPECT_TRUE(r.layers[3].fallback);
  EXPECT_THAT(r.layers[3].reason, HasSubstr("Ω(2) = -2 is not positive"));
  EXPECT_DOUBLE_EQ(r.layers[3].price.at(2), 0.2 * 8);
  EXPECT_DOUBLE_EQ(r.layers[3].price.at(4), 0.4 * 1);
  // Unresolved at 2 bits only: max(Ω, κ·‖δ‖²) there, Ω at 4 bits.
  EXPECT_TRUE(r.layers[4].fallback);
  EXPECT_THAT(r.layers[4].reason, HasSubstr("within 1 standard error"));
  EXPECT_DOUBLE_EQ(r.layers[4].price.at(2), 0.2 * 4);
  EXPECT_DOUBLE_EQ(r.layers[4].price.at(4), 0.1);
  // Noisy but dearer than a typical layer: its own Ω stands.
  EXPECT_FALSE(r.layers[5].fallback);
  EXPECT_DOUBLE_EQ(r.layers[5].price.at(2), 2.0);
  // Every price is positive: no layer is free.
  for (const LayerPrice& l : r.layers) {
    for (const auto& [b, p] : l.price) EXPECT_GT(p, 0) << b;
  }
}

TEST(PriceLayers, NoResolvedLayerIsTheNoHessianSearch) {
  PricingResult r = PriceLayers({Estimate(-1, 0, 7, -0.5, 0, 3), Estimate(0.1, 1, 2, 0.0, 0, 1)});
  EXPECT_TRUE(r.none_resolved);
  EXPECT_DOUBLE_EQ(r.layers[0].price.at(2), 7);
  EXPECT_DOUBLE_EQ(r.layers[1].price.at(4), 1);
}

TEST(PriceLayers, AZeroPerturbationNeedsNoResolution) {
  // At 4 bits the weight is on the grid (‖δ‖² = 0, Ω = 0): still resolved.
  PricingResult r = PriceLayers({Estimate(1.0, 0.1, 10, 0.0, 0.0, 0.0)});
  EXPECT_EQ(r.fallback_count, 0);
  EXPECT_DOUBLE_EQ(r.layers[0].price.at(4), 0.0);
}

TEST(MeanAndStdError, MatchesTheSampleFormula) {
  // Equal weights: mean 2.5, sample variance of {1,2,3,4} = 5/3, SE² = 5/12.
  WeightedMean m = MeanAndStdError({{1, 0.25}, {2, 0.25}, {3, 0.25}, {4, 0.25}});
  EXPECT_DOUBLE_EQ(m.mean, 2.5);
  EXPECT_NEAR(m.std_error, std::sqrt(5.0 / 12.0), 1e-15);
  // Two values: SE = |a − b| / 2.
  WeightedMean two = MeanAndStdError({{1, 0.5}, {-3, 0.5}});
  EXPECT_DOUBLE_EQ(two.mean, -1);
  EXPECT_DOUBLE_EQ(two.std_error, 2);
  EXPECT_DOUBLE_EQ(MeanAndStdError({{5, 1}}).std_error, 0);
}

}  // namespace
}  // namespace compress::engine
