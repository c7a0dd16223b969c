#include "server/engine/hessian/spectrum.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

namespace compress::engine {
namespace {

// The upper edge of the quadrature measure: the smallest node with at most
// `mass` weight strictly above it. Nodes come in any order (one Lanczos run
// after another).
double UpperEdge(const std::vector<double>& nodes, const std::vector<double>& weights,
                 double mass) {
  std::vector<size_t> order(nodes.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return nodes[a] > nodes[b]; });
  double above = 0;
  double edge = nodes[order.front()];
  for (size_t i : order) {
    if (above > mass) break;
    edge = nodes[i];
    above += weights[i];
  }
  return edge;
}

// Step 2 of the rule on one side: `top` holds that side's eigenvalues as
// positive numbers, decreasing; `edge` the bulk edge on the same scale.
// Returns c, the number of outliers, and the gap at the cut.
int CountAboveEdge(const std::vector<double>& top, double edge, double gap, double* edge_gap) {
  *edge_gap = 0;
  for (int i = static_cast<int>(top.size()) - 1; i >= 0; --i) {
    const double below = std::max(i + 1 < static_cast<int>(top.size()) ? top[i + 1] : edge, edge);
    if (top[i] > edge && top[i] >= (1 + gap) * below) {
      // below > 0 unless the bulk reaches 0 exactly; then any λ > 0 is a gap.
      *edge_gap = below > 0 ? top[i] / below - 1 : 0;
      return i + 1;
    }
  }
  return 0;
}

}  // namespace

SpectrumSplit SeparateOutliers(const std::vector<double>& top_eigenvalues,
                               const std::vector<double>& nodes, const std::vector<double>& weights,
                               const OutlierOptions& options) {
  SpectrumSplit split;
  split.bulk_max = UpperEdge(nodes, weights, options.bulk_mass);
  std::vector<double> negated(nodes.size());
  std::transform(nodes.begin(), nodes.end(), negated.begin(), std::negate<double>());
  split.bulk_min = -UpperEdge(negated, weights, options.bulk_mass);

  std::vector<double> positive, negative;
  for (double v : top_eigenvalues) (v > 0 ? positive : negative).push_back(std::abs(v));
  std::sort(positive.begin(), positive.end(), std::greater<double>());
  std::sort(negative.begin(), negative.end(), std::greater<double>());
  double unused_gap = 0;
  const int above = CountAboveEdge(positive, split.bulk_max, options.gap, &split.edge_gap);
  const int below = CountAboveEdge(negative, -split.bulk_min, options.gap, &unused_gap);
  const double high = above > 0 ? positive[above - 1] : 0;
  const double low = below > 0 ? -negative[below - 1] : 0;
  for (double v : top_eigenvalues) {
    if ((v > 0 && above > 0 && v >= high) || (v < 0 && below > 0 && v <= low)) {
      split.outliers.push_back(v);
    }
  }
  // The list holds every eigenvalue with |λ| >= `reach`; a side whose edge
  // lies a gap or more below that may hide more outliers.
  double reach = 0;
  if (!top_eigenvalues.empty()) reach = std::abs(top_eigenvalues.back());
  for (double v : top_eigenvalues) reach = std::min(reach, std::abs(v));
  split.count_is_lower_bound =
      (above > 0 && reach > (1 + options.gap) * split.bulk_max) ||
      (below > 0 && reach > (1 + options.gap) * -split.bulk_min);
  return split;
}

}  // namespace compress::engine
