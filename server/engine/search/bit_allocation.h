// Mixed-precision bit allocation (HAWQ-V2/V3): choose one bit-width per layer
// so that the summed sensitivity is smallest under a resource budget.
//
// Torch-free: plain C++17 and Abseil, so the service, the CLI and benchmarks
// can use it without LibTorch. The caller measures each layer's candidates
// (sensitivity Ω_i(b) = Tr(H_ii)/n_i · ‖Q_b(W_i) − W_i‖², storage, BOPs) and
// this library only searches.
//
// The problem is a multiple-choice knapsack: every layer (or group of tied
// layers) takes exactly one choice; Σ cost is minimised subject to
// Σ resource ≤ limit. SolveExact and ParetoFrontier solve it by dynamic
// programming over non-dominated (resource, cost) states, which is exact as
// long as the number of states stays under SearchOptions::max_states.
//
// Example:
//   SearchProblem p;
//   p.layers = {{"conv1", 864, {{4, 0.8, 3456 + 1024, 0}, {8, 0.1, 6912 + 1024, 0}}},
//               {"fc", 5120, {{4, 0.3, 20480 + 320, 0}, {8, 0.02, 40960 + 320, 0}}}};
//   p.pins = {{"conv1", 8}};
//   absl::StatusOr<Solution> s = SolveExact(p, Budget::AverageBits(5.0));
//   // s->bits == {8, 4}, s->budget_met == true.
//
// All functions are pure (no shared state) and safe to call concurrently.
#ifndef COMPRESS_ENGINE_SEARCH_BIT_ALLOCATION_H_
#define COMPRESS_ENGINE_SEARCH_BIT_ALLOCATION_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace compress::engine {

// One candidate bit-width of one layer.
struct BitChoice {
  // 2..8: quantized weights; 16 or 32: the layer stays in float.
  int bits = 8;
  // Sensitivity Ω_i(bits), lower is better (0 for float); must be finite.
  double cost = 0.0;
  // Storage of the layer at this choice, scales and zero points included, in
  // bits; >= 0.
  int64_t size_bits = 0;
  // Bit-operations of the layer at this choice (MACs × weight bits ×
  // activation bits); >= 0.
  int64_t bops = 0;
};

struct LayerChoices {
  // Unique within the problem (module path; "" is the root).
  std::string name;
  // Weights in the layer; an average-bits budget counts numel · bits.
  int64_t numel = 0;
  // At least one; bit-widths distinct.
  std::vector<BitChoice> choices;
};

struct SearchProblem {
  std::vector<LayerChoices> layers;
  // Layer name -> the only bit-width that layer may take (one of its
  // choices).
  std::map<std::string, int> pins;
  // Groups of layer names that must take the same bit-width (e.g. layers
  // that share an input quantizer). Groups that share a layer are merged;
  // a merged group may take only the bit-widths every member offers.
  std::vector<std::vector<std::string>> ties;
};

// What a budget limits, summed over layers.
enum class Resource {
  kWeightBits,  // numel · bits (an average-bits budget)
  kSizeBits,    // BitChoice::size_bits
  kBops,        // BitChoice::bops
};

// "weight_bits", "size_bits", "bops".
const char* ResourceName(Resource resource);

// An inclusive upper bound on one resource. Build it with the factories.
struct Budget {
  // Σ numel_i · b_i ≤ ⌊bits · Σ numel_i⌋ (float layers count 16 or 32).
  static Budget AverageBits(double bits);
  static Budget SizeBits(int64_t bits);
  static Budget SizeBytes(int64_t bytes);  // bytes · 8 bits
  static Budget Bops(int64_t bops);

  Resource resource = Resource::kSizeBits;
  // kWeightBits only: average bits per weight, > 0.
  double average_bits = 0.0;
  // kSizeBits and kBops: the bound in bits or bit-operations.
  int64_t limit = 0;
};

// The bound on Σ resource that `budget` sets for `problem`: `limit`, or for
// an average-bits budget ⌊average_bits · Σ numel_i⌋ (computed with a
// relative slack of 1e-12 so that e.g. 4.1 · 10 gives 41).
// INVALID_ARGUMENT for a non-positive or non-finite average, an average
// budget over zero weights, or a negative limit.
absl::StatusOr<int64_t> ResourceLimit(const SearchProblem& problem, const Budget& budget);

// Bits per layer, in the order of SearchProblem::layers.
using Assignment = std::vector<int>;

// An assignment and its totals.
struct Solution {
  Assignment bits;
  double cost = 0.0;          // Σ cost
  int64_t size_bits = 0;      // Σ size_bits
  int64_t bops = 0;           // Σ bops
  int64_t weight_bits = 0;    // Σ numel · bits
  double average_bits = 0.0;  // weight_bits / Σ numel (0 without weights)
  // false when SearchOptions::max_states forced the search to drop states:
  // the assignment is feasible but may not be optimal.
  bool exact = true;
  // false when no assignment fits the budget; `bits` is then the assignment
  // of least resource (least cost among those). Always true without a
  // budget.
  bool budget_met = true;
};

struct SearchOptions {
  // Non-dominated partial assignments kept after each layer; default
  // 200000, at least 2. Beyond it the resource axis is cut into
  // max_states − 1 equal buckets and only the cheapest state of each
  // bucket survives (plus the state of least resource, so a feasible
  // budget always stays feasible), and results report exact = false.
  // Memory: about 5 bytes per state per layer for the back-pointers.
  int64_t max_states = 200000;
};

// Checks the problem (names unique; bits in 2..8, 16 or 32 and distinct per
// layer; finite costs; non-negative sizes, BOPs and numel; pins and ties
// naming known layers; pins among the layer's choices; every tie group
// left with a common bit-width and at most one pinned value).
// INVALID_ARGUMENT naming the layer otherwise.
absl::Status ValidateProblem(const SearchProblem& problem);

// The totals of `bits` (one entry per layer). INVALID_ARGUMENT when a layer
// is given a bit-width it does not offer, or pins or ties are broken.
// exact and budget_met are true.
absl::StatusOr<Solution> EvaluateAssignment(const SearchProblem& problem, const Assignment& bits);

// The assignment of least Σ cost with Σ resource within `budget`, by
// dynamic programming (exact unless max_states is exceeded; see Solution).
// Ties in cost are broken towards less resource. An unreachable budget is
// not an error: budget_met = false and the least-resource assignment.
absl::StatusOr<Solution> SolveExact(const SearchProblem& problem, const Budget& budget,
                                    const SearchOptions& options = {});

// Every enumerated assignment, checked one by one; the reference for tests.
// Same answer as SolveExact (cost ties may pick another assignment).
// INVALID_ARGUMENT beyond 2^22 assignments (the product of the layers'
// choice counts).
absl::StatusOr<Solution> BruteForce(const SearchProblem& problem, const Budget& budget);

// One Pareto-optimal trade-off.
struct FrontierPoint {
  int64_t resource = 0;  // Σ resource
  double cost = 0.0;     // Σ cost
};

namespace search_internal {
struct Trace;
}  // namespace search_internal

// The Pareto frontier of (Σ resource, Σ cost) for one resource: when
// exact(), no assignment has both less-or-equal resource and less-or-equal
// cost than a point except one with the same two sums, and every such
// trade-off is a point. Built by ParetoFrontier;
// immutable, so copies (which share the back-pointers) may be used from
// several threads.
class Frontier {
 public:
  Resource resource() const { return resource_; }
  // false when max_states forced states to be dropped: every point is still
  // achievable, but points may be missing (and so some dominated).
  bool exact() const { return exact_; }
  // Sorted by resource ascending; cost strictly decreasing. Never empty.
  const std::vector<FrontierPoint>& points() const { return points_; }

  // The assignment and totals of points()[i] (i < points().size());
  // budget_met is true and exact is exact().
  Solution SolutionAt(size_t i) const;
  // The index of the cheapest point with resource ≤ limit (the last such
  // point); nullopt when even the first point exceeds it. For an exact
  // frontier its cost equals SolveExact's at the same limit.
  std::optional<size_t> PickAtBudget(int64_t limit) const;

 private:
  friend absl::StatusOr<Frontier> ParetoFrontier(const SearchProblem&, Resource,
                                                 const SearchOptions&);
  Frontier() = default;

  Resource resource_ = Resource::kSizeBits;
  bool exact_ = true;
  std::vector<FrontierPoint> points_;
  // The problem, its DP stages and their back-pointers.
  std::shared_ptr<const search_internal::Trace> trace_;
};

// The whole frontier for `resource`, by the same dynamic programming as
// SolveExact without a budget.
absl::StatusOr<Frontier> ParetoFrontier(const SearchProblem& problem, Resource resource,
                                        const SearchOptions& options = {});

// Every layer at `bits`, except pinned layers (their pin) and layers or tie
// groups that do not offer `bits` (the smallest offered width above it, else
// the largest offered). A baseline for reports; budget_met is true.
absl::StatusOr<Solution> UniformAssignment(const SearchProblem& problem, int bits);

// UniformAssignment at the highest bit-width, among all the layers'
// candidates, that fits `budget`; if none fits, the lowest one with
// budget_met = false. (A fractional average like 3.5 has no uniform
// answer.)
absl::StatusOr<Solution> UniformForBudget(const SearchProblem& problem, const Budget& budget);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_SEARCH_BIT_ALLOCATION_H_
