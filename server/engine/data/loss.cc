#include "server/engine/data/loss.h"

#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/common/finite.h"
#include "server/engine/model/model.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

std::string Shape(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

bool IsInteger(const torch::Tensor& t) {
  return !at::isFloatingType(t.scalar_type()) &&
         !at::isComplexType(t.scalar_type()) && t.scalar_type() != torch::kBool;
}

std::vector<int64_t> Without(const torch::Tensor& t, int64_t dim) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes.erase(sizes.begin() + dim);
  return sizes;
}

// The class axis of `output`, read from the targets' shape: dim 1 when the
// targets are the output's shape without dim 1 (PyTorch's layout, [N, C] or
// [N, C, d1, ...]); the last dim when they are its shape without the last
// ([N, T, V] from a language model with targets [N, T]). An output that
// reads both ways with different meanings ([N, 5, 5] against [N, 5]) is
// refused rather than guessed.
absl::StatusOr<int64_t> ClassDim(const torch::Tensor& output,
                                 const torch::Tensor& targets) {
  const int64_t last = output.dim() - 1;
  if (output.dim() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cross-entropy needs logits [N, C], [N, C, d1, ...] or [N, T, V]; "
        "the model returned ",
        Shape(output)));
  }
  const std::vector<int64_t> got = targets.sizes().vec();
  const bool dim1 = got == Without(output, 1);
  const bool dim_last = last > 1 && got == Without(output, last);
  if (dim1 && dim_last) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cross-entropy cannot tell the class axis of logits ", Shape(output),
        " from targets ", Shape(targets), ": classes on dim 1 and on the last "
        "dim both fit; give the class axis a size no other axis has"));
  }
  if (dim1) return 1;
  if (dim_last) return last;
  return absl::InvalidArgumentError(absl::StrCat(
      "cross-entropy targets ", Shape(targets), " do not fit the model output ",
      Shape(output), ": targets must be the output's shape without its class "
      "axis, dim 1 (logits [N, C, ...], targets [N, ...]) or the last "
      "(logits [N, T, V], targets [N, T])"));
}

// Cross-entropy, mean over every position; classes on the last dim are
// flattened to [N·T, V] against [N·T].
absl::StatusOr<torch::Tensor> CrossEntropy(const torch::Tensor& output,
                                           const torch::Tensor& targets) {
  ASSIGN_OR_RETURN(int64_t dim, ClassDim(output, targets));
  const int64_t classes = output.size(dim);
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>();
    const int64_t hi = targets.max().item<int64_t>();
    if (lo < 0 || hi >= classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "class targets range over [", lo, ", ", hi, "] but the model has ",
          classes, " outputs per ", dim == 1 ? "example" : "position",
          " (classes on dim ", dim, " of ", Shape(output), ")"));
    }
  }
  torch::Tensor labels = targets.to(torch::kLong);
  if (dim == 1) return at::cross_entropy_loss(output, labels);
  return at::cross_entropy_loss(output.reshape({-1, classes}),
                                labels.reshape({-1}));
}

// Pseudo-labels take the argmax over the class axis, which only [N, C]
// logits name without targets.
absl::Status CheckPseudoLabelLogits(const torch::Tensor& output) {
  if (output.dim() == 2) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "pseudo-labels need logits [N, C]; the model returned ", Shape(output),
      output.dim() > 2
          ? ", whose class axis could be dim 1 (PyTorch's [N, C, ...]) or the "
            "last ([N, T, V] of a language model): give the dataset integer "
            "targets, whose shape says which"
          : ""));
}

// Targets of a token-id position that the loss skips (PyTorch's default).
constexpr int64_t kIgnoredTarget = -100;

// Next-token cross-entropy: logits [N, T, V] at positions 0..T-2 against
// `targets` [N, T-1] (the inputs at 1..T-1, kIgnoredTarget where ignored).
// `reduction` is at::Reduction::Mean or Sum.
absl::StatusOr<torch::Tensor> NextTokenLoss(const torch::Tensor& output,
                                            const torch::Tensor& targets,
                                            int64_t reduction) {
  if (output.dim() != 3 || targets.dim() != 2 || output.size(0) != targets.size(0) ||
      output.size(1) != targets.size(1) + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "language modeling needs logits [N, T, V] for token ids [N, T]; the model returned ",
        Shape(output), " for ", targets.defined() && targets.dim() == 2
                                    ? absl::StrCat("[", targets.size(0), ", ",
                                                   targets.size(1) + 1, "]")
                                    : std::string("its inputs")));
  }
  const int64_t vocab = output.size(2);
  torch::Tensor kept = targets.masked_select(targets.ne(kIgnoredTarget));
  if (kept.numel() > 0) {
    const int64_t lo = kept.min().item<int64_t>();
    const int64_t hi = kept.max().item<int64_t>();
    if (lo < 0 || hi >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ids range over [", lo, ", ", hi, "] but the model has ", vocab,
          " logits per position (", Shape(output), ")"));
    }
  }
  const int64_t steps = targets.size(1);
  return at::cross_entropy_loss(output.narrow(1, 0, steps).reshape({-1, vocab}),
                                targets.reshape({-1}), /*weight=*/{}, reduction,
                                kIgnoredTarget);
}

// The targets of language modeling for token ids `inputs` [n, T]: the ids
// at 1..T-1 as int64, kIgnoredTarget where they equal `ignore_id`.
absl::StatusOr<torch::Tensor> NextTokenTargets(const torch::Tensor& inputs,
                                               std::optional<int64_t> ignore_id) {
  if (!IsInteger(inputs) || inputs.dim() != 2 || inputs.size(1) < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "language modeling needs integer token ids [N, T] with T >= 2 as inputs; the dataset "
        "holds ",
        DtypeName(inputs.scalar_type()), " ", Shape(inputs)));
  }
  torch::Tensor next = inputs.narrow(1, 1, inputs.size(1) - 1).to(torch::kLong);
  if (ignore_id.has_value()) {
    next = next.masked_fill(next.eq(*ignore_id), kIgnoredTarget);
  }
  return next;
}

// Language modeling predicts the inputs: a dataset's targets, if any, must
// be those same token ids.
absl::Status CheckLanguageModelingData(const torch::Tensor& inputs,
                                       const torch::Tensor& targets) {
  RETURN_IF_ERROR(NextTokenTargets(inputs.narrow(0, 0, 1), std::nullopt).status());
  if (targets.defined() &&
      (targets.sizes() != inputs.sizes() || !IsInteger(targets) ||
       !at::equal(targets.to(torch::kLong), inputs.to(torch::kLong)))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "language modeling predicts each input token from those before it; the dataset's "
        "targets ", Shape(targets), " differ from its inputs ", Shape(inputs),
        " (leave them out, or store the inputs again)"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* LossKindName(LossKind kind) {
  switch (kind) {
    case LossKind::kAuto:
      return "auto";
    case LossKind::kCrossEntropy:
      return "cross_entropy";
    case LossKind::kPseudoLabel:
      return "pseudo_label";
    case LossKind::kMse:
      return "mse";
    case LossKind::kLanguageModeling:
      return "language_modeling";
  }
  return "unknown";
}

absl::StatusOr<LossKind> ResolveLossKind(LossKind requested,
                                         const torch::Tensor& targets) {
  const bool has = targets.defined();
  switch (requested) {
    case LossKind::kAuto:
      if (!has) return LossKind::kPseudoLabel;
      return IsInteger(targets) ? LossKind::kCrossEntropy : LossKind::kMse;
    case LossKind::kCrossEntropy:
      if (!has || !IsInteger(targets)) {
        return absl::InvalidArgumentError(
            "cross-entropy loss needs integer class targets in the dataset");
      }
      return requested;
    case LossKind::kPseudoLabel:
      return requested;
    case LossKind::kMse:
      if (!has || !at::isFloatingType(targets.scalar_type())) {
        return absl::InvalidArgumentError(
            "MSE loss needs floating-point targets in the dataset");
      }
      return requested;
    case LossKind::kLanguageModeling:
      return requested;  // PrepareBatches checks the inputs and targets
  }
  return absl::InvalidArgumentError("unknown loss kind");
}

absl::StatusOr<torch::Tensor> RunForward(torch::jit::Module& module,
                                         const ModelInputs& inputs) {
  c10::IValue out;
  try {
    // Without the graph optimiser: the profiling executor swaps in a
    // re-optimised graph after its profiling runs, which changes rounding
    // from one call to the next (the same seed must give the same numbers),
    // and its symbolic-autodiff backward is not always twice differentiable.
    // The flag is thread-local.
    torch::jit::GraphOptimizerEnabledGuard no_optimizer(false);
    out = inputs.Forward(module);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's forward failed on inputs ", inputs.Describe(),
                     ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's forward failed on inputs ", inputs.Describe(),
                     ": ", e.what()));
  }
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple()) {
    const auto& elements = out.toTupleRef().elements();
    if (!elements.empty() && elements[0].isTensor()) {
      return elements[0].toTensor();
    }
  }
  if (out.isList()) {
    c10::List<c10::IValue> list = out.toList();
    if (!list.empty() && list.get(0).isTensor()) return list.get(0).toTensor();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the model's forward returned ", out.tagKind(), ", not a tensor"));
}

absl::StatusOr<torch::Tensor> ComputeLoss(LossKind kind,
                                          const torch::Tensor& output,
                                          const torch::Tensor& targets) {
  try {
    switch (kind) {
      case LossKind::kPseudoLabel: {
        RETURN_IF_ERROR(CheckPseudoLabelLogits(output));
        torch::Tensor labels = output.detach().argmax(1);
        return at::cross_entropy_loss(output, labels);
      }
      case LossKind::kCrossEntropy: {
        if (!targets.defined()) {
          return absl::InvalidArgumentError("cross-entropy needs targets");
        }
        return CrossEntropy(output, targets);
      }
      case LossKind::kMse: {
        if (!targets.defined() || targets.numel() != output.numel()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "MSE targets ",
              targets.defined() ? Shape(targets) : std::string("(none)"),
              " do not fit the model output ", Shape(output)));
        }
        return at::mse_loss(
            output, targets.reshape(output.sizes()).to(output.scalar_type()));
      }
      case LossKind::kLanguageModeling:
        if (!targets.defined()) {
          return absl::InvalidArgumentError("language modeling needs the batch's next tokens");
        }
        return NextTokenLoss(output, targets, at::Reduction::Mean);
      case LossKind::kAuto:
        break;
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        LossKindName(kind), " loss failed: ", e.what_without_backtrace()));
  }
  return absl::InvalidArgumentError("ComputeLoss needs a resolved loss kind");
}

absl::StatusOr<PreparedBatches> PrepareBatches(torch::jit::Module& module,
                                               const ModelInputs& inputs,
                                               const torch::Tensor& targets,
                                               int64_t batch_size,
                                               LossKind loss,
                                               std::optional<int64_t> ignore_id) {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size must be at least 1, got ", batch_size));
  }
  if (!inputs.defined() || inputs.first.dim() < 1 || inputs.examples() == 0) {
    return absl::InvalidArgumentError("the dataset has no examples");
  }
  const int64_t n = inputs.examples();
  if (targets.defined() && (targets.dim() < 1 || targets.size(0) != n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "targets ", Shape(targets), " do not match inputs ", Shape(inputs.first)));
  }
  ASSIGN_OR_RETURN(LossKind kind, ResolveLossKind(loss, targets));
  const bool lm = kind == LossKind::kLanguageModeling;
  if (lm) RETURN_IF_ERROR(CheckLanguageModelingData(inputs.first, targets));

  // Inputs follow the model: same device, and floating inputs in the dtype
  // of its first floating parameter (a float64 model for exact tests).
  c10::Device device(torch::kCPU);
  c10::optional<c10::ScalarType> float_type;
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    device = p.device();
    if (at::isFloatingType(p.scalar_type())) {
      float_type = p.scalar_type();
      break;
    }
  }

  PreparedBatches prepared;
  prepared.num_examples = n;
  prepared.loss =
      kind == LossKind::kPseudoLabel ? LossKind::kCrossEntropy : kind;
  prepared.pseudo_labels = kind == LossKind::kPseudoLabel;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t size = std::min(batch_size, n - start);
    Batch batch;
    batch.size = size;
    try {
      batch.inputs = inputs.Narrow(start, size).To(device, float_type);
      if (lm) {
        ASSIGN_OR_RETURN(batch.targets, NextTokenTargets(batch.inputs.first, ignore_id));
      } else if (targets.defined() && kind != LossKind::kPseudoLabel) {
        batch.targets = targets.narrow(0, start, size).to(device);
        if (kind == LossKind::kMse && float_type.has_value()) {
          batch.targets = batch.targets.to(*float_type);
        } else if (kind == LossKind::kCrossEntropy) {
          batch.targets = batch.targets.to(torch::kLong);
        }
      }
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot move batch to ", device.str(), ": ",
                       e.what_without_backtrace()));
    }
    if (kind == LossKind::kPseudoLabel) {
      torch::NoGradGuard no_grad;
      ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, batch.inputs));
      RETURN_IF_ERROR(CheckPseudoLabelLogits(out));
      batch.targets = out.argmax(1);
    }
    prepared.batches.push_back(std::move(batch));
  }
  return prepared;
}

absl::StatusOr<torch::Tensor> TopOneCorrect(torch::jit::Module& module,
                                            const ModelInputs& inputs,
                                            const torch::Tensor& targets,
                                            const std::string& device) {
  constexpr int64_t kEvalBatch = 256;
  if (!targets.defined() || at::isFloatingType(targets.scalar_type())) {
    return absl::InvalidArgumentError("eval_dataset: accuracy needs class targets");
  }
  const int64_t n = inputs.examples();
  std::vector<torch::Tensor> correct;
  try {
    c10::InferenceMode guard;
    for (int64_t start = 0; start < n; start += kEvalBatch) {
      const int64_t len = std::min(kEvalBatch, n - start);
      ModelInputs x = inputs.Narrow(start, len);
      if (!device.empty()) x = x.To(torch::Device(device));
      torch::Tensor out = x.Forward(module).toTensor();
      // argmax of a NaN row is an arbitrary class: no accuracy to report.
      RETURN_IF_ERROR(CheckFiniteExamples(out, "the model's outputs on the eval data", start));
      torch::Tensor pred = out.argmax(1).to(torch::kCPU);
      torch::Tensor y = targets.narrow(0, start, len).to(torch::kCPU).to(torch::kLong);
      correct.push_back(pred.eq(y.reshape(pred.sizes())));
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval data do not fit the model: ", e.what_without_backtrace()));
  }
  if (correct.empty()) return torch::zeros({0}, torch::kBool);
  return torch::cat(correct);
}

absl::StatusOr<double> TopOneAccuracy(torch::jit::Module& module, const ModelInputs& inputs,
                                      const torch::Tensor& targets, const std::string& device) {
  ASSIGN_OR_RETURN(torch::Tensor correct, TopOneCorrect(module, inputs, targets, device));
  return PercentTrue(correct);
}

absl::StatusOr<double> Perplexity(torch::jit::Module& module, const ModelInputs& inputs,
                                  std::optional<int64_t> ignore_id, const std::string& device) {
  constexpr int64_t kEvalBatch = 64;
  if (!inputs.defined() || inputs.first.dim() < 1 || inputs.examples() == 0) {
    return absl::InvalidArgumentError("eval_dataset: no examples");
  }
  double total = 0;
  int64_t tokens = 0;
  try {
    c10::InferenceMode guard;
    const int64_t n = inputs.examples();
    for (int64_t start = 0; start < n; start += kEvalBatch) {
      ModelInputs x = inputs.Narrow(start, std::min(kEvalBatch, n - start));
      if (!device.empty()) x = x.To(torch::Device(device));
      ASSIGN_OR_RETURN(torch::Tensor targets, NextTokenTargets(x.first, ignore_id));
      ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, x));
      ASSIGN_OR_RETURN(torch::Tensor sum, NextTokenLoss(out, targets, at::Reduction::Sum));
      total += sum.item<double>();
      tokens += targets.ne(kIgnoredTarget).sum().item<int64_t>();
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval data do not fit the model: ", e.what_without_backtrace()));
  }
  if (tokens == 0) {
    return absl::InvalidArgumentError("eval_dataset: every next token is the ignored id");
  }
  const double perplexity = std::exp(total / static_cast<double>(tokens));
  RETURN_IF_ERROR(CheckFiniteValue(perplexity, "the perplexity on the eval data"));
  return perplexity;
}

double PercentTrue(const torch::Tensor& mask) {
  const int64_t n = mask.numel();
  return n > 0 ? 100.0 * static_cast<double>(mask.sum().item<int64_t>()) / static_cast<double>(n)
               : 0.0;
}

}  // namespace compress::engine
