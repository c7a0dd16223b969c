// Which loss calibration work differentiates (torch-free; see loss.h).
#ifndef COMPRESS_ENGINE_DATA_LOSS_KIND_H_
#define COMPRESS_ENGINE_DATA_LOSS_KIND_H_

namespace compress::engine {

enum class LossKind {
  kAuto,          // cross-entropy with integer targets, MSE with floating
                  // targets, pseudo-labels without targets
  kCrossEntropy,  // output [N, C, ...] logits, integer targets [N, ...]
  kPseudoLabel,   // cross-entropy against argmax over dim 1 of the output
  kMse,           // mean squared error, targets shaped like the output
  // Next-token cross-entropy of a language model: logits [N, T, V] at
  // positions 0..T-2 against the input token ids [N, T] at 1..T-1 (the
  // dataset's targets, if any, must equal its inputs); mean over the
  // predicted tokens, a padding id (when set) excluded.
  kLanguageModeling,
};

// "auto", "cross_entropy", "pseudo_label", "mse", "language_modeling".
const char* LossKindName(LossKind kind);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_LOSS_KIND_H_
