// Calibration batches and the loss that Hessian and sensitivity work
// differentiate (torch-including header).
//
// The loss is always a mean over the batch (over every output element for
// MSE), so that a dataset split into batches of sizes n_b gives the
// full-data loss as sum_b (n_b / N) * loss_b; Hessian-vector products over
// many batches are averaged with the same weights.
//
// Pseudo-labels (cross-entropy against the model's own argmax, for data
// without targets) are computed once, at the unperturbed parameters and
// without autograd, by PrepareBatches: afterwards every batch carries integer
// targets and the loss is plain cross-entropy, so finite differences and
// curvature see a fixed, smooth function.
//
//   ASSIGN_OR_RETURN(LoadedDataset data, LoadDataset(path, 256));
//   ASSIGN_OR_RETURN(PreparedBatches prepared,
//                    PrepareBatches(module, data.inputs, data.targets,
//                                   /*batch_size=*/32, LossKind::kAuto));
//   for (const Batch& b : prepared.batches) {
//     ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, b.inputs));
//     ASSIGN_OR_RETURN(torch::Tensor loss, ComputeLoss(prepared.loss, out,
//                                                      b.targets));
//   }
//
// Functions are thread-safe as long as callers do not share a module across
// threads while it runs.
#ifndef COMPRESS_ENGINE_DATA_LOSS_H_
#define COMPRESS_ENGINE_DATA_LOSS_H_

#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/data/inputs.h"
#include "server/engine/data/loss_kind.h"

namespace compress::engine {

// The concrete loss for `requested` given the dataset's targets (undefined
// when it has none); never returns kAuto. INVALID_ARGUMENT when the request
// does not fit the targets (cross-entropy without integer targets, MSE
// without floating targets).
absl::StatusOr<LossKind> ResolveLossKind(LossKind requested,
                                         const torch::Tensor& targets);

struct Batch {
  ModelInputs inputs;     // [n, ...] on the model's device; floating inputs
                          // in the model's float dtype, integer ones as stored
  torch::Tensor targets;  // [n, ...] on the model's device (int64 or float)
  int64_t size = 0;       // n
};

struct PreparedBatches {
  // kCrossEntropy, kMse or kLanguageModeling: kPseudoLabel has become
  // kCrossEntropy with the labels stored in the batches; language modeling's
  // batches carry the next tokens [n, T-1] (-100 at ignored ids) as targets.
  LossKind loss = LossKind::kCrossEntropy;
  bool pseudo_labels = false;  // true when the labels came from the model
  std::vector<Batch> batches;
  int64_t num_examples = 0;
};

// Splits `inputs` (every tensor of it)/`targets` (first dimension =
// examples) into consecutive
// batches of `batch_size` (the last one may be smaller), moves them to the
// device of the module's first parameter and casts floating inputs to its
// dtype, resolves `loss` and, for pseudo-labels, runs the model once per
// batch without autograd to fix the labels. INVALID_ARGUMENT for a
// batch_size < 1, no examples, targets that do not fit the loss, pseudo-labels
// for a model whose logits are not [N, C] (see ComputeLoss), or a forward
// pass that fails on the data (with torch's message). Integer inputs (token
// ids) keep their dtype. Language modeling needs integer inputs [N, T],
// T >= 2, and targets absent or equal to the inputs; next tokens equal to
// `ignore_id` (padding) are left out of the loss.
absl::StatusOr<PreparedBatches> PrepareBatches(torch::jit::Module& module,
                                               const ModelInputs& inputs,
                                               const torch::Tensor& targets,
                                               int64_t batch_size,
                                               LossKind loss,
                                               std::optional<int64_t> ignore_id = std::nullopt);

// Runs `module.forward(inputs...)` (inputs.Forward) and returns its tensor
// output (the first
// element when it returns a tuple or list). INVALID_ARGUMENT with torch's
// message when the inputs do not fit the model or there is no tensor output.
// Runs the TorchScript graph unoptimised (thread-local switch), so that
// repeated calls round identically and autograd sees eager kernels only.
absl::StatusOr<torch::Tensor> RunForward(torch::jit::Module& module,
                                         const ModelInputs& inputs);

// Mean loss of `output` against `targets` for a resolved kind (kPseudoLabel
// takes the argmax of output.detach() as targets and ignores `targets`).
// Cross-entropy finds the class axis from the targets' shape: dim 1 for
// logits [N, C, d1, ...] against [N, d1, ...] (PyTorch's layout), the last
// dim for logits [N, T, V] against [N, T] (a language model's; the mean runs
// over all N·T positions). Pseudo-labels need logits [N, C]: with more
// dimensions the class axis is not known without targets.
// Language modeling takes logits [N, T, V] and the batch's next tokens
// [N, T-1] (PrepareBatches): the mean over the tokens not ignored of the
// cross-entropy of logits[:, :-1] against them.
// INVALID_ARGUMENT when shapes or class indices do not fit, or when both
// class axes fit the targets ([N, 5, 5] against [N, 5]).
absl::StatusOr<torch::Tensor> ComputeLoss(LossKind kind,
                                          const torch::Tensor& output,
                                          const torch::Tensor& targets);

// Top-1 accuracy in percent of `module` on `inputs` against class indices
// `targets`, in batches of 256 without autograd; inputs move to `device`
// ("" = where they are). INVALID_ARGUMENT without class targets or when
// the data do not fit the model.
absl::StatusOr<double> TopOneAccuracy(torch::jit::Module& module, const ModelInputs& inputs,
                                      const torch::Tensor& targets,
                                      const std::string& device = "");

// Per example, whether `module`'s top-1 prediction is right: a kBool tensor
// [N] on the CPU (its mean is TopOneAccuracy / 100). For paired comparisons
// of two models on the same examples (common/stats.h). Errors as
// TopOneAccuracy, and FAILED_PRECONDITION when the model's outputs hold a
// NaN or Inf (an argmax of them is no prediction).
absl::StatusOr<torch::Tensor> TopOneCorrect(torch::jit::Module& module,
                                            const ModelInputs& inputs,
                                            const torch::Tensor& targets,
                                            const std::string& device = "");

// Perplexity of a language model on token ids `inputs` [N, T]: exp of the
// mean next-token cross-entropy over every predicted token of every example
// (tokens equal to `ignore_id` are not predicted), in batches of 64 without
// autograd; inputs move to `device` ("" = where they are).
// INVALID_ARGUMENT when the inputs are not integer [N, T >= 2] or the model's
// output is not [N, T, V]; FAILED_PRECONDITION when it is not finite.
absl::StatusOr<double> Perplexity(torch::jit::Module& module, const ModelInputs& inputs,
                                  std::optional<int64_t> ignore_id = std::nullopt,
                                  const std::string& device = "");

// 100 × the fraction of true entries of a kBool tensor (0 when empty): the
// top-1 accuracy of a TopOneCorrect mask.
double PercentTrue(const torch::Tensor& mask);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_LOSS_H_
