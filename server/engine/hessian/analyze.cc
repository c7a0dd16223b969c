#include "server/engine/hessian/analyze.h"

#include <torch/script.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/engine/common/finite.h"
#include "server/engine/common/runtime.h"
#include "server/engine/common/stages.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/estimators.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Independent streams per estimator: enabling one does not shift another's
// random vectors.
enum Stream : uint64_t {
  kTraces = 1,
  kEigen = 2,
  kDensity = 3,
  kQBert = 4,
  kFdCheck = 5,
};

constexpr int kFdCheckProbes = 2;
constexpr char kFdCheckFailed[] = "type.compress.dev/engine.FdCheckFailed";

uint64_t MixSeed(uint64_t seed, uint64_t stream) {
  // splitmix64 of seed + stream · golden ratio.
  uint64_t z = seed + stream * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status Validate(const AnalyzeOptions& o) {
  if (o.model_path.empty()) return Invalid("model_path", "required");
  if (o.dataset.empty()) return Invalid("dataset", "required");
  if (o.num_samples < 0) return Invalid("num_samples", "must be >= 0");
  if (o.batch_size < 1) return Invalid("batch_size", "must be >= 1");
  if (o.max_cached_batches < 0) {
    return Invalid("max_cached_batches", "must be >= 0");
  }
  if (!o.traces_enabled && !o.eigen_enabled && !o.density_enabled && !o.qbert_enabled) {
    return absl::InvalidArgumentError(
        "nothing to compute: enable traces, eigenvalues, density or Q-BERT");
  }
  if (o.traces_enabled) {
    if (!(o.traces.tolerance > 0)) {
      return Invalid("traces.tolerance", "must be > 0");
    }
    if (o.traces.min_probes < 2) {
      return Invalid("traces.min_probes", "must be >= 2");
    }
    if (o.traces.max_probes < o.traces.min_probes) {
      return Invalid("traces.max_probes", "must be >= min_probes");
    }
  }
  if (o.eigen_enabled || o.qbert_enabled) {
    if (o.eigen.k < 1) return Invalid("eigen.k", "must be >= 1");
    if (!(o.eigen.tolerance > 0)) {
      return Invalid("eigen.tolerance", "must be > 0");
    }
    if (o.eigen.max_iterations < 1) {
      return Invalid("eigen.max_iterations", "must be >= 1");
    }
  }
  if (o.density_enabled) {
    if (o.density.lanczos_steps < 1) {
      return Invalid("density.lanczos_steps", "must be >= 1");
    }
    if (o.density.runs < 1) return Invalid("density.runs", "must be >= 1");
    if (o.density.grid_points < 1) {
      return Invalid("density.grid_points", "must be >= 1");
    }
    if (!(o.density.sigma > 0)) return Invalid("density.sigma", "must be > 0");
  }
  if (o.density_enabled && o.density.max_memory_bytes < 1) {
    return Invalid("density.max_memory_bytes", "must be >= 1");
  }
  if (!(o.outliers.bulk_mass >= 0 && o.outliers.bulk_mass < 1)) {
    return Invalid("density.bulk_mass", "must be in [0, 1)");
  }
  if (!(o.outliers.gap >= 0)) return Invalid("density.outlier_gap", "must be >= 0");
  if (o.qbert_enabled && o.qbert_subsets < 1) {
    return Invalid("qbert_subsets", "must be >= 1");
  }
  return absl::OkStatus();
}

absl::Status CheckCancel(const CancelToken* cancel) {
  return cancel == nullptr ? absl::OkStatus() : cancel->Check();
}

// The finite-difference self-check: forward and central differences must
// agree, else the loss is not smooth at the step size. A failure is an
// error with the kFdCheckFailed payload when `strict_check` (the caller
// falls back further), else a warning.
absl::Status CheckFiniteDifferences(HvpOperator& op, bool strict_check, const AnalyzeOptions& o,
                                    ProgressSink* sink, AnalyzeReport* report) {
  at::Generator gen = MakeGenerator(MixSeed(o.seed, kFdCheck));
  ASSIGN_OR_RETURN(report->finite_difference_check,
                   FiniteDifferenceSelfCheck(op, gen, kFdCheckProbes));
  if (report->finite_difference_check <= kFiniteDifferenceCheckTolerance) {
    return absl::OkStatus();
  }
  const std::string why = absl::StrFormat(
      "finite-difference products failed their self-check: forward and "
      "central differences differ by %.3g relative (trusted up to %.0e); "
      "the loss is not smooth at the step size (ReLU-like kinks), so "
      "these products are not Hessian-vector products",
      report->finite_difference_check, kFiniteDifferenceCheckTolerance);
  if (strict_check) {
    absl::Status status = absl::FailedPreconditionError(why);
    status.SetPayload(kFdCheckFailed, absl::Cord("1"));
    return status;
  }
  report->warnings.push_back(why);
  sink->Log("WARNING", why);
  return absl::OkStatus();
}

// Stage "traces": Hutchinson traces of every layer.
absl::Status EstimateTraces(HvpOperator& op, const AnalyzeOptions& o, ProgressSink* sink,
                            const CancelToken* cancel, AnalyzeReport* report) {
  at::Generator gen = MakeGenerator(MixSeed(o.seed, kTraces));
  ASSIGN_OR_RETURN(TraceResult traces, EstimateLayerTraces(op, o.traces, gen, sink, cancel));
  for (const LayerTrace& t : traces.layers) {
    LayerSensitivity& layer = report->layers[t.group];
    layer.trace = t.trace;
    layer.trace_std_error = t.std_error;
    layer.trace_probes = t.probes;
    layer.trace_per_param = t.trace_per_param();
    layer.trace_converged = t.converged;
  }
  report->total_trace = traces.total_trace;
  report->total_trace_std_error = traces.total_std_error;
  return absl::OkStatus();
}

// Adds a line per unconverged eigenvalue of `top` (of `scope`).
void NoteUnconverged(const EigenResult& top, const std::string& scope,
                     std::vector<std::string>* lines) {
  for (size_t i = 0; i < top.eigenvalues.size(); ++i) {
    if (top.converged[i]) continue;
    lines->push_back(absl::StrFormat("eigenvalue %d of %s: %.6g, still moving %.2g relative", i + 1,
                                     scope, top.eigenvalues[i], top.relative_change[i]));
  }
}

// Stage "eigen": top eigenvalues of the whole model, of each layer, or of
// each block, as o.eigen_scope says.
absl::Status EstimateEigenvalues(HvpOperator& op, const AnalyzeOptions& o, ProgressSink* sink,
                                 const CancelToken* cancel, AnalyzeReport* report) {
  at::Generator gen = MakeGenerator(MixSeed(o.seed, kEigen));
  const ParamLayout& layout = op.layout();
  std::vector<std::string> unconverged;
  if (o.eigen_scope == EigenScope::kModel) {
    ASSIGN_OR_RETURN(EigenResult top, TopEigenvalues(op, o.eigen, kWholeModel, gen, sink, cancel));
    report->eigenvalues = top.eigenvalues;
    report->eigen_iterations = top.iterations;
    report->eigen_converged = top.converged;
    report->eigen_relative_change = top.relative_change;
    report->min_eigenvalue = top.min_eigenvalue;
    report->max_eigenvalue = top.max_eigenvalue;
    report->min_eigenvalue_relative_change = top.min_relative_change;
    report->max_eigenvalue_relative_change = top.max_relative_change;
    for (size_t i = 0; i < top.eigenvalues.size(); ++i) {
      if (top.converged[i]) continue;
      unconverged.push_back(absl::StrFormat("eigenvalue %d of the model: %.6g, still moving %.2g "
                                            "relative after %d HVPs",
                                            i + 1, top.eigenvalues[i], top.relative_change[i],
                                            top.iterations[i]));
    }
  } else if (o.eigen_scope == EigenScope::kLayer) {
    const int groups = static_cast<int>(layout.groups.size());
    for (int g = 0; g < groups; ++g) {
      ASSIGN_OR_RETURN(EigenResult top, TopEigenvalues(op, o.eigen, g, gen, nullptr, cancel));
      report->layers[g].top_eigenvalues = top.eigenvalues;
      report->layers[g].top_eigenvalues_converged = top.converged;
      NoteUnconverged(top, absl::StrCat("layer ", layout.groups[g].name), &unconverged);
      sink->Progress("eigen", g + 1, groups);
    }
  } else {
    const std::vector<ParamBlock> blocks = BlocksOf(layout);
    report->blocks.clear();
    for (size_t b = 0; b < blocks.size(); ++b) {
      ASSIGN_OR_RETURN(EigenResult top,
                       TopEigenvalues(op, o.eigen, blocks[b].groups, gen, nullptr, cancel));
      BlockSensitivity block;
      block.name = blocks[b].name;
      block.numel = blocks[b].numel;
      for (int g : blocks[b].groups) {
        block.layers.push_back(layout.groups[g].name);
      }
      block.top_eigenvalues = top.eigenvalues;
      block.top_eigenvalues_converged = top.converged;
      NoteUnconverged(top, absl::StrCat("block ", blocks[b].name), &unconverged);
      report->blocks.push_back(std::move(block));
      sink->Progress("eigen", static_cast<int64_t>(b + 1), static_cast<int64_t>(blocks.size()));
    }
  }
  if (!unconverged.empty()) {
    const std::string why = absl::StrCat(
        unconverged.size(), " eigenvalue", unconverged.size() == 1 ? "" : "s",
        " did not converge within max_iterations (", o.eigen.max_iterations,
        "); they are estimates, not final values (more iterations, or the Lanczos method "
        "for an indefinite spectrum): ",
        absl::StrJoin(unconverged.begin(),
                      unconverged.begin() + std::min<size_t>(unconverged.size(), 10), "; "),
        unconverged.size() > 10 ? absl::StrCat("; and ", unconverged.size() - 10, " more") : "");
    report->warnings.push_back(why);
    sink->Log("WARNING", why);
  }
  return absl::OkStatus();
}

// Stage "density": the spectral density by stochastic Lanczos quadrature.
absl::Status EstimateDensity(HvpOperator& op, const AnalyzeOptions& o, ProgressSink* sink,
                             const CancelToken* cancel, AnalyzeReport* report) {
  at::Generator gen = MakeGenerator(MixSeed(o.seed, kDensity));
  ASSIGN_OR_RETURN(SpectralDensity d, EstimateSpectralDensity(op, o.density, gen, sink, cancel));
  report->density_nodes = std::move(d.nodes);
  report->density_weights = std::move(d.weights);
  report->density_grid = std::move(d.grid);
  report->density_values = std::move(d.density);
  report->density_window = d.window;
  if (d.window > 0) {
    report->warnings.push_back(absl::StrCat(
        "the Lanczos vectors do not fit in density.max_memory_bytes (", o.density.max_memory_bytes,
        "); each was re-orthogonalised against "
        "the last ",
        d.window,
        " only, so outlier eigenvalues may repeat as "
        "ghost nodes"));
  }
  return absl::OkStatus();
}

// Stage "qbert": Q-BERT's per-layer scores over data subsets (operators of
// its own; their products are added to `hvps`).
absl::Status EstimateQBert(torch::jit::Module& module, const PreparedBatches& prepared,
                           const HvpOptions& hvp, const AnalyzeOptions& o, ProgressSink* sink,
                           const CancelToken* cancel, AnalyzeReport* report, int64_t* hvps) {
  at::Generator gen = MakeGenerator(MixSeed(o.seed, kQBert));
  ASSIGN_OR_RETURN(QBertResult q,
                   QBertScores(module, prepared, hvp, o.qbert_subsets, o.eigen, gen, sink, cancel));
  *hvps += q.hvps;
  for (const QBertLayerScore& s : q.layers) {
    report->layers[s.group].qbert_eigenvalues = s.top_eigenvalues;
    report->layers[s.group].qbert_score = s.score;
  }
  return absl::OkStatus();
}

// Every number the report carries, estimate by estimate: the HVP and loss
// checks catch most non-finite values first; these catch a sum that
// overflowed.
absl::Status CheckFiniteResults(const AnalyzeReport& r) {
  for (const LayerSensitivity& l : r.layers) {
    const std::string of = absl::StrCat(" of layer ", l.name.empty() ? "(root)" : l.name);
    const std::string after = absl::StrCat(" after ", l.trace_probes, " probes");
    RETURN_IF_ERROR(CheckFiniteValue(l.trace, absl::StrCat("trace", of), after));
    RETURN_IF_ERROR(
        CheckFiniteValue(l.trace_std_error, absl::StrCat("trace std error", of), after));
    for (size_t i = 0; i < l.top_eigenvalues.size(); ++i) {
      RETURN_IF_ERROR(
          CheckFiniteValue(l.top_eigenvalues[i], absl::StrCat("eigenvalue ", i + 1, of)));
    }
    for (size_t i = 0; i < l.qbert_eigenvalues.size(); ++i) {
      RETURN_IF_ERROR(CheckFiniteValue(l.qbert_eigenvalues[i],
                                       absl::StrCat("Q-BERT eigenvalue on subset ", i + 1, of)));
    }
    RETURN_IF_ERROR(CheckFiniteValue(l.qbert_score, absl::StrCat("Q-BERT score", of)));
  }
  for (const BlockSensitivity& b : r.blocks) {
    for (size_t i = 0; i < b.top_eigenvalues.size(); ++i) {
      RETURN_IF_ERROR(CheckFiniteValue(
          b.top_eigenvalues[i],
          absl::StrCat("eigenvalue ", i + 1, " of block ", b.name.empty() ? "(root)" : b.name)));
    }
  }
  RETURN_IF_ERROR(CheckFiniteValue(r.total_trace, "the total trace"));
  RETURN_IF_ERROR(CheckFiniteValue(r.total_trace_std_error, "the total trace's std error"));
  for (size_t i = 0; i < r.eigenvalues.size(); ++i) {
    RETURN_IF_ERROR(
        CheckFiniteValue(r.eigenvalues[i], absl::StrCat("eigenvalue ", i + 1, " of the model"),
                         i < r.eigen_iterations.size()
                             ? absl::StrCat(" after ", r.eigen_iterations[i], " power iterations")
                             : ""));
  }
  for (size_t i = 0; i < r.density_nodes.size(); ++i) {
    RETURN_IF_ERROR(CheckFiniteValue(r.density_nodes[i], absl::StrCat("density node ", i + 1)));
    RETURN_IF_ERROR(CheckFiniteValue(r.density_weights[i], absl::StrCat("density weight ", i + 1)));
  }
  for (size_t i = 0; i < r.density_values.size(); ++i) {
    RETURN_IF_ERROR(
        CheckFiniteValue(r.density_values[i], absl::StrCat("density at grid point ", i + 1)));
  }
  return absl::OkStatus();
}

// Runs every enabled estimator with `method`, filling `report`'s results,
// as stages "traces", "eigen", "density", "qbert" (those enabled).
// `hvps` accumulates the products used, also when it fails. With finite
// differences the self-check runs first (CheckFiniteDifferences).
absl::Status RunEstimators(torch::jit::Module& module, const PreparedBatches& prepared,
                           HvpMethod method, bool strict_check, const AnalyzeOptions& o,
                           ProgressSink* sink, const CancelToken* cancel, AnalyzeReport* report,
                           int64_t* hvps) {
  HvpOptions hvp;
  hvp.method = method;
  hvp.fd_scheme = o.fd_scheme;
  hvp.fd_in_float64 = o.fd_in_float64;
  hvp.max_cached_batches = o.max_cached_batches;
  if (method == HvpMethod::kFisherDiagonal) {
    sink->Log("INFO", absl::StrCat("computing the empirical Fisher diagonal "
                                   "from ",
                                   prepared.num_examples, " per-example gradients"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<HvpOperator> op,
                   CreateHvpOperator(module, prepared, hvp, cancel));
  if (method == HvpMethod::kFiniteDifference) {
    RETURN_IF_ERROR(CheckFiniteDifferences(*op, strict_check, o, sink, report));
  }
  const ParamLayout& layout = op->layout();
  report->layers.clear();
  for (const ParamGroup& g : layout.groups) {
    LayerSensitivity layer;
    layer.name = g.name;
    layer.kind = g.kind;
    layer.numel = g.numel;
    layer.tied = g.tied;
    report->layers.push_back(std::move(layer));
  }
  report->num_parameters = layout.numel;

  // Counts this operator's products whichever way the stages end.
  struct Count {
    const HvpOperator* op;
    int64_t* hvps;
    ~Count() { *hvps += op->num_applications(); }
  } counted{op.get(), hvps};
  StageList stages;
  stages.AddIf(o.traces_enabled, "traces",
               [&] { return EstimateTraces(*op, o, sink, cancel, report); });
  stages.AddIf(o.eigen_enabled, "eigen",
               [&] { return EstimateEigenvalues(*op, o, sink, cancel, report); });
  stages.AddIf(o.density_enabled, "density",
               [&] { return EstimateDensity(*op, o, sink, cancel, report); });
  stages.AddIf(o.qbert_enabled, "qbert",
               [&] { return EstimateQBert(module, prepared, hvp, o, sink, cancel, report, hvps); });
  return stages.Run(sink, cancel);
}

// The output's class count (AnalyzeReport::num_classes) from one forward
// pass on the first batch; 0 where the loss has no classes or torch fails
// (the estimators have run on the same batches, so it does not).
int64_t OutputClasses(torch::jit::Module& module, const PreparedBatches& prepared) {
  if (prepared.loss == LossKind::kMse || prepared.batches.empty()) return 0;
  try {
    torch::NoGradGuard no_grad;
    const torch::jit::IValue out = prepared.batches.front().inputs.Forward(module);
    if (!out.isTensor() || out.toTensor().dim() < 2) return 0;
    const at::Tensor logits = out.toTensor();
    return prepared.loss == LossKind::kLanguageModeling ? logits.size(-1) : logits.size(1);
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

absl::StatusOr<AnalyzeReport> RunAnalysis(const AnalyzeOptions& options, ProgressSink* sink,
                                          const CancelToken* cancel) {
  const absl::Time start = absl::Now();
  NullProgressSink null_sink;
  if (sink == nullptr) sink = &null_sink;
  RETURN_IF_ERROR(Validate(options));
  RETURN_IF_ERROR(CheckCancel(cancel));

  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(options.model_path, options.device));
  RETURN_IF_ERROR(CheckFiniteParameters(module, options.model_name));
  AnalyzeReport report;
  for (std::string& w : NonFiniteBuffers(module, options.model_name)) {
    sink->Log("WARNING", w);
    report.warnings.push_back(std::move(w));
  }
  PreparedBatches prepared;
  {
    absl::StatusOr<LoadedDataset> data =
        IsBuiltinDataset(options.dataset)
            ? LoadBuiltinDataset(options.dataset, options.num_samples, options.idx_dir)
            : LoadDataset(options.dataset, options.num_samples);
    if (!data.ok()) return data.status();
    RETURN_IF_ERROR(CheckFiniteData(*data, options.dataset_name));
    ASSIGN_OR_RETURN(prepared, PrepareBatches(module, data->inputs, data->targets,
                                              options.batch_size, options.loss,
                                              options.lm_ignore_id));
  }

  report.loss = prepared.loss;
  report.pseudo_labels = prepared.pseudo_labels;
  report.num_examples = prepared.num_examples;
  report.batch_size = options.batch_size;
  report.num_batches = static_cast<int64_t>(prepared.batches.size());
  report.seed = options.seed;
  report.device = options.device;
  report.runtime = RuntimeDescription();
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    report.dtype = DtypeName(p.scalar_type());
    break;
  }

  HvpMethod method = options.hvp_method.value_or(kDefaultHvpMethod);
  int64_t hvps = 0;
  absl::Status status =
      RunEstimators(module, prepared, method,
                    /*strict_check=*/false, options, sink, cancel, &report, &hvps);
  const bool second_order = method == HvpMethod::kExact || method == HvpMethod::kGaussNewton;
  if (IsMissingDoubleBackward(status) && second_order && options.fallback != HvpFallback::kNone) {
    report.fell_back = true;
    report.fallback_reason = std::string(status.message());
    if (options.fallback == HvpFallback::kFiniteDifference) {
      sink->Log("WARNING",
                absl::StrCat(HvpMethodName(method), " HVP is not available for this model (",
                             status.message(), "); rerunning with finite differences"));
      method = HvpMethod::kFiniteDifference;
      status = RunEstimators(module, prepared, method, /*strict_check=*/true, options, sink, cancel,
                             &report, &hvps);
      if (status.GetPayload(kFdCheckFailed).has_value()) {
        absl::StrAppend(&report.fallback_reason, "; then ", status.message());
      }
    }
    if (options.fallback == HvpFallback::kFisherDiagonal ||
        status.GetPayload(kFdCheckFailed).has_value()) {
      sink->Log("WARNING", absl::StrCat("rerunning with the empirical Fisher "
                                        "diagonal (",
                                        report.fallback_reason, ")"));
      method = HvpMethod::kFisherDiagonal;
      status = RunEstimators(module, prepared, method, /*strict_check=*/false, options, sink,
                             cancel, &report, &hvps);
    }
  }
  RETURN_IF_ERROR(status);
  RETURN_IF_ERROR(CheckFiniteResults(report));
  if (!report.eigenvalues.empty() && !report.density_nodes.empty()) {
    report.spectrum = SeparateOutliers(report.eigenvalues, report.density_nodes,
                                       report.density_weights, options.outliers);
    report.num_classes = OutputClasses(module, prepared);
  }
  report.hvp_method = method;
  report.hvp_count = hvps;
  report.wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return report;
}

}  // namespace compress::engine
