#include "server/engine/common/stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace compress::engine {
namespace {

// P[Binomial(n, 1/2) ≤ k] by the recursion p_{i+1} = p_i (n − i)/(i + 1),
// starting from 2^−n (representable for n ≤ 1,000).
double BinomialHalfCdf(int n, int k) {
  double p = std::pow(0.5, n), sum = 0;
  for (int i = 0; i <= k; ++i) {
    sum += p;
    p = p * (n - i) / (i + 1);
  }
  return sum;
}

TEST(McNemarExactP, SmallCountsByHand) {
  EXPECT_DOUBLE_EQ(McNemarExactP(0, 5), 2.0 / 32.0);
  // C(13,0..3) = 1 + 13 + 78 + 286 = 378 of 2^13.
  EXPECT_NEAR(McNemarExactP(3, 10), 2.0 * 378.0 / 8192.0, 1e-12);
  EXPECT_NEAR(McNemarExactP(10, 3), 2.0 * 378.0 / 8192.0, 1e-12);
  EXPECT_NEAR(McNemarExactP(1, 9), 2.0 * 11.0 / 1024.0, 1e-12);
}

TEST(McNemarExactP, NoEvidenceIsOne) {
  EXPECT_EQ(McNemarExactP(0, 0), 1.0);
  EXPECT_EQ(McNemarExactP(7, 7), 1.0);
  EXPECT_NEAR(McNemarExactP(0, 1), 1.0, 1e-12);
  EXPECT_NEAR(McNemarExactP(4, 5), 1.0, 1e-12);  // 2·P[X ≤ 4] of n = 9 is exactly 1
}

TEST(McNemarExactP, MatchesDirectRecursionForHundredsOfExamples) {
  for (auto [a, b] :
       {std::pair{450, 550}, std::pair{43, 57}, std::pair{120, 80}, std::pair{300, 301}}) {
    const double expected = std::min(1.0, 2.0 * BinomialHalfCdf(a + b, std::min(a, b)));
    EXPECT_NEAR(McNemarExactP(a, b), expected, 1e-9 * std::max(expected, 1e-300))
        << a << " vs " << b;
  }
  EXPECT_LT(McNemarExactP(450, 550), 0.01);
  EXPECT_GT(McNemarExactP(43, 57), 0.1);
}

TEST(McNemarExactP, LargeCountsFollowTheNormalApproximation) {
  // n = 20,000, 4 standard deviations apart: z = (|b − c| − 1)/√n.
  const double z = (10283.0 - 9717.0 - 1.0) / std::sqrt(20000.0);
  const double normal = std::erfc(z / std::sqrt(2.0));
  const double p = McNemarExactP(9717, 10283);
  EXPECT_GT(p, 0);
  EXPECT_NEAR(p / normal, 1.0, 0.05);
}

// Synthetic timings (no clock in tests): the decision whether PRUNE's
// summary may print "Nx faster" (issue 19).
TEST(CompareTimings, SteadyPairsAreReliable) {
  // Ratios 2.0, 2.1, 1.9, 2.0, 2.2, 2.0: sorted 1.9 2.0 2.0 2.0 2.1 2.2;
  // quartiles at positions 1.25 and 3.75: 2.0 and 2.075.
  const std::vector<double> after = {10, 10, 10, 10, 10, 12};
  const std::vector<double> before = {20, 21, 19, 20, 22, 24};
  TimingComparison c = CompareTimings(before, after);
  EXPECT_TRUE(c.reliable) << c.reason;
  EXPECT_TRUE(c.reason.empty());
  EXPECT_EQ(c.pairs, 6);
  EXPECT_DOUBLE_EQ(c.speedup, 2.0);
  EXPECT_DOUBLE_EQ(c.speedup_q1, 2.0);
  EXPECT_NEAR(c.speedup_q3, 2.075, 1e-12);
  EXPECT_DOUBLE_EQ(c.before_ms, 20.5);
  EXPECT_DOUBLE_EQ(c.after_ms, 10.0);
}

// A load that comes and goes: each model's times wander 5x, but the two
// models of a pair see the same load, so their ratio holds.
TEST(CompareTimings, SharedLoadCancelsInThePairs) {
  const std::vector<double> load = {1, 5, 2, 4, 1.5, 3, 1};
  std::vector<double> before, after;
  for (double l : load) {
    before.push_back(30 * l);
    after.push_back(12 * l);
  }
  TimingComparison c = CompareTimings(before, after);
  EXPECT_TRUE(c.reliable) << c.reason;
  EXPECT_NEAR(c.speedup, 2.5, 1e-12);
  EXPECT_NEAR(c.speedup_q3 / c.speedup_q1, 1.0, 1e-12);
}

// The case: the same cut timed 6.61x in one job and 0.76x in
// another. Pairs that disagree like that are not printed.
TEST(CompareTimings, WanderingRatiosAreNotReliable) {
  const std::vector<double> before = {33, 8, 40, 9, 35, 30};
  const std::vector<double> after = {5, 10.5, 12, 11, 6, 14};
  // Ratios 6.6, 0.762, 3.33, 0.818, 5.83, 2.14: q1 = 1.15, q3 = 5.21.
  TimingComparison c = CompareTimings(before, after);
  EXPECT_FALSE(c.reliable);
  EXPECT_NE(c.reason.find("too noisy"), std::string::npos) << c.reason;
  EXPECT_GT(c.speedup_q3 / c.speedup_q1, kMaxRatioSpread);
}

TEST(CompareTimings, TooFewOrBadPairsAreNotReliable) {
  TimingComparison few = CompareTimings({20, 20, 20, 20}, {10, 10, 10, 10});
  EXPECT_FALSE(few.reliable);
  EXPECT_DOUBLE_EQ(few.speedup, 2.0);  // computed, just not trusted
  EXPECT_NE(few.reason.find("only 4 timing pairs"), std::string::npos) << few.reason;
  EXPECT_FALSE(CompareTimings({20, 20, 20, 20, 20}, {10, 10, 0, 10, 10}).reliable);
  EXPECT_FALSE(CompareTimings({20, 20, 20, 20, 20}, {10, 10, 10, 10}).reliable);
  EXPECT_FALSE(CompareTimings({}, {}).reliable);
  // Just inside and just outside the spread limit: ratios 2 2 2 2.5 2.5
  // (q1 2, q3 2.5, spread 1.25) and 2 2 2 2.6 2.6 (spread 1.3).
  EXPECT_TRUE(CompareTimings({20, 20, 20, 25, 25}, {10, 10, 10, 10, 10}).reliable);
  EXPECT_FALSE(CompareTimings({20, 20, 20, 26, 26}, {10, 10, 10, 10, 10}).reliable);
}

}  // namespace
}  // namespace compress::engine
