// Internal to compress_search: a SearchProblem with its ties merged and its
// pins applied, as the items of a multiple-choice knapsack.
#ifndef COMPRESS_ENGINE_SEARCH_ITEMS_H_
#define COMPRESS_ENGINE_SEARCH_ITEMS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/search/bit_allocation.h"

namespace compress::engine::search_internal {

// One bit-width of an item: its members' choices at that width, summed.
struct ItemChoice {
  int bits = 0;
  double cost = 0.0;
  int64_t size_bits = 0;
  int64_t bops = 0;
  int64_t weight_bits = 0;
};

// A layer, or a tie group of layers, that takes one bit-width.
struct Item {
  std::vector<int> layers;          // ascending layer indices
  bool pinned = false;              // then `choices` has the pinned width only
  std::vector<ItemChoice> choices;  // bits ascending
};

// Validates `problem` (see ValidateProblem) and builds its items, ordered by
// their first layer.
absl::StatusOr<std::vector<Item>> BuildItems(const SearchProblem& problem);

int64_t ResourceOf(const ItemChoice& choice, Resource resource);

// The totals of a per-layer assignment that BuildItems accepted (not
// checked); layer costs are summed in layer order.
Solution Totals(const SearchProblem& problem, const Assignment& bits);

// Expands one choice index per item into bits per layer.
Assignment Expand(const SearchProblem& problem, const std::vector<Item>& items,
                  const std::vector<int>& choice_per_item);

}  // namespace compress::engine::search_internal

#endif  // COMPRESS_ENGINE_SEARCH_ITEMS_H_
