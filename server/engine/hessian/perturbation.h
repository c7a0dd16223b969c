// The loss change that a perturbation of one weight tensor causes, to
// second order (torch-including header).
//
// For a model at parameters θ, calibration batches with mean loss L, and a
// perturbation δ of one weight tensor W (every other parameter unchanged):
//
//   L(θ + δ) − L(θ) = gᵀδ + ½ δᵀ H_WW δ + O(‖δ‖³),
//
// g = ∂L/∂W and H_WW the diagonal block of W in ∇²L, both at θ and averaged
// over the batches with weights n_b / N (loss.h). PerturbationModel gives
// both terms for any δ: gᵀδ from the gradient, computed once at creation,
// and ½ δᵀ H_WW δ from one Hessian-vector product restricted to W
// (HvpOperator::ApplyToTensor). This is the exact quadratic term of the
// rounding error δ = Q_b(W) − W that a mixed-precision search prices, where
// HAWQ-V2's Tr(H_WW)/n · ‖δ‖² replaces H_WW by its average eigenvalue.
// Neither is the true loss change: the remainder is third order in δ, and
// on ReLU models the loss is only piecewise quadratic.
//
// The model is copied; in the copy only the listed weights require grad, so
// the products skip every other parameter's gradient (and a weight that the
// caller's module holds without requires_grad, e.g. after BatchNorm folding,
// is still differentiated). The caller's module is never modified.
//
// Method: `options.hvp.method` (default exact). When an op has no double
// backward, the first product fails over as `options.fallback` says (as
// RunAnalysis does): to forward finite differences in float64 if their
// self-check on 2 probes passes, else to the empirical Fisher diagonal, or
// to the Fisher diagonal directly; kNone returns the FAILED_PRECONDITION.
// `method()` and `fallback_reason()` then say so.
//
//   ASSIGN_OR_RETURN(auto model, PerturbationModel::Create(
//       module, prepared, {"features.0.weight", "fc.weight"}, {}, cancel));
//   ASSIGN_OR_RETURN(PerturbationTerms t,
//                    model->Terms("fc.weight", quantized - weight));
//   double omega = t.quadratic;  // ½ δᵀ H δ
//
// Not thread-safe (one model per thread).
#ifndef COMPRESS_ENGINE_HESSIAN_PERTURBATION_H_
#define COMPRESS_ENGINE_HESSIAN_PERTURBATION_H_

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/options.h"

namespace compress::engine {

struct PerturbationTerms {
  double linear = 0;     // gᵀδ
  double quadratic = 0;  // ½ δᵀ H_WW δ
};

struct PerturbationModelOptions {
  // Products: method default kExact. Set max_cached_batches to the number
  // of batches to keep every first-order graph (memory) instead of
  // recomputing it for each product; default 1.
  HvpOptions hvp;
  // When the exact (or Gauss-Newton) product is missing a double backward;
  // default finite differences (self-checked), then the Fisher diagonal.
  HvpFallback fallback = HvpFallback::kFiniteDifference;
  // Seed of the finite-difference self-check's probes; default 0.
  uint64_t seed = 0;
};

class PerturbationModel {
 public:
  // `weights`: fully qualified parameter names ("features.0.weight"), each a
  // floating parameter of `module` (eval mode). NOT_FOUND naming a missing
  // one; INVALID_ARGUMENT for data that do not fit; CANCELLED /
  // DEADLINE_EXCEEDED from `cancel`. One forward and backward per batch.
  static absl::StatusOr<std::unique_ptr<PerturbationModel>> Create(
      const torch::jit::Module& module, PreparedBatches batches,
      const std::vector<std::string>& weights, const PerturbationModelOptions& options,
      const CancelToken* cancel = nullptr);

  PerturbationModel(const PerturbationModel&) = delete;
  PerturbationModel& operator=(const PerturbationModel&) = delete;

  // gᵀδ and ½ δᵀ H_WW δ for δ (W's shape) added to weight `weight`; one
  // product. NOT_FOUND for a weight not given to Create; INVALID_ARGUMENT
  // for a shape mismatch; FAILED_PRECONDITION as the class comment says.
  absl::StatusOr<PerturbationTerms> Terms(const std::string& weight, const torch::Tensor& delta);

  // The column of the Hessian blocks that δ (W's shape, added to weight
  // `weight`) meets: H_{W',W} δ for every perturbed weight W', in the order
  // of weights() (the module's parameter order), each of W''s shape. One
  // product over all perturbed weights, so for perturbations δ_i of weight
  // i and δ_j of weight j the cross term δ_iᵀ H_ij δ_j of ½ δᵀHδ (δ the
  // sum) is dot(δ_i, Column(j, δ_j)[i]): a joint mixed-precision search
  // gets every cross term of one (layer, width) from one product. The
  // entry for W itself equals Terms' product (2 · quadratic = δᵀ · it).
  // Errors as Terms.
  absl::StatusOr<std::vector<torch::Tensor>> Column(const std::string& weight,
                                                    const torch::Tensor& delta);
  // The perturbed weights, in the order Column returns them.
  const std::vector<std::string>& weights() const { return op_->layout().names; }

  // The method the products use (after a fallback, the one fallen back to).
  HvpMethod method() const { return op_->method(); }
  // Why the method changed; empty when it did not.
  const std::string& fallback_reason() const { return fallback_reason_; }
  // Products computed so far, over every operator used.
  int64_t hvp_count() const { return earlier_hvps_ + op_->num_applications(); }

 private:
  PerturbationModel(torch::jit::Module copy, PreparedBatches batches,
                    PerturbationModelOptions options)
      : copy_(std::move(copy)), batches_(std::move(batches)), options_(std::move(options)) {}
  // The index of `weight` in weights(); NOT_FOUND when it is not there.
  absl::StatusOr<int> IndexOf(const std::string& weight) const;
  // Replaces op_ after a missing double backward, as options_.fallback says.
  absl::Status FallBack(const absl::Status& why);

  torch::jit::Module copy_;
  PreparedBatches batches_;
  PerturbationModelOptions options_;
  std::unique_ptr<HvpOperator> op_;
  std::vector<torch::Tensor> gradient_;  // per tensor of op_'s layout
  std::string fallback_reason_;
  int64_t earlier_hvps_ = 0;
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_PERTURBATION_H_
