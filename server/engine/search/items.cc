#include "server/engine/search/items.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace compress::engine::search_internal {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

bool ValidBits(int bits) { return (bits >= 2 && bits <= 8) || bits == 16 || bits == 32; }

std::string LayerLabel(const SearchProblem& problem, int i) {
  return absl::StrCat("layers[", i, "] (\"", problem.layers[i].name, "\")");
}

int Find(std::vector<int>& parent, int x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

absl::Status ValidateLayer(const SearchProblem& problem, int i) {
  const LayerChoices& layer = problem.layers[i];
  if (layer.numel < 0) {
    return absl::InvalidArgumentError(absl::StrCat(LayerLabel(problem, i), ": numel is negative"));
  }
  // numel · 32 must fit, and so must the sums (checked by the caller).
  if (layer.numel > kInt64Max / 64) {
    return absl::InvalidArgumentError(absl::StrCat(LayerLabel(problem, i), ": numel too large"));
  }
  if (layer.choices.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(LayerLabel(problem, i), ": no choices"));
  }
  for (size_t c = 0; c < layer.choices.size(); ++c) {
    const BitChoice& choice = layer.choices[c];
    const std::string where = absl::StrCat(LayerLabel(problem, i), ".choices[", c, "]");
    if (!ValidBits(choice.bits)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": bits ", choice.bits, " is not 2..8, 16 or 32"));
    }
    if (!std::isfinite(choice.cost)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": cost is not finite"));
    }
    if (choice.size_bits < 0 || choice.bops < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": size_bits or bops is negative"));
    }
    for (size_t d = 0; d < c; ++d) {
      if (layer.choices[d].bits == choice.bits) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": bits ", choice.bits, " offered twice"));
      }
    }
  }
  return absl::OkStatus();
}

// Adds `x` to `sum`; false on overflow.
bool AddChecked(int64_t& sum, int64_t x) { return !__builtin_add_overflow(sum, x, &sum); }

using LayerIndex = absl::flat_hash_map<std::string, int>;

// Layer name -> index, after checking that names are unique and each layer
// is valid.
absl::StatusOr<LayerIndex> IndexLayers(const SearchProblem& problem) {
  const int n = static_cast<int>(problem.layers.size());
  if (n == 0) return absl::InvalidArgumentError("layers is empty");
  LayerIndex index;
  for (int i = 0; i < n; ++i) {
    if (!index.emplace(problem.layers[i].name, i).second) {
      return absl::InvalidArgumentError(absl::StrCat(LayerLabel(problem, i),
                                                     ": name used by layers[",
                                                     index[problem.layers[i].name], "] too"));
    }
    if (absl::Status s = ValidateLayer(problem, i); !s.ok()) return s;
  }
  return index;
}

// The bits each layer is pinned to (0 = not pinned).
absl::StatusOr<std::vector<int>> PinnedBits(const SearchProblem& problem, const LayerIndex& index) {
  std::vector<int> pin(problem.layers.size(), 0);
  for (const auto& [name, bits] : problem.pins) {
    auto it = index.find(name);
    if (it == index.end()) {
      return absl::InvalidArgumentError(absl::StrCat("pins: unknown layer \"", name, "\""));
    }
    const auto& choices = problem.layers[it->second].choices;
    if (std::none_of(choices.begin(), choices.end(),
                     [bits = bits](const BitChoice& c) { return c.bits == bits; })) {
      return absl::InvalidArgumentError(absl::StrCat("pins: ", LayerLabel(problem, it->second),
                                                     " does not offer ", bits, " bits"));
    }
    pin[it->second] = bits;
  }
  return pin;
}

// One item per tie group, by union-find so that groups sharing a layer
// merge; an untied layer is an item of its own. Ordered by first layer,
// without choices yet.
absl::StatusOr<std::vector<Item>> TieGroups(const SearchProblem& problem, const LayerIndex& index) {
  const int n = static_cast<int>(problem.layers.size());
  std::vector<int> parent(n);
  std::iota(parent.begin(), parent.end(), 0);
  for (size_t g = 0; g < problem.ties.size(); ++g) {
    int first = -1;
    for (const std::string& name : problem.ties[g]) {
      auto it = index.find(name);
      if (it == index.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("ties[", g, "]: unknown layer \"", name, "\""));
      }
      if (first < 0) {
        first = it->second;
      } else {
        parent[Find(parent, it->second)] = Find(parent, first);
      }
    }
  }
  std::vector<int> item_of_root(n, -1);
  std::vector<Item> items;
  for (int i = 0; i < n; ++i) {
    const int root = Find(parent, i);
    if (item_of_root[root] < 0) {
      item_of_root[root] = static_cast<int>(items.size());
      items.emplace_back();
    }
    items[item_of_root[root]].layers.push_back(i);
  }
  return items;
}

// "\"a\", \"b\"": the item's layer names, for errors.
std::string MemberNames(const SearchProblem& problem, const Item& item) {
  return absl::StrJoin(item.layers, ", ", [&](std::string* out, int i) {
    absl::StrAppend(out, "\"", problem.layers[i].name, "\"");
  });
}

// The widths every member of `item` offers, ascending; only the pin when a
// member is pinned (then item->pinned). INVALID_ARGUMENT when the members
// share no width or their pins disagree.
absl::StatusOr<std::vector<int>> ItemWidths(const SearchProblem& problem,
                                            const std::vector<int>& pin, Item* item) {
  std::vector<int> common;
  for (const BitChoice& c : problem.layers[item->layers[0]].choices) common.push_back(c.bits);
  int pinned_layer = -1;
  for (int i : item->layers) {
    std::vector<int> kept;
    for (int b : common) {
      for (const BitChoice& c : problem.layers[i].choices) {
        if (c.bits == b) kept.push_back(b);
      }
    }
    common = std::move(kept);
    if (pin[i] == 0) continue;
    if (pinned_layer >= 0 && pin[pinned_layer] != pin[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tied layers are pinned to different widths: ", LayerLabel(problem, pinned_layer), " to ",
          pin[pinned_layer], " bits and ", LayerLabel(problem, i), " to ", pin[i],
          " bits (tie group: ", MemberNames(problem, *item), ")"));
    }
    pinned_layer = i;
  }
  if (common.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tied layers have no bit-width in common: ", MemberNames(problem, *item)));
  }
  if (pinned_layer >= 0) {
    const int b = pin[pinned_layer];
    if (std::find(common.begin(), common.end(), b) == common.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(LayerLabel(problem, pinned_layer), " is pinned to ", b,
                       " bits, which not every layer tied to it offers (tie group: ",
                       MemberNames(problem, *item), ")"));
    }
    // assign(), not `= {b}`: gcc 14 warns (array-bounds, a false
    // positive) on the initializer-list assignment.
    common.assign(1, b);
    item->pinned = true;
  }
  std::sort(common.begin(), common.end());
  return common;
}

// The largest weight bits, size and BOPs among an item's choices.
struct ItemMaxima {
  int64_t weight_bits = 0, size_bits = 0, bops = 0;
};

// Fills item->choices, one per width: the members' summed cost, sizes and
// BOPs. INVALID_ARGUMENT when a sum overflows.
absl::StatusOr<ItemMaxima> AddItemChoices(const SearchProblem& problem,
                                          const std::vector<int>& widths, Item* item) {
  ItemMaxima max;
  for (int b : widths) {
    ItemChoice choice;
    choice.bits = b;
    for (int i : item->layers) {
      const LayerChoices& layer = problem.layers[i];
      for (const BitChoice& c : layer.choices) {
        if (c.bits != b) continue;
        choice.cost += c.cost;
        if (!AddChecked(choice.size_bits, c.size_bits) || !AddChecked(choice.bops, c.bops) ||
            !AddChecked(choice.weight_bits, layer.numel * b)) {
          return absl::InvalidArgumentError(
              absl::StrCat("totals overflow 64 bits at ", LayerLabel(problem, i)));
        }
      }
    }
    if (!std::isfinite(choice.cost)) {
      return absl::InvalidArgumentError(
          absl::StrCat("summed cost of ", MemberNames(problem, *item), " overflows"));
    }
    max.weight_bits = std::max(max.weight_bits, choice.weight_bits);
    max.size_bits = std::max(max.size_bits, choice.size_bits);
    max.bops = std::max(max.bops, choice.bops);
    item->choices.push_back(choice);
  }
  return max;
}

}  // namespace

int64_t ResourceOf(const ItemChoice& choice, Resource resource) {
  switch (resource) {
    case Resource::kWeightBits:
      return choice.weight_bits;
    case Resource::kSizeBits:
      return choice.size_bits;
    case Resource::kBops:
      return choice.bops;
  }
  return 0;
}

absl::StatusOr<std::vector<Item>> BuildItems(const SearchProblem& problem) {
  absl::StatusOr<LayerIndex> index = IndexLayers(problem);
  if (!index.ok()) return index.status();
  absl::StatusOr<std::vector<int>> pin = PinnedBits(problem, *index);
  if (!pin.ok()) return pin.status();
  absl::StatusOr<std::vector<Item>> items = TieGroups(problem, *index);
  if (!items.ok()) return items.status();
  // Every total must fit in 64 bits, even with each item at its largest.
  ItemMaxima total;
  for (Item& item : *items) {
    absl::StatusOr<std::vector<int>> widths = ItemWidths(problem, *pin, &item);
    if (!widths.ok()) return widths.status();
    absl::StatusOr<ItemMaxima> max = AddItemChoices(problem, *widths, &item);
    if (!max.ok()) return max.status();
    if (!AddChecked(total.weight_bits, max->weight_bits) ||
        !AddChecked(total.size_bits, max->size_bits) || !AddChecked(total.bops, max->bops)) {
      return absl::InvalidArgumentError("totals overflow 64 bits");
    }
  }
  return items;
}

Solution Totals(const SearchProblem& problem, const Assignment& bits) {
  Solution s;
  s.bits = bits;
  int64_t numel = 0;
  for (size_t i = 0; i < problem.layers.size(); ++i) {
    const LayerChoices& layer = problem.layers[i];
    for (const BitChoice& c : layer.choices) {
      if (c.bits != bits[i]) continue;
      s.cost += c.cost;
      s.size_bits += c.size_bits;
      s.bops += c.bops;
      s.weight_bits += layer.numel * c.bits;
    }
    numel += layer.numel;
  }
  s.average_bits = numel > 0 ? static_cast<double>(s.weight_bits) / numel : 0.0;
  return s;
}

Assignment Expand(const SearchProblem& problem, const std::vector<Item>& items,
                  const std::vector<int>& choice_per_item) {
  Assignment bits(problem.layers.size(), 0);
  for (size_t k = 0; k < items.size(); ++k) {
    for (int i : items[k].layers) bits[i] = items[k].choices[choice_per_item[k]].bits;
  }
  return bits;
}

}  // namespace compress::engine::search_internal
