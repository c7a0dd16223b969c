#include "server/engine/hessian/perturbation.h"

#include <torch/csrc/autograd/autograd.h>

#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/engine/hessian/param_set.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

constexpr int kFdCheckProbes = 2;

// A deep copy of `module` whose parameters are fresh leaves that require
// grad exactly when listed in `weights` (tied parameters stay tied).
// NOT_FOUND names a listed weight the module does not have.
absl::StatusOr<torch::jit::Module> CopyDifferentiating(const torch::jit::Module& module,
                                                       const std::set<std::string>& weights) {
  std::set<std::string> missing = weights;
  try {
    for (const auto& param : module.named_parameters(/*recurse=*/true)) {
      if (weights.count(param.name) == 0) continue;
      missing.erase(param.name);
      if (!at::isFloatingType(param.value.scalar_type())) {
        return absl::InvalidArgumentError(absl::StrCat(param.name, " is not a floating tensor"));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot list the model's parameters: ", e.what_without_backtrace()));
  }
  if (!missing.empty()) {
    return absl::NotFoundError(
        absl::StrCat("the model has no parameter \"", *missing.begin(), "\""));
  }
  ASSIGN_OR_RETURN(torch::jit::Module copy,
                   CopyWithFreshParameters(module, [&](const std::string& name,
                                                       const torch::Tensor&) {
                     return weights.count(name) > 0;
                   }));
  copy.eval();
  return copy;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PerturbationModel>> PerturbationModel::Create(
    const torch::jit::Module& module, PreparedBatches batches,
    const std::vector<std::string>& weights, const PerturbationModelOptions& options,
    const CancelToken* cancel) {
  if (weights.empty()) return absl::InvalidArgumentError("no weight to perturb");
  torch::AutoGradMode grad_mode(true);
  ASSIGN_OR_RETURN(torch::jit::Module copy,
                   CopyDifferentiating(module, std::set<std::string>(weights.begin(),
                                                                     weights.end())));
  std::unique_ptr<PerturbationModel> model(
      new PerturbationModel(std::move(copy), std::move(batches), options));
  ASSIGN_OR_RETURN(model->op_,
                   CreateHvpOperator(model->copy_, model->batches_, options.hvp, cancel));
  const ParamSet& params = model->op_->parameters();
  // g = Σ_b (n_b / N) ∂L_b/∂θ.
  ParamSet sum = ZerosLike(params);
  const double n = static_cast<double>(model->batches_.num_examples);
  for (size_t b = 0; b < model->batches_.batches.size(); ++b) {
    if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
    const Batch& batch = model->batches_.batches[b];
    ASSIGN_OR_RETURN(torch::Tensor out, RunForward(model->copy_, batch.inputs));
    ASSIGN_OR_RETURN(torch::Tensor loss, ComputeLoss(model->batches_.loss, out, batch.targets));
    try {
      std::vector<torch::Tensor> g =
          torch::autograd::grad({loss}, params.tensors, {}, /*retain_graph=*/false,
                                /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t i = 0; i < g.size(); ++i) {
        if (g[i].defined()) sum.tensors[i].add_(g[i].detach(), static_cast<double>(batch.size) / n);
      }
    } catch (const c10::Error& e) {
      return AutogradError(e, absl::StrCat("gradient on batch ", b),
                           absl::StatusCode::kInvalidArgument);
    }
  }
  model->gradient_ = std::move(sum.tensors);
  return model;
}

absl::Status PerturbationModel::FallBack(const absl::Status& why) {
  const HvpMethod method = op_->method();
  const bool second_order = method == HvpMethod::kExact || method == HvpMethod::kGaussNewton;
  if (!IsMissingDoubleBackward(why) || !second_order ||
      options_.fallback == HvpFallback::kNone) {
    return why;
  }
  earlier_hvps_ += op_->num_applications();
  fallback_reason_ = std::string(why.message());
  if (options_.fallback == HvpFallback::kFiniteDifference) {
    HvpOptions fd = options_.hvp;
    fd.method = HvpMethod::kFiniteDifference;
    ASSIGN_OR_RETURN(std::unique_ptr<HvpOperator> op, CreateHvpOperator(copy_, batches_, fd));
    at::Generator gen = MakeGenerator(options_.seed);
    ASSIGN_OR_RETURN(double check, FiniteDifferenceSelfCheck(*op, gen, kFdCheckProbes));
    if (check <= kFiniteDifferenceCheckTolerance) {
      absl::StrAppend(&fallback_reason_, "; using finite differences");
      op_ = std::move(op);
      return absl::OkStatus();
    }
    absl::StrAppendFormat(&fallback_reason_,
                          "; finite differences failed their self-check (forward and central "
                          "differ by %.3g relative)",
                          check);
  }
  absl::StrAppend(&fallback_reason_, "; using the empirical Fisher diagonal");
  HvpOptions fisher = options_.hvp;
  fisher.method = HvpMethod::kFisherDiagonal;
  ASSIGN_OR_RETURN(op_, CreateHvpOperator(copy_, batches_, fisher));
  return absl::OkStatus();
}

absl::StatusOr<int> PerturbationModel::IndexOf(const std::string& weight) const {
  const std::vector<std::string>& names = op_->layout().names;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == weight) return static_cast<int>(i);
  }
  return absl::NotFoundError(absl::StrCat("\"", weight, "\" is not a perturbed weight"));
}

absl::StatusOr<std::vector<torch::Tensor>> PerturbationModel::Column(const std::string& weight,
                                                                     const torch::Tensor& delta) {
  ASSIGN_OR_RETURN(const int index, IndexOf(weight));
  ParamSet v = ZerosLike(op_->parameters());
  try {
    if (!delta.sizes().equals(v.tensors[index].sizes())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the perturbation of ", weight, " has shape ", c10::str(delta.sizes()),
                       ", the weight ", c10::str(v.tensors[index].sizes())));
    }
    v.tensors[index].copy_(delta.detach());
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  absl::StatusOr<ParamSet> hv = op_->Apply(v);
  if (!hv.ok()) {
    RETURN_IF_ERROR(FallBack(hv.status()));
    v.layout = op_->parameters().layout;
    hv = op_->Apply(v);
    if (!hv.ok()) return hv.status();
  }
  return std::move(hv->tensors);
}

absl::StatusOr<PerturbationTerms> PerturbationModel::Terms(const std::string& weight,
                                                           const torch::Tensor& delta) {
  ASSIGN_OR_RETURN(const int index, IndexOf(weight));
  absl::StatusOr<torch::Tensor> hv = op_->ApplyToTensor(index, delta);
  if (!hv.ok()) {
    RETURN_IF_ERROR(FallBack(hv.status()));
    hv = op_->ApplyToTensor(index, delta);
    if (!hv.ok()) return hv.status();
  }
  PerturbationTerms terms;
  try {
    torch::Tensor d = delta.detach().reshape(-1).to(hv->device(), torch::kFloat64);
    terms.quadratic = 0.5 * torch::dot(d, hv->reshape(-1).to(torch::kFloat64)).item<double>();
    terms.linear = torch::dot(d, gradient_[index].reshape(-1).to(torch::kFloat64)).item<double>();
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return terms;
}

}  // namespace compress::engine
