// Hessian sensitivity analysis of one model on calibration data: the engine
// side of an ANALYZE job (torch-free header, plain structs).
//
// RunAnalysis loads the model and the data, prepares the loss, builds one
// HVP operator and runs the estimators that are enabled, in this order:
// per-layer traces (HAWQ-V2), top eigenvalues (HAWQ, PyHessian), spectral
// density (SLQ) and Q-BERT scores. Each estimator draws its random vectors
// from its own generator seeded from (seed, estimator), so the same options
// give the same report on the same device whichever other estimators run.
//
// When the requested method is exact or Gauss-Newton and the model has an op
// without a double backward, the analysis reruns as `fallback` says (the
// report says so): with forward finite differences if their self-check
// passes (FiniteDifferenceSelfCheck on 2 probes ≤
// kFiniteDifferenceCheckTolerance) and with the empirical Fisher diagonal
// otherwise, or with the Fisher diagonal directly; with kNone it fails with
// FAILED_PRECONDITION naming the op. When finite differences were requested
// and the self-check fails, the analysis runs as asked and adds a warning.
//
//   AnalyzeOptions options;
//   options.model_path = "/blobs/ab/abcd";
//   options.dataset = "builtin:fashion-mnist/test";
//   options.eigen_enabled = true;
//   ASSIGN_OR_RETURN(AnalyzeReport report,
//                    RunAnalysis(options, &sink, &cancel_token));
//
// Errors: NOT_FOUND for a missing model or dataset; INVALID_ARGUMENT for bad
// options, files, or data that do not fit the model (with torch's message);
// FAILED_PRECONDITION as above, for a model without trainable parameters,
// and for a NaN or Inf in the data, a parameter, a batch's loss, a
// Hessian-vector product or any reported trace, eigenvalue, density node or
// Q-BERT score, naming where (common/finite.h; non-finite buffers are
// warnings); CANCELLED / DEADLINE_EXCEEDED from the token, checked before
// every HVP. Thread-safe: concurrent calls share nothing (each loads its own
// model); LibTorch's intra-op threads are shared by all.
#ifndef COMPRESS_ENGINE_HESSIAN_ANALYZE_H_
#define COMPRESS_ENGINE_HESSIAN_ANALYZE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/util/defaults.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/dataset_info.h"
#include "server/engine/data/loss_kind.h"
#include "server/engine/hessian/options.h"
#include "server/engine/hessian/spectrum.h"

namespace compress::engine {

// The HVP method an analysis uses when none is requested: exact double
// backward, the reference the other methods are measured against, with
// finite differences as the fallback for models that lack a double backward.
// Measured on this 2-core CPU (Debian LibTorch): forward finite differences
// in float64 cost one float64 gradient (4.5 float32 gradients for resnet18),
// exact products 3.4-4.4 gradients on resnet18 (issue 3); in float32, finite
// differences are cheap but wrong along the directions power iteration
// converges to on ReLU models (hvp.h). Revisit with the benchmarks.
inline constexpr HvpMethod kDefaultHvpMethod = HvpMethod::kExact;

enum class EigenScope {
  kModel,  // top-k of the whole Hessian (default)
  kLayer,  // top-k of every layer's diagonal block
  kBlock,  // top-k of every architecture block's diagonal block (BlocksOf)
};

struct AnalyzeOptions {
  // TorchScript file; required.
  std::string model_path;
  // Dataset file (safetensors / torch.save dict) or a builtin id
  // ("builtin:fashion-mnist/test"); required.
  std::string dataset;
  // How messages name the model and the dataset (never by path): the
  // pipeline passes "model <id>" and "dataset <id>"; default "model" and
  // "dataset".
  std::string model_name = "model";
  std::string dataset_name = "dataset";
  // Where builtin datasets' IDX files are; default the Debian package's.
  std::string idx_dir = DefaultFashionMnistDir();
  // Calibration examples, the first ones of the dataset; 0 = all. Default 256.
  int64_t num_samples = defaults::kCalibrationSamples;
  // Examples per forward pass; default 64.
  int64_t batch_size = defaults::kCalibrationBatch;
  // Default kAuto: cross-entropy with labels, else pseudo-labels; MSE for
  // floating targets. kLanguageModeling for next-token prediction.
  LossKind loss = LossKind::kAuto;
  // kLanguageModeling: a token id (padding) the loss does not predict;
  // default none.
  std::optional<int64_t> lm_ignore_id;
  // Unset: kDefaultHvpMethod.
  std::optional<HvpMethod> hvp_method;
  // Default: finite differences (checked) when double backward is missing.
  HvpFallback fallback = HvpFallback::kFiniteDifference;
  // Finite differences only; default forward.
  FiniteDifferenceScheme fd_scheme = FiniteDifferenceScheme::kForward;
  // Finite differences only: compute on a float64 copy; default true
  // (HvpOptions::fd_in_float64).
  bool fd_in_float64 = true;
  // Exact / Gauss-Newton: batches whose first-order graph stays cached;
  // default 1.
  int max_cached_batches = 1;

  // Per-layer Hutchinson traces; default on.
  bool traces_enabled = true;
  TraceOptions traces;
  // Top eigenvalues; default off.
  bool eigen_enabled = false;
  EigenOptions eigen;
  EigenScope eigen_scope = EigenScope::kModel;
  // Spectral density by stochastic Lanczos quadrature; default off.
  bool density_enabled = false;
  DensityOptions density;  // max_memory_bytes caps the Lanczos vectors
  // Bulk and outliers (spectrum.h), computed when the model-scope top
  // eigenvalues and the density both run.
  OutlierOptions outliers;
  // Q-BERT |mean λ| + std λ per layer over data subsets; default off.
  bool qbert_enabled = false;
  // Data subsets; default 4. Q-BERT's power iterations use `eigen`'s
  // tolerance and max_iterations.
  int qbert_subsets = 4;

  // Seed of every random vector; default 0.
  uint64_t seed = 0;
  // "cpu" or "cuda:N"; default "cpu".
  std::string device = "cpu";
};

struct LayerSensitivity {
  std::string name;  // module path, "" = root
  std::string kind;  // "Conv2d", "Linear", ...
  int64_t numel = 0;
  // Traces (traces_enabled): Tr(H_ii) estimate, its standard error, probes,
  // Tr(H_ii)/numel, and whether the relative standard error met the
  // tolerance.
  double trace = 0;
  double trace_std_error = 0;
  int64_t trace_probes = 0;
  double trace_per_param = 0;
  bool trace_converged = false;
  // Top eigenvalues of the layer's block (eigen_enabled, kLayer scope).
  std::vector<double> top_eigenvalues;
  std::vector<bool> top_eigenvalues_converged;
  // Q-BERT (qbert_enabled): top eigenvalue per data subset and the score.
  std::vector<double> qbert_eigenvalues;
  double qbert_score = 0;
  // Other names of this layer's tensors (ParamGroup::tied): its trace and
  // eigenvalues are of the shared tensor, over all its uses.
  std::vector<std::string> tied;
};

// One block of the architecture (BlocksOf in param_set.h).
struct BlockSensitivity {
  std::string name;                 // module path, "" = root
  std::vector<std::string> layers;  // its layers, in order
  int64_t numel = 0;
  // Top eigenvalues of the block's diagonal block (eigen_enabled, kBlock).
  std::vector<double> top_eigenvalues;
  std::vector<bool> top_eigenvalues_converged;
};

struct AnalyzeReport {
  std::vector<LayerSensitivity> layers;  // every parameter group, in order
  std::vector<BlockSensitivity> blocks;  // kBlock scope only
  int64_t num_parameters = 0;            // trainable
  // Whole-model trace and its standard error (traces_enabled).
  double total_trace = 0;
  double total_trace_std_error = 0;
  // Top eigenvalues of the whole model (eigen_enabled, kModel scope), |λ|
  // decreasing, with the power iterations each took and convergence.
  std::vector<double> eigenvalues;
  std::vector<int> eigen_iterations;
  std::vector<bool> eigen_converged;
  // How far from settled each was, relative to |λ| (EigenResult).
  std::vector<double> eigen_relative_change;
  // EigenMethod::kLanczos, kModel scope: both ends of the spectrum.
  std::optional<double> min_eigenvalue, max_eigenvalue;
  double min_eigenvalue_relative_change = 0, max_eigenvalue_relative_change = 0;
  // Spectral density (density_enabled): quadrature nodes and weights (sum
  // 1) and the smoothed density on a grid.
  std::vector<double> density_nodes;
  std::vector<double> density_weights;
  std::vector<double> density_grid;
  std::vector<double> density_values;
  int density_window = 0;  // SpectralDensity::window
  // Model-scope eigenvalues and density both ran: the bulk and the outliers
  // (SeparateOutliers of `eigenvalues`, `density_nodes`, `density_weights`).
  std::optional<SpectrumSplit> spectrum;
  // Classes of the model's output (logits [N, C, ...]: C; a language
  // model's [N, T, V]: V), 0 for MSE targets or an output that says none.
  int64_t num_classes = 0;

  // What was actually done.
  HvpMethod hvp_method = HvpMethod::kExact;  // after any fallback
  bool fell_back = false;
  std::string fallback_reason;  // the exact method's error when fell_back
  // FiniteDifferenceSelfCheck's value when finite differences were tried
  // (a failed check is why a fallback went on to the Fisher diagonal); 0
  // otherwise.
  double finite_difference_check = 0;
  // Things the caller should show: a failed self-check, a capped Lanczos
  // memory, ...
  std::vector<std::string> warnings;
  LossKind loss = LossKind::kCrossEntropy;  // kCrossEntropy, kMse or kLanguageModeling
  bool pseudo_labels = false;               // labels from the model's argmax
  int64_t num_examples = 0;
  int64_t batch_size = 0;
  int64_t num_batches = 0;
  uint64_t seed = 0;
  std::string device;
  std::string dtype;      // of the parameters: "float32", ...
  std::string runtime;    // RuntimeDescription(): LibTorch, BLAS, threads
  int64_t hvp_count = 0;  // all products, a failed exact attempt included
  double wall_seconds = 0;
};

// Runs the analysis described by `options`. `sink` (may be null) gets one
// stage per enabled estimator ("traces", "eigen", "density", "qbert") with
// progress per HVP (per layer for per-layer eigenvalues and Q-BERT), a
// PartialResult per layer trace as it converges, and a WARNING log line on
// fallback. `cancel` may be null.
absl::StatusOr<AnalyzeReport> RunAnalysis(const AnalyzeOptions& options, ProgressSink* sink,
                                          const CancelToken* cancel);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_ANALYZE_H_
