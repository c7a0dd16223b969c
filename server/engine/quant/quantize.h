// Weight quantization with a mixed-precision bit allocation: the engine side
// of a QUANTIZE job (torch-free header, plain structs).
//
// RunQuantization loads the model, folds BatchNorm into the preceding convs,
// and treats every Conv2d/Linear/Embedding weight and every
// nn.MultiheadAttention in_proj_weight as a quantizable layer
// (calibration.h: QuantizableLayers). Then:
//
//  1. Sensitivity: for every layer i and width b the perturbation
//     δ_i(b) = Q_b(W_i) − W_i that rounding makes (QuantPerturbation:
//     round-to-nearest, or with GPTQ rounding and quadratic Ω GPTQ of that
//     layer alone on the float model's inputs, each half of the
//     calibration data rounding and the other half pricing), and its price
//     Ω_i(b) (QuantOmega):
//     kQuadratic ½ δᵀ H_ii δ, one Hessian-vector product per (layer,
//     width) on the folded model and the calibration data
//     (hessian/perturbation.h); or kTrace Tr(H_ii)/n_i · ‖δ‖² (HAWQ-V2)
//     with Tr(H_ii)/n_i from `trace_per_param` (an ANALYZE report) or from
//     Hutchinson traces computed here (RunAnalysis, traces only).
//  2. Search (search/bit_allocation.h): per layer the candidate bits plus
//     float; sizes in bits as packed on disk (codes plus a float32 scale and
//     a uint8 zero point per channel or group); layer pins and ties.
//     kExact solves the multiple-choice knapsack exactly; kPareto returns the
//     whole (size, ΣΩ) frontier and picks the point at the budget (the same
//     optimum); kBisection bisects the sensitivity-ordered chain from all
//     low bits to all high bits, measuring accuracy on the eval data at each
//     step, for the smallest model within the tolerance; kUniform gives every
//     layer the highest single width that fits the budget.
//  3. Rounding: round-to-nearest, or GPTQ layer by layer on the calibration
//     data (gptq_model.h).
//  4. Baselines at the same size: uniform bits, and the same search with
//     Ω replaced by ‖δ(b)‖² alone (no Hessian; the same δ as Ω's), each
//     rounded the same way and evaluated when eval data are given.
//  5. Outputs written to `output_dir`: model.pt (TorchScript, the folded
//     model with the quantized weights stored as integer codes and rebuilt
//     at load, compact_model.h: exactly what was evaluated, bit for bit),
//     weights.safetensors + manifest.json (packed codes, scales, zero
//     points, float tensors; packing.h) and encodings.json (per tensor:
//     bits, scales, offsets, quantizer; packing.h).
//
//   QuantizeOptions options;
//   options.model_path = "/blobs/ab/abcd";
//   options.calibration_dataset = "builtin:fashion-mnist/train";
//   options.eval_dataset = "builtin:fashion-mnist/test";
//   options.budget = QuantBudget::AverageBits(4);
//   options.output_dir = "/tmp/job";
//   ASSIGN_OR_RETURN(QuantizeReport report,
//                    RunQuantization(options, &sink, &cancel));
//
// Errors: NOT_FOUND for a missing model or dataset; INVALID_ARGUMENT for bad
// options (naming the field), unknown layer names in pins/ties, or data that
// do not fit the model; FAILED_PRECONDITION for a model without a
// quantizable layer, and for a NaN or Inf in the data, a parameter (also
// after BatchNorm folding), a loss, a Hessian-vector product, a trace, a
// GPTQ Hessian or a sensitivity Ω, naming where (common/finite.h;
// non-finite buffers are warnings); CANCELLED / DEADLINE_EXCEEDED from the token. An
// unreachable budget or tolerance is not an error: the report flags it.
// Thread-safe: concurrent calls share nothing.
#ifndef COMPRESS_ENGINE_QUANT_QUANTIZE_H_
#define COMPRESS_ENGINE_QUANT_QUANTIZE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/util/defaults.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/dataset_info.h"
#include "server/engine/data/loss_kind.h"

namespace compress::engine {

// Bits that mean "keep this layer in float32".
inline constexpr int kFloatBits = 32;

enum class QuantSearch {
  kExact,      // multiple-choice knapsack by dynamic programming (default)
  kPareto,     // the whole frontier; the point at the budget
  kBisection,  // accuracy-bounded, needs eval data and a tolerance
  kUniform,    // one width for every layer
};

// "exact", "pareto", "bisection", "uniform".
const char* QuantSearchName(QuantSearch search);

// How Ω_i(b), the cost the search minimises, prices the perturbation
// δ_i(b) = Q_b(W_i) − W_i that rounding layer i to b bits makes.
enum class QuantOmega {
  kTrace,      // Tr(H_ii)/n_i · ‖δ‖² (HAWQ-V2): H_ii as its mean eigenvalue
  kQuadratic,  // ½ δᵀ H_ii δ: one Hessian-vector product per (layer, width)
};

// "trace", "quadratic".
const char* QuantOmegaName(QuantOmega omega);

// The Ω of a job that computes its own sensitivity.
inline constexpr QuantOmega kDefaultQuantOmega = QuantOmega::kQuadratic;

// Which perturbation δ_i(b) Ω and the no-Hessian baseline price.
enum class QuantPerturbation {
  kRounding,  // the job's rounding: RTN, or GPTQ on the float model's inputs
  kNearest,   // round-to-nearest whatever the rounding (HAWQ-V2's ‖Q_b(W) − W‖²)
};

struct QuantBudget {
  enum class Kind { kAverageBits, kModelBytes, kBops, kNone };
  static QuantBudget AverageBits(double bits) { return {Kind::kAverageBits, bits}; }
  static QuantBudget ModelBytes(double bytes) { return {Kind::kModelBytes, bytes}; }
  static QuantBudget Bops(double bops) { return {Kind::kBops, bops}; }
  // kNone: only for kBisection (the tolerance decides).
  Kind kind = Kind::kAverageBits;
  // Average weight bits over the quantizable layers (Σ n_i b_i / Σ n_i,
  // float layers count 32); bytes of the packed weights file; or
  // bit-operations Σ MACs_i · b_i · 32 (activations stay float32).
  double value = 4;
};

struct QuantTolerance {
  enum class Kind { kNone, kMaxDropPoints, kMaxRelativeDrop };
  Kind kind = Kind::kNone;
  // Top-1 drop in percentage points, or as a fraction of the float
  // model's accuracy.
  double value = 0;
};

// Re-fitting the head after rounding (QuantizeOptions::head_refit).
struct QuantHeadRefit {
  int iterations = 10;           // Newton iterations at most; 1..1000
  std::string hessian = "auto";  // "exact", "kfac", "auto" (exact up to
                                 // 4096 head parameters, else kfac)
  double alpha = 0.5;            // λ = c‖g‖^α, α in [0, 1]
  double temperature = 1;        // distillation temperature; > 0
};

struct QuantizeOptions {
  // TorchScript file; required.
  std::string model_path;
  // Calibration data (file or builtin id); required. The first
  // `num_samples` examples (0 = all; default 256) in batches of
  // `batch_size` (default 64).
  std::string calibration_dataset;
  int64_t num_samples = defaults::kCalibrationSamples;
  int64_t batch_size = defaults::kCalibrationBatch;
  // Evaluation data for accuracy (top-1 over all examples, or the first
  // `eval_samples` when > 0); "" = no accuracy is measured (kBisection
  // needs it).
  std::string eval_dataset;
  int64_t eval_samples = 0;
  // Where builtin datasets' IDX files are; default the Debian package's.
  std::string idx_dir = DefaultFashionMnistDir();
  // How messages name the model and the two datasets (never by path): the
  // pipeline passes "model <id>", "dataset <id>"; defaults "model",
  // "calibration dataset", "eval dataset".
  std::string model_name = "model";
  std::string calibration_name = "calibration dataset";
  std::string eval_name = "eval dataset";
  // Loss for the sensitivity traces; default kAuto. With kLanguageModeling
  // the eval data give perplexity before/after instead of top-1 accuracy.
  LossKind loss = LossKind::kAuto;
  // kLanguageModeling: a token id (padding) the loss and the perplexity do
  // not predict; default none.
  std::optional<int64_t> lm_ignore_id;

  // Tr(H_ii)/n_i per layer (module path of the layer owning the weight; an
  // in_proj_weight takes its attention module's), from an ANALYZE report; empty = computed here. A quantizable layer missing
  // from a non-empty map is INVALID_ARGUMENT.
  std::map<std::string, double> trace_per_param;
  // Their Hutchinson standard errors, per parameter (the same keys; a
  // missing layer counts as exact). They decide, with Ω, whether a layer's
  // Ω is resolved (search/pricing.h).
  std::map<std::string, double> trace_std_error_per_param;
  // Hutchinson tolerance and probe cap when the traces are computed here;
  // defaults 0.05 and 200 (TraceOptions).
  double trace_tolerance = 0.05;
  int trace_max_probes = 200;
  // Unset: kTrace when trace_per_param is given (an ANALYZE report holds
  // traces only), else kDefaultQuantOmega. kQuadratic together with
  // trace_per_param is INVALID_ARGUMENT.
  std::optional<QuantOmega> omega;
  // Unset: kRounding for kQuadratic (½δᵀHδ sees where GPTQ puts its
  // error), kNearest for kTrace (an isotropic H cannot: GPTQ's δ has the
  // larger norm although it changes the outputs less).
  std::optional<QuantPerturbation> perturbation;

  // Quantizer: symmetric (default) or asymmetric; "per_tensor",
  // "per_channel" (default) or "group" with group_size 32, 64 or 128
  // (default 128).
  bool symmetric = true;
  std::string granularity = "per_channel";
  int64_t group_size = defaults::kGroupSize;
  // Rounding: false = round to nearest (default), true = GPTQ.
  bool gptq = false;
  // GPTQ: damping as a fraction of mean diag(H) (default 0.01), columns per
  // block (default 128), act-order (default false).
  double gptq_damping = 0.01;
  int gptq_block_size = 128;
  bool gptq_act_order = false;

  // Search.
  QuantSearch search = QuantSearch::kExact;
  QuantBudget budget;
  QuantTolerance tolerance;
  // Candidate widths per layer, each 2..8; float is always a candidate.
  // Default {2, 3, 4, 8}.
  std::vector<int> candidate_bits = {defaults::kCandidateBits.begin(),
                                     defaults::kCandidateBits.end()};
  // Layer -> bits (2..8 or kFloatBits). Unset (nullopt): the first and the
  // last quantizable layer at 8 bits, dropped with a warning when they alone
  // exceed the budget. An empty map pins nothing.
  std::optional<std::map<std::string, int>> pins;
  // Groups of layers that must share their bits.
  std::vector<std::vector<std::string>> ties;

  // Also write model_int8.pt: the float model with 8-bit weights and
  // activations run by LibTorch's quantized engine (int8_model.h),
  // calibrated on the calibration batches, its top-1 on the eval data and
  // its latency against the float model's; default false.
  bool int8_model = false;

  // Re-fit the head (the last Linear layer) after rounding, on the
  // calibration data against the float model's logits, by the regularized
  // Newton method of prune/head_refit.h; then round it again at its bits
  // (a float head stays float). nullopt (default) = no re-fit.
  std::optional<QuantHeadRefit> head_refit;

  uint64_t seed = 0;
  // "cpu" or "cuda:N"; default "cpu".
  std::string device = "cpu";
  // Existing directory for model.pt, weights.safetensors, manifest.json,
  // encodings.json; required.
  std::string output_dir;
};

struct QuantizedLayerReport {
  // Module path; for an attention's input projection the parameter's name
  // ("enc.0.self_attn.in_proj_weight").
  std::string name;
  std::string kind;  // "Conv2d", "Linear", "MultiheadAttention.in_proj"
  int64_t numel = 0;
  int64_t macs = 0;         // per example, from one forward pass
  int bits = kFloatBits;    // chosen
  bool pinned = false;
  double trace_per_param = 0;   // kTrace only
  std::map<int, double> omega;  // Ω(b) for every candidate b
  std::map<int, double> omega_std_error;  // its standard error (pricing.h)
  // What the search charged: Ω(b), or κ(b)·‖δ(b)‖² when Ω was negative or
  // not resolved (`fallback`, with the reason).
  std::map<int, double> price;
  bool fallback = false;
  std::string fallback_reason;
  // ‖δ(b)‖² for every candidate b: the no-Hessian baseline's cost.
  std::map<int, double> squared_error;
  int64_t bytes_before = 0;     // float32 weight
  int64_t bytes_after = 0;      // packed codes + scales + zero points
  std::string rounding;         // "rtn", "gptq", or "float"
  std::string note;             // why GPTQ fell back to RTN, if it did
  // Relative output reconstruction errors on the calibration inputs
  // (GPTQ only; NaN otherwise): GPTQ's and RTN's at the chosen bits.
  double gptq_error = 0;
  double rtn_error = 0;
  // Later layers whose weight is this tensor (tied weights): quantized and
  // stored once, under this layer's name.
  std::vector<std::string> tied;
};

// model_int8.pt (QuantizeOptions::int8_model).
struct Int8ModelReport {
  std::string path;
  int64_t bytes = 0;
  std::string engine;         // LibTorch's quantized engine: "onednn", ...
  int64_t quantized_ops = 0;  // quantized:: kernels in its forward
  // Top-1 in percent on the eval data (when given; not for language models).
  std::optional<double> accuracy;
  // Median milliseconds of one forward on the CPU of this model and of the
  // float model (model_path) on `latency_batch` examples (the first eval
  // examples, else calibration ones), timed alternately in the job's
  // process with its `threads` intra-op threads.
  double latency_ms = 0;
  double float_latency_ms = 0;
  int64_t latency_batch = 0;
  int threads = 0;
};

// A point of the (size, ΣΩ) frontier or a measured configuration.
struct QuantPoint {
  int64_t weight_bytes = 0;  // predicted packed bytes of the weights file
  double average_bits = 0;
  double cost = 0;                  // ΣΩ
  std::optional<double> accuracy;   // measured (bisection, baselines)
  bool chosen = false;
};

struct QuantBaseline {
  std::string name;  // "uniform", "no_hessian"
  std::map<std::string, int> bits;
  double average_bits = 0;
  int64_t weight_bytes = 0;  // predicted
  double cost = 0;           // ΣΩ (the job's Ω)
  std::optional<double> accuracy;
  // With eval data, paired with the chosen allocation on the same examples:
  // how many only the chosen one / only this baseline gets right, and
  // McNemar's exact two-sided p-value of that split (common/stats.h): small
  // means the accuracy difference is unlikely to be chance.
  int64_t chosen_only_correct = 0;
  int64_t baseline_only_correct = 0;
  std::optional<double> p_value;
};

struct QuantHeadRefitReport {
  std::string head;     // module path of the head
  std::string hessian;  // "exact" or "kfac"
  int iterations = 0;   // accepted Newton steps
  int bits = 0;         // the head's width; 0 = float (not rounded again)
  // Calibration loss (T²·KL to the float model + cross-entropy with
  // labels) with the rounded head, and after the re-fit and re-rounding.
  double loss_before = 0;
  double loss_after = 0;
  double loss_refit = 0;  // after the re-fit, before rounding again
  // Top-1 (%) on the eval data of the rounded model before the re-fit
  // (accuracy_after is the model with it).
  std::optional<double> accuracy_before;
  double seconds = 0;
};

struct QuantizeReport {
  std::vector<QuantizedLayerReport> layers;  // quantizable layers, in order
  std::string search;                        // QuantSearchName
  bool search_exact = true;   // false when the DP had to coarsen
  bool budget_met = true;
  // kBisection: whether the tolerance was met; the closest configuration is
  // returned when not.
  bool tolerance_met = true;
  double average_bits = 0;
  int64_t bops = 0;
  // Bytes: float32 parameters + buffers of the original model; the packed
  // weights file as written; what the search predicted for it.
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  int64_t predicted_bytes = 0;
  // Top-1 accuracy in percent on the eval data (when given): the original
  // model and the saved model.pt.
  std::optional<double> accuracy_before;
  std::optional<double> accuracy_after;
  // Language modeling (loss kLanguageModeling), instead of the accuracies:
  // exp of the mean next-token cross-entropy on the eval data, of the
  // original model and of the saved model.pt.
  std::optional<double> perplexity_before;
  std::optional<double> perplexity_after;
  int64_t eval_examples = 0;
  std::vector<QuantPoint> frontier;  // kPareto/kExact: the (size, ΣΩ) frontier
  std::vector<QuantPoint> measured;  // kBisection: every configuration measured
  std::vector<QuantBaseline> baselines;
  // Sensitivity hygiene (search/pricing.h): layers priced by the fallback,
  // κ(b), and, when any was, the relative output error Σ‖f_q(x) − f(x)‖² /
  // Σ‖f(x)‖² on the calibration inputs of the searched allocation and of
  // the uniform one at the same size; the smaller one is kept
  // (`chose_uniform` when that was the uniform one).
  int fallback_layers = 0;
  std::map<int, double> fallback_curvature;
  std::optional<double> searched_output_error;
  std::optional<double> uniform_output_error;
  bool chose_uniform = false;
  // Pins in force (the defaults or the caller's; empty when the defaults
  // were dropped because they broke the budget).
  std::map<std::string, int> pins;
  // Things the caller should show (dropped default pins, ...).
  std::vector<std::string> warnings;
  std::string sensitivity_source;  // "report" or "computed"
  std::string omega;               // QuantOmegaName
  std::string perturbation;        // δ: "rtn" or "gptq"
  int64_t hvp_count = 0;           // when computed here
  // The HVP method of kQuadratic/kTaylor ("exact" unless it fell back).
  std::string hvp_method;
  std::string runtime;
  double wall_seconds = 0;
  // Paths of the artifacts in output_dir.
  std::string model_path;
  std::string weights_path;
  std::string manifest_path;
  std::string encodings_path;  // encodings.json (packing.h)
  // Bytes of model.pt: with the quantized weights as codes
  // (compact_model.h), or, with a warning, in float when its module types
  // cannot take the methods.
  int64_t model_bytes = 0;
  // With int8_model (absent, with a warning, when LibTorch could not make it).
  std::optional<Int8ModelReport> int8;
  // With head_refit.
  std::optional<QuantHeadRefitReport> head_refit;
};

// Runs the quantization described by `options`. `sink` (may be null) gets
// log lines and the stages that run, numbered among themselves
// (common/stages.h): "sensitivity" (one unit per layer and width),
// "search", for kBisection "evaluation" (one unit per configuration
// measured), "rounding" (GPTQ: progress "gptq", one unit per layer), and
// with eval data "evaluation" (the saved model, then each baseline). E.g.
// kBisection: sensitivity 0/5, search 1/5, evaluation 2/5, rounding 3/5,
// evaluation 4/5; kExact without eval data: 0/3, 1/3, 2/3; head_refit adds
// "head refit" after "rounding", int8_model "int8" last. Errors from a
// stage name it ("search: pins/ties: ..."). `cancel` may be null.
absl::StatusOr<QuantizeReport> RunQuantization(const QuantizeOptions& options,
                                               ProgressSink* sink,
                                               const CancelToken* cancel);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_QUANTIZE_H_
