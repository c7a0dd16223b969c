#include "server/engine/search/bisection.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/engine/search/items.h"

namespace compress::engine {

using search_internal::Item;
using search_internal::ItemChoice;

absl::StatusOr<std::vector<Solution>> SensitivityOrderedConfigs(
    const SearchProblem& problem, const std::vector<double>& sensitivity, int low_bits,
    int high_bits) {
  absl::StatusOr<std::vector<Item>> items = search_internal::BuildItems(problem);
  if (!items.ok()) return items.status();
  if (sensitivity.size() != problem.layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sensitivity has ", sensitivity.size(), " entries for ", problem.layers.size(), " layers"));
  }
  for (size_t i = 0; i < sensitivity.size(); ++i) {
    if (!std::isfinite(sensitivity[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("sensitivity[", i, "] (\"", problem.layers[i].name, "\") is not finite"));
    }
  }
  if (low_bits >= high_bits) {
    return absl::InvalidArgumentError(
        absl::StrCat("low_bits ", low_bits, " must be below high_bits ", high_bits));
  }

  // Per item: the index of the low and high choice (the pin for pinned items).
  const size_t n = items->size();
  std::vector<int> low(n), high(n);
  std::vector<double> score(n, 0.0);
  std::vector<size_t> movable;
  for (size_t k = 0; k < n; ++k) {
    const Item& item = (*items)[k];
    if (item.pinned) continue;
    auto find = [&](int bits) {
      for (size_t c = 0; c < item.choices.size(); ++c) {
        if (item.choices[c].bits == bits) return static_cast<int>(c);
      }
      return -1;
    };
    low[k] = find(low_bits);
    high[k] = find(high_bits);
    if (low[k] < 0 || high[k] < 0) {
      const int i = item.layers[0];
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "] (\"", problem.layers[i].name, "\")",
                       item.layers.size() > 1 ? " and the layers tied to it" : "", " do not offer ",
                       low[k] < 0 ? low_bits : high_bits, " bits"));
    }
    for (int i : item.layers) score[k] += sensitivity[i];
    movable.push_back(k);
  }
  std::stable_sort(movable.begin(), movable.end(),
                   [&](size_t a, size_t b) { return score[a] > score[b]; });

  std::vector<int> choice = low;  // pinned items: index 0, their only choice
  std::vector<Solution> chain;
  chain.reserve(movable.size() + 1);
  chain.push_back(
      search_internal::Totals(problem, search_internal::Expand(problem, *items, choice)));
  for (size_t k : movable) {
    choice[k] = high[k];
    chain.push_back(
        search_internal::Totals(problem, search_internal::Expand(problem, *items, choice)));
  }
  return chain;
}

absl::StatusOr<BisectionResult> AccuracyBisection(const std::vector<Solution>& configs,
                                                  const AccuracyFn& evaluate, double min_accuracy) {
  if (configs.empty()) return absl::InvalidArgumentError("bisection: no configurations");
  if (!evaluate) return absl::InvalidArgumentError("bisection: no evaluate callback");
  BisectionResult result;
  auto measure = [&](size_t k) -> absl::StatusOr<double> {
    absl::StatusOr<double> accuracy = evaluate(configs[k].bits);
    if (!accuracy.ok()) return accuracy.status();
    if (std::isnan(*accuracy)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bisection: evaluate returned NaN for configuration ", k));
    }
    result.measured.push_back({k, configs[k].size_bits, *accuracy});
    return *accuracy;
  };

  // Invariant: configs[hi] meets the threshold (measured); everything at
  // or below lo is assumed not to (lo = -1: nothing known).
  int64_t hi = static_cast<int64_t>(configs.size()) - 1;
  absl::StatusOr<double> top = measure(hi);
  if (!top.ok()) return top.status();
  if (*top < min_accuracy) {
    result.index = hi;
    result.config = configs[hi];
    result.accuracy = *top;
    result.met = false;
    return result;
  }
  double hi_accuracy = *top;
  int64_t lo = -1;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    absl::StatusOr<double> a = measure(mid);
    if (!a.ok()) return a.status();
    if (*a >= min_accuracy) {
      hi = mid;
      hi_accuracy = *a;
    } else {
      lo = mid;
    }
  }
  result.index = hi;
  result.config = configs[hi];
  result.accuracy = hi_accuracy;
  result.met = true;
  return result;
}

}  // namespace compress::engine
