#include "server/engine/common/stats.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"

namespace compress::engine {

double McNemarExactP(int64_t only_first, int64_t only_second) {
  const int64_t n = only_first + only_second;
  const int64_t k = std::min(only_first, only_second);
  if (n <= 0 || 2 * k == n) return 1.0;
  // log C(n, i) − n·log 2, summed with the largest term factored out.
  const double log_half_n = static_cast<double>(n) * std::log(0.5);
  auto log_term = [&](int64_t i) {
    return std::lgamma(static_cast<double>(n) + 1) - std::lgamma(static_cast<double>(i) + 1) -
           std::lgamma(static_cast<double>(n - i) + 1) + log_half_n;
  };
  const double largest = log_term(k);  // terms grow with i up to n/2
  double sum = 0;
  for (int64_t i = 0; i <= k; ++i) sum += std::exp(log_term(i) - largest);
  return std::min(1.0, 2.0 * std::exp(largest + std::log(sum)));
}

namespace {

// The q-quantile of `v`, linear between order statistics; v not empty.
double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

}  // namespace

TimingComparison CompareTimings(const std::vector<double>& before_ms,
                                const std::vector<double>& after_ms) {
  TimingComparison c;
  if (before_ms.size() != after_ms.size() || before_ms.empty()) {
    c.reason =
        absl::StrFormat("%d and %d timings do not pair up", before_ms.size(), after_ms.size());
    return c;
  }
  c.pairs = static_cast<int>(before_ms.size());
  std::vector<double> ratios;
  for (int i = 0; i < c.pairs; ++i) {
    const double b = before_ms[i], a = after_ms[i];
    if (!(b > 0 && a > 0 && std::isfinite(b) && std::isfinite(a))) {
      c.reason = absl::StrFormat("pair %d timed %g ms and %g ms", i, b, a);
      return c;
    }
    ratios.push_back(b / a);
  }
  c.before_ms = Quantile(before_ms, 0.5);
  c.after_ms = Quantile(after_ms, 0.5);
  c.speedup = Quantile(ratios, 0.5);
  c.speedup_q1 = Quantile(ratios, 0.25);
  c.speedup_q3 = Quantile(ratios, 0.75);
  if (c.pairs < kMinTimingPairs) {
    c.reason = absl::StrFormat("only %d timing pairs, %d needed", c.pairs, kMinTimingPairs);
  } else if (c.speedup_q3 > kMaxRatioSpread * c.speedup_q1) {
    c.reason = absl::StrFormat(
        "timings too noisy: the middle half of %d paired ratios spans %.2fx to %.2fx", c.pairs,
        c.speedup_q1, c.speedup_q3);
  } else {
    c.reliable = true;
  }
  return c;
}

}  // namespace compress::engine
