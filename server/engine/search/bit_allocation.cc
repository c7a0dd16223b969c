#include "server/engine/search/bit_allocation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/engine/search/items.h"

namespace compress::engine {
namespace search_internal {

// One DP stage (an item): per kept state, the state it extends and the
// item's choice.
struct Stage {
  std::vector<uint32_t> parent;
  std::vector<uint8_t> choice;
};

struct Trace {
  SearchProblem problem;
  std::vector<Item> items;
  std::vector<Stage> stages;  // one per item
};

namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

struct State {
  int64_t resource;
  double cost;
};

struct DpResult {
  std::vector<State> states;  // resource ascending, cost strictly decreasing
  std::vector<Stage> stages;
  bool exact = true;
};

// Keeps the cheapest state of each resource bucket of width w over
// (r_min, r_max], and the state of least resource on its own, so at most
// max_states survive. States keep their true resource: the survivors are
// real partial assignments, only the others are lost.
void Coarsen(int64_t max_states, std::vector<State>& states, Stage& stage) {
  const int64_t r_min = states.front().resource;
  const int64_t span = states.back().resource - r_min;
  const int64_t buckets = max_states - 1;
  const int64_t w = std::max<int64_t>(1, span / buckets + (span % buckets != 0));
  auto bucket = [&](int64_t r) {
    const int64_t d = r - r_min;
    return d / w + (d % w != 0);
  };
  size_t out = 0;
  for (size_t s = 0; s < states.size(); ++s) {
    // Within a bucket cost decreases, so the last state is the cheapest.
    if (s + 1 < states.size() && bucket(states[s + 1].resource) == bucket(states[s].resource)) {
      continue;
    }
    states[out] = states[s];
    stage.parent[out] = stage.parent[s];
    stage.choice[out] = stage.choice[s];
    ++out;
  }
  states.resize(out);
  stage.parent.resize(out);
  stage.choice.resize(out);
}

// Merges the items one by one, keeping the non-dominated (resource, cost)
// states. With a limit, drops states that cannot be completed within it.
DpResult RunDp(const std::vector<Item>& items, Resource resource, std::optional<int64_t> limit,
               int64_t max_states) {
  const size_t n = items.size();
  // rest_min[k]: least resource of items k..n-1.
  std::vector<int64_t> rest_min(n + 1, 0);
  for (size_t k = n; k-- > 0;) {
    int64_t least = kInt64Max;
    for (const ItemChoice& c : items[k].choices) least = std::min(least, ResourceOf(c, resource));
    rest_min[k] = rest_min[k + 1] + least;
  }

  DpResult dp;
  dp.states = {{0, 0.0}};
  std::vector<State> next;
  for (size_t k = 0; k < n; ++k) {
    const std::vector<ItemChoice>& choices = items[k].choices;
    const size_t m = choices.size();
    std::vector<int64_t> add(m);
    for (size_t c = 0; c < m; ++c) add[c] = ResourceOf(choices[c], resource);
    // Each choice shifts the sorted state list; a k-way merge of the m
    // shifted lists by (resource, cost) visits candidates in order, and a
    // candidate survives when it is cheaper than every earlier one.
    const int64_t cap = limit ? *limit - rest_min[k + 1] : kInt64Max;
    std::vector<size_t> head(m, 0);
    std::vector<size_t> end(m, dp.states.size());
    for (size_t c = 0; c < m; ++c) {
      // Candidates beyond the cap cannot be completed within the limit.
      while (end[c] > 0 && dp.states[end[c] - 1].resource > cap - add[c]) --end[c];
    }
    Stage stage;
    next.clear();
    double best = std::numeric_limits<double>::infinity();
    while (true) {
      int pick = -1;
      int64_t pick_r = 0;
      double pick_cost = 0.0;
      for (size_t c = 0; c < m; ++c) {
        if (head[c] == end[c]) continue;
        const State& s = dp.states[head[c]];
        const int64_t r = s.resource + add[c];
        const double cost = s.cost + choices[c].cost;
        if (pick < 0 || r < pick_r || (r == pick_r && cost < pick_cost)) {
          pick = static_cast<int>(c);
          pick_r = r;
          pick_cost = cost;
        }
      }
      if (pick < 0) break;
      if (pick_cost < best) {
        best = pick_cost;
        next.push_back({pick_r, pick_cost});
        stage.parent.push_back(static_cast<uint32_t>(head[pick]));
        stage.choice.push_back(static_cast<uint8_t>(pick));
      }
      ++head[pick];
    }
    if (static_cast<int64_t>(next.size()) > max_states) {
      Coarsen(max_states, next, stage);
      dp.exact = false;
    }
    std::swap(dp.states, next);
    dp.stages.push_back(std::move(stage));
  }
  return dp;
}

// The per-item choices of final state `s`.
std::vector<int> TraceBack(const std::vector<Stage>& stages, size_t s) {
  std::vector<int> choice(stages.size());
  for (size_t k = stages.size(); k-- > 0;) {
    choice[k] = stages[k].choice[s];
    s = stages[k].parent[s];
  }
  return choice;
}

absl::Status ValidateOptions(const SearchOptions& options) {
  if (options.max_states < 2 || options.max_states > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_states must be in 2..2^30, got ", options.max_states));
  }
  return absl::OkStatus();
}

// The assignment of least resource, least cost among those.
std::vector<int> LeastResource(const std::vector<Item>& items, Resource resource) {
  std::vector<int> choice(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    const auto& cs = items[k].choices;
    for (size_t c = 1; c < cs.size(); ++c) {
      const int64_t r = ResourceOf(cs[c], resource), best_r = ResourceOf(cs[choice[k]], resource);
      if (r < best_r || (r == best_r && cs[c].cost < cs[choice[k]].cost)) {
        choice[k] = static_cast<int>(c);
      }
    }
  }
  return choice;
}

int64_t ResourceOfSolution(const Solution& s, Resource resource) {
  switch (resource) {
    case Resource::kWeightBits:
      return s.weight_bits;
    case Resource::kSizeBits:
      return s.size_bits;
    case Resource::kBops:
      return s.bops;
  }
  return 0;
}

}  // namespace
}  // namespace search_internal

using search_internal::BuildItems;
using search_internal::Item;
using search_internal::ItemChoice;
using search_internal::Totals;

const char* ResourceName(Resource resource) {
  switch (resource) {
    case Resource::kWeightBits:
      return "weight_bits";
    case Resource::kSizeBits:
      return "size_bits";
    case Resource::kBops:
      return "bops";
  }
  return "unknown";
}

Budget Budget::AverageBits(double bits) {
  Budget b;
  b.resource = Resource::kWeightBits;
  b.average_bits = bits;
  return b;
}

Budget Budget::SizeBits(int64_t bits) {
  Budget b;
  b.resource = Resource::kSizeBits;
  b.limit = bits;
  return b;
}

Budget Budget::SizeBytes(int64_t bytes) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  return SizeBits(bytes > kMax / 8 ? kMax : bytes * 8);
}

Budget Budget::Bops(int64_t bops) {
  Budget b;
  b.resource = Resource::kBops;
  b.limit = bops;
  return b;
}

absl::StatusOr<int64_t> ResourceLimit(const SearchProblem& problem, const Budget& budget) {
  if (budget.resource != Resource::kWeightBits) {
    if (budget.limit < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "budget: negative ", ResourceName(budget.resource), " limit ", budget.limit));
    }
    return budget.limit;
  }
  if (!std::isfinite(budget.average_bits) || budget.average_bits <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget: average bits must be positive, got ", budget.average_bits));
  }
  int64_t numel = 0;
  for (const LayerChoices& layer : problem.layers) {
    if (layer.numel > 0 && __builtin_add_overflow(numel, layer.numel, &numel)) {
      return absl::InvalidArgumentError("budget: total numel overflows");
    }
  }
  if (numel == 0) {
    return absl::InvalidArgumentError("budget: an average-bits budget needs layers with numel > 0");
  }
  const double limit = budget.average_bits * static_cast<double>(numel) * (1.0 + 1e-12);
  if (limit >= 9.2e18) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(std::floor(limit));
}

absl::Status ValidateProblem(const SearchProblem& problem) { return BuildItems(problem).status(); }

absl::StatusOr<Solution> EvaluateAssignment(const SearchProblem& problem, const Assignment& bits) {
  absl::StatusOr<std::vector<Item>> items = BuildItems(problem);
  if (!items.ok()) return items.status();
  if (bits.size() != problem.layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat("assignment has ", bits.size(), " entries for ",
                                                   problem.layers.size(), " layers"));
  }
  // Every item's members share one of the item's widths: that covers
  // choices, pins and ties at once.
  for (const Item& item : *items) {
    const int b = bits[item.layers[0]];
    for (int i : item.layers) {
      const bool offered = std::any_of(item.choices.begin(), item.choices.end(),
                                       [&](const ItemChoice& c) { return c.bits == bits[i]; });
      if (bits[i] != b || !offered) {
        return absl::InvalidArgumentError(absl::StrCat("assignment: layers[", i, "] (\"",
                                                       problem.layers[i].name, "\") at ", bits[i],
                                                       " bits breaks its choices, pin or ties"));
      }
    }
  }
  return Totals(problem, bits);
}

absl::StatusOr<Solution> SolveExact(const SearchProblem& problem, const Budget& budget,
                                    const SearchOptions& options) {
  if (absl::Status s = search_internal::ValidateOptions(options); !s.ok()) return s;
  absl::StatusOr<std::vector<Item>> items = BuildItems(problem);
  if (!items.ok()) return items.status();
  absl::StatusOr<int64_t> limit = ResourceLimit(problem, budget);
  if (!limit.ok()) return limit.status();

  const std::vector<int> least = search_internal::LeastResource(*items, budget.resource);
  Solution fallback = Totals(problem, search_internal::Expand(problem, *items, least));
  if (search_internal::ResourceOfSolution(fallback, budget.resource) > *limit) {
    fallback.budget_met = false;
    return fallback;
  }
  search_internal::DpResult dp =
      search_internal::RunDp(*items, budget.resource, *limit, options.max_states);
  // Pruning leaves only states within the limit; the last is the cheapest.
  // The least-resource state always survives, so there is one.
  if (dp.states.empty()) return absl::InternalError("bit allocation: no state survived");
  const std::vector<int> choice = search_internal::TraceBack(dp.stages, dp.states.size() - 1);
  Solution s = Totals(problem, search_internal::Expand(problem, *items, choice));
  s.exact = dp.exact;
  return s;
}

absl::StatusOr<Solution> BruteForce(const SearchProblem& problem, const Budget& budget) {
  if (absl::Status s = ValidateProblem(problem); !s.ok()) return s;
  absl::StatusOr<int64_t> limit = ResourceLimit(problem, budget);
  if (!limit.ok()) return limit.status();
  const size_t n = problem.layers.size();
  int64_t count = 1;
  for (const LayerChoices& layer : problem.layers) {
    count *= static_cast<int64_t>(layer.choices.size());
    if (count > (int64_t{1} << 22)) {
      return absl::InvalidArgumentError("brute force: more than 2^22 assignments");
    }
  }
  // Deliberately independent of BuildItems' merging: every raw assignment
  // is checked against the pins and ties as written.
  std::vector<int> pin(n, 0);
  std::vector<std::vector<int>> ties;
  for (size_t i = 0; i < n; ++i) {
    auto it = problem.pins.find(problem.layers[i].name);
    if (it != problem.pins.end()) pin[i] = it->second;
  }
  for (const auto& group : problem.ties) {
    std::vector<int> members;
    for (const std::string& name : group) {
      for (size_t i = 0; i < n; ++i) {
        if (problem.layers[i].name == name) members.push_back(static_cast<int>(i));
      }
    }
    ties.push_back(members);
  }

  std::vector<size_t> pick(n, 0);
  bool found = false, feasible = false;
  int64_t best_r = 0;
  double best_cost = 0.0;
  std::vector<size_t> best;
  for (int64_t a = 0; a < count; ++a) {
    bool ok = true;
    for (size_t i = 0; i < n && ok; ++i) {
      ok = pin[i] == 0 || problem.layers[i].choices[pick[i]].bits == pin[i];
    }
    for (const auto& members : ties) {
      for (int i : members) {
        ok = ok && problem.layers[i].choices[pick[i]].bits ==
                       problem.layers[members[0]].choices[pick[members[0]]].bits;
      }
    }
    if (ok) {
      int64_t r = 0;
      double cost = 0.0;
      for (size_t i = 0; i < n; ++i) {
        const BitChoice& c = problem.layers[i].choices[pick[i]];
        cost += c.cost;
        r += budget.resource == Resource::kWeightBits ? problem.layers[i].numel * c.bits
             : budget.resource == Resource::kSizeBits ? c.size_bits
                                                      : c.bops;
      }
      const bool fits = r <= *limit;
      bool better;
      if (!found || fits != feasible) {
        better = !found || fits;
      } else if (fits) {
        better = cost < best_cost || (cost == best_cost && r < best_r);
      } else {
        better = r < best_r || (r == best_r && cost < best_cost);
      }
      if (better) {
        found = true;
        feasible = fits;
        best_r = r;
        best_cost = cost;
        best = pick;
      }
    }
    for (size_t i = 0; i < n; ++i) {  // odometer
      if (++pick[i] < problem.layers[i].choices.size()) break;
      pick[i] = 0;
    }
  }
  // ValidateProblem guarantees some assignment satisfies pins and ties.
  Assignment bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = problem.layers[i].choices[best[i]].bits;
  Solution s = Totals(problem, bits);
  s.budget_met = feasible;
  return s;
}

Solution Frontier::SolutionAt(size_t i) const {
  const std::vector<int> choice = search_internal::TraceBack(trace_->stages, i);
  Solution s =
      Totals(trace_->problem, search_internal::Expand(trace_->problem, trace_->items, choice));
  s.exact = exact_;
  return s;
}

std::optional<size_t> Frontier::PickAtBudget(int64_t limit) const {
  auto it = std::upper_bound(points_.begin(), points_.end(), limit,
                             [](int64_t l, const FrontierPoint& p) { return l < p.resource; });
  if (it == points_.begin()) return std::nullopt;
  return static_cast<size_t>(it - points_.begin()) - 1;
}

absl::StatusOr<Frontier> ParetoFrontier(const SearchProblem& problem, Resource resource,
                                        const SearchOptions& options) {
  if (absl::Status s = search_internal::ValidateOptions(options); !s.ok()) return s;
  absl::StatusOr<std::vector<Item>> items = BuildItems(problem);
  if (!items.ok()) return items.status();
  search_internal::DpResult dp =
      search_internal::RunDp(*items, resource, std::nullopt, options.max_states);
  auto trace = std::make_shared<search_internal::Trace>();
  trace->problem = problem;
  trace->items = *std::move(items);
  trace->stages = std::move(dp.stages);
  Frontier f;
  f.resource_ = resource;
  f.exact_ = dp.exact;
  f.points_.reserve(dp.states.size());
  for (const auto& s : dp.states) f.points_.push_back({s.resource, s.cost});
  f.trace_ = std::move(trace);
  return f;
}

absl::StatusOr<Solution> UniformAssignment(const SearchProblem& problem, int bits) {
  absl::StatusOr<std::vector<Item>> items = BuildItems(problem);
  if (!items.ok()) return items.status();
  std::vector<int> choice(items->size());
  for (size_t k = 0; k < items->size(); ++k) {
    const auto& cs = (*items)[k].choices;  // bits ascending
    auto it = std::lower_bound(cs.begin(), cs.end(), bits,
                               [](const ItemChoice& c, int b) { return c.bits < b; });
    choice[k] =
        it == cs.end() ? static_cast<int>(cs.size()) - 1 : static_cast<int>(it - cs.begin());
  }
  return Totals(problem, search_internal::Expand(problem, *items, choice));
}

absl::StatusOr<Solution> UniformForBudget(const SearchProblem& problem, const Budget& budget) {
  absl::StatusOr<int64_t> limit = ResourceLimit(problem, budget);
  if (!limit.ok()) return limit.status();
  std::vector<int> widths;
  for (const LayerChoices& layer : problem.layers) {
    for (const BitChoice& c : layer.choices) widths.push_back(c.bits);
  }
  std::sort(widths.begin(), widths.end(), std::greater<int>());
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  if (widths.empty()) return absl::InvalidArgumentError("layers is empty");
  for (int b : widths) {
    absl::StatusOr<Solution> s = UniformAssignment(problem, b);
    if (!s.ok()) return s.status();
    if (search_internal::ResourceOfSolution(*s, budget.resource) <= *limit) return s;
  }
  absl::StatusOr<Solution> s = UniformAssignment(problem, widths.back());
  if (s.ok()) s->budget_met = false;
  return s;
}

}  // namespace compress::engine
