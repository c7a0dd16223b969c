// Bulk and outliers of a Hessian spectrum (Sagun et al., "Empirical Analysis
// of the Hessian of Over-Parametrized Neural Networks"): a trained
// classifier's Hessian has a bulk of eigenvalues near zero and a few
// outliers, about one per class. Torch-free: plain numbers in, plain numbers
// out.
//
// The rule, given the top-k eigenvalues (|λ| decreasing) and the spectral
// density's Gauss quadrature (nodes θ_j, weights w_j summing to 1):
//   1. Bulk edges from the density: λ₊ is the smallest node with
//      Σ_{θ_j > λ₊} w_j <= bulk_mass, λ₋ the largest node with
//      Σ_{θ_j < λ₋} w_j <= bulk_mass. An outlier's quadrature weight is its
//      eigenvector's share of the random start, about 1/n each, so with
//      bulk_mass above (outliers / n) the edges lie in the bulk.
//   2. Positive side: the top eigenvalues λ_1 >= ... >= λ_p > 0 and
//      λ_{p+1} := λ₊. The outliers are λ_1..λ_c, c the largest i with
//      λ_i > λ₊ and λ_i >= (1 + gap)·max(λ_{i+1}, λ₊): the last relative
//      gap of at least `gap` above the bulk edge. Negative side: the same
//      on −λ with λ₋.
//   3. The list holds every eigenvalue with |λ| >= r, r its smallest
//      magnitude. On a side with outliers whose edge lies below r/(1 + gap)
//      the list has not reached the bulk, and the count is a lower bound
//      (ask for a larger k).
//
//   OutlierOptions options;
//   SpectrumSplit s = SeparateOutliers(top, nodes, weights, options);
//   // s.outliers, s.bulk_min, s.bulk_max, s.count_is_lower_bound
#ifndef COMPRESS_ENGINE_HESSIAN_SPECTRUM_H_
#define COMPRESS_ENGINE_HESSIAN_SPECTRUM_H_

#include <vector>

#include "server/engine/hessian/options.h"

namespace compress::engine {

struct SpectrumSplit {
  // The bulk's edges [λ₋, λ₊] (step 1) and its width λ₊ − λ₋.
  double bulk_min = 0;
  double bulk_max = 0;
  double bulk_width() const { return bulk_max - bulk_min; }
  // The outliers, in the order of the top eigenvalues (|λ| decreasing).
  std::vector<double> outliers;
  int count() const { return static_cast<int>(outliers.size()); }
  // A side with outliers whose bulk the list did not reach (step 3): there
  // may be more than `count`.
  bool count_is_lower_bound = false;
  // The smallest relative gap that the rule found at its cut on the positive
  // side, λ_c / max(λ_{c+1}, λ₊) − 1 (0 without positive outliers).
  double edge_gap = 0;
};

// Applies the rule above. Preconditions: nodes and weights of equal size,
// not empty; bulk_mass in [0, 1), gap >= 0.
SpectrumSplit SeparateOutliers(const std::vector<double>& top_eigenvalues,
                               const std::vector<double>& nodes, const std::vector<double>& weights,
                               const OutlierOptions& options);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_SPECTRUM_H_
