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
};

// "auto", "cross_entropy", "pseudo_label", "mse".
const char* LossKindName(LossKind kind);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_LOSS_KIND_H_
