#include "server/engine/hessian/hvp.h"

#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <regex>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/engine/common/finite.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

using torch::autograd::grad;

constexpr char kMissingDoubleBackward[] = "type.compress.dev/engine.MissingDoubleBackward";

// Undefined gradients (parameters the loss does not use) become zeros.
ParamSet FromGradients(std::vector<torch::Tensor> grads, const ParamSet& like) {
  ParamSet out{like.layout, std::move(grads)};
  for (size_t i = 0; i < out.size(); ++i) {
    if (!out.tensors[i].defined()) {
      out.tensors[i] = torch::zeros_like(like.tensors[i]);
    } else {
      out.tensors[i] = out.tensors[i].detach();
    }
  }
  return out;
}

// sum_i <a_i, v_i> over the a_i that carry autograd history; undefined when
// none does (the products are then zero).
torch::Tensor GraphDot(const std::vector<torch::Tensor>& a, const ParamSet& v) {
  torch::Tensor dot;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].defined() || !a[i].requires_grad()) continue;
    torch::Tensor term = (a[i] * v.tensors[i]).sum();
    dot = dot.defined() ? dot + term : term;
  }
  return dot;
}

// A loss (with its graph) for batch `b`; FAILED_PRECONDITION when it is
// not finite (every product through it would be NaN).
absl::StatusOr<torch::Tensor> BatchLoss(torch::jit::Module& module, LossKind loss,
                                        const Batch& batch, size_t b) {
  ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, batch.inputs));
  ASSIGN_OR_RETURN(torch::Tensor value, ComputeLoss(loss, out, batch.targets));
  if (!value.requires_grad()) {
    return absl::FailedPreconditionError("the loss does not depend on any trainable parameter");
  }
  RETURN_IF_ERROR(CheckFiniteValue(value.item<double>(), absl::StrCat("the loss on batch ", b)));
  return value;
}

// FAILED_PRECONDITION when `hv`, product `n`'s slot for parameter `name`,
// is not finite.
absl::Status CheckFiniteProduct(const torch::Tensor& hv, const std::string& name, int64_t n) {
  const std::string bad = DescribeNonFinite(hv);
  if (bad.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("Hessian-vector product ", n, " has ", bad, " in parameter ", name));
}

// As above for every slot (named by `layout`), with one device sync when
// all are finite.
absl::Status CheckFiniteProduct(const ParamSet& hv, const ParamLayout& layout, int64_t n) {
  std::vector<torch::Tensor> finite;
  for (const torch::Tensor& t : hv.tensors) finite.push_back(torch::isfinite(t).all());
  if (finite.empty() || torch::stack(finite).all().item<bool>()) return absl::OkStatus();
  for (size_t i = 0; i < hv.size(); ++i) {
    RETURN_IF_ERROR(CheckFiniteProduct(hv.tensors[i], layout.names[i], n));
  }
  return absl::OkStatus();
}

double MachineEpsilon(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Double:
      return std::numeric_limits<double>::epsilon();
    case c10::ScalarType::Half:
      return 9.765625e-4;  // 2^-10
    case c10::ScalarType::BFloat16:
      return 7.8125e-3;  // 2^-7
    default:
      return std::numeric_limits<float>::epsilon();
  }
}

// ---------------------------------------------------------------------------

class ExactHvp : public HvpOperator {
 public:
  ExactHvp(torch::jit::Module module, ParamSet params, PreparedBatches batches, int max_cached)
      : HvpOperator(std::move(params), std::move(batches)),
        module_(std::move(module)),
        cache_(std::min<size_t>(std::max(max_cached, 0), batches_.batches.size())) {}

  HvpMethod method() const override { return HvpMethod::kExact; }

 protected:
  absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) override {
    ParamSet result = ZerosLike(params_);
    for (size_t b = 0; b < batches_.batches.size(); ++b) {
      const bool cached = b < cache_.size();
      ASSIGN_OR_RETURN(const std::vector<torch::Tensor> g, Gradients(b));
      try {
        // Hv = J_gᵀ v: v as the grad_outputs of the gradients that carry
        // history, with no graph built for Σ g·v (the way PyTorch users
        // write it; the benchmark measured the Σ g·v form slower).
        std::vector<torch::Tensor> outputs, cotangents;
        for (size_t i = 0; i < g.size(); ++i) {
          if (!g[i].defined() || !g[i].requires_grad()) continue;
          outputs.push_back(g[i]);
          cotangents.push_back(v.tensors[i]);
        }
        if (outputs.empty()) continue;  // the gradient is constant: H = 0
        std::vector<torch::Tensor> hv = grad(outputs, params_.tensors, cotangents,
                                             /*retain_graph=*/cached,
                                             /*create_graph=*/false, /*allow_unused=*/true);
        Axpy(weight(b), FromGradients(std::move(hv), params_), &result);
      } catch (const c10::Error& e) {
        return AutogradError(e, absl::StrCat("exact HVP (double backward) on batch ", b));
      }
    }
    return result;
  }

  // Only the tensor's own gradient is differentiated, and only with respect
  // to the tensor: autograd then skips the layers before it and every other
  // gradient's double backward (which ApplyImpl runs with zero cotangents).
  absl::StatusOr<torch::Tensor> ApplyToTensorImpl(int tensor, const torch::Tensor& v) override {
    torch::Tensor result = torch::zeros_like(params_.tensors[tensor]);
    for (size_t b = 0; b < batches_.batches.size(); ++b) {
      const bool cached = b < cache_.size();
      ASSIGN_OR_RETURN(const std::vector<torch::Tensor> gradients, Gradients(b));
      const torch::Tensor& g = gradients[tensor];
      if (!g.defined() || !g.requires_grad()) continue;  // linear in it: H_kk = 0
      try {
        std::vector<torch::Tensor> hv = grad({g}, {params_.tensors[tensor]}, {v},
                                             /*retain_graph=*/cached,
                                             /*create_graph=*/false, /*allow_unused=*/true);
        if (hv[0].defined()) result.add_(hv[0].detach(), weight(b));
      } catch (const c10::Error& e) {
        return AutogradError(e, absl::StrCat("exact HVP (double backward) on batch ", b));
      }
    }
    return result;
  }

 private:
  // Batch b's gradients with their graphs: from the cache for a cached
  // batch (computed on first use), else computed now and freed by the
  // caller's double backward.
  absl::StatusOr<std::vector<torch::Tensor>> Gradients(size_t b) {
    if (b < cache_.size() && !cache_[b].empty()) return cache_[b];
    ASSIGN_OR_RETURN(std::vector<torch::Tensor> g, FirstOrder(batches_.batches[b], b));
    if (b < cache_.size()) cache_[b] = g;
    return g;
  }

  absl::StatusOr<std::vector<torch::Tensor>> FirstOrder(const Batch& batch, size_t b) {
    ASSIGN_OR_RETURN(torch::Tensor loss, BatchLoss(module_, batches_.loss, batch, b));
    try {
      return grad({loss}, params_.tensors, {}, /*retain_graph=*/true,
                  /*create_graph=*/true, /*allow_unused=*/true);
    } catch (const c10::Error& e) {
      return AutogradError(e, absl::StrCat("gradient on batch ", b));
    }
  }

  torch::jit::Module module_;
  // First-order gradients (with their graphs) of the cached batches; empty
  // until first used.
  std::vector<std::vector<torch::Tensor>> cache_;
};

// ---------------------------------------------------------------------------

class FisherDiagonalHvp : public HvpOperator {
 public:
  static absl::StatusOr<std::unique_ptr<HvpOperator>> Create(torch::jit::Module module,
                                                             PreparedBatches batches,
                                                             const CancelToken* cancel) {
    ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
    std::unique_ptr<FisherDiagonalHvp> op(
        new FisherDiagonalHvp(std::move(module), std::move(params), std::move(batches)));
    RETURN_IF_ERROR(op->Initialize(cancel));
    return op;
  }

  HvpMethod method() const override { return HvpMethod::kFisherDiagonal; }

 protected:
  absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) override {
    ParamSet result{params_.layout, {}};
    for (size_t i = 0; i < v.size(); ++i) {
      result.tensors.push_back(diagonal_.tensors[i] * v.tensors[i]);
    }
    return result;
  }

 private:
  FisherDiagonalHvp(torch::jit::Module module, ParamSet params, PreparedBatches batches)
      : HvpOperator(std::move(params), std::move(batches)), module_(std::move(module)) {}

  // diag = Σ_n g_n² / N with g_n the gradient of example n's loss: one
  // forward + backward per example (a batch gradient squared would mix the
  // examples' gradients).
  absl::Status Initialize(const CancelToken* cancel) {
    diagonal_ = ZerosLike(params_);
    const double n = static_cast<double>(num_examples());
    for (size_t b = 0; b < batches_.batches.size(); ++b) {
      const Batch& batch = batches_.batches[b];
      for (int64_t e = 0; e < batch.size; ++e) {
        if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
        Batch one{batch.inputs.Narrow(e, 1), batch.targets.narrow(0, e, 1), 1};
        ASSIGN_OR_RETURN(torch::Tensor loss, BatchLoss(module_, batches_.loss, one, b));
        try {
          std::vector<torch::Tensor> g = grad({loss}, params_.tensors, {}, /*retain_graph=*/false,
                                              /*create_graph=*/false, /*allow_unused=*/true);
          torch::NoGradGuard no_grad;
          for (size_t i = 0; i < g.size(); ++i) {
            if (g[i].defined()) diagonal_.tensors[i].addcmul_(g[i], g[i], 1 / n);
          }
        } catch (const c10::Error& e) {
          return AutogradError(e, absl::StrCat("per-example gradient on batch ", b));
        }
      }
    }
    return absl::OkStatus();
  }

  torch::jit::Module module_;
  ParamSet diagonal_;
};

// ---------------------------------------------------------------------------

// A copy of `module` to perturb without touching the caller's model; its
// parameters require grad as the originals do.
absl::StatusOr<torch::jit::Module> PrivateCopy(const torch::jit::Module& module) {
  return CopyWithFreshParameters(
      module, [](const std::string&, const torch::Tensor& p) { return p.requires_grad(); });
}

class FiniteDifferenceHvp : public HvpOperator {
 public:
  static absl::StatusOr<std::unique_ptr<HvpOperator>> Create(const torch::jit::Module& module,
                                                             PreparedBatches batches,
                                                             FiniteDifferenceScheme scheme,
                                                             bool in_float64) {
    ASSIGN_OR_RETURN(ParamSet original, CollectParameters(module));
    ASSIGN_OR_RETURN(torch::jit::Module copy, PrivateCopy(module));
    if (in_float64) {
      try {
        copy.to(torch::kFloat64);
      } catch (const c10::Error& e) {
        return absl::InternalError(
            absl::StrCat("cannot convert the model copy to float64: ", e.what_without_backtrace()));
      }
    }
    ASSIGN_OR_RETURN(ParamSet work, CollectParameters(copy));
    if (work.layout->names != original.layout->names) {
      return absl::InternalError("the copied model's parameters differ from the original's");
    }
    std::unique_ptr<FiniteDifferenceHvp> op(new FiniteDifferenceHvp(
        std::move(copy), std::move(original), std::move(work), std::move(batches), scheme));
    RETURN_IF_ERROR(op->Initialize());
    return op;
  }

  HvpMethod method() const override { return HvpMethod::kFiniteDifference; }

  // ‖forward − central‖ / ‖central‖ for `v`: three gradients (two when the
  // base gradient is cached), not counted as products.
  absl::StatusOr<double> SchemeDisagreement(const ParamSet& v) {
    if (!base_gradient_.layout) {
      ASSIGN_OR_RETURN(base_gradient_, AverageGradient());
    }
    ASSIGN_OR_RETURN(ParamSet forward, Difference(FiniteDifferenceScheme::kForward, v));
    ASSIGN_OR_RETURN(ParamSet central, Difference(FiniteDifferenceScheme::kCentral, v));
    const double scale = Norm(central);
    Axpy(-1, central, &forward);
    const double diff = Norm(forward);
    if (scale == 0) return diff == 0 ? 0.0 : HUGE_VAL;
    return diff / scale;
  }

 protected:
  absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) override { return Difference(scheme_, v); }

 private:
  absl::StatusOr<ParamSet> Difference(FiniteDifferenceScheme scheme, const ParamSet& v) {
    const double v_norm = Norm(v);
    if (v_norm == 0) return ZerosLike(params_);
    const bool central = scheme == FiniteDifferenceScheme::kCentral;
    const double h = central ? std::cbrt(unit_roundoff_) : std::sqrt(unit_roundoff_);
    const double eps = h * (1 + theta_norm_) / v_norm;

    ASSIGN_OR_RETURN(ParamSet plus, GradientAt(eps, v));
    if (central) {
      ASSIGN_OR_RETURN(ParamSet minus, GradientAt(-eps, v));
      Axpy(-1, minus, &plus);
      Scale(1 / (2 * eps), &plus);
    } else {
      Axpy(-1, base_gradient_, &plus);
      Scale(1 / eps, &plus);
    }
    // Back to the parameters' dtype (a no-op unless computed in float64).
    for (size_t i = 0; i < plus.size(); ++i) {
      plus.tensors[i] = plus.tensors[i].to(params_.tensors[i].scalar_type());
    }
    plus.layout = params_.layout;
    return plus;
  }

  // `params` are the caller's (never modified; they give the layout and the
  // dtype of results), `work` the copy's, which are perturbed.
  FiniteDifferenceHvp(torch::jit::Module copy, ParamSet params, ParamSet work,
                      PreparedBatches batches, FiniteDifferenceScheme scheme)
      : HvpOperator(std::move(params), std::move(batches)),
        copy_(std::move(copy)),
        work_(std::move(work)),
        scheme_(scheme) {}

  absl::Status Initialize() {
    theta0_ = Clone(work_);
    theta_norm_ = Norm(theta0_);
    unit_roundoff_ = MachineEpsilon(work_.tensors[0].scalar_type());
    if (scheme_ == FiniteDifferenceScheme::kForward) {
      ASSIGN_OR_RETURN(base_gradient_, AverageGradient());
    }
    return absl::OkStatus();
  }

  // The mean-loss gradient at θ0 + step·v (in the copy's dtype); the copy is
  // back at θ0 afterwards, also on errors.
  absl::StatusOr<ParamSet> GradientAt(double step, const ParamSet& v) {
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < work_.size(); ++i) {
        work_.tensors[i].copy_(theta0_.tensors[i]).add_(v.tensors[i], step);
      }
    }
    absl::StatusOr<ParamSet> g = AverageGradient();
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < work_.size(); ++i) {
        work_.tensors[i].copy_(theta0_.tensors[i]);
      }
    }
    return g;
  }

  absl::StatusOr<ParamSet> AverageGradient() {
    const c10::ScalarType type = work_.tensors[0].scalar_type();
    ParamSet sum = ZerosLike(work_);
    for (size_t b = 0; b < batches_.batches.size(); ++b) {
      // Batches are in the caller's dtype; the copy may run in float64.
      Batch batch = batches_.batches[b];
      batch.inputs = batch.inputs.To(batch.inputs.first.device(), type);
      if (batches_.loss == LossKind::kMse) {
        batch.targets = batch.targets.to(type);
      }
      ASSIGN_OR_RETURN(torch::Tensor loss, BatchLoss(copy_, batches_.loss, batch, b));
      try {
        std::vector<torch::Tensor> g = grad({loss}, work_.tensors, {}, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
        Axpy(weight(b), FromGradients(std::move(g), work_), &sum);
      } catch (const c10::Error& e) {
        return AutogradError(e, absl::StrCat("gradient on batch ", b));
      }
    }
    return sum;
  }

  torch::jit::Module copy_;
  ParamSet work_;  // the copy's parameters, perturbed by GradientAt
  FiniteDifferenceScheme scheme_;
  ParamSet theta0_;         // the copy's unperturbed parameters
  ParamSet base_gradient_;  // g(θ0), forward scheme only
  double theta_norm_ = 0;
  double unit_roundoff_ = 0;
};

// ---------------------------------------------------------------------------

class GaussNewtonHvp : public HvpOperator {
 public:
  GaussNewtonHvp(torch::jit::Module module, ParamSet params, PreparedBatches batches,
                 int max_cached)
      : HvpOperator(std::move(params), std::move(batches)),
        module_(std::move(module)),
        cache_(std::min<size_t>(std::max(max_cached, 0), batches_.batches.size())) {}

  HvpMethod method() const override { return HvpMethod::kGaussNewton; }

 protected:
  absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) override {
    ParamSet result = ZerosLike(params_);
    for (size_t b = 0; b < batches_.batches.size(); ++b) {
      const bool cached = b < cache_.size();
      Linearization fresh;
      if (!cached || !cache_[b].output.defined()) {
        ASSIGN_OR_RETURN(fresh, Linearize(batches_.batches[b], b));
        if (cached) cache_[b] = fresh;
      }
      const Linearization& lin = cached ? cache_[b] : fresh;
      try {
        // J v = ∂(Jᵀw · v)/∂w.
        torch::Tensor dot = GraphDot(lin.jt_dummy, v);
        if (!dot.defined()) continue;  // the output does not depend on θ
        std::vector<torch::Tensor> jv = grad({dot}, {lin.dummy}, {}, /*retain_graph=*/true,
                                             /*create_graph=*/false, /*allow_unused=*/true);
        if (!jv[0].defined()) continue;
        torch::Tensor h_jv = OutputHessianTimes(lin, jv[0]);
        std::vector<torch::Tensor> jt = grad({lin.output}, params_.tensors, {h_jv},
                                             /*retain_graph=*/cached, /*create_graph=*/false,
                                             /*allow_unused=*/true);
        Axpy(weight(b), FromGradients(std::move(jt), params_), &result);
      } catch (const c10::Error& e) {
        return AutogradError(e, absl::StrCat("Gauss-Newton product on batch ", b));
      }
    }
    return result;
  }

 private:
  struct Linearization {
    torch::Tensor output;                 // z, with its graph
    torch::Tensor dummy;                  // w, a cotangent requiring grad
    std::vector<torch::Tensor> jt_dummy;  // Jᵀw, linear in w
    torch::Tensor probs;                  // softmax(z) over dim 1 (CE only)
  };

  absl::StatusOr<Linearization> Linearize(const Batch& batch, size_t b) {
    Linearization lin;
    ASSIGN_OR_RETURN(lin.output, RunForward(module_, batch.inputs));
    if (batches_.loss == LossKind::kCrossEntropy && lin.output.dim() < 2) {
      return absl::InvalidArgumentError("cross-entropy needs logits [N, C, ...] from the model");
    }
    if (batches_.loss == LossKind::kMse &&
        (!batch.targets.defined() || batch.targets.numel() != lin.output.numel())) {
      return absl::InvalidArgumentError("MSE targets do not fit the model output");
    }
    if (!lin.output.requires_grad()) {
      return absl::FailedPreconditionError(
          "the model output does not depend on any trainable parameter");
    }
    try {
      lin.dummy = torch::zeros_like(lin.output).requires_grad_(true);
      lin.jt_dummy = grad({lin.output}, params_.tensors, {lin.dummy},
                          /*retain_graph=*/true, /*create_graph=*/true,
                          /*allow_unused=*/true);
      if (batches_.loss == LossKind::kCrossEntropy) {
        lin.probs = torch::softmax(lin.output.detach(), 1);
      }
    } catch (const c10::Error& e) {
      return AutogradError(e, absl::StrCat("Gauss-Newton linearisation on batch ", b));
    }
    return lin;
  }

  // H_out u for the mean loss of one batch.
  torch::Tensor OutputHessianTimes(const Linearization& lin, const torch::Tensor& u) const {
    if (batches_.loss == LossKind::kMse) {
      return u * (2.0 / static_cast<double>(u.numel()));
    }
    // Cross-entropy: per row (one example, one spatial position) the Hessian
    // in the logits is diag(p) − p pᵀ; the loss is the mean over rows.
    const double rows = static_cast<double>(u.numel() / u.size(1));
    const torch::Tensor& p = lin.probs;
    torch::Tensor pu = p * u;
    return (pu - p * pu.sum(1, /*keepdim=*/true)) / rows;
  }

  torch::jit::Module module_;
  std::vector<Linearization> cache_;
};

// "_cdist_backward" -> "cdist", "aten::grid_sampler_2d_backward" ->
// "grid_sampler_2d": the forward op users wrote.
std::string ForwardOpName(std::string op) {
  absl::string_view name = op;
  absl::ConsumePrefix(&name, "aten::");
  absl::ConsumeSuffix(&name, "_backward");
  while (absl::ConsumePrefix(&name, "_")) {
  }
  return std::string(name);
}

}  // namespace

const char* HvpMethodName(HvpMethod method) {
  switch (method) {
    case HvpMethod::kExact:
      return "exact";
    case HvpMethod::kFiniteDifference:
      return "finite_difference";
    case HvpMethod::kGaussNewton:
      return "gauss_newton";
    case HvpMethod::kFisherDiagonal:
      return "fisher_diagonal";
  }
  return "unknown";
}

absl::Status AutogradError(const c10::Error& error, const std::string& context,
                           absl::StatusCode code) {
  const std::string message = error.what_without_backtrace();
  static const std::regex* not_implemented =
      new std::regex("derivative for '?([A-Za-z0-9_.:]+)'? is not implemented");
  std::smatch match;
  if (std::regex_search(message, match, *not_implemented)) {
    const std::string op = match[1];
    absl::Status status = absl::FailedPreconditionError(
        absl::StrCat(context, ": the model uses ", ForwardOpName(op),
                     ", whose double backward LibTorch does not implement (no derivative "
                     "for ",
                     op, "); use the finite-difference HVP method for this model"));
    status.SetPayload(kMissingDoubleBackward, absl::Cord(op));
    return status;
  }
  // First line only: the rest is torch's C++ context.
  std::string first = message.substr(0, message.find('\n'));
  return absl::Status(code, absl::StrCat(context, " failed: ", first));
}

bool IsMissingDoubleBackward(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(kMissingDoubleBackward).has_value();
}

HvpOperator::HvpOperator(ParamSet params, PreparedBatches batches)
    : params_(std::move(params)), batches_(std::move(batches)) {
  for (const Batch& b : batches_.batches) num_examples_ += b.size;
}

double HvpOperator::weight(size_t b) const {
  return static_cast<double>(batches_.batches[b].size) / static_cast<double>(num_examples_);
}

absl::StatusOr<ParamSet> HvpOperator::Apply(const ParamSet& v) {
  if (v.layout != params_.layout &&
      (v.layout == nullptr || v.layout->names != params_.layout->names)) {
    return absl::InvalidArgumentError("the vector does not have the operator's parameter layout");
  }
  // Hessian work needs autograd even when a caller disabled it.
  torch::AutoGradMode grad_mode(true);
  ++num_applications_;
  ASSIGN_OR_RETURN(ParamSet hv, ApplyImpl(v));
  RETURN_IF_ERROR(CheckFiniteProduct(hv, *params_.layout, num_applications_));
  return hv;
}

absl::StatusOr<torch::Tensor> HvpOperator::ApplyToTensor(int tensor, const torch::Tensor& v) {
  if (tensor < 0 || tensor >= static_cast<int>(params_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("no parameter tensor ", tensor));
  }
  if (v.sizes() != params_.tensors[tensor].sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the vector's shape does not match ", params_.layout->names[tensor]));
  }
  torch::AutoGradMode grad_mode(true);
  ++num_applications_;
  ASSIGN_OR_RETURN(torch::Tensor hv,
                   ApplyToTensorImpl(tensor, v.to(params_.tensors[tensor].options())));
  RETURN_IF_ERROR(CheckFiniteProduct(hv, params_.layout->names[tensor], num_applications_));
  return hv;
}

absl::StatusOr<torch::Tensor> HvpOperator::ApplyToTensorImpl(int tensor, const torch::Tensor& v) {
  ParamSet full = ZerosLike(params_);
  full.tensors[tensor] = v;
  ASSIGN_OR_RETURN(ParamSet hv, ApplyImpl(full));
  return hv.tensors[tensor];
}

absl::StatusOr<double> FiniteDifferenceSelfCheck(HvpOperator& op, at::Generator& gen, int probes) {
  auto* fd = dynamic_cast<FiniteDifferenceHvp*>(&op);
  if (fd == nullptr) {
    return absl::InvalidArgumentError("the self-check needs a finite-difference operator");
  }
  torch::AutoGradMode grad_mode(true);
  double worst = 0;
  for (int p = 0; p < probes; ++p) {
    ParamSet v = RademacherLike(op.parameters(), gen);
    ASSIGN_OR_RETURN(double d, fd->SchemeDisagreement(v));
    worst = std::max(worst, d);
  }
  return worst;
}

absl::StatusOr<std::unique_ptr<HvpOperator>> CreateHvpOperator(torch::jit::Module module,
                                                               PreparedBatches batches,
                                                               const HvpOptions& options,
                                                               const CancelToken* cancel) {
  if (batches.batches.empty()) {
    return absl::InvalidArgumentError("no calibration batches");
  }
  if (batches.loss != LossKind::kCrossEntropy && batches.loss != LossKind::kMse &&
      batches.loss != LossKind::kLanguageModeling) {
    return absl::InvalidArgumentError("the batches' loss must be resolved by PrepareBatches");
  }
  // Its output Hessian is written for classes on dim 1 and for MSE.
  if (options.method == HvpMethod::kGaussNewton && batches.loss == LossKind::kLanguageModeling) {
    return absl::InvalidArgumentError(
        "hvp_method: Gauss-Newton products are not available for the language_modeling loss; "
        "use exact, finite differences or the Fisher diagonal");
  }
  switch (options.method) {
    case HvpMethod::kExact: {
      ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
      return std::unique_ptr<HvpOperator>(new ExactHvp(
          std::move(module), std::move(params), std::move(batches), options.max_cached_batches));
    }
    case HvpMethod::kFiniteDifference: {
      torch::AutoGradMode grad_mode(true);
      return FiniteDifferenceHvp::Create(module, std::move(batches), options.fd_scheme,
                                         options.fd_in_float64);
    }
    case HvpMethod::kGaussNewton: {
      ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
      return std::unique_ptr<HvpOperator>(new GaussNewtonHvp(
          std::move(module), std::move(params), std::move(batches), options.max_cached_batches));
    }
    case HvpMethod::kFisherDiagonal: {
      torch::AutoGradMode grad_mode(true);
      return FisherDiagonalHvp::Create(std::move(module), std::move(batches), cancel);
    }
  }
  return absl::InvalidArgumentError("unknown HVP method");
}

}  // namespace compress::engine
