// Statistics for comparing two models on the same examples (torch-free).
//
//   // 57 test images only model A gets right, 43 only model B:
//   double p = McNemarExactP(57, 43);  // 0.19: a coin could split them so
//
//   // Latencies of the original and the pruned model, timed alternately:
//   TimingComparison c = CompareTimings({33.1, 34.0, ...}, {13.9, 14.2, ...});
//   if (c.reliable) printf("%.2fx faster", c.speedup);
#ifndef COMPRESS_ENGINE_COMMON_STATS_H_
#define COMPRESS_ENGINE_COMMON_STATS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace compress::engine {

// McNemar's exact two-sided test of two classifiers scored on the same
// examples: `only_first` examples only the first gets right, `only_second`
// only the second (the examples both get right or both get wrong say
// nothing about which is better). Under "equally accurate" each discordant
// example goes either way with probability 1/2, so the p-value is
// min(1, 2·P[Binomial(n, 1/2) ≤ min(only_first, only_second)]) with
// n = only_first + only_second: the chance of a split at least this uneven.
// 1 when there are no discordant examples. Accurate for any n (log space).
double McNemarExactP(int64_t only_first, int64_t only_second);

// Interleaved A/B timings of two models: pair i holds before_ms[i] and
// after_ms[i], taken back to back, so a load that comes and goes slows both
// alike and the per-pair ratio stays put while each model's times wander.
struct TimingComparison {
  int pairs = 0;
  double before_ms = 0, after_ms = 0;     // medians of each model's times
  double speedup = 0;                     // median of before_i / after_i
  double speedup_q1 = 0, speedup_q3 = 0;  // its 25th and 75th percentiles
  // The speed-up is worth printing: at least kMinTimingPairs pairs, every
  // time positive and finite, and the middle half of the ratios within
  // kMaxRatioSpread of each other (q3 / q1). On a loaded machine the same
  // pair of models gave 6.61x in one job and 0.76x in another (issue 19):
  // ratios that wander like that fail the spread test.
  bool reliable = false;
  std::string reason;  // why not reliable, for the summary; empty if it is
};

inline constexpr int kMinTimingPairs = 5;
inline constexpr double kMaxRatioSpread = 1.25;

// Medians and quartiles by linear interpolation between order statistics
// (NumPy's default). Mismatched or empty inputs give an unreliable result
// whose reason says so.
TimingComparison CompareTimings(const std::vector<double>& before_ms,
                                const std::vector<double>& after_ms);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_STATS_H_
