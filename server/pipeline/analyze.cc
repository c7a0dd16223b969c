#include "server/pipeline/analyze.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/util/defaults.h"
#include "server/engine/quant/weight_error.h"
#include "server/pipeline/common.h"
#include "server/pipeline/svg.h"
#include "server/pipeline/validate.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

// Ω(b) for every quantized width.
constexpr int kMinOmegaBits = defaults::kMinBits;
constexpr int kMaxOmegaBits = defaults::kMaxBits;

v1::HvpMethod ToProto(engine::HvpMethod m) {
  switch (m) {
    case engine::HvpMethod::kExact:
      return v1::HVP_METHOD_EXACT;
    case engine::HvpMethod::kFiniteDifference:
      return v1::HVP_METHOD_FINITE_DIFFERENCE;
    case engine::HvpMethod::kGaussNewton:
      return v1::HVP_METHOD_GAUSS_NEWTON;
    case engine::HvpMethod::kFisherDiagonal:
      return v1::HVP_METHOD_FISHER_DIAGONAL;
  }
  return v1::HVP_METHOD_UNSPECIFIED;
}

std::string SensitivityCsv(const v1::AnalyzeResult& r) {
  std::string csv = "layer,kind,numel,trace,trace_std_error,trace_probes,trace_per_param";
  for (int b = kMinOmegaBits; b <= kMaxOmegaBits; ++b) absl::StrAppend(&csv, ",omega_", b);
  absl::StrAppend(&csv, ",top_eigenvalue,qbert_score\n");
  for (const v1::LayerSensitivity& l : r.layers()) {
    absl::StrAppendFormat(&csv, "%s,%s,%d,%.9g,%.9g,%d,%.9g", l.name(), l.kind(), l.numel(),
                          l.trace(), l.trace_std_error(), l.trace_probes(), l.trace_per_param());
    for (int b = kMinOmegaBits; b <= kMaxOmegaBits; ++b) {
      auto it = l.omega().find(b);
      if (it == l.omega().end()) {
        absl::StrAppend(&csv, ",");
      } else {
        absl::StrAppendFormat(&csv, ",%.9g", it->second);
      }
    }
    if (l.top_eigenvalues_size() > 0) {
      absl::StrAppendFormat(&csv, ",%.9g", l.top_eigenvalues(0));
    } else {
      absl::StrAppend(&csv, ",");
    }
    absl::StrAppendFormat(&csv, ",%.9g\n", l.qbert_score());
  }
  return csv;
}

void SetSpectrumOutliers(const engine::SpectrumSplit& split, int64_t num_classes,
                         v1::AnalyzeResult* r) {
  v1::SpectrumOutliers* so = r->mutable_spectrum_outliers();
  for (double v : split.outliers) so->add_outliers(v);
  so->set_count(split.count());
  so->set_count_is_lower_bound(split.count_is_lower_bound);
  so->set_bulk_min(split.bulk_min);
  so->set_bulk_max(split.bulk_max);
  so->set_bulk_width(split.bulk_width());
  so->set_num_classes(num_classes);
  so->set_edge_gap(split.edge_gap);
}

// spectrum.svg's vertical lines: the bulk's edges (dashed) and each outlier.
std::vector<Mark> SpectrumMarks(const engine::SpectrumSplit& split) {
  std::vector<Mark> marks = {{split.bulk_min, "bulk edge", "#2ca02c", true},
                             {split.bulk_max, "bulk edge", "#2ca02c", true}};
  for (double v : split.outliers) marks.push_back({v, absl::StrFormat("outlier %.4g", v)});
  return marks;
}

engine::HvpMethod FromProto(v1::HvpMethod m) {
  for (engine::HvpMethod e : {engine::HvpMethod::kExact, engine::HvpMethod::kFiniteDifference,
                              engine::HvpMethod::kGaussNewton, engine::HvpMethod::kFisherDiagonal}) {
    if (ToProto(e) == m) return e;
  }
  return engine::HvpMethod::kExact;
}

class AnalyzeKind final : public JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_ANALYZE; }
  absl::Status Validate(const v1::JobSpec& spec, Resources& resources) const override {
    RETURN_IF_ERROR(ValidateAnalyzeSpec(spec.analyze(), resources));
    // Options the engine cannot honour yet are refused at submit.
    return ToAnalyzeOptions(spec.analyze(), 0, "cpu", resources).status();
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec& spec) const override {
    return UniqueIds({spec.analyze().model_id(), spec.analyze().data().dataset_id()});
  }
  absl::StatusOr<v1::JobResult> Run(JobContext& context) const override {
    return RunAnalyze(context.job().spec().analyze(), context);
  }
  std::string Summary(const v1::JobResult& result) const override {
    return AnalyzeSummary(result.analyze());
  }
};

}  // namespace

std::string AnalyzeSummary(const v1::AnalyzeResult& r) {
  std::string summary =
      absl::StrFormat("%d layers, %d HVPs (%s), %.1f s", r.layers_size(), r.hvp_count(),
                      engine::HvpMethodName(FromProto(r.hvp_method())), r.wall_seconds());
  // Traces ran: every layer has probes (at least min_probes >= 2), or the
  // Fisher fallback filled the totals.
  if (r.total_trace() != 0 || (r.layers_size() > 0 && r.layers(0).trace_probes() > 0)) {
    absl::StrAppendFormat(&summary, ", total trace %.4g ± %.2g", r.total_trace(),
                          r.total_trace_std_error());
  }
  if (r.eigenvalues_size() > 0) {
    const bool converged = r.eigen_converged_size() == 0 || r.eigen_converged(0);
    absl::StrAppendFormat(&summary, ", top eigenvalue %.4g%s", r.eigenvalues(0),
                          converged ? "" : " (not converged)");
  }
  if (r.has_min_eigenvalue() && r.has_max_eigenvalue()) {
    absl::StrAppendFormat(&summary, ", spectrum [%.4g, %.4g]", r.min_eigenvalue(),
                          r.max_eigenvalue());
  }
  if (r.has_spectrum_outliers()) {
    const v1::SpectrumOutliers& so = r.spectrum_outliers();
    absl::StrAppendFormat(&summary, ", %s%d outliers (%d classes), bulk [%.4g, %.4g]",
                          so.count_is_lower_bound() ? ">= " : "", so.count(), so.num_classes(),
                          so.bulk_min(), so.bulk_max());
  }
  if (r.fell_back()) absl::StrAppend(&summary, " (fell back: ", r.fallback_reason(), ")");
  for (const std::string& w : r.warnings()) absl::StrAppend(&summary, "; warning: ", w);
  return summary;
}

std::unique_ptr<JobKindHandler> NewAnalyzeKind() { return std::make_unique<AnalyzeKind>(); }

absl::StatusOr<engine::AnalyzeOptions> ToAnalyzeOptions(const v1::AnalyzeSpec& spec, uint64_t seed,
                                                        const std::string& device,
                                                        Resources& resources) {
  engine::AnalyzeOptions o;
  o.model_path = resources.ModelPath(spec.model_id());
  o.dataset = resources.DatasetPath(spec.data().dataset_id());
  o.model_name = ModelName(spec.model_id());
  o.dataset_name = DatasetName(spec.data().dataset_id());
  o.idx_dir = resources.BuiltinDataDir();
  o.num_samples = spec.data().num_samples() > 0 ? spec.data().num_samples() : kDefaultSamples;
  o.batch_size = spec.data().batch_size() > 0 ? spec.data().batch_size() : kDefaultBatch;
  o.loss = LossFromProto(spec.loss());
  if (spec.has_lm_ignore_id()) o.lm_ignore_id = spec.lm_ignore_id();
  switch (spec.hvp_method()) {
    case v1::HVP_METHOD_EXACT:
      o.hvp_method = engine::HvpMethod::kExact;
      break;
    case v1::HVP_METHOD_FINITE_DIFFERENCE:
      o.hvp_method = engine::HvpMethod::kFiniteDifference;
      break;
    case v1::HVP_METHOD_GAUSS_NEWTON:
      o.hvp_method = engine::HvpMethod::kGaussNewton;
      break;
    case v1::HVP_METHOD_FISHER_DIAGONAL:
      o.hvp_method = engine::HvpMethod::kFisherDiagonal;
      break;
    default:
      break;  // the engine's default
  }
  switch (spec.fallback()) {
    case v1::HVP_FALLBACK_NONE:
      o.fallback = engine::HvpFallback::kNone;
      break;
    case v1::HVP_FALLBACK_FISHER:
      o.fallback = engine::HvpFallback::kFisherDiagonal;
      break;
    default:
      o.fallback = engine::HvpFallback::kFiniteDifference;
  }
  const v1::TraceOptions& t = spec.traces();
  bool any =
      t.enabled() || spec.eigen().enabled() || spec.density().enabled() || spec.qbert().enabled();
  o.traces_enabled = t.enabled() || !any;  // traces are the default analysis
  if (t.has_tolerance()) o.traces.tolerance = t.tolerance();
  if (t.has_max_probes()) o.traces.max_probes = t.max_probes();
  if (t.has_min_probes()) o.traces.min_probes = t.min_probes();
  o.traces.min_probes = std::min(o.traces.min_probes, o.traces.max_probes);
  o.traces.exact_per_layer = t.exact_per_layer();
  const v1::EigenOptions& e = spec.eigen();
  o.eigen_enabled = e.enabled();
  if (e.has_k()) o.eigen.k = e.k();
  if (e.has_tolerance()) o.eigen.tolerance = e.tolerance();
  if (e.has_max_iterations()) o.eigen.max_iterations = e.max_iterations();
  o.eigen.method = e.method() == v1::EIGEN_METHOD_LANCZOS ? engine::EigenMethod::kLanczos
                                                          : engine::EigenMethod::kPower;
  switch (e.scope()) {
    case v1::EIGEN_SCOPE_LAYER:
      o.eigen_scope = engine::EigenScope::kLayer;
      break;
    case v1::EIGEN_SCOPE_BLOCK:
      o.eigen_scope = engine::EigenScope::kBlock;
      break;
    default:
      o.eigen_scope = engine::EigenScope::kModel;
  }
  const v1::DensityOptions& d = spec.density();
  o.density_enabled = d.enabled();
  if (d.has_lanczos_steps()) o.density.lanczos_steps = d.lanczos_steps();
  if (d.has_runs()) o.density.runs = d.runs();
  if (d.has_grid_points()) o.density.grid_points = d.grid_points();
  if (d.has_sigma()) o.density.sigma = d.sigma();
  if (d.has_max_memory_bytes()) o.density.max_memory_bytes = d.max_memory_bytes();
  if (d.has_bulk_mass()) o.outliers.bulk_mass = d.bulk_mass();
  if (d.has_outlier_gap()) o.outliers.gap = d.outlier_gap();
  o.qbert_enabled = spec.qbert().enabled();
  if (spec.qbert().has_subsets()) o.qbert_subsets = spec.qbert().subsets();
  o.seed = seed;
  o.device = device;
  return o;
}

absl::StatusOr<v1::JobResult> RunAnalyze(const v1::AnalyzeSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(
      engine::AnalyzeOptions options,
      ToAnalyzeOptions(spec, context.job().seed(), context.device(), context.resources()));
  ASSIGN_OR_RETURN(engine::AnalyzeReport report,
                   engine::RunAnalysis(options, &context.progress(), &context.cancel()));
  RETURN_IF_ERROR(context.cancel().Check());

  engine::WeightErrors weight_errors;
  if (options.traces_enabled) {
    std::vector<int> bits;
    for (int b = kMinOmegaBits; b <= kMaxOmegaBits; ++b) bits.push_back(b);
    ASSIGN_OR_RETURN(weight_errors, engine::RoundToNearestErrors(options.model_path, bits));
  }

  v1::JobResult result;
  v1::AnalyzeResult* r = result.mutable_analyze();
  if (options.eigen_enabled) {
    r->set_eigen_method(options.eigen.method == engine::EigenMethod::kLanczos ? "lanczos" : "power");
  }
  for (const engine::LayerSensitivity& l : report.layers) {
    v1::LayerSensitivity* p = r->add_layers();
    p->set_name(l.name);
    p->set_kind(l.kind);
    p->set_numel(l.numel);
    p->set_trace(l.trace);
    p->set_trace_std_error(l.trace_std_error);
    p->set_trace_probes(l.trace_probes);
    p->set_trace_per_param(l.trace_per_param);
    p->set_trace_converged(l.trace_converged);
    for (double v : l.top_eigenvalues) p->add_top_eigenvalues(v);
    for (bool c : l.top_eigenvalues_converged) p->add_top_eigenvalues_converged(c);
    for (double v : l.qbert_eigenvalues) p->add_qbert_eigenvalues(v);
    p->set_qbert_score(l.qbert_score);
    for (const std::string& name : l.tied) p->add_tied(name);
    auto it = weight_errors.find(l.name);
    if (it != weight_errors.end()) {
      for (const auto& [b, err] : it->second) (*p->mutable_omega())[b] = l.trace_per_param * err;
    }
  }
  r->set_num_parameters(report.num_parameters);
  r->set_total_trace(report.total_trace);
  r->set_total_trace_std_error(report.total_trace_std_error);
  for (double v : report.eigenvalues) r->add_eigenvalues(v);
  for (int v : report.eigen_iterations) r->add_eigen_iterations(v);
  for (bool c : report.eigen_converged) r->add_eigen_converged(c);
  for (double v : report.eigen_relative_change) r->add_eigen_relative_change(v);
  if (report.min_eigenvalue) r->set_min_eigenvalue(*report.min_eigenvalue);
  if (report.max_eigenvalue) r->set_max_eigenvalue(*report.max_eigenvalue);
  r->set_min_eigenvalue_relative_change(report.min_eigenvalue_relative_change);
  r->set_max_eigenvalue_relative_change(report.max_eigenvalue_relative_change);
  for (double v : report.density_nodes) r->add_density_nodes(v);
  for (double v : report.density_weights) r->add_density_weights(v);
  r->set_hvp_method(ToProto(report.hvp_method));
  r->set_fell_back(report.fell_back);
  r->set_fallback_reason(report.fallback_reason);
  r->set_loss(LossToProto(report.loss));
  r->set_pseudo_labels(report.pseudo_labels);
  r->set_num_examples(report.num_examples);
  r->set_batch_size(report.batch_size);
  r->set_hvp_count(report.hvp_count);
  r->set_wall_seconds(report.wall_seconds);
  r->set_runtime(report.runtime);
  for (const engine::BlockSensitivity& b : report.blocks) {
    v1::BlockSensitivity* p = r->add_blocks();
    p->set_name(b.name);
    for (const std::string& l : b.layers) p->add_layers(l);
    p->set_numel(b.numel);
    for (double v : b.top_eigenvalues) p->add_top_eigenvalues(v);
    for (bool c : b.top_eigenvalues_converged) p->add_top_eigenvalues_converged(c);
  }
  r->set_finite_difference_check(report.finite_difference_check);
  r->set_density_window(report.density_window);
  if (report.spectrum) SetSpectrumOutliers(*report.spectrum, report.num_classes, r);
  for (const std::string& w : report.warnings) r->add_warnings(w);

  result.set_summary(AnalyzeSummary(*r));

  // report.json: the result plus everything needed to reproduce it.
  RETURN_IF_ERROR(context
                      .AddArtifact("report.json", "application/json",
                                   ReportJson(context, report.runtime, spec, *r,
                                              {{"dtype", report.dtype}}))
                      .status());
  RETURN_IF_ERROR(context.AddArtifact("sensitivity.csv", "text/csv", SensitivityCsv(*r)).status());

  std::vector<std::string> labels;
  std::vector<double> values;
  for (const v1::LayerSensitivity& l : r->layers()) {
    labels.push_back(l.name());
    values.push_back(options.traces_enabled         ? l.trace_per_param()
                     : l.top_eigenvalues_size() > 0 ? l.top_eigenvalues(0)
                                                    : l.qbert_score());
  }
  Axes bar_axes;
  bar_axes.title =
      options.traces_enabled ? "Hessian trace per parameter, by layer" : "Layer sensitivity";
  bar_axes.x_label = options.traces_enabled ? "Tr(H_ii) / n_i (log scale)" : "value (log scale)";
  bar_axes.log_y = true;
  RETURN_IF_ERROR(
      context.AddArtifact("sensitivity.svg", "image/svg+xml", BarChartSvg(labels, values, bar_axes))
          .status());
  if (!report.density_grid.empty()) {
    Axes axes;
    axes.title = "Hessian eigenvalue density (stochastic Lanczos quadrature)";
    axes.x_label = "eigenvalue";
    axes.y_label = "density (log scale)";
    axes.log_y = true;
    if (report.spectrum) axes.marks = SpectrumMarks(*report.spectrum);
    RETURN_IF_ERROR(context
                        .AddArtifact("spectrum.svg", "image/svg+xml",
                                     LinePlotSvg(report.density_grid, report.density_values, axes))
                        .status());
  }
  return result;
}

}  // namespace compress::pipeline
