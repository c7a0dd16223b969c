#include "server/engine/hessian/estimators.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

absl::Status CheckCancel(const CancelToken* cancel) {
  return cancel == nullptr ? absl::OkStatus() : cancel->Check();
}

// Running mean and variance (Welford).
struct Running {
  int64_t n = 0;
  double mean = 0;
  double m2 = 0;

  void Add(double x) {
    ++n;
    const double delta = x - mean;
    mean += delta / static_cast<double>(n);
    m2 += delta * (x - mean);
  }
  double StdError() const {
    if (n < 2) return INFINITY;
    return std::sqrt(m2 / static_cast<double>(n - 1) / static_cast<double>(n));
  }
  // Standard error over |mean|; 0 when there is no spread (a diagonal block
  // gives the exact trace with every Rademacher probe).
  double RelativeError() const {
    const double se = StdError();
    if (se == 0) return 0;
    return mean == 0 ? INFINITY : se / std::abs(mean);
  }
};

std::string TraceJson(const LayerTrace& t) {
  nlohmann::json j;
  j["layer"] = t.name;
  j["trace"] = t.trace;
  j["std_error"] = t.std_error;
  j["probes"] = t.probes;
  j["numel"] = t.numel;
  j["trace_per_param"] = t.trace_per_param();
  j["converged"] = t.converged;
  return j.dump();
}

void Fill(const ParamGroup& group, int index, const Running& r, double tolerance, int min_probes,
          LayerTrace* t) {
  t->group = index;
  t->name = group.name;
  t->numel = group.numel;
  t->trace = r.mean;
  t->std_error = r.n >= 2 ? r.StdError() : 0;
  t->probes = r.n;
  t->converged = r.n >= min_probes && r.RelativeError() <= tolerance;
}

// Subtracts from `v` its components along every vector in `basis`
// (orthonormal), twice for stability.
template <typename Container>
void Orthogonalize(const Container& basis, ParamSet* v) {
  for (int pass = 0; pass < 2; ++pass) {
    for (const ParamSet& u : basis) Axpy(-Dot(*v, u), u, v);
  }
}

}  // namespace

// ---------------------------------------------------------------- traces

absl::StatusOr<TraceResult> EstimateLayerTraces(HvpOperator& op, const TraceOptions& options,
                                                at::Generator& gen, ProgressSink* sink,
                                                const CancelToken* cancel) {
  if (!(options.tolerance > 0) || options.min_probes < 2 ||
      options.max_probes < options.min_probes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trace options out of range: tolerance ", options.tolerance, " (> 0), min_probes ",
        options.min_probes, " (>= 2), max_probes ", options.max_probes, " (>= min_probes)"));
  }
  const ParamLayout& layout = op.layout();
  const int groups = static_cast<int>(layout.groups.size());
  const int64_t start_hvps = op.num_applications();
  std::vector<Running> stats(groups);
  std::vector<bool> announced(groups, false);
  TraceResult result;
  result.layers.resize(groups);

  auto announce = [&](int g) {
    Fill(layout.groups[g], g, stats[g], options.tolerance, options.min_probes, &result.layers[g]);
    if (sink != nullptr && !announced[g] && result.layers[g].converged) {
      announced[g] = true;
      sink->PartialResult(absl::StrCat("trace/", layout.groups[g].name),
                          TraceJson(result.layers[g]));
    }
  };

  if (!options.exact_per_layer) {
    Running total;
    for (int probe = 0; probe < options.max_probes; ++probe) {
      RETURN_IF_ERROR(CheckCancel(cancel));
      ParamSet v = RademacherLike(op.parameters(), gen);
      ASSIGN_OR_RETURN(ParamSet hv, op.Apply(v));
      double sum = 0;
      for (int g = 0; g < groups; ++g) {
        const double estimate = GroupDot(v, hv, g);
        stats[g].Add(estimate);
        sum += estimate;
      }
      total.Add(sum);
      bool all = true;
      for (int g = 0; g < groups; ++g) {
        announce(g);
        all = all && result.layers[g].converged;
      }
      if (sink != nullptr) sink->Progress("traces", probe + 1, options.max_probes);
      if (all) break;
    }
    result.total_trace = total.mean;
    result.total_std_error = total.n >= 2 ? total.StdError() : 0;
  } else {
    const int64_t total_work = static_cast<int64_t>(groups) * options.max_probes;
    int64_t done = 0;
    double variance = 0;
    for (int g = 0; g < groups; ++g) {
      for (int probe = 0; probe < options.max_probes; ++probe) {
        RETURN_IF_ERROR(CheckCancel(cancel));
        ParamSet v = RademacherLike(op.parameters(), gen);
        RestrictToGroup(g, &v);
        ASSIGN_OR_RETURN(ParamSet hv, op.Apply(v));
        stats[g].Add(GroupDot(v, hv, g));
        announce(g);
        if (sink != nullptr) sink->Progress("traces", ++done, total_work);
        if (result.layers[g].converged) break;
      }
      // The remaining probes of this layer are skipped: count them as done.
      done = static_cast<int64_t>(g + 1) * options.max_probes;
      result.total_trace += result.layers[g].trace;
      variance += result.layers[g].std_error * result.layers[g].std_error;
    }
    result.total_std_error = std::sqrt(variance);
  }
  for (int g = 0; g < groups; ++g) {
    if (sink != nullptr && !announced[g]) {
      sink->PartialResult(absl::StrCat("trace/", layout.groups[g].name),
                          TraceJson(result.layers[g]));
    }
  }
  result.hvps = op.num_applications() - start_hvps;
  return result;
}

// ----------------------------------------------------------- eigenvalues

absl::StatusOr<EigenResult> TopEigenvalues(HvpOperator& op, const EigenOptions& options, int group,
                                           at::Generator& gen, ProgressSink* sink,
                                           const CancelToken* cancel) {
  std::vector<int> groups;
  if (group != kWholeModel) groups.push_back(group);
  return TopEigenvalues(op, options, groups, gen, sink, cancel);
}

namespace {

// The dimension of the space the eigenvectors live in (the whole model or
// the `groups`), after checking the options and the groups.
absl::StatusOr<int64_t> EigenDimension(const ParamLayout& layout, const EigenOptions& options,
                                       const std::vector<int>& groups) {
  if (options.k < 1 || !(options.tolerance > 0) || options.max_iterations < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "eigenvalue options out of range: k ", options.k, " (>= 1), tolerance ", options.tolerance,
        " (> 0), max_iterations ", options.max_iterations, " (>= 1)"));
  }
  int64_t dim = groups.empty() ? layout.numel : 0;
  std::vector<bool> seen(layout.groups.size(), false);
  for (int g : groups) {
    if (g < 0 || g >= static_cast<int>(layout.groups.size()) || seen[g]) {
      return absl::InvalidArgumentError(absl::StrCat("no layer ", g, " or listed twice"));
    }
    seen[g] = true;
    dim += layout.groups[g].numel;
  }
  return dim;
}

// Whether the Rayleigh quotient has settled at iteration `iter`, given the
// previous one and `change`, the previous iteration's |λ_t − λ_{t−1}|
// (updated here). It converges geometrically (ratio q ≈ (λ_next/λ)²), so
// what is left to move after a change d is about d·q/(1−q); stopping on d
// alone can leave several times the tolerance when the gap is small.
// d/(1−q) also covers the slower tail when more than one eigenvalue is
// close.
bool Settled(int iter, double lambda, double previous, double tolerance, double* change) {
  if (iter <= 1) return false;
  const double d = std::abs(lambda - previous);
  const double q = *change > 0 ? std::min(d / *change, 0.999) : (d == 0 ? 0 : 0.999);
  const double bound = tolerance * std::abs(lambda);
  *change = d;
  return (iter > 2 || d == 0) && d / (1 - q) <= bound;
}

// One eigenpair found by power iteration.
struct PowerIteration {
  double lambda = 0;
  int iterations = 0;
  bool converged = false;
  double relative_change = 0;  // last |λ_t − λ_{t−1}| / |λ_t|
  ParamSet v;   // the unit eigenvector estimate
  ParamSet hv;  // H v, restricted, before deflation
};

// Power iteration from a random start on H restricted by `restrict` and
// deflated against `found` (orthonormal); `applied` after each product.
// nullopt when the start lies in the span of `found`.
absl::StatusOr<std::optional<PowerIteration>> PowerIterate(
    HvpOperator& op, const EigenOptions& options, const std::function<void(ParamSet*)>& restrict,
    const std::vector<ParamSet>& found, at::Generator& gen, const std::function<void()>& applied,
    const CancelToken* cancel) {
  ParamSet v = GaussianLike(op.parameters(), gen);
  restrict(&v);
  Orthogonalize(found, &v);
  double norm = Norm(v);
  if (norm == 0) return std::optional<PowerIteration>();
  Scale(1 / norm, &v);

  PowerIteration result;
  double change = 0;  // |λ_t − λ_{t−1}| of the previous iteration
  while (result.iterations < options.max_iterations) {
    RETURN_IF_ERROR(CheckCancel(cancel));
    ASSIGN_OR_RETURN(ParamSet hv, op.Apply(v));
    ++result.iterations;
    applied();
    restrict(&hv);
    result.hv = Clone(hv);
    // v is orthogonal to the vectors found, so this is the Rayleigh
    // quotient of the deflated operator as well.
    const double previous = result.lambda;
    result.lambda = Dot(v, hv);
    if (result.iterations > 1) {
      result.relative_change = result.lambda != 0
                                   ? std::abs(result.lambda - previous) / std::abs(result.lambda)
                                   : std::abs(result.lambda - previous);
    }
    Orthogonalize(found, &hv);
    norm = Norm(hv);
    if (norm == 0) {  // v lies in the null space (of the deflated H)
      result.converged = true;
      break;
    }
    if (Settled(result.iterations, result.lambda, previous, options.tolerance, &change)) {
      result.converged = true;
      break;
    }
    Scale(1 / norm, &hv);
    v = std::move(hv);
  }
  result.v = std::move(v);
  return std::optional<PowerIteration>(std::move(result));
}

// Rayleigh-Ritz on the span of the vectors found, with the products
// already computed (no extra HVP). Deflating against an eigenvector known
// only to the tolerance leaks |λ_1|·(its error)² into the later
// eigenvalues; that error lies mostly along the next eigenvectors found,
// which this step rotates back out. Reorders by decreasing |λ|.
absl::Status RayleighRitz(const std::vector<ParamSet>& products, EigenResult* result) {
  const int64_t n = static_cast<int64_t>(result->eigenvectors.size());
  torch::Tensor m = torch::zeros({n, n}, torch::kFloat64);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      m[r][c] = Dot(result->eigenvectors[r], products[c]);
    }
  }
  m = (m + m.t()) / 2;  // finite differences are not exactly symmetric
  torch::Tensor values, q;
  try {
    std::tie(values, q) = torch::linalg_eigh(m);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("Rayleigh-Ritz eigh failed: ", e.what_without_backtrace()));
  }
  std::vector<int64_t> order(n);
  for (int64_t j = 0; j < n; ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&values](int64_t a, int64_t b) {
    return std::abs(values[a].item<double>()) > std::abs(values[b].item<double>());
  });
  std::vector<ParamSet> rotated;
  for (int64_t j : order) {
    ParamSet u = ZerosLike(result->eigenvectors[0]);
    for (int64_t r = 0; r < n; ++r) {
      Axpy(q[r][j].item<double>(), result->eigenvectors[r], &u);
    }
    rotated.push_back(std::move(u));
  }
  // Each rotated vector is mostly the run it came from: its run's
  // iterations and convergence go with it.
  const EigenResult before = *result;
  for (int64_t j = 0; j < n; ++j) {
    result->eigenvalues[j] = values[order[j]].item<double>();
    const int64_t run = q.select(1, order[j]).abs().argmax().item<int64_t>();
    result->iterations[j] = before.iterations[run];
    result->converged[j] = before.converged[run];
    result->relative_change[j] = before.relative_change[run];
  }
  result->eigenvectors = std::move(rotated);
  return absl::OkStatus();
}

// The Lanczos tridiagonal's eigen-decomposition: Ritz values (ascending)
// and the residual bound |β s_last,i| of each.
struct RitzValues {
  std::vector<double> values;
  std::vector<double> bounds;
  std::vector<std::vector<double>> vectors;  // s_i, per Ritz value
};

absl::StatusOr<RitzValues> Ritz(const std::vector<double>& alpha, const std::vector<double>& beta,
                                double residual_norm) {
  const int steps = static_cast<int>(alpha.size());
  torch::Tensor t = torch::zeros({steps, steps}, torch::kFloat64);
  for (int i = 0; i < steps; ++i) {
    t[i][i] = alpha[i];
    if (i + 1 < steps) {
      t[i][i + 1] = beta[i];
      t[i + 1][i] = beta[i];
    }
  }
  torch::Tensor evals, evecs;
  try {
    std::tie(evals, evecs) = torch::linalg_eigh(t);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("eigh of the Lanczos tridiagonal failed: ", e.what_without_backtrace()));
  }
  RitzValues r;
  for (int i = 0; i < steps; ++i) {
    r.values.push_back(evals[i].item<double>());
    r.bounds.push_back(std::abs(residual_norm * evecs[steps - 1][i].item<double>()));
    torch::Tensor col = evecs.select(1, i).contiguous();
    r.vectors.emplace_back(col.data_ptr<double>(), col.data_ptr<double>() + steps);
  }
  return r;
}

double RelativeBound(const RitzValues& r, size_t i) {
  const double scale = std::abs(r.values[i]);
  return scale > 0 ? r.bounds[i] / scale : r.bounds[i];
}

// Indices of the k Ritz values of largest magnitude, decreasing.
std::vector<size_t> ByMagnitude(const RitzValues& r, int k) {
  std::vector<size_t> order(r.values.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&r](size_t a, size_t b) { return std::abs(r.values[a]) > std::abs(r.values[b]); });
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(k)));
  return order;
}

// Whether the k wanted Ritz values and both ends have converged.
bool RitzConverged(const RitzValues& r, int k, double tolerance) {
  if (r.values.empty()) return false;
  std::vector<size_t> wanted = ByMagnitude(r, k);
  wanted.push_back(0);
  wanted.push_back(r.values.size() - 1);
  for (size_t i : wanted) {
    if (RelativeBound(r, i) > tolerance) return false;
  }
  return true;
}

// EigenMethod::kLanczos (options.h) on H restricted to the scope.
absl::StatusOr<EigenResult> LanczosEigenvalues(HvpOperator& op, const EigenOptions& options,
                                               int64_t dim, int k,
                                               const std::function<void(ParamSet*)>& restrict,
                                               at::Generator& gen, ProgressSink* sink,
                                               const CancelToken* cancel) {
  const int m = static_cast<int>(std::min<int64_t>(options.max_iterations, dim));
  int64_t vector_bytes = 0;
  for (const torch::Tensor& t : op.parameters().tensors) {
    vector_bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  if (vector_bytes > 0 && options.max_memory_bytes / vector_bytes < m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Lanczos eigenvalues keep ", m, " vectors of ", vector_bytes,
        " bytes, more than eigen max_memory_bytes (", options.max_memory_bytes,
        "); use fewer max_iterations or power iteration"));
  }
  std::vector<ParamSet> basis;
  std::vector<double> alpha, beta;
  ParamSet v = GaussianLike(op.parameters(), gen);
  restrict(&v);
  Scale(1 / Norm(v), &v);
  double residual = 0;
  RitzValues ritz;
  for (int j = 0; j < m; ++j) {
    RETURN_IF_ERROR(CheckCancel(cancel));
    ASSIGN_OR_RETURN(ParamSet w, op.Apply(v));
    if (sink != nullptr) sink->Progress("eigen", j + 1, m);
    restrict(&w);
    alpha.push_back(Dot(w, v));
    basis.push_back(std::move(v));
    // Twice: one Gram-Schmidt pass loses orthogonality once a Ritz value
    // has converged.
    Orthogonalize(basis, &w);
    Orthogonalize(basis, &w);
    residual = Norm(w);
    ASSIGN_OR_RETURN(ritz, Ritz(alpha, beta, residual));
    const double scale = std::max(std::abs(alpha.back()), beta.empty() ? 0 : beta.back());
    const bool invariant = !(residual > 1e-10 * std::max(scale, 1e-300));
    if (invariant || RitzConverged(ritz, k, options.tolerance) || j + 1 == m) break;
    beta.push_back(residual);
    Scale(1 / residual, &w);
    v = std::move(w);
  }
  EigenResult result;
  const int steps = static_cast<int>(alpha.size());
  for (size_t i : ByMagnitude(ritz, k)) {
    result.eigenvalues.push_back(ritz.values[i]);
    result.iterations.push_back(steps);
    result.relative_change.push_back(RelativeBound(ritz, i));
    result.converged.push_back(RelativeBound(ritz, i) <= options.tolerance);
    ParamSet y = ZerosLike(basis[0]);
    for (int r = 0; r < steps; ++r) Axpy(ritz.vectors[i][r], basis[r], &y);
    Scale(1 / Norm(y), &y);
    result.eigenvectors.push_back(std::move(y));
  }
  result.min_eigenvalue = ritz.values.front();
  result.max_eigenvalue = ritz.values.back();
  result.min_relative_change = RelativeBound(ritz, 0);
  result.max_relative_change = RelativeBound(ritz, ritz.values.size() - 1);
  return result;
}

}  // namespace

absl::StatusOr<EigenResult> TopEigenvalues(HvpOperator& op, const EigenOptions& options,
                                           const std::vector<int>& groups, at::Generator& gen,
                                           ProgressSink* sink, const CancelToken* cancel) {
  ASSIGN_OR_RETURN(const int64_t dim, EigenDimension(op.layout(), options, groups));
  const int k = static_cast<int>(std::min<int64_t>(options.k, dim));
  auto restrict = [&groups](ParamSet* v) {
    if (groups.size() == 1) {
      RestrictToGroup(groups[0], v);
    } else if (!groups.empty()) {
      RestrictToGroups(groups, v);
    }
  };

  if (options.method == EigenMethod::kLanczos) {
    return LanczosEigenvalues(op, options, dim, k, restrict, gen, sink, cancel);
  }
  EigenResult result;
  std::vector<ParamSet> products;  // H u_i of each vector found (no deflation)
  const int64_t total_work = static_cast<int64_t>(k) * options.max_iterations;
  int64_t done = 0;
  auto applied = [&] {
    if (sink != nullptr) sink->Progress("eigen", ++done, total_work);
  };
  for (int i = 0; i < k; ++i) {
    ASSIGN_OR_RETURN(
        std::optional<PowerIteration> found,
        PowerIterate(op, options, restrict, result.eigenvectors, gen, applied, cancel));
    if (!found.has_value()) break;
    done = static_cast<int64_t>(i + 1) * options.max_iterations;
    result.eigenvalues.push_back(found->lambda);
    result.iterations.push_back(found->iterations);
    result.converged.push_back(found->converged);
    result.relative_change.push_back(found->relative_change);
    result.eigenvectors.push_back(std::move(found->v));
    products.push_back(std::move(found->hv));
  }
  if (result.eigenvectors.size() < 2) return result;
  RETURN_IF_ERROR(RayleighRitz(products, &result));
  return result;
}

// ------------------------------------------------------------- density

void SmoothDensity(const std::vector<double>& nodes, const std::vector<double>& weights,
                   int grid_points, double sigma, std::vector<double>* grid,
                   std::vector<double>* density) {
  grid->clear();
  density->clear();
  if (nodes.empty() || grid_points < 1) return;
  const auto [lo_it, hi_it] = std::minmax_element(nodes.begin(), nodes.end());
  const double range = *hi_it - *lo_it;
  const double pad = std::max(0.01 * range, 0.01);
  const double lo = *lo_it - pad;
  const double hi = *hi_it + pad;
  const double variance = sigma * std::max(1.0, range);
  const double spacing = grid_points > 1 ? (hi - lo) / (grid_points - 1) : 1;
  double sum = 0;
  for (int i = 0; i < grid_points; ++i) {
    const double x = grid_points > 1 ? lo + spacing * i : (lo + hi) / 2;
    double d = 0;
    for (size_t k = 0; k < nodes.size(); ++k) {
      const double z = x - nodes[k];
      d += weights[k] * std::exp(-z * z / (2 * variance)) / std::sqrt(2 * M_PI * variance);
    }
    grid->push_back(x);
    density->push_back(d);
    sum += d;
  }
  if (sum > 0) {
    for (double& d : *density) d /= sum * spacing;
  }
}

absl::StatusOr<SpectralDensity> EstimateSpectralDensity(HvpOperator& op,
                                                        const DensityOptions& options,
                                                        at::Generator& gen, ProgressSink* sink,
                                                        const CancelToken* cancel) {
  if (options.lanczos_steps < 1 || options.runs < 1 || options.grid_points < 1 ||
      !(options.sigma > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("density options out of range: lanczos_steps ", options.lanczos_steps,
                     " (>= 1), runs ", options.runs, " (>= 1), grid_points ", options.grid_points,
                     " (>= 1), sigma ", options.sigma, " (> 0)"));
  }
  const int64_t start_hvps = op.num_applications();
  const int m = static_cast<int>(std::min<int64_t>(options.lanczos_steps, op.layout().numel));
  const int64_t total_work = static_cast<int64_t>(m) * options.runs;
  int64_t done = 0;
  SpectralDensity result;
  {
    int64_t vector_bytes = 0;
    for (const torch::Tensor& t : op.parameters().tensors) {
      vector_bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
    const int64_t fit =
        vector_bytes > 0 ? options.max_memory_bytes / vector_bytes : static_cast<int64_t>(m);
    result.window = fit >= m ? 0 : static_cast<int>(std::max<int64_t>(fit, 2));
  }
  for (int run = 0; run < options.runs; ++run) {
    std::deque<ParamSet> basis;
    std::vector<double> alpha, beta;
    ParamSet v = RademacherLike(op.parameters(), gen);
    Scale(1 / Norm(v), &v);
    for (int j = 0; j < m; ++j) {
      RETURN_IF_ERROR(CheckCancel(cancel));
      ASSIGN_OR_RETURN(ParamSet w, op.Apply(v));
      if (sink != nullptr) sink->Progress("density", ++done, total_work);
      const double a = Dot(w, v);
      alpha.push_back(a);
      basis.push_back(std::move(v));
      if (result.window > 0 && static_cast<int>(basis.size()) > result.window) {
        basis.pop_front();
      }
      if (j + 1 == m) break;
      // Re-orthogonalisation against every kept Lanczos vector (all of them
      // unless memory caps the window) replaces the three-term recurrence's
      // w −= a v_j + b v_{j−1}.
      Orthogonalize(basis, &w);
      const double b = Norm(w);
      // An invariant subspace: the quadrature is already exact.
      const double scale = std::max(std::abs(a), beta.empty() ? 0 : beta.back());
      if (!(b > 1e-10 * std::max(scale, 1e-300))) break;
      beta.push_back(b);
      Scale(1 / b, &w);
      v = std::move(w);
    }
    done = static_cast<int64_t>(run + 1) * m;
    const int steps = static_cast<int>(alpha.size());
    result.steps.push_back(steps);

    ASSIGN_OR_RETURN(RitzValues ritz, Ritz(alpha, beta, /*residual_norm=*/0));
    for (int i = 0; i < steps; ++i) {
      const double c = ritz.vectors[i][0];  // first component of s_i
      result.nodes.push_back(ritz.values[i]);
      result.weights.push_back(c * c / options.runs);
    }
  }
  SmoothDensity(result.nodes, result.weights, options.grid_points, options.sigma, &result.grid,
                &result.density);
  result.hvps = op.num_applications() - start_hvps;
  return result;
}

// --------------------------------------------------------------- Q-BERT

PreparedBatches DataSubset(const PreparedBatches& batches, int index, int count,
                           int64_t batch_size) {
  std::vector<ModelInputs> inputs;
  std::vector<torch::Tensor> targets;
  for (const Batch& b : batches.batches) {
    inputs.push_back(b.inputs);
    targets.push_back(b.targets);
  }
  const ModelInputs all_inputs = ModelInputs::Cat(inputs);
  torch::Tensor all_targets = torch::cat(targets);
  const int64_t n = all_inputs.examples();
  const int64_t base = n / count, extra = n % count;
  const int64_t start = index * base + std::min<int64_t>(index, extra);
  const int64_t size = base + (index < extra ? 1 : 0);

  PreparedBatches subset;
  subset.loss = batches.loss;
  subset.pseudo_labels = batches.pseudo_labels;
  subset.num_examples = size;
  for (int64_t s = 0; s < size; s += batch_size) {
    Batch b;
    b.size = std::min(batch_size, size - s);
    b.inputs = all_inputs.Narrow(start + s, b.size);
    b.targets = all_targets.narrow(0, start + s, b.size);
    subset.batches.push_back(std::move(b));
  }
  return subset;
}

absl::StatusOr<QBertResult> QBertScores(torch::jit::Module module, const PreparedBatches& batches,
                                        const HvpOptions& hvp, int subsets,
                                        const EigenOptions& eigen, at::Generator& gen,
                                        ProgressSink* sink, const CancelToken* cancel) {
  if (subsets < 1 || subsets > batches.num_examples || batches.batches.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Q-BERT needs between 1 and ", batches.num_examples,
                     " data subsets (one example each at least), got ", subsets));
  }
  EigenOptions top = eigen;
  top.k = 1;
  QBertResult result;
  const int64_t batch_size = batches.batches[0].size;
  int groups = 0;
  for (int s = 0; s < subsets; ++s) {
    RETURN_IF_ERROR(CheckCancel(cancel));
    PreparedBatches subset = DataSubset(batches, s, subsets, batch_size);
    ASSIGN_OR_RETURN(std::unique_ptr<HvpOperator> op,
                     CreateHvpOperator(module, std::move(subset), hvp));
    const ParamLayout& layout = op->layout();
    groups = static_cast<int>(layout.groups.size());
    if (s == 0) {
      result.layers.resize(groups);
      for (int g = 0; g < groups; ++g) {
        result.layers[g].group = g;
        result.layers[g].name = layout.groups[g].name;
      }
    }
    for (int g = 0; g < groups; ++g) {
      ASSIGN_OR_RETURN(EigenResult r, TopEigenvalues(*op, top, g, gen, nullptr, cancel));
      // Empty only for a layer whose start vector vanished (no parameters).
      result.layers[g].top_eigenvalues.push_back(r.eigenvalues.empty() ? 0.0 : r.eigenvalues[0]);
      if (sink != nullptr) {
        sink->Progress("qbert", static_cast<int64_t>(s) * groups + g + 1,
                       static_cast<int64_t>(subsets) * groups);
      }
    }
    result.hvps += op->num_applications();
  }
  for (QBertLayerScore& layer : result.layers) {
    double sum = 0;
    for (double l : layer.top_eigenvalues) sum += l;
    layer.mean = sum / subsets;
    double var = 0;
    for (double l : layer.top_eigenvalues) {
      var += (l - layer.mean) * (l - layer.mean);
    }
    layer.std = std::sqrt(var / subsets);
    layer.score = std::abs(layer.mean) + layer.std;
  }
  return result;
}

}  // namespace compress::engine
