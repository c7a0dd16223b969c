#include "server/engine/common/stats.h"

#include <algorithm>
#include <cmath>

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

}  // namespace compress::engine
