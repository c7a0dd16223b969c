// Re-fitting a classifier head by a gradient-regularized Newton method
// (torch-including header).
//
// After quantization or pruning, the last Linear layer (the head, weight W
// [K, D] and bias b [K]) is fitted again on fixed features x_n (the head's
// inputs, computed once) so that the student's logits s_n = W x_n + b match
// the float model's. The loss is the distillation loss of recovery.h,
//   f(W, b) = mean_n T²·KL(softmax(t_n/T) ‖ softmax(s_n/T))
//             + mean_n CE(s_n, y_n)  (the second term only with labels),
// convex in (W, b) because s is linear in them.
//
// The iteration is the gradient-regularized Newton step (Mishchenko 2023;
// Doikov & Nesterov, "Gradient Regularization of Newton Method with Bregman
// Distances", Math. Prog. 2023, where α = 1/2) with an approximate Hessian
// H̃ and a free exponent α, the setting of Semenov, Jaggi & Doikov,
// "Gradient-Normalized Smoothness for Optimization with Approximate
// Hessians", 2025 (we had only its abstract, not its equations):
//   x⁺ = x − (H̃(x) + λ I)⁻¹ g(x),   λ = c·‖g(x)‖^α.
// The constant c adapts by the rule we implement (NOT the paper's own
// adaptive search, whose text we could not read): a trial step is accepted
// when f(x⁺) ≤ f(x); otherwise c doubles and the step is recomputed; after
// an accepted step c halves (never below `reg_min`).
//
// H̃ is one of
//  - kExact: the dense Hessian of f in (W, b), in closed form
//    (1/N) Σ_n A_n ⊗ x̃_n x̃_nᵀ with x̃ = [x; 1] and A_n the Hessian of the
//    loss in the logits. For a linear head on fixed features this IS the
//    Gauss–Newton matrix (the logits are linear in the parameters), so
//    exact and Gauss–Newton coincide. Solved densely (Cholesky); limited to
//    `max_dense_params` parameters.
//  - kKfac: the Kronecker-factored approximation Ā ⊗ S̄ (Ā = mean A_n,
//    S̄ = mean x̃x̃ᵀ), an approximate Hessian whose regularized system is
//    solved exactly through the eigendecompositions of Ā (K×K, every
//    iteration) and S̄ ((D+1)², once). Any head size.
//
//   ASSIGN_OR_RETURN(HeadFeatures hf, ComputeHeadFeatures(student, inputs));
//   ASSIGN_OR_RETURN(HeadRefitResult r,
//                    RefitHead(hf.features, teacher_logits, targets, hf.weight,
//                              hf.bias, options));
//   RETURN_IF_ERROR(SetHead(student, hf.head, r.weight, r.bias));
//
// Functions are thread-safe as long as callers do not share a module.
#ifndef COMPRESS_ENGINE_PRUNE_HEAD_REFIT_H_
#define COMPRESS_ENGINE_PRUNE_HEAD_REFIT_H_

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace compress::engine {

enum class HeadHessian { kExact, kKfac };

// "exact", "kfac".
const char* HeadHessianName(HeadHessian hessian);
absl::StatusOr<HeadHessian> ParseHeadHessian(const std::string& name);

struct RegularizedNewtonOptions {
  int iterations = 10;     // accepted steps at most; default 10
  double alpha = 0.5;      // exponent of ‖g‖ in λ = c‖g‖^α, in [0, 1]
  double reg_init = 1.0;   // c before the first step; > 0
  double reg_min = 1e-8;   // c never halves below this
  int max_doublings = 60;  // rejected trials per step before giving up
  double grad_tol = 1e-10; // stop when ‖g‖ falls below this
};

// One accepted step (or the start, iteration 0).
struct NewtonTrace {
  int iteration = 0;
  double loss = 0;       // f after the step
  double grad_norm = 0;  // ‖g‖ at the point the step started from
  double lambda = 0;     // λ of the accepted trial
  int rejected = 0;      // trials rejected before it
  double seconds = 0;    // wall time since the start
};

// The local model at x: f(x), g(x), and a solver of (H̃(x) + λI) d = g.
struct LocalModel {
  double loss = 0;
  torch::Tensor grad;  // same shape as x
  std::function<absl::StatusOr<torch::Tensor>(double lambda)> solve;
};

struct NewtonProblem {
  std::function<absl::StatusOr<double>(const torch::Tensor& x)> loss;
  std::function<absl::StatusOr<LocalModel>(const torch::Tensor& x)> model;
};

// Minimises `problem` from `x0` by the rule above. `on_step` (may be empty)
// sees every accepted iterate. Returns the last iterate; INVALID_ARGUMENT
// for options out of range; FAILED_PRECONDITION when a loss is not finite.
// Stops early (without error) when ‖g‖ < grad_tol or no trial decreases f
// within max_doublings.
absl::StatusOr<torch::Tensor> MinimizeRegularizedNewton(
    const NewtonProblem& problem, const torch::Tensor& x0, const RegularizedNewtonOptions& options,
    std::vector<NewtonTrace>* trace,
    const std::function<void(const NewtonTrace&, const torch::Tensor&)>& on_step = {});

struct HeadRefitOptions {
  RegularizedNewtonOptions newton;
  HeadHessian hessian = HeadHessian::kKfac;
  double temperature = 1;            // distillation temperature T; > 0
  int64_t max_dense_params = 4096;   // kExact's limit on K·(D+1)
};

// The head loss f above as a differentiable scalar (autograd flows to
// `weight` and `bias`); `targets` undefined = no label term.
absl::StatusOr<torch::Tensor> HeadLoss(const torch::Tensor& features,
                                       const torch::Tensor& teacher_logits,
                                       const torch::Tensor& targets, const torch::Tensor& weight,
                                       const torch::Tensor& bias, double temperature);

// Loss, gradient [K·(D+1)] and dense exact Hessian [P, P] at (W, b), in
// float64, parameters ordered as the rows of [W | b] (row-major).
struct HeadDerivatives {
  double loss = 0;
  torch::Tensor grad;
  torch::Tensor hessian;
};
absl::StatusOr<HeadDerivatives> HeadLossDerivatives(const torch::Tensor& features,
                                                    const torch::Tensor& teacher_logits,
                                                    const torch::Tensor& targets,
                                                    const torch::Tensor& weight,
                                                    const torch::Tensor& bias, double temperature);

struct HeadRefitResult {
  torch::Tensor weight;  // [K, D], dtype and device of the input weight
  torch::Tensor bias;    // [K]
  double loss_before = 0;
  double loss_after = 0;
  std::vector<NewtonTrace> trace;  // iteration 0 = the start
};

// Re-fits (weight, bias) on `features` [N, D] against `teacher_logits`
// [N, K] and optional class indices `targets` [N]. INVALID_ARGUMENT for
// shapes that do not fit or kExact beyond max_dense_params (the message
// names the count and says to use kfac).
absl::StatusOr<HeadRefitResult> RefitHead(
    const torch::Tensor& features, const torch::Tensor& teacher_logits,
    const torch::Tensor& targets, const torch::Tensor& weight, const torch::Tensor& bias,
    const HeadRefitOptions& options,
    const std::function<void(const NewtonTrace&, const torch::Tensor& w,
                             const torch::Tensor& b)>& on_step = {});

// The head of a model and its inputs on some data.
struct HeadFeatures {
  std::string head;        // module path of the last Linear layer
  torch::Tensor weight;    // a copy of its weight [K, D]
  torch::Tensor bias;      // a copy of its bias [K]
  torch::Tensor features;  // [N, D]: its input for every example
};

// Finds the last Linear layer with a bias (in module order) and computes its
// inputs without hooks: the head's weight is swapped for the identity
// [D, D] and its bias for zeros during the forward passes, so the model
// outputs x_n itself; the head is restored afterwards. This assumes the
// head's output is the model's output (nothing after it: true for the
// reference CNN's `fc` and the ViT's `head`); the output shape is checked.
// Batches of 256 without autograd. INVALID_ARGUMENT without such a layer or
// when the data do not fit.
absl::StatusOr<HeadFeatures> ComputeHeadFeatures(torch::jit::Module& module,
                                                 const torch::Tensor& inputs);

// Copies (weight, bias) into the live parameters of `head` in `module`.
absl::Status SetHead(torch::jit::Module& module, const std::string& head,
                     const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_HEAD_REFIT_H_
