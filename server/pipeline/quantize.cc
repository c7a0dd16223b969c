#include "server/pipeline/quantize.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "server/pipeline/common.h"
#include "server/pipeline/svg.h"
#include "server/pipeline/validate.h"
#include "server/util/client_text.h"
#include "server/util/defaults.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

// Per-layer traces of an ANALYZE job, per parameter.
struct JobTraces {
  std::map<std::string, double> trace_per_param;
  std::map<std::string, double> std_error_per_param;
};

// Whether QUANTIZE rounds a layer of this kind (BatchNorm is folded, other
// layers stay float): only these layers' traces price anything.
bool Quantized(const v1::LayerSensitivity& l) {
  return absl::StartsWith(l.kind(), "Conv") || l.kind() == "Linear";
}

// The quantized layers whose trace did not converge, as a message fragment
// naming at most five.
std::string UnconvergedLayers(const v1::AnalyzeResult& a) {
  std::vector<std::string> names;
  int count = 0, quantized = 0;
  for (const v1::LayerSensitivity& l : a.layers()) {
    if (!Quantized(l)) continue;
    ++quantized;
    if (l.trace_probes() == 0 || l.trace_converged()) continue;
    if (++count <= 5) {
      const std::string name = l.name().empty() ? "(root)" : l.name();
      names.push_back(l.trace() != 0
                          ? absl::StrFormat("%s (±%.0f%% after %d probes)", name,
                                            100 * std::abs(l.trace_std_error() / l.trace()),
                                            l.trace_probes())
                          : absl::StrFormat("%s (%.3g ± %.2g after %d probes)", name, l.trace(),
                                            l.trace_std_error(), l.trace_probes()));
    }
  }
  if (count == 0) return "";
  if (count > 5) names.push_back(absl::StrCat("and ", count - 5, " more"));
  return absl::StrCat(count, " of ", quantized, " quantized layers: ", absl::StrJoin(names, ", "));
}

// Tr(H_ii)/n_i per layer and its standard error from a finished ANALYZE
// job of the same model; one whose traces did not all converge only with
// `allow_unconverged`.
absl::StatusOr<JobTraces> TracesFromJob(const std::string& job_id, const std::string& model_id,
                                        bool allow_unconverged, Resources& resources) {
  const std::string field = "quantize.sensitivity_job_id";
  absl::StatusOr<v1::Job> job = resources.GetJob(job_id);
  if (absl::IsNotFound(job.status())) {
    return absl::NotFoundError(
        absl::StrCat(field, ": job ", QuoteClientText(job_id), " not found"));
  }
  if (!job.ok()) return job.status();
  if (job->kind() != v1::JOB_KIND_ANALYZE) {
    return absl::FailedPreconditionError(absl::StrCat(field, ": job ", job_id, " is a ",
                                                      v1::JobKind_Name(job->kind()),
                                                      " job; the traces come from an ANALYZE job"));
  }
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat(field, ": ANALYZE job ", job_id, " is ",
                                                      v1::JobState_Name(job->state()),
                                                      ", not JOB_STATE_SUCCEEDED"));
  }
  if (job->spec().analyze().model_id() != model_id) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": ANALYZE job ", job_id, " analyzed model ",
                     job->spec().analyze().model_id(), ", not ", model_id));
  }
  JobTraces traces;
  for (const v1::LayerSensitivity& l : job->result().analyze().layers()) {
    if (l.trace_probes() == 0) continue;
    traces.trace_per_param[l.name()] = l.trace_per_param();
    traces.std_error_per_param[l.name()] =
        l.numel() > 0 ? l.trace_std_error() / static_cast<double>(l.numel()) : 0;
  }
  if (traces.trace_per_param.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": ANALYZE job ", job_id, " has no Hessian traces (run it with traces enabled)"));
  }
  const std::string unconverged = UnconvergedLayers(job->result().analyze());
  if (!unconverged.empty() && !allow_unconverged) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": the traces of ANALYZE job ", job_id, " did not converge for ", unconverged,
        "; run ANALYZE with more probes (analyze.traces.max_probes), or set "
        "quantize.allow_unconverged_traces (compressctl: --allow-unconverged) to use them"));
  }
  return traces;
}

engine::QuantSearch SearchFromProto(v1::SearchMethod method) {
  switch (method) {
    case v1::SEARCH_METHOD_PARETO:
      return engine::QuantSearch::kPareto;
    case v1::SEARCH_METHOD_ACCURACY_BISECTION:
      return engine::QuantSearch::kBisection;
    case v1::SEARCH_METHOD_UNIFORM:
      return engine::QuantSearch::kUniform;
    default:
      return engine::QuantSearch::kExact;
  }
}

std::string GranularityName(v1::Granularity g) {
  switch (g) {
    case v1::GRANULARITY_PER_TENSOR:
      return "per_tensor";
    case v1::GRANULARITY_GROUP:
      return "group";
    default:
      return "per_channel";
  }
}

// ΣΩ of the chosen allocation (float layers cost nothing).
double ChosenCost(const v1::QuantizeResult& r) {
  double cost = 0;
  for (const v1::QuantizedLayer& l : r.layers()) {
    auto it = l.omega().find(l.bits());
    if (it != l.omega().end()) cost += it->second;
  }
  return cost;
}

std::string ParetoSvg(const v1::QuantizeResult& r) {
  static const char* const kBaselineColors[] = {"#2ca02c", "#9467bd", "#8c564b", "#e377c2"};
  std::vector<Series> series;
  Axes axes;
  axes.x_label = "predicted weights file size (bytes)";
  const bool accuracy_plot = r.measured_size() > 0;
  Series chosen;
  chosen.name = "chosen";
  chosen.color = "#d62728";
  chosen.radius = 7;
  if (accuracy_plot) {
    axes.title =
        r.has_accuracy_before()
            ? absl::StrFormat("Accuracy-bounded search (float model %.2f%%)", r.accuracy_before())
            : "Accuracy-bounded search";
    axes.y_label = "top-1 accuracy (%)";
    Series measured;
    measured.name = "measured";
    measured.line = true;
    for (const v1::QuantPoint& p : r.measured()) {
      if (!p.has_accuracy()) continue;
      measured.x.push_back(static_cast<double>(p.weight_bytes()));
      measured.y.push_back(p.accuracy());
      if (p.chosen()) {
        chosen.x.push_back(static_cast<double>(p.weight_bytes()));
        chosen.y.push_back(p.accuracy());
      }
    }
    series.push_back(measured);
  } else {
    axes.title = "Mixed-precision frontier: size vs. Hessian-weighted error";
    // ½ δᵀHδ can be negative where H is indefinite: then a linear axis.
    axes.log_y = std::all_of(r.frontier().begin(), r.frontier().end(),
                             [](const v1::QuantPoint& p) { return p.cost() > 0; });
    axes.y_label = axes.log_y ? "sum of Omega (log scale)" : "sum of Omega";
    Series frontier;
    frontier.name = "frontier";
    frontier.line = true;
    frontier.radius = 2;
    for (const v1::QuantPoint& p : r.frontier()) {
      frontier.x.push_back(static_cast<double>(p.weight_bytes()));
      frontier.y.push_back(p.cost());
      if (p.chosen()) {
        chosen.x.push_back(static_cast<double>(p.weight_bytes()));
        chosen.y.push_back(p.cost());
      }
    }
    if (chosen.x.empty()) {
      chosen.x.push_back(static_cast<double>(r.predicted_bytes()));
      chosen.y.push_back(ChosenCost(r));
    }
    series.push_back(frontier);
  }
  chosen.labels.assign(chosen.x.size(), absl::StrFormat("%.2f bits", r.average_bits()));
  series.push_back(chosen);
  int color = 0;
  for (const v1::QuantBaseline& b : r.baselines()) {
    if (accuracy_plot && !b.has_accuracy()) continue;
    Series s;
    s.name = b.name();
    s.color = kBaselineColors[color++ % 4];
    s.radius = 5;
    s.x.push_back(static_cast<double>(b.weight_bytes()));
    s.y.push_back(accuracy_plot ? b.accuracy() : b.cost());
    s.labels.push_back(absl::StrFormat("%.2f bits", b.average_bits()));
    series.push_back(s);
  }
  return ScatterSvg(series, axes);
}

}  // namespace

absl::StatusOr<engine::QuantizeOptions> ToQuantizeOptions(const v1::QuantizeSpec& spec,
                                                          uint64_t seed, const std::string& device,
                                                          Resources& resources,
                                                          const std::string& output_dir) {
  engine::QuantizeOptions o;
  o.model_path = resources.ModelPath(spec.model_id());
  o.calibration_dataset = resources.DatasetPath(spec.data().dataset_id());
  o.model_name = ModelName(spec.model_id());
  o.calibration_name = DatasetName(spec.data().dataset_id());
  o.num_samples = spec.data().num_samples() > 0 ? spec.data().num_samples() : kDefaultSamples;
  o.batch_size = spec.data().batch_size() > 0 ? spec.data().batch_size() : kDefaultBatch;
  if (!spec.eval_dataset_id().empty()) {
    o.eval_dataset = resources.DatasetPath(spec.eval_dataset_id());
    o.eval_name = DatasetName(spec.eval_dataset_id());
  }
  o.eval_samples = spec.has_eval_samples() ? spec.eval_samples() : 0;
  o.idx_dir = resources.BuiltinDataDir();
  o.loss = LossFromProto(spec.loss());
  if (spec.has_lm_ignore_id()) o.lm_ignore_id = spec.lm_ignore_id();
  o.int8_model = spec.int8_model();
  if (spec.has_head_refit()) {
    const v1::HeadRefitOptions& h = spec.head_refit();
    engine::QuantHeadRefit refit;
    if (h.has_iterations()) refit.iterations = h.iterations();
    if (h.hessian() == v1::HEAD_REFIT_HESSIAN_EXACT) refit.hessian = "exact";
    if (h.hessian() == v1::HEAD_REFIT_HESSIAN_KFAC) refit.hessian = "kfac";
    if (h.has_alpha()) refit.alpha = h.alpha();
    if (h.has_temperature()) refit.temperature = h.temperature();
    o.head_refit = refit;
  }

  if (!spec.sensitivity_job_id().empty()) {
    ASSIGN_OR_RETURN(JobTraces traces,
                     TracesFromJob(spec.sensitivity_job_id(), spec.model_id(),
                                   spec.allow_unconverged_traces(), resources));
    o.trace_per_param = std::move(traces.trace_per_param);
    o.trace_std_error_per_param = std::move(traces.std_error_per_param);
  }
  switch (spec.omega()) {
    case v1::OMEGA_TRACE:
      o.omega = engine::QuantOmega::kTrace;
      break;
    case v1::OMEGA_QUADRATIC:
      o.omega = engine::QuantOmega::kQuadratic;
      break;
    default:
      break;  // the engine's default for where the sensitivity comes from
  }
  if (spec.has_trace_tolerance()) o.trace_tolerance = spec.trace_tolerance();
  if (spec.has_trace_max_probes()) o.trace_max_probes = spec.trace_max_probes();

  const v1::QuantizerSettings& q = spec.quantizer();
  o.symmetric = !q.asymmetric();
  o.granularity = GranularityName(q.granularity());
  o.group_size = q.has_group_size() ? q.group_size() : defaults::kGroupSize;
  o.gptq = q.rounding() == v1::ROUNDING_GPTQ;
  if (q.has_gptq_damping()) o.gptq_damping = q.gptq_damping();
  if (q.has_gptq_block_size()) o.gptq_block_size = q.gptq_block_size();
  o.gptq_act_order = q.gptq_act_order();

  o.search = SearchFromProto(spec.search());
  switch (spec.budget().limit_case()) {
    case v1::Budget::kAverageBits:
      o.budget = engine::QuantBudget::AverageBits(spec.budget().average_bits());
      break;
    case v1::Budget::kModelBytes:
      o.budget = engine::QuantBudget::ModelBytes(static_cast<double>(spec.budget().model_bytes()));
      break;
    case v1::Budget::kBops:
      o.budget = engine::QuantBudget::Bops(spec.budget().bops());
      break;
    default:
      if (o.search == engine::QuantSearch::kBisection) {
        o.budget.kind = engine::QuantBudget::Kind::kNone;
        o.budget.value = 0;
      } else {
        o.budget = engine::QuantBudget::AverageBits(defaults::kAverageBits);
      }
  }
  switch (spec.tolerance().limit_case()) {
    case v1::AccuracyTolerance::kMaxDropPp:
      o.tolerance = {engine::QuantTolerance::Kind::kMaxDropPoints, spec.tolerance().max_drop_pp()};
      break;
    case v1::AccuracyTolerance::kMaxRelativeDrop:
      o.tolerance = {engine::QuantTolerance::Kind::kMaxRelativeDrop,
                     spec.tolerance().max_relative_drop()};
      break;
    default:
      o.tolerance = {};
  }
  if (spec.candidate_bits_size() > 0) {
    o.candidate_bits.assign(spec.candidate_bits().begin(), spec.candidate_bits().end());
    std::sort(o.candidate_bits.begin(), o.candidate_bits.end());
    o.candidate_bits.erase(std::unique(o.candidate_bits.begin(), o.candidate_bits.end()),
                           o.candidate_bits.end());
  }
  if (spec.pins_size() > 0 || spec.no_default_pins()) {
    std::map<std::string, int> pins;
    for (const v1::LayerPin& p : spec.pins()) {
      pins[p.layer()] = p.bits() == 16 || p.bits() == 32 ? engine::kFloatBits : p.bits();
    }
    o.pins = std::move(pins);
  }
  for (const v1::LayerTie& t : spec.ties()) {
    o.ties.emplace_back(t.layers().begin(), t.layers().end());
  }
  o.seed = seed;
  o.device = device;
  o.output_dir = output_dir;
  return o;
}

v1::QuantizeResult ToQuantizeResult(const engine::QuantizeReport& report) {
  v1::QuantizeResult r;
  for (const engine::QuantizedLayerReport& l : report.layers) {
    v1::QuantizedLayer* p = r.add_layers();
    p->set_name(l.name);
    p->set_kind(l.kind);
    p->set_numel(l.numel);
    p->set_macs(l.macs);
    p->set_bits(l.bits);
    p->set_pinned(l.pinned);
    p->set_trace_per_param(l.trace_per_param);
    for (const auto& [bits, omega] : l.omega) (*p->mutable_omega())[bits] = omega;
    p->set_bytes_before(l.bytes_before);
    p->set_bytes_after(l.bytes_after);
    p->set_rounding(l.rounding);
    p->set_note(l.note);
    p->set_gptq_error(l.gptq_error);
    p->set_rtn_error(l.rtn_error);
    for (const auto& [bits, e] : l.squared_error) (*p->mutable_squared_error())[bits] = e;
    for (const auto& [bits, e] : l.omega_std_error) (*p->mutable_omega_std_error())[bits] = e;
    for (const auto& [bits, e] : l.price) (*p->mutable_price())[bits] = e;
    p->set_fallback(l.fallback);
    p->set_fallback_reason(l.fallback_reason);
    for (const std::string& name : l.tied) p->add_tied(name);
  }
  r.set_search(report.search);
  r.set_search_exact(report.search_exact);
  r.set_budget_met(report.budget_met);
  r.set_tolerance_met(report.tolerance_met);
  r.set_average_bits(report.average_bits);
  r.set_bops(report.bops);
  r.set_bytes_before(report.bytes_before);
  r.set_bytes_after(report.bytes_after);
  r.set_predicted_bytes(report.predicted_bytes);
  if (report.accuracy_before) r.set_accuracy_before(*report.accuracy_before);
  if (report.accuracy_after) r.set_accuracy_after(*report.accuracy_after);
  if (report.perplexity_before) r.set_perplexity_before(*report.perplexity_before);
  if (report.perplexity_after) r.set_perplexity_after(*report.perplexity_after);
  r.set_eval_examples(report.eval_examples);
  auto add_points = [](const std::vector<engine::QuantPoint>& points,
                       google::protobuf::RepeatedPtrField<v1::QuantPoint>* out) {
    for (const engine::QuantPoint& pt : points) {
      v1::QuantPoint* p = out->Add();
      p->set_weight_bytes(pt.weight_bytes);
      p->set_average_bits(pt.average_bits);
      p->set_cost(pt.cost);
      if (pt.accuracy) p->set_accuracy(*pt.accuracy);
      p->set_chosen(pt.chosen);
    }
  };
  add_points(report.frontier, r.mutable_frontier());
  add_points(report.measured, r.mutable_measured());
  for (const engine::QuantBaseline& b : report.baselines) {
    v1::QuantBaseline* p = r.add_baselines();
    p->set_name(b.name);
    for (const auto& [layer, bits] : b.bits) (*p->mutable_bits())[layer] = bits;
    p->set_average_bits(b.average_bits);
    p->set_weight_bytes(b.weight_bytes);
    p->set_cost(b.cost);
    if (b.accuracy) p->set_accuracy(*b.accuracy);
    p->set_chosen_only_correct(b.chosen_only_correct);
    p->set_baseline_only_correct(b.baseline_only_correct);
    if (b.p_value) p->set_p_value(*b.p_value);
  }
  r.set_sensitivity_source(report.sensitivity_source);
  r.set_hvp_count(report.hvp_count);
  r.set_omega(report.omega);
  r.set_perturbation(report.perturbation);
  r.set_hvp_method(report.hvp_method);
  r.set_fallback_layers(report.fallback_layers);
  for (const auto& [bits, k] : report.fallback_curvature) (*r.mutable_fallback_curvature())[bits] = k;
  if (report.searched_output_error) r.set_searched_output_error(*report.searched_output_error);
  if (report.uniform_output_error) r.set_uniform_output_error(*report.uniform_output_error);
  r.set_chose_uniform(report.chose_uniform);
  r.set_runtime(report.runtime);
  r.set_wall_seconds(report.wall_seconds);
  for (const auto& [layer, bits] : report.pins) (*r.mutable_pins())[layer] = bits;
  for (const std::string& w : report.warnings) r.add_warnings(w);
  r.set_model_bytes(report.model_bytes);
  if (report.int8) {
    v1::Int8ModelResult* p = r.mutable_int8();
    p->set_bytes(report.int8->bytes);
    p->set_engine(report.int8->engine);
    p->set_quantized_ops(report.int8->quantized_ops);
    if (report.int8->accuracy) p->set_accuracy(*report.int8->accuracy);
    p->set_latency_ms(report.int8->latency_ms);
    p->set_float_latency_ms(report.int8->float_latency_ms);
    p->set_latency_batch(report.int8->latency_batch);
    p->set_threads(report.int8->threads);
  }
  if (report.head_refit) {
    const engine::QuantHeadRefitReport& h = *report.head_refit;
    v1::HeadRefitResult* p = r.mutable_head_refit();
    p->set_head(h.head);
    p->set_hessian(h.hessian);
    p->set_iterations(h.iterations);
    p->set_bits(h.bits);
    p->set_loss_before(h.loss_before);
    p->set_loss_after(h.loss_after);
    p->set_loss_refit(h.loss_refit);
    if (h.accuracy_before) p->set_accuracy_before(*h.accuracy_before);
    p->set_seconds(h.seconds);
  }
  return r;
}

std::string QuantizeSummary(const v1::QuantizeResult& r) {
  std::string summary = absl::StrFormat("%.2f average bits, %s → %s bytes", r.average_bits(),
                                        WithCommas(r.bytes_before()), WithCommas(r.bytes_after()));
  if (r.bytes_after() > 0) {
    absl::StrAppendFormat(&summary, " (%.1fx)",
                          static_cast<double>(r.bytes_before()) / r.bytes_after());
  }
  if (r.has_accuracy_before() && r.has_accuracy_after()) {
    const double drop = r.accuracy_after() - r.accuracy_before();
    // U+2212 for a minus sign that lines up with "+".
    absl::StrAppendFormat(&summary, ", top-1 %.2f%% → %.2f%% (%s%.2f pp)", r.accuracy_before(),
                          r.accuracy_after(), drop < 0 ? "−" : "+", std::abs(drop));
  } else if (r.has_accuracy_after()) {
    absl::StrAppendFormat(&summary, ", top-1 %.2f%%", r.accuracy_after());
  } else if (r.has_perplexity_before() && r.has_perplexity_after()) {
    absl::StrAppendFormat(&summary, ", perplexity %.4g → %.4g", r.perplexity_before(),
                          r.perplexity_after());
  }
  if (r.fallback_layers() > 0) {
    absl::StrAppendFormat(&summary, "; %d of %d layers priced without their Ω (negative or unresolved)%s",
                          r.fallback_layers(), r.layers_size(),
                          r.chose_uniform() ? ", uniform bits kept" : "");
  }
  if (r.has_int8()) {
    absl::StrAppendFormat(&summary, "; int8 model %.2f ms vs %.2f ms float at batch %d",
                          r.int8().latency_ms(), r.int8().float_latency_ms(),
                          r.int8().latency_batch());
    if (r.int8().has_accuracy()) {
      absl::StrAppendFormat(&summary, ", top-1 %.2f%%", r.int8().accuracy());
    }
  }
  if (r.has_head_refit()) {
    absl::StrAppendFormat(&summary, "; head %s re-fitted (%s Newton, %d steps): loss %.4g -> %.4g",
                          r.head_refit().head(), r.head_refit().hessian(),
                          r.head_refit().iterations(), r.head_refit().loss_before(),
                          r.head_refit().loss_after());
  }
  if (!r.budget_met()) absl::StrAppend(&summary, "; budget not met");
  if (!r.tolerance_met()) absl::StrAppend(&summary, "; accuracy tolerance not met");
  return summary;
}

absl::Status AddQuantizeArtifacts(const engine::QuantizeReport& report,
                                  const v1::QuantizeResult& result, JobContext& context) {
  struct Output {
    const char* name;
    const char* content_type;
    std::string path;
  };
  const Output outputs[] = {
      {"model.pt", "application/octet-stream", report.model_path},
      {"weights.safetensors", "application/octet-stream", report.weights_path},
      {"manifest.json", "application/json", report.manifest_path},
      {"encodings.json", "application/json", report.encodings_path},
  };
  for (const Output& out : outputs) {
    ASSIGN_OR_RETURN(const std::string bytes, ReadWholeFile(out.path));
    RETURN_IF_ERROR(context.AddArtifact(out.name, out.content_type, bytes).status());
  }
  if (report.int8) {
    ASSIGN_OR_RETURN(const std::string bytes, ReadWholeFile(report.int8->path));
    RETURN_IF_ERROR(
        context.AddArtifact("model_int8.pt", "application/octet-stream", bytes).status());
  }
  return context.AddArtifact("pareto.svg", "image/svg+xml", ParetoSvg(result)).status();
}

namespace {

class QuantizeKind final : public JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_QUANTIZE; }
  absl::Status Validate(const v1::JobSpec& spec, Resources& resources) const override {
    RETURN_IF_ERROR(CheckModel("quantize.model_id", spec.quantize().model_id(), resources));
    RETURN_IF_ERROR(ValidateQuantizeSpec("quantize", spec.quantize(), resources));
    // Resolves sensitivity_job_id: an unknown or unusable job is refused
    // now, not after the job has queued.
    return ToQuantizeOptions(spec.quantize(), 0, "cpu", resources, "").status();
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec& spec) const override {
    const v1::QuantizeSpec& q = spec.quantize();
    return UniqueIds(
        {q.model_id(), q.data().dataset_id(), q.eval_dataset_id(), q.sensitivity_job_id()});
  }
  absl::StatusOr<v1::JobResult> Run(JobContext& context) const override {
    return RunQuantize(context.job().spec().quantize(), context);
  }
  std::string Summary(const v1::JobResult& result) const override {
    return QuantizeSummary(result.quantize());
  }
};

}  // namespace

std::unique_ptr<JobKindHandler> NewQuantizeKind() { return std::make_unique<QuantizeKind>(); }

absl::StatusOr<v1::JobResult> RunQuantize(const v1::QuantizeSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(const std::string dir, MakeTempDir("quantize"));
  auto remove_dir = absl::MakeCleanup([&dir] {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  });
  ASSIGN_OR_RETURN(
      engine::QuantizeOptions options,
      ToQuantizeOptions(spec, context.job().seed(), context.device(), context.resources(), dir));
  ASSIGN_OR_RETURN(engine::QuantizeReport report,
                   engine::RunQuantization(options, &context.progress(), &context.cancel()));
  RETURN_IF_ERROR(context.cancel().Check());

  v1::JobResult result;
  *result.mutable_quantize() = ToQuantizeResult(report);
  const v1::QuantizeResult& r = result.quantize();
  result.set_summary(QuantizeSummary(r));
  RETURN_IF_ERROR(AddQuantizeArtifacts(report, r, context));
  // report.json: the result plus everything needed to reproduce it.
  RETURN_IF_ERROR(context
                      .AddArtifact("report.json", "application/json",
                                   ReportJson(context, report.runtime, spec, r))
                      .status());
  return result;
}

}  // namespace compress::pipeline
