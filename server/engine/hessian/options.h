// Options of the Hessian engine (torch-free: the pipeline and the analyze
// facade include it without LibTorch). Defaults follow AnalyzeSpec in
// proto/compress/v1/compress.proto.
#ifndef COMPRESS_ENGINE_HESSIAN_OPTIONS_H_
#define COMPRESS_ENGINE_HESSIAN_OPTIONS_H_

#include <cstdint>

namespace compress::engine {

// How Hessian-vector products are computed; see hvp.h for the accuracy of
// each.
enum class HvpMethod {
  kExact,             // double backward
  kFiniteDifference,  // differences of gradients at perturbed parameters
  kGaussNewton,       // generalised Gauss-Newton products (PSD)
  kFisherDiagonal,    // diagonal of the empirical Fisher, Σ_n g_n² / N
};

// "exact", "finite_difference", "gauss_newton", "fisher_diagonal".
const char* HvpMethodName(HvpMethod method);

enum class FiniteDifferenceScheme {
  kForward,  // (g(θ+εv) − g(θ)) / ε: one gradient per product
  kCentral,  // (g(θ+εv) − g(θ−εv)) / 2ε: two gradients, O(ε²) error
};

// What an analysis does when the exact (or Gauss-Newton) product fails
// because an op lacks a double backward.
enum class HvpFallback {
  // Rerun with forward finite differences (default) if their self-check
  // passes (forward and central differences agree to
  // kFiniteDifferenceCheckTolerance), else with the Fisher diagonal.
  kFiniteDifference,
  kFisherDiagonal,  // rerun with the empirical Fisher diagonal
  kNone,            // fail with FAILED_PRECONDITION
};

// Largest relative difference ‖Hv_forward − Hv_central‖ / ‖Hv_central‖ over
// the self-check's probes for which finite-difference products are trusted.
// Measured (float64 copies): 1e-6 on the reference CNN and ViT, 1.9e-4 on
// resnet18 (errors that the Hutchinson standard errors of 5% dwarf); 10^6 on
// untrained mobilenet_v2, whose ReLU6 kinks the step crosses.
inline constexpr double kFiniteDifferenceCheckTolerance = 1e-3;

struct HvpOptions {
  // Default kExact.
  HvpMethod method = HvpMethod::kExact;
  // kFiniteDifference only; default forward (one gradient per product).
  FiniteDifferenceScheme fd_scheme = FiniteDifferenceScheme::kForward;
  // kFiniteDifference only: the private copy of the model computes in
  // float64 (default true). A float32 step of sqrt(1.2e-7)·(1 + ‖θ‖) moves
  // ReLU/max-pool units across their kinks, which the exact Hessian ignores
  // (measured: 60% error along the top eigenvector of the tiny CNN, 0.1%
  // along random directions); float64 steps are 1e-8 small. Costs a float64
  // gradient per product (4.5 float32 gradients for resnet18 on the 2-core
  // CPU); false keeps the model's dtype.
  bool fd_in_float64 = true;
  // kExact and kGaussNewton: the first-order graphs of the first
  // `max_cached_batches` batches are kept between products (memory: one
  // forward+backward graph each); the other batches are recomputed for every
  // product (forward + backward + double backward). Default 1: a single
  // calibration batch is computed once and reused for every probe.
  int max_cached_batches = 1;
};

struct TraceOptions {
  // Stop when every layer's standard error / |trace| is at most this;
  // default 0.05.
  double tolerance = 0.05;
  // Probes (full-model HVPs) at most, per layer in exact mode; default 200.
  int max_probes = 200;
  // Probes before the tolerance may stop the estimate; default 10.
  int min_probes = 10;
  // false (default): one Rademacher probe v over all parameters per HVP;
  // layer i's estimate is v_iᵀ(Hv)_i (cross-layer terms vanish in
  // expectation). true: probes zero outside layer i, one layer at a time
  // (v_iᵀ H_ii v_i; lower variance, layers × more HVPs).
  bool exact_per_layer = false;
};

// How TopEigenvalues finds eigenvalues.
enum class EigenMethod {
  // Power iteration with deflation (PyHessian), one eigenvalue at a time.
  // Slow when the two largest magnitudes are close, e.g. λ and −λ of an
  // indefinite spectrum.
  kPower,
  // Lanczos with full re-orthogonalisation from one random start: every
  // Ritz value comes from the same Krylov space, both ends of the spectrum
  // converge fastest, and the residual bound says how far each one is.
  kLanczos,
};

struct EigenOptions {
  // Default kPower.
  EigenMethod method = EigenMethod::kPower;
  // Eigenvalues wanted (largest in magnitude first); default 1.
  int k = 1;
  // Stop one eigenvalue when the Rayleigh quotient's last change
  // d_t = |λ_t − λ_{t−1}|, summed as a geometric series with the observed
  // ratio q = d_t/d_{t−1} (d_t/(1−q)), is at most tolerance · |λ_t|; plain
  // d_t <= tolerance·|λ| (PyHessian) stops too early when the gap is small.
  // Default 1e-3.
  double tolerance = 1e-3;
  // kLanczos: a Ritz value's residual bound |β_m s_mi| (an upper bound on
  // its distance to an eigenvalue) is at most tolerance · |θ_i|, for the k
  // wanted and for both ends of the spectrum.
  // Power iterations (HVPs) per eigenvalue at most; kLanczos: Lanczos
  // steps (HVPs) in all. Default 100.
  int max_iterations = 100;
  // kLanczos: memory for the Lanczos vectors, in bytes; default 4 GiB.
  // When they do not fit the method is refused (a windowed Lanczos would
  // give no eigenvectors and ghost eigenvalues).
  int64_t max_memory_bytes = int64_t{4} << 30;
};

struct DensityOptions {
  // Lanczos steps m per run (capped at the number of parameters); default 90.
  int lanczos_steps = 90;
  // Independent Rademacher starting vectors n_v; default 1.
  int runs = 1;
  // Points of the smoothed density grid; default 1000.
  int grid_points = 1000;
  // Gaussian smoothing as in PyHessian: variance sigma · max(1, λmax − λmin);
  // default 1e-5.
  double sigma = 1e-5;
  // Memory for stored Lanczos vectors, in bytes; default 4 GiB. Full
  // re-orthogonalisation keeps all m vectors (m · 4 bytes · parameters: 31
  // GB for vit_b_16 at m = 90); when they do not fit, each new vector is
  // re-orthogonalised against the most recent ones that do (at least 2,
  // which is the plain three-term recurrence), and the result says so.
  int64_t max_memory_bytes = int64_t{4} << 30;
};

// Separating the outliers of the spectrum from its bulk (spectrum.h).
struct OutlierOptions {
  // Quadrature weight left outside each bulk edge; default 1e-3 (the
  // weight of about n/1000 eigenvalues, n the parameters).
  double bulk_mass = 1e-3;
  // Relative gap that separates the last outlier from what lies below it;
  // default 0.2.
  double gap = 0.2;
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_OPTIONS_H_
