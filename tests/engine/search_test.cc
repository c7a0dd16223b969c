// Bit-allocation search, checked against brute force and against totals
// recomputed here from the problem data.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/search/bisection.h"
#include "server/engine/search/bit_allocation.h"

namespace compress::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr int kWidths[] = {2, 3, 4, 5, 6, 7, 8, 16, 32};

// Totals of `bits`, recomputed from the problem (no library code).
struct Recomputed {
  double cost = 0.0;
  int64_t size_bits = 0, bops = 0, weight_bits = 0, numel = 0;
  int64_t Of(Resource r) const {
    return r == Resource::kWeightBits ? weight_bits : r == Resource::kSizeBits ? size_bits : bops;
  }
};

Recomputed Recompute(const SearchProblem& p, const Assignment& bits) {
  Recomputed t;
  EXPECT_EQ(bits.size(), p.layers.size());
  for (size_t i = 0; i < p.layers.size() && i < bits.size(); ++i) {
    int found = 0;
    for (const BitChoice& c : p.layers[i].choices) {
      if (c.bits != bits[i]) continue;
      ++found;
      t.cost += c.cost;
      t.size_bits += c.size_bits;
      t.bops += c.bops;
      t.weight_bits += p.layers[i].numel * c.bits;
    }
    EXPECT_EQ(found, 1) << "layer " << i << " does not offer " << bits[i] << " bits";
    t.numel += p.layers[i].numel;
  }
  return t;
}

int IndexOf(const SearchProblem& p, const std::string& name) {
  for (size_t i = 0; i < p.layers.size(); ++i) {
    if (p.layers[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

// Pins and ties as written hold in `bits`.
void ExpectConstraints(const SearchProblem& p, const Assignment& bits) {
  for (const auto& [name, b] : p.pins) EXPECT_EQ(bits[IndexOf(p, name)], b) << name;
  for (const auto& group : p.ties) {
    for (const std::string& name : group) {
      EXPECT_EQ(bits[IndexOf(p, name)], bits[IndexOf(p, group[0])]) << name;
    }
  }
}

void ExpectNear(double a, double b) {
  EXPECT_LE(std::abs(a - b), 1e-12 * std::max({1.0, std::abs(a), std::abs(b)})) << a << " vs " << b;
}

Budget MakeBudget(Resource r, int64_t limit) {
  return r == Resource::kBops ? Budget::Bops(limit) : Budget::SizeBits(limit);
}

// With `coarse`, small integer sizes and costs: many equal resources and
// exactly equal costs, to exercise tie-breaking.
SearchProblem RandomProblem(std::mt19937_64& rng, int max_layers, int max_choices,
                            bool coarse = false) {
  SearchProblem p;
  const int layers = std::uniform_int_distribution<int>(1, max_layers)(rng);
  for (int i = 0; i < layers; ++i) {
    LayerChoices layer;
    layer.name = "layer" + std::to_string(i);
    layer.numel = std::uniform_int_distribution<int64_t>(1, coarse ? 3 : 5000)(rng);
    std::vector<int> widths(std::begin(kWidths), std::end(kWidths));
    std::shuffle(widths.begin(), widths.end(), rng);
    const int m = std::uniform_int_distribution<int>(2, max_choices)(rng);
    for (int c = 0; c < m; ++c) {
      BitChoice choice;
      choice.bits = widths[c];
      // Unrelated to the bits on purpose: the solver must not assume that
      // more bits cost more or are more accurate.
      choice.cost = coarse ? std::uniform_int_distribution<int>(0, 4)(rng)
                           : std::uniform_real_distribution<double>(0.0, 10.0)(rng);
      choice.size_bits = std::uniform_int_distribution<int64_t>(0, coarse ? 6 : 100000)(rng);
      choice.bops = std::uniform_int_distribution<int64_t>(0, coarse ? 6 : 1000000)(rng);
      layer.choices.push_back(choice);
    }
    p.layers.push_back(layer);
  }
  return p;
}

// Random pins and (possibly overlapping) ties over a problem whose layers
// draw their widths from a small pool, so groups often share a width.
SearchProblem RandomConstrainedProblem(std::mt19937_64& rng) {
  SearchProblem p = RandomProblem(rng, 8, 5, /*coarse=*/rng() % 2 == 1);
  for (LayerChoices& layer : p.layers) {
    std::vector<int> pool = {2, 4, 8, 32};
    std::shuffle(pool.begin(), pool.end(), rng);
    const size_t m = std::min<size_t>(layer.choices.size(), 4);
    layer.choices.resize(std::max<size_t>(m, 2));
    for (size_t c = 0; c < layer.choices.size(); ++c) layer.choices[c].bits = pool[c];
  }
  const int n = static_cast<int>(p.layers.size());
  std::uniform_int_distribution<int> layer(0, n - 1);
  const int ties = std::uniform_int_distribution<int>(0, 2)(rng);
  for (int t = 0; t < ties; ++t) {
    std::vector<std::string> group;
    const int size = std::uniform_int_distribution<int>(1, 3)(rng);
    for (int j = 0; j < size; ++j) group.push_back(p.layers[layer(rng)].name);
    p.ties.push_back(group);
  }
  if (std::uniform_int_distribution<int>(0, 1)(rng) == 1) {
    const LayerChoices& l = p.layers[layer(rng)];
    p.pins[l.name] =
        l.choices[std::uniform_int_distribution<size_t>(0, l.choices.size() - 1)(rng)].bits;
  }
  return p;
}

// Least and largest Σ resource over all layers (ignoring pins and ties).
std::pair<int64_t, int64_t> ResourceRange(const SearchProblem& p, Resource r) {
  int64_t lo = 0, hi = 0;
  for (const LayerChoices& layer : p.layers) {
    int64_t l = INT64_MAX, h = 0;
    for (const BitChoice& c : layer.choices) {
      const int64_t v = r == Resource::kWeightBits ? layer.numel * c.bits
                        : r == Resource::kSizeBits ? c.size_bits
                                                   : c.bops;
      l = std::min(l, v);
      h = std::max(h, v);
    }
    lo += l;
    hi += h;
  }
  return {lo, hi};
}

// Budgets from just below the least resource to the largest.
std::vector<Budget> SpreadBudgets(const SearchProblem& p, Resource r, std::mt19937_64& rng) {
  const auto [lo, hi] = ResourceRange(p, r);
  int64_t numel = 0;
  for (const LayerChoices& layer : p.layers) numel += layer.numel;
  std::vector<Budget> budgets;
  for (double f : {-0.05, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0}) {
    const double jitter = std::uniform_real_distribution<double>(0.0, 0.05)(rng);
    const int64_t limit = std::max<int64_t>(
        0, lo + static_cast<int64_t>(std::floor((f + (f > 0 && f < 1 ? jitter : 0)) * (hi - lo))) -
               (f < 0 ? 1 : 0));
    if (r == Resource::kWeightBits) {
      // Average bits in quarters, so the limit is an exact product.
      budgets.push_back(Budget::AverageBits(std::max(0.25, std::floor(4.0 * limit / numel) / 4)));
    } else {
      budgets.push_back(MakeBudget(r, limit));
    }
  }
  return budgets;
}

// Limit of a budget computed here: average budgets use quarters.
int64_t LimitOf(const SearchProblem& p, const Budget& b) {
  if (b.resource != Resource::kWeightBits) return b.limit;
  int64_t numel = 0;
  for (const LayerChoices& layer : p.layers) numel += layer.numel;
  const int64_t quarters = static_cast<int64_t>(std::llround(b.average_bits * 4));
  EXPECT_DOUBLE_EQ(quarters / 4.0, b.average_bits);
  return quarters * numel / 4;
}

// SolveExact against BruteForce on one problem and budget.
void ExpectSameAsBruteForce(const SearchProblem& p, const Budget& budget) {
  absl::StatusOr<Solution> dp = SolveExact(p, budget);
  absl::StatusOr<Solution> brute = BruteForce(p, budget);
  ASSERT_TRUE(dp.ok()) << dp.status();
  ASSERT_TRUE(brute.ok()) << brute.status();
  EXPECT_TRUE(dp->exact);
  EXPECT_EQ(dp->budget_met, brute->budget_met);
  const Recomputed mine = Recompute(p, dp->bits), ref = Recompute(p, brute->bits);
  ExpectConstraints(p, dp->bits);
  ExpectNear(dp->cost, mine.cost);
  EXPECT_EQ(dp->size_bits, mine.size_bits);
  EXPECT_EQ(dp->bops, mine.bops);
  EXPECT_EQ(dp->weight_bits, mine.weight_bits);
  EXPECT_DOUBLE_EQ(dp->average_bits, static_cast<double>(mine.weight_bits) / mine.numel);
  const int64_t limit = LimitOf(p, budget);
  if (brute->budget_met) {
    EXPECT_LE(mine.Of(budget.resource), limit);
    ExpectNear(mine.cost, ref.cost);
  } else {
    EXPECT_GT(ref.Of(budget.resource), limit);
    EXPECT_EQ(mine.Of(budget.resource), ref.Of(budget.resource));
    ExpectNear(mine.cost, ref.cost);
  }
}

TEST(SearchTest, HeaderExample) {
  SearchProblem p;
  p.layers = {{"conv1", 864, {{4, 0.8, 3456 + 1024, 0}, {8, 0.1, 6912 + 1024, 0}}},
              {"fc", 5120, {{4, 0.3, 20480 + 320, 0}, {8, 0.02, 40960 + 320, 0}}}};
  p.pins = {{"conv1", 8}};
  absl::StatusOr<Solution> s = SolveExact(p, Budget::AverageBits(5.0));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->bits, (Assignment{8, 4}));
  EXPECT_TRUE(s->budget_met);
  EXPECT_DOUBLE_EQ(s->cost, 0.4);
  EXPECT_EQ(s->size_bits, 6912 + 1024 + 20480 + 320);
  EXPECT_EQ(s->weight_bits, 864 * 8 + 5120 * 4);
  EXPECT_DOUBLE_EQ(s->average_bits, (864.0 * 8 + 5120 * 4) / (864 + 5120));
}

TEST(SearchTest, ResourceLimitOfEachBudget) {
  SearchProblem p;
  p.layers = {{"a", 7, {{4, 0, 0, 0}}}, {"b", 3, {{4, 0, 0, 0}}}};
  EXPECT_EQ(*ResourceLimit(p, Budget::AverageBits(4.1)), 41);  // 4.1·10 is 40.99…
  EXPECT_EQ(*ResourceLimit(p, Budget::AverageBits(3.55)), 35);
  EXPECT_EQ(*ResourceLimit(p, Budget::SizeBytes(5)), 40);
  EXPECT_EQ(*ResourceLimit(p, Budget::Bops(9)), 9);
  EXPECT_EQ(ResourceLimit(p, Budget::AverageBits(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResourceLimit(p, Budget::SizeBits(-1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SearchTest, SolveExactMatchesBruteForceOnRandomInstances) {
  std::mt19937_64 rng(20240601);
  for (int instance = 0; instance < 300; ++instance) {
    const SearchProblem p = RandomProblem(rng, 8, 5, /*coarse=*/instance % 2 == 1);
    for (Resource r : {Resource::kWeightBits, Resource::kSizeBits, Resource::kBops}) {
      for (const Budget& budget : SpreadBudgets(p, r, rng)) {
        SCOPED_TRACE(::testing::Message() << "instance " << instance << " resource "
                                          << ResourceName(r) << " limit " << LimitOf(p, budget));
        ExpectSameAsBruteForce(p, budget);
        if (HasFatalFailure() || HasNonfatalFailure()) return;
      }
    }
  }
}

TEST(SearchTest, SolveExactMatchesBruteForceWithPinsAndTies) {
  std::mt19937_64 rng(7);
  int solved = 0, rejected = 0;
  for (int instance = 0; instance < 300; ++instance) {
    const SearchProblem p = RandomConstrainedProblem(rng);
    const absl::Status valid = ValidateProblem(p);
    if (!valid.ok()) {
      // Both must refuse, for the same reason.
      EXPECT_EQ(valid.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(BruteForce(p, Budget::SizeBits(0)).status(), valid);
      ++rejected;
      continue;
    }
    for (Resource r : {Resource::kWeightBits, Resource::kSizeBits, Resource::kBops}) {
      for (const Budget& budget : SpreadBudgets(p, r, rng)) {
        SCOPED_TRACE(::testing::Message() << "instance " << instance << " resource "
                                          << ResourceName(r) << " limit " << LimitOf(p, budget));
        ExpectSameAsBruteForce(p, budget);
        if (HasFatalFailure() || HasNonfatalFailure()) return;
      }
    }
    ++solved;
  }
  EXPECT_GT(solved, 200);
  EXPECT_GT(rejected, 0);
}

// All (resource, cost) of every assignment, reduced here to the frontier.
std::vector<FrontierPoint> EnumeratedFrontier(const SearchProblem& p, Resource r) {
  std::vector<FrontierPoint> all;
  std::vector<size_t> pick(p.layers.size(), 0);
  while (true) {
    Assignment bits;
    for (size_t i = 0; i < p.layers.size(); ++i) bits.push_back(p.layers[i].choices[pick[i]].bits);
    const Recomputed t = Recompute(p, bits);
    all.push_back({t.Of(r), t.cost});
    size_t i = 0;
    for (; i < p.layers.size(); ++i) {
      if (++pick[i] < p.layers[i].choices.size()) break;
      pick[i] = 0;
    }
    if (i == p.layers.size()) break;
  }
  std::sort(all.begin(), all.end(), [](const FrontierPoint& a, const FrontierPoint& b) {
    return a.resource != b.resource ? a.resource < b.resource : a.cost < b.cost;
  });
  std::vector<FrontierPoint> frontier;
  for (const FrontierPoint& q : all) {
    if (frontier.empty() || q.cost < frontier.back().cost) frontier.push_back(q);
  }
  return frontier;
}

TEST(SearchTest, ParetoFrontierIsAchievableCompleteAndAgreesWithSolvers) {
  std::mt19937_64 rng(99);
  for (int instance = 0; instance < 100; ++instance) {
    const SearchProblem p = RandomProblem(rng, 7, 4, /*coarse=*/instance % 2 == 1);
    for (Resource r : {Resource::kWeightBits, Resource::kSizeBits, Resource::kBops}) {
      SCOPED_TRACE(::testing::Message() << "instance " << instance << " " << ResourceName(r));
      absl::StatusOr<Frontier> f = ParetoFrontier(p, r);
      ASSERT_TRUE(f.ok()) << f.status();
      EXPECT_TRUE(f->exact());
      EXPECT_EQ(f->resource(), r);
      const std::vector<FrontierPoint> expected = EnumeratedFrontier(p, r);
      ASSERT_EQ(f->points().size(), expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        const FrontierPoint& q = f->points()[i];
        EXPECT_EQ(q.resource, expected[i].resource);
        ExpectNear(q.cost, expected[i].cost);
        if (i > 0) {
          EXPECT_GT(q.resource, f->points()[i - 1].resource);
          EXPECT_LT(q.cost, f->points()[i - 1].cost);
        }
        const Solution s = f->SolutionAt(i);
        const Recomputed t = Recompute(p, s.bits);
        EXPECT_EQ(t.Of(r), q.resource);
        ExpectNear(t.cost, q.cost);
        EXPECT_EQ(s.size_bits, t.size_bits);
      }
      // Picks at random budgets equal brute force and SolveExact.
      const auto [lo, hi] = ResourceRange(p, r);
      for (int j = 0; j < 5; ++j) {
        Budget budget = MakeBudget(r, std::uniform_int_distribution<int64_t>(lo, hi)(rng));
        if (r == Resource::kWeightBits) {
          int64_t numel = 0;
          for (const LayerChoices& layer : p.layers) numel += layer.numel;
          budget = Budget::AverageBits(
              std::uniform_int_distribution<int64_t>(4 * lo / numel, 4 * hi / numel + 1)(rng) /
              4.0);
        }
        const int64_t limit = LimitOf(p, budget);
        std::optional<size_t> pick = f->PickAtBudget(limit);
        absl::StatusOr<Solution> brute = BruteForce(p, budget);
        absl::StatusOr<Solution> exact = SolveExact(p, budget);
        ASSERT_TRUE(brute.ok() && exact.ok());
        ASSERT_EQ(pick.has_value(), brute->budget_met);
        if (!pick) continue;
        ExpectNear(f->points()[*pick].cost, Recompute(p, brute->bits).cost);
        ExpectNear(f->points()[*pick].cost, exact->cost);
      }
      EXPECT_FALSE(f->PickAtBudget(lo - 1).has_value());
      EXPECT_EQ(*f->PickAtBudget(hi), f->points().size() - 1);
    }
  }
}

TEST(SearchTest, TinyMaxStatesCoarsensButStaysFeasible) {
  std::mt19937_64 rng(5);
  SearchProblem p;
  for (int i = 0; i < 12; ++i) {
    LayerChoices layer{"l" + std::to_string(i), 1000, {}};
    for (int b : {2, 4, 8}) {
      layer.choices.push_back({b, std::uniform_real_distribution<double>(0, 1)(rng) / b,
                               1000 * b + std::uniform_int_distribution<int64_t>(0, 500)(rng), 0});
    }
    p.layers.push_back(layer);
  }
  SearchOptions options;
  options.max_states = 4;
  const auto [lo, hi] = ResourceRange(p, Resource::kSizeBits);
  for (int64_t limit : {lo, lo + (hi - lo) / 3, lo + (hi - lo) / 2, hi}) {
    absl::StatusOr<Solution> s = SolveExact(p, Budget::SizeBits(limit), options);
    absl::StatusOr<Solution> brute = BruteForce(p, Budget::SizeBits(limit));
    ASSERT_TRUE(s.ok() && brute.ok());
    EXPECT_TRUE(s->budget_met);
    const Recomputed t = Recompute(p, s->bits);
    EXPECT_LE(t.size_bits, limit);
    EXPECT_GE(t.cost, Recompute(p, brute->bits).cost - 1e-12);
    if (limit > lo) {
      EXPECT_FALSE(s->exact) << limit;
    }
  }
  absl::StatusOr<Frontier> f = ParetoFrontier(p, Resource::kSizeBits, options);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->exact());
  EXPECT_LE(f->points().size(), 4u);
  EXPECT_EQ(f->points().front().resource, lo);  // the least-resource state survives
  for (size_t i = 0; i < f->points().size(); ++i) {
    const Recomputed t = Recompute(p, f->SolutionAt(i).bits);
    EXPECT_EQ(t.size_bits, f->points()[i].resource);
    ExpectNear(t.cost, f->points()[i].cost);
  }
  options.max_states = 1;
  EXPECT_EQ(SolveExact(p, Budget::SizeBits(hi), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SearchTest, InfeasibleBudgetReturnsLeastResourceAssignment) {
  SearchProblem p;
  p.layers = {{"a", 100, {{2, 5.0, 300, 10}, {4, 1.0, 500, 20}, {8, 0.1, 900, 40}}},
              {"b", 50, {{4, 2.0, 250, 5}, {8, 0.5, 450, 9}, {32, 0.0, 1650, 60}}}};
  absl::StatusOr<Solution> s = SolveExact(p, Budget::SizeBits(549));
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->budget_met);
  EXPECT_EQ(s->bits, (Assignment{2, 4}));
  EXPECT_EQ(s->size_bits, 550);
  EXPECT_DOUBLE_EQ(s->cost, 7.0);
  // At exactly the least resource the budget is met.
  s = SolveExact(p, Budget::SizeBits(550));
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->budget_met);
  // Average 2 bits is below the least 100·2 + 50·4 = 400 weight bits (2.67).
  s = SolveExact(p, Budget::AverageBits(2.0));
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->budget_met);
  EXPECT_EQ(s->weight_bits, 400);
}

SearchProblem ThreeLayers() {
  SearchProblem p;
  p.layers = {{"a", 10, {{2, 9, 20, 0}, {4, 3, 40, 0}, {8, 1, 80, 0}}},
              {"b", 10, {{4, 8, 40, 0}, {8, 2, 80, 0}}},
              {"c", 10, {{2, 7, 20, 0}, {3, 5, 30, 0}}}};
  return p;
}

TEST(SearchTest, TiesWithoutCommonBitsNameTheLayers) {
  SearchProblem p = ThreeLayers();
  p.ties = {{"a", "b"}, {"b", "c"}};  // merged transitively: a, b, c share nothing
  absl::Status s = ValidateProblem(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("\"a\""), HasSubstr("\"b\""), HasSubstr("\"c\"")));
  EXPECT_EQ(SolveExact(p, Budget::SizeBits(1000)).status(), s);
  EXPECT_EQ(ParetoFrontier(p, Resource::kSizeBits).status(), s);

  p.ties = {{"a", "x"}};
  EXPECT_THAT(ValidateProblem(p).message(), HasSubstr("unknown layer \"x\""));
}

TEST(SearchTest, TiesMergeIntoOneWidth) {
  SearchProblem p = ThreeLayers();
  p.ties = {{"a", "b"}};  // common: 4 (cost 11, 80 bits) or 8 (cost 3, 160 bits)
  absl::StatusOr<Solution> s = SolveExact(p, Budget::SizeBits(120));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->bits, (Assignment{4, 4, 3}));
  EXPECT_DOUBLE_EQ(s->cost, 16);
  s = SolveExact(p, Budget::SizeBits(180));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->bits, (Assignment{8, 8, 2}));
  EXPECT_DOUBLE_EQ(s->cost, 10);
}

TEST(SearchTest, PinsAreRespected) {
  SearchProblem p = ThreeLayers();
  p.pins = {{"a", 2}};
  // Without the pin the cheapest is a=8, b=8, c=3 at 190 bits.
  absl::StatusOr<Solution> s = SolveExact(p, Budget::SizeBits(1000));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->bits, (Assignment{2, 8, 3}));
  p.pins = {{"a", 3}};
  EXPECT_THAT(ValidateProblem(p).message(), HasSubstr("does not offer 3 bits"));
  p.pins = {{"a", 2}, {"b", 8}};
  p.ties = {{"a", "b"}};
  EXPECT_THAT(ValidateProblem(p).message(), HasSubstr("pinned to different widths"));
  p.pins = {{"a", 2}};
  EXPECT_THAT(ValidateProblem(p).message(), HasSubstr("which not every layer tied to it offers"));
}

TEST(SearchTest, BruteForceRefusesHugeProblems) {
  SearchProblem p;
  for (int i = 0; i < 12; ++i) {
    p.layers.push_back(
        {"l" + std::to_string(i), 1, {{2, 0, 2, 0}, {4, 0, 4, 0}, {8, 0, 8, 0}, {16, 0, 16, 0}}});
  }
  EXPECT_EQ(BruteForce(p, Budget::SizeBits(100)).status().code(),
            absl::StatusCode::kInvalidArgument);  // 4^12 = 2^24
}

TEST(SearchTest, EvaluateAssignmentChecksChoicesPinsAndTies) {
  SearchProblem p = ThreeLayers();
  p.ties = {{"a", "b"}};
  absl::StatusOr<Solution> s = EvaluateAssignment(p, {4, 4, 2});
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cost, 3 + 8 + 7);
  EXPECT_EQ(s->size_bits, 100);
  EXPECT_FALSE(EvaluateAssignment(p, {4, 8, 2}).ok());
  EXPECT_FALSE(EvaluateAssignment(p, {4, 4, 8}).ok());
  EXPECT_FALSE(EvaluateAssignment(p, {4, 4}).ok());
}

TEST(SearchTest, UniformBaselines) {
  SearchProblem p = ThreeLayers();
  absl::StatusOr<Solution> u = UniformAssignment(p, 4);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{4, 4, 3}));  // c offers nothing above 3
  u = UniformAssignment(p, 2);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{2, 4, 2}));  // b's least is 4
  p.pins = {{"b", 8}};
  u = UniformAssignment(p, 4);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{4, 8, 3}));
  p.pins.clear();

  // Sizes: uniform 8 = 80+80+30 = 190, 4 = 40+40+30 = 110, 3 = 110, 2 = 20+40+20 = 80.
  u = UniformForBudget(p, Budget::SizeBits(189));
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{4, 4, 3}));
  EXPECT_TRUE(u->budget_met);
  u = UniformForBudget(p, Budget::SizeBits(190));
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{8, 8, 3}));
  u = UniformForBudget(p, Budget::SizeBits(79));
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->bits, (Assignment{2, 4, 2}));
  EXPECT_FALSE(u->budget_met);
}

// A chain of n+1 configurations over n single-choice-pair layers.
std::vector<Solution> Chain(int n) {
  SearchProblem p;
  std::vector<double> sensitivity;
  for (int i = 0; i < n; ++i) {
    p.layers.push_back({"l" + std::to_string(i), 100, {{4, 1.0, 400, 0}, {8, 0.1, 800, 0}}});
    sensitivity.push_back((i * 7) % n);
  }
  absl::StatusOr<std::vector<Solution>> chain = SensitivityOrderedConfigs(p, sensitivity, 4, 8);
  EXPECT_TRUE(chain.ok()) << chain.status();
  return chain.ok() ? *chain : std::vector<Solution>{};
}

int HighLayers(const Assignment& bits) {
  return static_cast<int>(std::count(bits.begin(), bits.end(), 8));
}

TEST(SearchTest, SensitivityOrderedConfigsRaiseMostSensitiveFirst) {
  SearchProblem p = ThreeLayers();
  p.layers[2].choices.push_back({4, 4, 40, 0});
  p.layers[2].choices.push_back({8, 0, 80, 0});
  p.pins = {{"b", 8}};
  absl::StatusOr<std::vector<Solution>> chain =
      SensitivityOrderedConfigs(p, {1.0, 100.0, 5.0}, 4, 8);
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_EQ(chain->size(), 3u);  // b is pinned: two movable layers
  EXPECT_EQ((*chain)[0].bits, (Assignment{4, 8, 4}));
  EXPECT_EQ((*chain)[1].bits, (Assignment{4, 8, 8}));  // c before a
  EXPECT_EQ((*chain)[2].bits, (Assignment{8, 8, 8}));
  EXPECT_EQ((*chain)[1].size_bits, 40 + 80 + 80);

  p.pins.clear();
  p.ties = {{"a", "c"}};  // one item, sensitivity 6 < b's 100
  chain = SensitivityOrderedConfigs(p, {1.0, 100.0, 5.0}, 4, 8);
  ASSERT_TRUE(chain.ok());
  ASSERT_EQ(chain->size(), 3u);
  EXPECT_EQ((*chain)[1].bits, (Assignment{4, 8, 4}));
  EXPECT_EQ((*chain)[2].bits, (Assignment{8, 8, 8}));

  EXPECT_THAT(SensitivityOrderedConfigs(ThreeLayers(), {1, 2, 3}, 4, 8).status().message(),
              HasSubstr("\"c\""));
  EXPECT_FALSE(SensitivityOrderedConfigs(p, {1, 2}, 4, 8).ok());
}

TEST(SearchTest, BisectionFindsTheLinearScanAnswerInLogarithmicSteps) {
  for (int n : {1, 2, 3, 7, 8, 20, 64, 100}) {
    const std::vector<Solution> chain = Chain(n);
    ASSERT_EQ(chain.size(), static_cast<size_t>(n + 1));
    // Monotone in the number of layers at 8 bits, which grows along the chain.
    auto accuracy = [n](const Assignment& bits) {
      return 50.0 + 40.0 * HighLayers(bits) / std::max(n, 1);
    };
    for (int k = 0; k < static_cast<int>(chain.size()); ++k) {
      EXPECT_EQ(HighLayers(chain[k].bits), k);
    }
    for (double threshold : {10.0, 50.0, 61.3, 75.0, 89.9, 90.0}) {
      int calls = 0;
      absl::StatusOr<BisectionResult> r = AccuracyBisection(
          chain,
          [&](const Assignment& bits) -> absl::StatusOr<double> {
            ++calls;
            return accuracy(bits);
          },
          threshold);
      ASSERT_TRUE(r.ok()) << r.status();
      size_t scan = 0;
      while (scan < chain.size() && accuracy(chain[scan].bits) < threshold) ++scan;
      ASSERT_LT(scan, chain.size());
      EXPECT_TRUE(r->met);
      EXPECT_EQ(r->index, scan) << "n " << n << " threshold " << threshold;
      EXPECT_EQ(r->config.bits, chain[scan].bits);
      EXPECT_DOUBLE_EQ(r->accuracy, accuracy(chain[scan].bits));
      EXPECT_EQ(static_cast<int>(r->measured.size()), calls);
      EXPECT_LE(calls, static_cast<int>(std::ceil(std::log2(n + 1))) + 2);
      for (const BisectionPoint& m : r->measured) {
        EXPECT_EQ(m.size_bits, chain[m.index].size_bits);
        EXPECT_DOUBLE_EQ(m.accuracy, accuracy(chain[m.index].bits));
      }
    }
  }
}

TEST(SearchTest, BisectionOverOneConfigurationMeasuresItOnce) {
  const std::vector<Solution> chain = {Chain(1)[0]};
  int calls = 0;
  auto evaluate = [&](const Assignment&) -> absl::StatusOr<double> {
    ++calls;
    return 70.0;
  };
  absl::StatusOr<BisectionResult> r = AccuracyBisection(chain, evaluate, 70.0);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->met);
  EXPECT_EQ(r->index, 0u);
  EXPECT_EQ(calls, 1);
  r = AccuracyBisection(chain, evaluate, 70.5);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->met);
}

TEST(SearchTest, BisectionReportsUnmetThreshold) {
  const std::vector<Solution> chain = Chain(10);
  absl::StatusOr<BisectionResult> r = AccuracyBisection(
      chain,
      [](const Assignment& bits) -> absl::StatusOr<double> { return 60.0 + HighLayers(bits); },
      80.0);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->met);
  EXPECT_EQ(r->index, 10u);
  EXPECT_DOUBLE_EQ(r->accuracy, 70.0);
  EXPECT_EQ(r->measured.size(), 1u);
}

TEST(SearchTest, BisectionPropagatesEvaluateErrors) {
  const std::vector<Solution> chain = Chain(10);
  int calls = 0;
  absl::StatusOr<BisectionResult> r = AccuracyBisection(
      chain,
      [&](const Assignment&) -> absl::StatusOr<double> {
        if (++calls == 2) return absl::UnavailableError("model crashed");
        return 90.0;
      },
      50.0);
  EXPECT_EQ(r.status(), absl::UnavailableError("model crashed"));
  EXPECT_EQ(AccuracyBisection(
                {}, [](const Assignment&) { return 1.0; }, 0)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AccuracyBisection(chain, nullptr, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SearchTest, RealisticSixtyLayerInstanceSolvesExactly) {
  std::mt19937_64 rng(60);
  SearchProblem p;
  int64_t numel_total = 0;
  for (int i = 0; i < 60; ++i) {
    const int64_t channels = int64_t{16} << std::uniform_int_distribution<int>(0, 5)(rng);
    const int64_t in = int64_t{16} << std::uniform_int_distribution<int>(0, 5)(rng);
    const int64_t numel = channels * in * 9;
    const double trace_per_weight = std::exp(std::uniform_real_distribution<double>(-8, 0)(rng));
    const double range = std::uniform_real_distribution<double>(0.05, 1.0)(rng);
    LayerChoices layer{"layer" + std::to_string(i), numel, {}};
    for (int b : {2, 3, 4, 6, 8}) {
      // ‖Q_b(W) − W‖² ≈ numel · Δ²/12 with Δ = range / (2^(b−1) − 1).
      const double step = range / ((1 << (b - 1)) - 1);
      const int64_t macs = numel * 28 * 28;
      layer.choices.push_back({b, trace_per_weight * numel * step * step / 12,
                               numel * b + 32 * channels, macs * b * 8});
    }
    numel_total += numel;
    p.layers.push_back(layer);
  }
  for (double avg : {2.5, 3.5, 4.25, 6.0}) {
    absl::StatusOr<Solution> s = SolveExact(p, Budget::AverageBits(avg));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(s->exact);
    EXPECT_TRUE(s->budget_met);
    EXPECT_LE(Recompute(p, s->bits).weight_bits, avg * numel_total);
  }
  const auto [lo, hi] = ResourceRange(p, Resource::kSizeBits);
  absl::StatusOr<Solution> s = SolveExact(p, Budget::SizeBits((lo + hi) / 2));
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->exact);
  EXPECT_LE(Recompute(p, s->bits).size_bits, (lo + hi) / 2);
  absl::StatusOr<Frontier> f = ParetoFrontier(p, Resource::kSizeBits);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->exact());
  ExpectNear(f->points()[*f->PickAtBudget((lo + hi) / 2)].cost, s->cost);
}

}  // namespace
}  // namespace compress::engine
