// Estimators built on Hessian-vector products (torch-including header):
// per-layer Hutchinson traces (HAWQ-V2), top eigenvalues by power iteration
// with deflation (HAWQ, PyHessian), the spectral density by stochastic Lanczos
// quadrature (Ghorbani et al.; PyHessian) and Q-BERT's per-layer score.
//
// Every estimator takes the HvpOperator (hvp.h) for the matrix, a seeded
// generator for its random vectors (same seed -> same numbers on the same
// device), an optional ProgressSink and an optional CancelToken, checked
// before every product, so cancel or a deadline takes effect within one HVP.
// "Layer" means a parameter group of the operator's layout (param_set.h).
//
//   at::Generator gen = MakeGenerator(seed);
//   ASSIGN_OR_RETURN(TraceResult traces,
//                    EstimateLayerTraces(*op, TraceOptions{}, gen, sink,
//                                        cancel));
//   EigenOptions eigen;
//   eigen.k = 2;
//   ASSIGN_OR_RETURN(EigenResult top,
//                    TopEigenvalues(*op, eigen, kWholeModel, gen, sink,
//                                   cancel));
//
// Not thread-safe (the operator is not).
#ifndef COMPRESS_ENGINE_HESSIAN_ESTIMATORS_H_
#define COMPRESS_ENGINE_HESSIAN_ESTIMATORS_H_

#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/options.h"
#include "server/engine/hessian/param_set.h"

namespace compress::engine {

// ---------------------------------------------------------------- traces

struct LayerTrace {
  int group = 0;     // index into the layout's groups
  std::string name;  // module path, "" = root
  int64_t numel = 0;
  double trace = 0;      // mean of the probe estimates of Tr(H_ii)
  double std_error = 0;  // sample standard deviation / sqrt(probes)
  int64_t probes = 0;
  bool converged = false;  // relative standard error <= tolerance
  double trace_per_param() const { return numel > 0 ? trace / numel : 0; }
};

struct TraceResult {
  std::vector<LayerTrace> layers;  // every group, layout order
  // Whole-model Tr(H) (sum of the layers) and its standard error (from the
  // per-probe sums; exact mode: from the layers' errors, independent).
  double total_trace = 0;
  double total_std_error = 0;
  int64_t hvps = 0;  // products used
};

// Hutchinson per-layer traces. Progress: stage "traces", done/total in
// probes; a PartialResult("trace/<layer>", JSON) the first time a layer
// converges (and for every unconverged layer at the end). INVALID_ARGUMENT
// for options out of range (tolerance <= 0, min_probes < 2 or > max_probes).
absl::StatusOr<TraceResult> EstimateLayerTraces(HvpOperator& op, const TraceOptions& options,
                                                at::Generator& gen, ProgressSink* sink = nullptr,
                                                const CancelToken* cancel = nullptr);

// ----------------------------------------------------------- eigenvalues

inline constexpr int kWholeModel = -1;

struct EigenResult {
  std::vector<double> eigenvalues;     // |λ| decreasing
  std::vector<int> iterations;         // HVPs spent on the i-th run found
  std::vector<bool> converged;         // the i-th run met the tolerance
  // How far from settled each one was when it stopped, relative to |λ|:
  // kPower the last change |λ_t − λ_{t−1}| / |λ_t|; kLanczos the residual
  // bound |β_m s_mi| / |θ_i|.
  std::vector<double> relative_change;
  // kLanczos: the smallest and the largest Ritz value (both ends of an
  // indefinite spectrum), with their relative residual bounds.
  std::optional<double> min_eigenvalue, max_eigenvalue;
  double min_relative_change = 0, max_relative_change = 0;
  std::vector<ParamSet> eigenvectors;  // unit norm, zero outside the scope
};

// The k eigenvalues of largest magnitude of H (group == kWholeModel) or of
// the diagonal block H_gg of one layer (vectors zero outside the layer), by
// power iteration from a Gaussian start, deflated by Gram-Schmidt against
// the eigenvectors already found, stopping as EigenOptions says, then one
// Rayleigh-Ritz step on the span of the k vectors (using their last
// products, so no extra HVP) to remove what deflating against inexact
// eigenvectors leaks into the later eigenvalues. The relative error of a
// converged eigenvalue is then about the tolerance or less. k is capped at
// the scope's dimension. Progress: stage "eigen", done/total in HVPs.
absl::StatusOr<EigenResult> TopEigenvalues(HvpOperator& op, const EigenOptions& options, int group,
                                           at::Generator& gen, ProgressSink* sink = nullptr,
                                           const CancelToken* cancel = nullptr);

// As above for the diagonal block of several layers together (a block of
// the architecture, BlocksOf); an empty list is the whole model.
absl::StatusOr<EigenResult> TopEigenvalues(HvpOperator& op, const EigenOptions& options,
                                           const std::vector<int>& groups, at::Generator& gen,
                                           ProgressSink* sink = nullptr,
                                           const CancelToken* cancel = nullptr);

// ------------------------------------------------------------- density

struct SpectralDensity {
  // Gauss quadrature of the spectral measure: the Ritz values of every run,
  // concatenated, and their weights (first eigenvector component squared,
  // divided by the number of runs); the weights sum to 1.
  std::vector<double> nodes;
  std::vector<double> weights;
  std::vector<int> steps;  // Lanczos steps done per run (< m on breakdown)
  // 0: full re-orthogonalisation; else the number of most recent Lanczos
  // vectors each new one was re-orthogonalised against (memory cap). A
  // window loses orthogonality, so the quadrature may repeat converged
  // outliers as "ghost" nodes; the weights still sum to 1.
  int window = 0;
  // Smoothed density on an even grid over [min node, max node] padded by 1%
  // of the range (at least 0.01): Σ_k w_k N(x; node_k, variance), normalised
  // so that Σ density · spacing = 1.
  std::vector<double> grid;
  std::vector<double> density;
  int64_t hvps = 0;
};

// Stochastic Lanczos quadrature with full re-orthogonalisation (the Lanczos
// vectors are kept: memory m × number of parameters, capped by
// options.max_memory_bytes, see `window`) and eigh of the tridiagonal in
// float64. Progress: stage "density", done/total in HVPs.
absl::StatusOr<SpectralDensity> EstimateSpectralDensity(HvpOperator& op,
                                                        const DensityOptions& options,
                                                        at::Generator& gen,
                                                        ProgressSink* sink = nullptr,
                                                        const CancelToken* cancel = nullptr);

// The smoothed density of given nodes/weights (as EstimateSpectralDensity).
void SmoothDensity(const std::vector<double>& nodes, const std::vector<double>& weights,
                   int grid_points, double sigma, std::vector<double>* grid,
                   std::vector<double>* density);

// --------------------------------------------------------------- Q-BERT

struct QBertLayerScore {
  int group = 0;
  std::string name;
  std::vector<double> top_eigenvalues;  // one per data subset
  double mean = 0;
  double std = 0;    // population standard deviation over the subsets
  double score = 0;  // |mean| + std
};

struct QBertResult {
  std::vector<QBertLayerScore> layers;  // every group, layout order
  int64_t hvps = 0;
};

// Splits the prepared examples into `subsets` consecutive, equal parts
// (re-batched with the first batch's size), and on each computes every
// layer's top eigenvalue (TopEigenvalues with k = 1 and `eigen`'s tolerance
// and iterations) with a fresh HvpOperator of `hvp` options; score = |mean λ|
// + std λ. INVALID_ARGUMENT when subsets < 1 or exceeds the examples.
// Progress: stage "qbert", done/total in (subset, layer) pairs.
absl::StatusOr<QBertResult> QBertScores(torch::jit::Module module, const PreparedBatches& batches,
                                        const HvpOptions& hvp, int subsets,
                                        const EigenOptions& eigen, at::Generator& gen,
                                        ProgressSink* sink = nullptr,
                                        const CancelToken* cancel = nullptr);

// The `index`-th of `count` consecutive, equal parts of the examples in
// `batches` (the first `N mod count` parts one larger), batched by
// `batch_size`. Used by Q-BERT; exposed for tests.
PreparedBatches DataSubset(const PreparedBatches& batches, int index, int count,
                           int64_t batch_size);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_ESTIMATORS_H_
