#include "server/engine/prune/recovery.h"

#include <torch/optim.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/engine/common/finite.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/param_set.h"
#include "server/util/status_macros.h"

namespace compress::engine {

absl::StatusOr<RecoveryStats> Recover(torch::jit::Module& student, const ModelInputs& inputs,
                                      const torch::Tensor& teacher_logits,
                                      const torch::Tensor& targets, const RecoveryOptions& o,
                                      ProgressSink* sink, const std::string& stage,
                                      const CancelToken* cancel) {
  RecoveryStats stats;
  if (o.steps <= 0) return stats;
  std::vector<torch::Tensor> params;
  for (const torch::Tensor& p : student.parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (o.optimizer == "adam") {
    optimizer = std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(o.learning_rate));
  } else if (o.optimizer == "sgd") {
    optimizer = std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(o.learning_rate).momentum(0.9));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("recovery.optimizer: \"", o.optimizer, "\" is not adam or sgd"));
  }
  const bool labels = targets.defined() && !at::isFloatingType(targets.scalar_type()) &&
                      targets.dim() == 1;
  const int64_t n = inputs.examples();
  const int64_t batch = std::min(o.batch_size, n);
  at::Generator gen = MakeGenerator(o.seed);
  torch::Tensor order;
  int64_t cursor = n;
  const int window = std::max(1, o.steps / 10);
  double first = 0, last = 0;
  const double t = o.temperature;
  student.train();
  try {
    for (int step = 0; step < o.steps; ++step) {
      if (cancel != nullptr) {
        absl::Status s = cancel->Check();
        if (!s.ok()) {
          student.eval();
          return s;
        }
      }
      if (cursor + batch > n) {
        order = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kLong));
        cursor = 0;
      }
      const torch::Tensor index = order.narrow(0, cursor, batch).to(inputs.first.device());
      cursor += batch;
      const ModelInputs x = inputs.Select(index);
      const torch::Tensor teacher = teacher_logits.index_select(0, index);
      ASSIGN_OR_RETURN(torch::Tensor s, RunForward(student, x));
      torch::Tensor loss =
          torch::kl_div(torch::log_softmax(s / t, -1), torch::log_softmax(teacher / t, -1),
                        at::Reduction::None, /*log_target=*/true)
              .sum(-1)
              .mean() *
          (t * t);
      if (labels) {
        loss = loss + torch::cross_entropy_loss(s, targets.index_select(0, index).to(s.device()));
      }
      // Cosine decay from the learning rate to 0 over the steps.
      const double lr =
          o.learning_rate * 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / o.steps));
      for (torch::optim::OptimizerParamGroup& g : optimizer->param_groups()) {
        g.options().set_lr(lr);
      }
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        student.eval();
        return absl::FailedPreconditionError(absl::StrCat(
            "recovery fine-tuning diverged: the loss at step ", step, " is ", NonFiniteName(value),
            " (learning rate ", o.learning_rate, "; try a smaller one)"));
      }
      if (step < window) first += value / window;
      if (step >= o.steps - window) last += value / window;
      if (sink != nullptr && ((step + 1) % 10 == 0 || step + 1 == o.steps)) {
        sink->Progress(stage, step + 1, o.steps);
      }
    }
  } catch (const c10::Error& e) {
    student.eval();
    return absl::InvalidArgumentError(
        absl::StrCat("recovery fine-tuning failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // torch::jit::JITException
    student.eval();
    return absl::InvalidArgumentError(absl::StrCat("recovery fine-tuning failed: ", e.what()));
  }
  student.eval();
  stats.first_loss = first;
  stats.last_loss = last;
  return stats;
}

}  // namespace compress::engine
