#include "server/engine/prune/head_refit.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/prune/vit.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The head problem in float64: x̃ = [x; 1], teacher probabilities at T.
struct HeadData {
  torch::Tensor xt;         // [N, D+1]
  torch::Tensor teacher_q;  // [N, K] softmax(t/T)
  torch::Tensor onehot;     // [N, K] or undefined (no labels)
  double temperature = 1;
  int64_t k = 0;
  int64_t d1 = 0;
};

// Loss, per-example residual r_n = ∂f_n/∂s_n [N, K] and the probabilities
// whose softmax Hessians make A_n, at Θ = [W | b] flattened row-major.
struct LogitTerms {
  double loss = 0;
  torch::Tensor residual;
  torch::Tensor q;  // softmax(s/T)
  torch::Tensor p;  // softmax(s), only with labels
};

LogitTerms Terms(const HeadData& h, const torch::Tensor& theta) {
  const int64_t n = h.xt.size(0);
  const torch::Tensor s = h.xt.mm(theta.view({h.k, h.d1}).t());
  const double t = h.temperature;
  LogitTerms out;
  const torch::Tensor log_q = at::log_softmax(s / t, 1);
  out.q = log_q.exp();
  const torch::Tensor log_tq = h.teacher_q.clamp_min(1e-300).log();
  double loss = t * t * (h.teacher_q * (log_tq - log_q)).sum().item<double>() / n;
  out.residual = t * (out.q - h.teacher_q);
  if (h.onehot.defined()) {
    const torch::Tensor log_p = at::log_softmax(s, 1);
    out.p = log_p.exp();
    loss += -(h.onehot * log_p).sum().item<double>() / n;
    out.residual = out.residual + (out.p - h.onehot);
  }
  out.loss = loss;
  return out;
}

// Σ_n A_n / N ⊗-ready: per example A_n = diag(q)−qqᵀ (+ diag(p)−ppᵀ) [N,K,K].
torch::Tensor LogitHessians(const LogitTerms& terms) {
  torch::Tensor a = at::diag_embed(terms.q) - terms.q.unsqueeze(2) * terms.q.unsqueeze(1);
  if (terms.p.defined()) {
    a = a + at::diag_embed(terms.p) - terms.p.unsqueeze(2) * terms.p.unsqueeze(1);
  }
  return a;
}

torch::Tensor Gradient(const HeadData& h, const LogitTerms& terms) {
  return terms.residual.t().mm(h.xt).reshape({-1}) / h.xt.size(0);
}

// (1/N) Σ_n A_n ⊗ x̃_n x̃_nᵀ, one [D+1, D+1] block per class pair.
torch::Tensor DenseHessian(const HeadData& h, const torch::Tensor& a) {
  const int64_t n = h.xt.size(0);
  torch::Tensor hess = torch::zeros({h.k, h.d1, h.k, h.d1}, h.xt.options());
  for (int64_t k = 0; k < h.k; ++k) {
    for (int64_t l = k; l < h.k; ++l) {
      const torch::Tensor w = a.select(1, k).select(1, l).unsqueeze(1);
      const torch::Tensor block = (h.xt * w).t().mm(h.xt) / n;
      hess.select(0, k).select(1, l).copy_(block);
      if (l != k) hess.select(0, l).select(1, k).copy_(block.t());
    }
  }
  return hess.view({h.k * h.d1, h.k * h.d1});
}

absl::StatusOr<torch::Tensor> CholeskySolve(const torch::Tensor& hess, const torch::Tensor& g,
                                            double lambda) {
  try {
    const torch::Tensor m =
        hess + lambda * torch::eye(hess.size(0), hess.options());
    const torch::Tensor chol = at::linalg_cholesky(m);
    return at::cholesky_solve(g.unsqueeze(1), chol).squeeze(1);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("regularized Newton: Cholesky of H + λI failed (λ = ", lambda,
                     "): ", e.what()));
  }
}

// (Ā ⊗ S̄ + λI)⁻¹ g through the eigenvectors of both factors.
struct KfacSolver {
  torch::Tensor ua, ea, us, es;
  int64_t k = 0, d1 = 0;
  torch::Tensor Solve(const torch::Tensor& g, double lambda) const {
    const torch::Tensor z = ua.t().mm(g.view({k, d1})).mm(us);
    const torch::Tensor scaled = z / (ea.unsqueeze(1) * es.unsqueeze(0) + lambda);
    return ua.mm(scaled).mm(us.t()).reshape({-1});
  }
};

std::pair<torch::Tensor, torch::Tensor> Eigh(const torch::Tensor& m) {
  auto [e, u] = at::linalg_eigh(m);
  return {e.clamp_min(0), u};
}

absl::Status CheckHeadShapes(const torch::Tensor& features, const torch::Tensor& teacher,
                             const torch::Tensor& targets, const torch::Tensor& weight,
                             const torch::Tensor& bias) {
  if (features.dim() != 2 || weight.dim() != 2 || bias.dim() != 1 || teacher.dim() != 2 ||
      features.size(1) != weight.size(1) || weight.size(0) != bias.size(0) ||
      teacher.size(0) != features.size(0) || teacher.size(1) != weight.size(0) ||
      features.size(0) < 1) {
    return absl::InvalidArgumentError(
        "head re-fit: need features [N, D], teacher logits [N, K], weight [K, D], bias [K]");
  }
  if (targets.defined() && (targets.dim() != 1 || targets.size(0) != features.size(0) ||
                            targets.is_floating_point())) {
    return absl::InvalidArgumentError("head re-fit: targets must be class indices [N]");
  }
  if (targets.defined() && targets.numel() > 0 &&
      (targets.min().item<int64_t>() < 0 || targets.max().item<int64_t>() >= weight.size(0))) {
    return absl::InvalidArgumentError("head re-fit: a target is not a class of the head");
  }
  return absl::OkStatus();
}

HeadData MakeHeadData(const torch::Tensor& features, const torch::Tensor& teacher,
                      const torch::Tensor& targets, double temperature) {
  HeadData h;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(torch::kCPU);
  const torch::Tensor x = features.detach().to(f64);
  h.xt = torch::cat({x, torch::ones({x.size(0), 1}, f64)}, 1);
  h.temperature = temperature;
  h.teacher_q = at::softmax(teacher.detach().to(f64) / temperature, 1);
  h.k = teacher.size(1);
  h.d1 = h.xt.size(1);
  if (targets.defined()) {
    h.onehot = at::one_hot(targets.to(torch::kCPU).to(torch::kLong), h.k).to(f64);
  }
  return h;
}

NewtonProblem HeadProblem(std::shared_ptr<const HeadData> h, HeadHessian kind) {
  NewtonProblem problem;
  problem.loss = [h](const torch::Tensor& x) -> absl::StatusOr<double> {
    return Terms(*h, x).loss;
  };
  auto kfac = std::make_shared<KfacSolver>();
  if (kind == HeadHessian::kKfac) {
    std::tie(kfac->es, kfac->us) = Eigh(h->xt.t().mm(h->xt) / h->xt.size(0));
    kfac->k = h->k;
    kfac->d1 = h->d1;
  }
  problem.model = [h, kind, kfac](const torch::Tensor& x) -> absl::StatusOr<LocalModel> {
    const LogitTerms terms = Terms(*h, x);
    LocalModel m;
    m.loss = terms.loss;
    m.grad = Gradient(*h, terms);
    const torch::Tensor a = LogitHessians(terms);
    const torch::Tensor g = m.grad;
    if (kind == HeadHessian::kExact) {
      const torch::Tensor hess = DenseHessian(*h, a);
      m.solve = [hess, g](double lambda) { return CholeskySolve(hess, g, lambda); };
    } else {
      auto solver = std::make_shared<KfacSolver>(*kfac);
      std::tie(solver->ea, solver->ua) = Eigh(a.mean(0));
      m.solve = [solver, g](double lambda) -> absl::StatusOr<torch::Tensor> {
        return solver->Solve(g, lambda);
      };
    }
    return m;
  };
  return problem;
}

absl::Status ValidateNewton(const RegularizedNewtonOptions& o) {
  if (o.iterations < 0) return absl::InvalidArgumentError("newton: iterations must be >= 0");
  if (!(o.alpha >= 0 && o.alpha <= 1)) {
    return absl::InvalidArgumentError("newton: alpha must be in [0, 1]");
  }
  if (!(o.reg_init > 0) || !(o.reg_min > 0)) {
    return absl::InvalidArgumentError("newton: reg_init and reg_min must be > 0");
  }
  if (o.max_doublings < 1) return absl::InvalidArgumentError("newton: max_doublings >= 1");
  return absl::OkStatus();
}

}  // namespace

const char* HeadHessianName(HeadHessian hessian) {
  return hessian == HeadHessian::kExact ? "exact" : "kfac";
}

absl::StatusOr<HeadHessian> ParseHeadHessian(const std::string& name) {
  if (name == "exact" || name == "gauss_newton") return HeadHessian::kExact;
  if (name == "kfac") return HeadHessian::kKfac;
  return absl::InvalidArgumentError(
      absl::StrCat("head hessian: unknown \"", name, "\" (exact, gauss_newton, kfac)"));
}

absl::StatusOr<torch::Tensor> MinimizeRegularizedNewton(
    const NewtonProblem& problem, const torch::Tensor& x0, const RegularizedNewtonOptions& options,
    std::vector<NewtonTrace>* trace,
    const std::function<void(const NewtonTrace&, const torch::Tensor&)>& on_step) {
  RETURN_IF_ERROR(ValidateNewton(options));
  const Clock::time_point start = Clock::now();
  torch::Tensor x = x0.clone();
  double c = options.reg_init;
  ASSIGN_OR_RETURN(LocalModel model, problem.model(x));
  if (!std::isfinite(model.loss)) {
    return absl::FailedPreconditionError("newton: the loss at the start is not finite");
  }
  if (trace != nullptr) trace->push_back({0, model.loss, 0, 0, 0, Seconds(start)});
  for (int it = 1; it <= options.iterations; ++it) {
    const double gnorm = model.grad.norm().item<double>();
    if (!(gnorm >= options.grad_tol)) break;
    bool accepted = false;
    NewtonTrace step{it, 0, gnorm, 0, 0, 0};
    torch::Tensor next;
    for (int tries = 0; tries < options.max_doublings && !accepted; ++tries) {
      step.lambda = c * std::pow(gnorm, options.alpha);
      ASSIGN_OR_RETURN(torch::Tensor d, model.solve(step.lambda));
      next = x - d;
      ASSIGN_OR_RETURN(double loss, problem.loss(next));
      if (std::isfinite(loss) && loss <= model.loss) {
        accepted = true;
      } else {
        c *= 2;
        ++step.rejected;
      }
    }
    if (!accepted) break;
    x = next;
    c = std::max(c / 2, options.reg_min);
    ASSIGN_OR_RETURN(model, problem.model(x));
    step.loss = model.loss;
    step.seconds = Seconds(start);
    if (trace != nullptr) trace->push_back(step);
    if (on_step) on_step(step, x);
  }
  return x;
}

absl::StatusOr<torch::Tensor> HeadLoss(const torch::Tensor& features,
                                       const torch::Tensor& teacher_logits,
                                       const torch::Tensor& targets, const torch::Tensor& weight,
                                       const torch::Tensor& bias, double temperature) {
  RETURN_IF_ERROR(CheckHeadShapes(features, teacher_logits, targets, weight, bias));
  const double t = temperature;
  const torch::Tensor s = at::linear(features, weight, bias);
  const torch::Tensor tq = at::softmax(teacher_logits / t, 1);
  const torch::Tensor log_q = at::log_softmax(s / t, 1);
  torch::Tensor loss =
      t * t * (tq * (tq.clamp_min(1e-30).log() - log_q)).sum(1).mean();
  if (targets.defined()) loss = loss + at::cross_entropy_loss(s, targets);
  return loss;
}

absl::StatusOr<HeadDerivatives> HeadLossDerivatives(const torch::Tensor& features,
                                                    const torch::Tensor& teacher_logits,
                                                    const torch::Tensor& targets,
                                                    const torch::Tensor& weight,
                                                    const torch::Tensor& bias, double temperature) {
  RETURN_IF_ERROR(CheckHeadShapes(features, teacher_logits, targets, weight, bias));
  const HeadData h = MakeHeadData(features, teacher_logits, targets, temperature);
  const torch::Tensor theta =
      torch::cat({weight.detach(), bias.detach().unsqueeze(1)}, 1).to(torch::kFloat64).reshape({-1});
  const LogitTerms terms = Terms(h, theta);
  return HeadDerivatives{terms.loss, Gradient(h, terms), DenseHessian(h, LogitHessians(terms))};
}

absl::StatusOr<HeadRefitResult> RefitHead(
    const torch::Tensor& features, const torch::Tensor& teacher_logits,
    const torch::Tensor& targets, const torch::Tensor& weight, const torch::Tensor& bias,
    const HeadRefitOptions& options,
    const std::function<void(const NewtonTrace&, const torch::Tensor& w,
                             const torch::Tensor& b)>& on_step) {
  RETURN_IF_ERROR(CheckHeadShapes(features, teacher_logits, targets, weight, bias));
  RETURN_IF_ERROR(ValidateNewton(options.newton));
  if (!(options.temperature > 0)) {
    return absl::InvalidArgumentError("head re-fit: temperature must be > 0");
  }
  const int64_t k = weight.size(0), d1 = weight.size(1) + 1;
  if (options.hessian == HeadHessian::kExact && k * d1 > options.max_dense_params) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head re-fit: the exact Hessian of a head with ", k * d1,
        " parameters is too large for a dense solve (limit ", options.max_dense_params,
        "); use the kfac approximation"));
  }
  auto h = std::make_shared<const HeadData>(
      MakeHeadData(features, teacher_logits, targets, options.temperature));
  const torch::Tensor theta0 =
      torch::cat({weight.detach(), bias.detach().unsqueeze(1)}, 1).to(torch::kFloat64).reshape({-1});
  const auto split = [&](const torch::Tensor& x) {
    const torch::Tensor m = x.view({k, d1}).to(weight.options());
    return std::make_pair(m.narrow(1, 0, d1 - 1).contiguous(), m.select(1, d1 - 1).contiguous());
  };
  HeadRefitResult result;
  std::function<void(const NewtonTrace&, const torch::Tensor&)> relay;
  if (on_step) {
    relay = [&](const NewtonTrace& t, const torch::Tensor& x) {
      auto [w, b] = split(x);
      on_step(t, w, b);
    };
  }
  try {
    ASSIGN_OR_RETURN(torch::Tensor x,
                     MinimizeRegularizedNewton(HeadProblem(h, options.hessian), theta0,
                                               options.newton, &result.trace, relay));
    std::tie(result.weight, result.bias) = split(x);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("head re-fit: ", e.what()));
  }
  result.loss_before = result.trace.front().loss;
  result.loss_after = result.trace.back().loss;
  return result;
}

absl::StatusOr<HeadFeatures> ComputeHeadFeatures(torch::jit::Module& module,
                                                 const torch::Tensor& inputs) {
  ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
  const ParamLayout& layout = *params.layout;
  HeadFeatures out;
  for (const ParamGroup& g : layout.groups) {
    if (g.kind == "Linear" && g.tensors.size() == 2) out.head = g.name;
  }
  if (out.head.empty()) {
    return absl::InvalidArgumentError("head re-fit: the model has no Linear layer with a bias");
  }
  torch::jit::Module head = SubmoduleAt(module, out.head);
  const torch::Tensor w = head.attr("weight").toTensor();
  const torch::Tensor b = head.attr("bias").toTensor();
  out.weight = w.detach().clone();
  out.bias = b.detach().clone();
  const int64_t d = w.size(1);
  std::vector<torch::Tensor> parts;
  absl::Status status;
  {
    torch::NoGradGuard no_grad;
    head.setattr("weight", torch::eye(d, w.options()));
    head.setattr("bias", torch::zeros({d}, b.options()));
    for (int64_t i = 0; i < inputs.size(0) && status.ok(); i += 256) {
      const int64_t n = std::min<int64_t>(256, inputs.size(0) - i);
      absl::StatusOr<torch::Tensor> y =
          RunForward(module, inputs.narrow(0, i, n).to(w.device()));
      if (!y.ok()) {
        status = y.status();
      } else if (y->dim() != 2 || y->size(0) != n || y->size(1) != d) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "head re-fit: the output of ", out.head, " is not the model's output"));
      } else {
        parts.push_back(y->detach());
      }
    }
    head.setattr("weight", w);
    head.setattr("bias", b);
  }
  RETURN_IF_ERROR(status);
  out.features = torch::cat(parts, 0);
  return out;
}

absl::Status SetHead(torch::jit::Module& module, const std::string& head,
                     const torch::Tensor& weight, const torch::Tensor& bias) {
  torch::jit::Module m = SubmoduleAt(module, head);
  torch::Tensor w = m.attr("weight").toTensor();
  torch::Tensor b = m.attr("bias").toTensor();
  if (!w.sizes().equals(weight.sizes()) || !b.sizes().equals(bias.sizes())) {
    return absl::InvalidArgumentError(absl::StrCat("head re-fit: shapes of ", head, " differ"));
  }
  torch::NoGradGuard no_grad;
  w.copy_(weight);
  b.copy_(bias);
  return absl::OkStatus();
}

}  // namespace compress::engine
