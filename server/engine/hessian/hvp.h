// Hessian-vector products of the calibration loss (torch-including header).
//
// An HvpOperator is the linear map v -> H v, where H is the Hessian (or, for
// kGaussNewton, the generalised Gauss-Newton matrix) of the mean loss over
// prepared calibration batches with respect to the model's trainable
// parameters (param_set.h). Over several batches the products are averaged
// with weights n_b / N, which is exactly the product for the full-data mean
// loss. The model must be in eval mode (LoadModel does that): BatchNorm uses
// its running statistics and dropout is off, so H is a fixed matrix.
//
// Methods and their accuracy (v any vector, H the exact Hessian):
//
//  kExact: double backward. g = grad(L, θ, create_graph) once; Hv =
//    grad(g·v, θ). Exact up to float rounding (measured 2-7e-16 relative
//    in float64 on the tiny test models against their full Hessians). Costs one
//    extra backward through the first-order graph per product; needs every op
//    to have a double backward, else Apply fails with FAILED_PRECONDITION
//    naming the op. Memory: the first-order graph of each cached batch.
//
//  kFiniteDifference: differences of first-order gradients at perturbed
//    parameters, on a private copy of the module (the caller's module is
//    never modified), computed in float64 unless fd_in_float64 is false.
//    Step ε = h · (1 + ‖θ‖) / ‖v‖ with h = sqrt(u) for the forward scheme,
//    (g(θ+εv) − g(θ)) / ε, reusing g(θ) computed once; and h = cbrt(u) for
//    the central scheme, (g(θ+εv) − g(θ−εv)) / 2ε, which costs two
//    gradients per product; u is the machine epsilon of the compute dtype
//    (2.2e-16 float64, 1.2e-7 float32). Error bound for a smooth loss:
//    ‖Hv_fd − Hv‖ ≲ ε/2 · ‖∇³L[v,v]‖ + 2u·‖g‖/ε (forward), O(ε²) + u‖g‖/ε
//    (central), i.e. relative error O(sqrt(u)) resp. O(u^(2/3)) when third
//    derivatives are of the order of the second. ReLU/max-pool models are
//    only piecewise smooth: units whose pre-activation lies within the step
//    of their kink add errors that the exact Hessian does not see, and
//    directions concentrated on a few parameters (biases, BatchNorm: where
//    power iteration converges) move many units at once.
//    Measured ‖Hv_fd − Hv‖/‖Hv‖ on the tiny test models: float64 compute
//    2-3e-8 forward, 3-6e-11 central, also for the float32 CNN along its top
//    eigenvector (tests assert ≤ 1e-6 / ≤ 1e-8); float32 compute on the
//    float32 CNN: 1.5e-3 along random directions (test: ≤ 1e-2) but 0.6
//    along the top eigenvector. Needs no double backward, and only one
//    first-order graph is alive at a time.
//
//  kGaussNewton: G v = Jᵀ H_out J v, with J = ∂z/∂θ of the model output z
//    and H_out the Hessian of the loss in z: for cross-entropy
//    (diag(p) − p pᵀ)/M per output row (p = softmax, M = number of rows),
//    for MSE 2/K · I (K = number of output elements). J v comes from two
//    vector-Jacobian products (the "double-backward trick" with a dummy
//    cotangent), Jᵀ(·) from one (measured 2-4e-16 relative to an explicit
//    Jᵀ H_out J in float64). G is positive semi-definite. It is not an
//    approximation with a vanishing error: G − H = Σ (∂L/∂z_k) ∇²z_k, which
//    is zero when the model is linear in θ (then G == H exactly, a linear
//    model with MSE in the tests) or the residuals ∂L/∂z vanish, and can be
//    as large as H itself for an untrained network (measured ‖Gv − Hv‖/‖Hv‖
//    of 0.66-0.95 on the tiny untrained test models). Needs the backward of
//    every op to be differentiable in its incoming gradient
//    (FAILED_PRECONDITION otherwise). Memory and cost as kExact.
//
//  kFisherDiagonal: D v with D = diag(Σ_n g_n g_nᵀ) / N, the diagonal of
//    the empirical Fisher, g_n the gradient of example n's loss (Σ g², as
//    HAWQ's fallback). Built once at creation with one forward + backward
//    per example (N gradients of batch 1); every product is then an
//    elementwise multiply. Needs only first derivatives. It is a different
//    matrix: F equals H only at a minimum of a well-specified model, D drops
//    every off-diagonal term, and it is positive semi-definite, so its
//    "eigenvalues" are its largest diagonal entries and its trace is
//    E‖g_n‖². Use it to rank layers when nothing else runs.
//
// Ownership: the operator keeps the module (a shared handle), its parameters
// and the batches alive. H is taken at the parameter values of the first
// product on each batch (cached graphs, the finite-difference copy): do not
// modify the model's parameters while an operator lives. Not thread-safe:
// one operator per thread.
//
//   ASSIGN_OR_RETURN(auto op, CreateHvpOperator(module, prepared, {}));
//   ParamSet v = RademacherLike(op->parameters(), gen);
//   ASSIGN_OR_RETURN(ParamSet hv, op->Apply(v));
#ifndef COMPRESS_ENGINE_HESSIAN_HVP_H_
#define COMPRESS_ENGINE_HESSIAN_HVP_H_

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/options.h"
#include "server/engine/hessian/param_set.h"

namespace compress::engine {

class HvpOperator {
 public:
  virtual ~HvpOperator() = default;
  HvpOperator(const HvpOperator&) = delete;
  HvpOperator& operator=(const HvpOperator&) = delete;

  // The product with `v`, which must have the operator's layout (a vector
  // made from parameters()). Returns fresh tensors without autograd history.
  // FAILED_PRECONDITION when the model has an op whose double backward torch
  // does not implement (message names it), or when a batch's loss or the
  // product is not finite ("the loss on batch 0 is NaN", "Hessian-vector
  // product 12 has 3 non-finite values (NaN) in parameter fc1.weight");
  // INVALID_ARGUMENT when the data do not fit the model; INTERNAL for other
  // torch errors.
  absl::StatusOr<ParamSet> Apply(const ParamSet& v);

  // H_kk v_k: the product with a vector that is `v` in parameter tensor
  // `tensor` (k, an index into layout().names; `v` of its shape) and zero
  // elsewhere, read back in the same tensor. Equals Apply's result in that
  // slot; the exact operator differentiates only with respect to that
  // tensor (a double backward through the part of the graph that depends
  // on it: cheaper for later layers), the others compute the full product.
  // Counts as one product. Errors as Apply; INVALID_ARGUMENT for a bad
  // index or shape.
  absl::StatusOr<torch::Tensor> ApplyToTensor(int tensor, const torch::Tensor& v);

  virtual HvpMethod method() const = 0;
  // Products computed so far (each Apply counts one, whatever the batches).
  int64_t num_applications() const { return num_applications_; }
  // The point θ at which H is taken: the module's live parameter tensors.
  const ParamSet& parameters() const { return params_; }
  const ParamLayout& layout() const { return *params_.layout; }
  int64_t num_examples() const { return num_examples_; }

 protected:
  HvpOperator(ParamSet params, PreparedBatches batches);
  virtual absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) = 0;
  // Default: ApplyImpl with zeros outside `tensor`.
  virtual absl::StatusOr<torch::Tensor> ApplyToTensorImpl(int tensor, const torch::Tensor& v);
  // n_b / N for batch b.
  double weight(size_t b) const;

  ParamSet params_;
  PreparedBatches batches_;

 private:
  int64_t num_applications_ = 0;
  int64_t num_examples_ = 0;
};

// Builds the operator for `module` (eval mode) on `batches` (PrepareBatches).
// The finite-difference operator clones the module and computes the base
// gradient here (one forward + backward per batch); the Fisher operator
// computes its diagonal here (one per example, checking `cancel` before
// each); the others only collect the parameters. FAILED_PRECONDITION when
// the model has no trainable parameters, or for kGaussNewton with a loss it
// does not support.
absl::StatusOr<std::unique_ptr<HvpOperator>> CreateHvpOperator(torch::jit::Module module,
                                                               PreparedBatches batches,
                                                               const HvpOptions& options,
                                                               const CancelToken* cancel = nullptr);

// Self-check of a finite-difference operator: the largest
// ‖Hv_forward − Hv_central‖ / ‖Hv_central‖ over `probes` Rademacher vectors
// from `gen` (three gradients each; not counted in num_applications). On a
// smooth loss this is about the forward scheme's own error; when the step
// crosses ReLU kinks the two schemes see different kinks and disagree
// wildly. INVALID_ARGUMENT when `op` is not a finite-difference operator.
absl::StatusOr<double> FiniteDifferenceSelfCheck(HvpOperator& op, at::Generator& gen, int probes);

// Turns a LibTorch error from differentiating the model into a Status:
// FAILED_PRECONDITION naming the op when its derivative is not implemented
// ("the derivative for '_cdist_backward' is not implemented"), otherwise
// `code` with `context` and torch's message.
absl::Status AutogradError(const c10::Error& error, const std::string& context,
                           absl::StatusCode code = absl::StatusCode::kInternal);

// True for the FAILED_PRECONDITION that AutogradError returns for a missing
// double backward (the case where an analysis may fall back to finite
// differences); false for every other status.
bool IsMissingDoubleBackward(const absl::Status& status);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_HVP_H_
