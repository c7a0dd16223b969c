// Accuracy-bounded bisection over a chain of bit allocations (HAWQ-V3's
// "inter-layer dependency" search): the caller orders configurations from
// the smallest model to the largest, and the search measures O(log n) of
// them to find the smallest one whose accuracy reaches a threshold.
//
// Torch-free; the accuracy comes from a callback (which usually runs the
// quantized model on a validation set).
//
// Example:
//   absl::StatusOr<std::vector<Solution>> chain =
//       SensitivityOrderedConfigs(problem, traces, /*low_bits=*/4, /*high_bits=*/8);
//   absl::StatusOr<BisectionResult> r = AccuracyBisection(
//       *chain, [&](const Assignment& bits) { return Top1(model, bits); },
//       /*min_accuracy=*/baseline - 1.0);
//   // r->config is the smallest configuration within 1 pp of the baseline.
//
// Thread safety: the functions hold no state; `evaluate` is called on the
// calling thread, one configuration at a time.
#ifndef COMPRESS_ENGINE_SEARCH_BISECTION_H_
#define COMPRESS_ENGINE_SEARCH_BISECTION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/search/bit_allocation.h"

namespace compress::engine {

// The monotone chain of configurations from all-low to all-high: chain[k]
// has the k most sensitive movable items at `high_bits` and the others at
// `low_bits`, so chain.size() == movable items + 1 and each configuration
// contains the previous one's high layers. An item is a layer or a tie
// group (its sensitivity is the sum of its members'); pinned items keep
// their pin and are not in the order. Equal sensitivities keep layer order.
// `sensitivity` has one finite entry per layer (e.g. Ω_i(low) − Ω_i(high),
// or Tr(H_ii)/n_i). INVALID_ARGUMENT naming the layer when a movable item
// does not offer `low_bits` or `high_bits`, or low_bits ≥ high_bits.
absl::StatusOr<std::vector<Solution>> SensitivityOrderedConfigs(
    const SearchProblem& problem, const std::vector<double>& sensitivity, int low_bits,
    int high_bits);

// Accuracy (e.g. top-1 %) of the model quantized with an assignment.
using AccuracyFn = std::function<absl::StatusOr<double>(const Assignment&)>;

struct BisectionPoint {
  size_t index = 0;       // into the configuration chain
  int64_t size_bits = 0;  // that configuration's Solution::size_bits
  double accuracy = 0.0;  // what `evaluate` returned
};

struct BisectionResult {
  // Index of the chosen configuration and a copy of it.
  size_t index = 0;
  Solution config;
  // Its measured accuracy.
  double accuracy = 0.0;
  // false when even the largest configuration is below min_accuracy; the
  // chosen one is then the most accurate one measured.
  bool met = false;
  // Every measurement, in the order taken.
  std::vector<BisectionPoint> measured;
};

// The smallest index k with evaluate(configs[k]) ≥ min_accuracy, assuming
// accuracy does not decrease along the chain. Measures the largest
// configuration first, then bisects: at most 1 + ⌈log2(configs.size())⌉
// calls. If accuracy is not monotone the answer is still a measured
// configuration that meets the threshold, though maybe not the smallest.
// INVALID_ARGUMENT for an empty chain, a null callback or a NaN accuracy;
// an error from `evaluate` is returned as is.
absl::StatusOr<BisectionResult> AccuracyBisection(const std::vector<Solution>& configs,
                                                  const AccuracyFn& evaluate, double min_accuracy);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_SEARCH_BISECTION_H_
