// Structural pruning of transformers (ViTs, BERT-style encoders, GPT-style
// decoders): the engine side of a PRUNE job (torch-free header, plain
// structs).
//
// RunPruning loads the model, finds its blocks (vit.h; anything else is
// FAILED_PRECONDITION; heads whose removal the discovery could not prove
// exact stay, with a warning), and removes attention heads and MLP neurons in
// `steps` rounds until the target fraction of FLOPs, parameters or latency
// is gone:
//
//  1. Latency model: each distinct block shape is timed on the job's device
//     at `latency_batch` over a grid of (heads, MLP width) and interpolated
//     bilinearly; the rest of the model is the measured whole-model latency
//     minus its blocks'.
//  2. Each round scores every unit on the first `saliency_samples`
//     calibration examples (saliency.h: Taylor/Fisher, Hessian-aware, or
//     magnitude), normalises scores, costs and latency savings by their means
//     over the units, and ranks units by
//        score / cost − latency_weight · latency saved
//     (cost = the unit's share of the target quantity: MACs, parameters or
//     predicted latency). Units are removed in that order, globally across
//     blocks, keeping at least `min_heads` heads and `min_mlp` neurons per
//     block, until the round's goal (1 − target · round / steps of the
//     original) is reached.
//  3. Surgery slices the weights (vit.h), so each round works on a
//     physically smaller model.
//  4. Recovery: `recovery_steps` optimizer steps of distillation from the
//     original model on the calibration data: T²·KL(softmax(t/T) ‖
//     softmax(s/T)), plus cross-entropy when the data have class labels;
//     the learning rate decays on a cosine to 0 within each round. With
//     optimizer "newton" only the head is re-fitted, on fixed features
//     (head_refit.h), with the same loss.
//
// model.pt in `output_dir` is the pruned TorchScript model; the report's
// MACs and parameters are measured on that file (model_info.h), accuracy on
// the reloaded file.
//
//   PruneOptions o;
//   o.model_path = "models/fmnist_vit.pt";
//   o.calibration_dataset = "builtin:fashion-mnist/train";
//   o.target = PruneTargetKind::kFlops;
//   o.target_fraction = 0.5;
//   o.output_dir = "/tmp/job";
//   ASSIGN_OR_RETURN(PruneReport r, RunPruning(o, &sink, &cancel));
//
// Errors: NOT_FOUND for a missing model or dataset; INVALID_ARGUMENT for bad
// options (naming the field) or data that do not fit the model;
// FAILED_PRECONDITION for a model that is not a transformer of a known
// layout (vit.h), and for a NaN or Inf
// in the data, a parameter, a saliency, a loss (a diverged recovery
// included) or the model's outputs on the eval data, naming where
// (common/finite.h; non-finite buffers are warnings); CANCELLED /
// DEADLINE_EXCEEDED from the token. A target the minimums do not allow is
// not an error: the report flags it. Thread-safe: calls share nothing.
#ifndef COMPRESS_ENGINE_PRUNE_PRUNE_H_
#define COMPRESS_ENGINE_PRUNE_PRUNE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/common/stats.h"
#include "server/engine/data/dataset_info.h"
#include "server/engine/data/loss_kind.h"
#include "server/util/defaults.h"

namespace compress::engine {

enum class SaliencyKind { kTaylor, kHessian, kMagnitude };

// "taylor", "hessian", "magnitude".
const char* SaliencyKindName(SaliencyKind kind);

enum class PruneTargetKind { kFlops, kParams, kLatency };

// "flops", "params", "latency".
const char* PruneTargetName(PruneTargetKind kind);

struct PruneOptions {
  // TorchScript file; required.
  std::string model_path;
  // Calibration data (file or builtin id); required. The first
  // `num_samples` examples (0 = all; default 256) in batches of
  // `batch_size` (default 64); saliency uses the first `saliency_samples`
  // of them (default 512), recovery all of them.
  std::string calibration_dataset;
  int64_t num_samples = defaults::kCalibrationSamples;
  int64_t batch_size = defaults::kCalibrationBatch;
  int64_t saliency_samples = 512;
  // Evaluation data; "" = no accuracy. After each round the first
  // `step_eval_samples` (default 1000) are evaluated; before and after the
  // job the first `eval_samples` (0 = all).
  std::string eval_dataset;
  int64_t eval_samples = 0;
  int64_t step_eval_samples = 1000;
  std::string idx_dir = DefaultFashionMnistDir();
  // How messages name the model and the two datasets (never by path): the
  // pipeline passes "model <id>", "dataset <id>"; defaults "model",
  // "calibration dataset", "eval dataset".
  std::string model_name = "model";
  std::string calibration_name = "calibration dataset";
  std::string eval_name = "eval dataset";
  LossKind loss = LossKind::kAuto;

  PruneTargetKind target = PruneTargetKind::kFlops;
  double target_fraction = 0.5;  // in (0, 1)
  SaliencyKind saliency = SaliencyKind::kHessian;
  double latency_weight = 0;
  int64_t head_group = 1;
  int64_t mlp_group = 16;
  int64_t min_heads = 1;
  int64_t min_mlp = 16;
  int steps = 4;

  // Recovery per round; 0 steps = none.
  int recovery_steps = defaults::kRecoverySteps;
  double learning_rate = defaults::kRecoveryLearningRate;
  double temperature = 1;
  // "adam", "sgd" (momentum 0.9), or "newton": only the head (last Linear
  // layer) re-fitted by head_refit.h's regularized Newton iteration,
  // recovery_steps = its iteration cap, learning_rate unused.
  std::string optimizer = "adam";

  // Latency: batch of the timing runs (default 64); false skips every
  // timing (a kLatency target needs them).
  int64_t latency_batch = 64;
  bool measure_latency = true;

  uint64_t seed = 0;
  std::string device = "cpu";
  // Existing directory for model.pt; required.
  std::string output_dir;
};

struct PrunedBlock {
  std::string name;  // module path
  int64_t heads_before = 0, heads_after = 0;
  int64_t hidden_before = 0, hidden_after = 0;
  std::vector<int64_t> kept_heads;    // original indices
  std::vector<int64_t> kept_neurons;  // original indices
  bool prunable_heads = false;
};

// One unit as scored in the round that removed it (or the last round).
struct RankedUnit {
  int round = 0;
  std::string block;
  std::string kind;          // "head" or "mlp"
  int64_t first = 0;         // original index of the first head/neuron
  int64_t count = 0;
  double score = 0;          // the saliency kind's score
  double taylor = 0, first_order = 0, second_order = 0, magnitude = 0;
  double cost = 0;           // share of the target quantity it removes
  double latency_ms = 0;     // predicted latency it saves
  double rank_key = 0;       // what the ranking sorted by
  bool removed = false;
};

struct PruneRound {
  int round = 0;               // 1-based
  int64_t units_removed = 0;   // in this round
  int64_t macs = 0;            // per example, after the round
  int64_t params = 0;
  double predicted_latency_ms = 0;
  double loss_before_recovery = 0;  // calibration loss (saliency examples)
  double loss_after_recovery = 0;
  std::optional<double> accuracy_before_recovery;  // step eval slice
  std::optional<double> accuracy;                  // after recovery
};

struct PruneReport {
  std::string style;     // "deit", "torchvision" or "transformer" (vit.h)
  std::string saliency;  // SaliencyKindName
  std::string target;    // PruneTargetName
  double target_fraction = 0;
  bool target_met = true;
  double achieved_fraction = 0;  // of the target quantity
  std::vector<PrunedBlock> blocks;
  std::vector<PruneRound> rounds;
  std::vector<RankedUnit> ranking;  // removed units in removal order, then kept ones
  // Whole model, per example, measured on the files.
  int64_t macs_before = 0, macs_after = 0;
  int64_t params_before = 0, params_after = 0;
  int64_t bytes_before = 0, bytes_after = 0;  // parameters + buffers
  // Measured latency of a batch of `latency_batch` (median), and the latency
  // model's prediction for the pruned model. With measure_latency the
  // original and the saved model are timed alternately at the end
  // (latency_comparison); before/after are then that comparison's medians.
  int64_t latency_batch = 0;
  std::optional<double> latency_before_ms, latency_after_ms;
  std::optional<TimingComparison> latency_comparison;
  double predicted_latency_after_ms = 0;
  std::optional<double> accuracy_before, accuracy_after;
  int64_t eval_examples = 0;
  int64_t hvp_count = 0;
  std::vector<std::string> warnings;
  std::string runtime;
  double wall_seconds = 0;
  std::string model_path;  // model.pt in output_dir
};

// Runs the pruning described by `options`. `sink` (may be null) gets log
// lines, a partial result "round" after each round, and the stages that
// run, numbered among themselves (common/stages.h): with eval data
// "evaluation" (the original model), with measure_latency "latency" (one
// unit per block), "round 1" .. "round <steps>" (saliency, surgery,
// recovery; progress in recovery steps), and with eval data "evaluation"
// (the saved model). E.g. 2 steps: evaluation 0/5, latency 1/5, round 1 2/5,
// round 2 3/5, evaluation 4/5. A round that reaches the per-block minimums
// short of its goal ends the rounds: the stages after it are renumbered
// (round 1 2/5 stops, evaluation 3/4). Errors from a stage name it.
// `cancel` may be null.
absl::StatusOr<PruneReport> RunPruning(const PruneOptions& options, ProgressSink* sink,
                                       const CancelToken* cancel);

// Whether RunPruning can find the structure it prunes in the TorchScript
// model at `path`: the run's own discovery (vit.h: FindVitBlocks), without
// a forward pass. OK when it can; FAILED_PRECONDITION with the reason the
// run would fail with ("not a transformer PRUNE can prune: ...; found:
// <what came close and what it lacks>");
// INVALID_ARGUMENT when the file does not load. The server runs it on
// upload, in the sandboxed child that describes the model, and PRUNE's
// submit check refuses with that reason.
absl::Status CheckPrunableModelFile(const std::string& path);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_PRUNE_H_
