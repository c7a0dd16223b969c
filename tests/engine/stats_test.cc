#include "server/engine/common/stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <utility>

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

}  // namespace
}  // namespace compress::engine
