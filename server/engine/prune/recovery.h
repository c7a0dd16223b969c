// Recovery fine-tuning after pruning: distillation from the original model
// (torch-including header).
//
// Loss per batch: T²·KL(softmax(t/T) ‖ softmax(s/T)) with t the teacher's
// and s the student's logits, softmax over the last dim (a language
// model's [N, T, V] logits: per position, averaged over positions), plus
// cross-entropy against the labels when `targets` holds class indices [N]. Batches are drawn without replacement in
// a seeded random order (a new permutation per epoch); the learning rate
// decays from `learning_rate` to 0 on a cosine over the steps.
#ifndef COMPRESS_ENGINE_PRUNE_RECOVERY_H_
#define COMPRESS_ENGINE_PRUNE_RECOVERY_H_

#include <torch/script.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/data/inputs.h"
#include "server/util/defaults.h"
#include "server/engine/common/progress.h"

namespace compress::engine {

struct RecoveryOptions {
  int steps = defaults::kRecoverySteps;
  double learning_rate = defaults::kRecoveryLearningRate;
  double temperature = 1;
  std::string optimizer = "adam";  // "adam" or "sgd" (momentum 0.9)
  int64_t batch_size = 64;
  uint64_t seed = 0;
};

struct RecoveryStats {
  double first_loss = 0;  // mean over the first 10% of steps
  double last_loss = 0;   // mean over the last 10%
};

// Fine-tunes `student` in place (train mode during, eval mode after) on
// `inputs` with the precomputed `teacher_logits` ([N, classes] or [N, T, V], same
// device) and optional `targets`. Progress goes to `sink` under `stage`.
// INVALID_ARGUMENT for an unknown optimizer or data that do not fit;
// FAILED_PRECONDITION when a step's loss is NaN or Inf (diverged).
absl::StatusOr<RecoveryStats> Recover(torch::jit::Module& student, const ModelInputs& inputs,
                                      const torch::Tensor& teacher_logits,
                                      const torch::Tensor& targets, const RecoveryOptions& options,
                                      ProgressSink* sink, const std::string& stage,
                                      const CancelToken* cancel);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_RECOVERY_H_
