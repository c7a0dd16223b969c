// Statistics for comparing two models on the same examples (torch-free).
//
//   // 57 test images only model A gets right, 43 only model B:
//   double p = McNemarExactP(57, 43);  // 0.19: a coin could split them so
#ifndef COMPRESS_ENGINE_COMMON_STATS_H_
#define COMPRESS_ENGINE_COMMON_STATS_H_

#include <cstdint>

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

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_STATS_H_
