#include "server/pipeline/prune.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/pipeline/common.h"
#include "server/pipeline/quantize.h"
#include "server/pipeline/svg.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

constexpr int kDefaultRecoverySteps = 100;
constexpr double kDefaultLearningRate = 1e-4;

engine::SaliencyKind SaliencyFromProto(v1::Saliency s) {
  switch (s) {
    case v1::SALIENCY_TAYLOR:
      return engine::SaliencyKind::kTaylor;
    case v1::SALIENCY_MAGNITUDE:
      return engine::SaliencyKind::kMagnitude;
    default:
      return engine::SaliencyKind::kHessian;
  }
}

// "−0.76 pp" / "+0.10 pp" (U+2212 lines up with "+").
std::string Drop(double before, double after) {
  const double d = after - before;
  return absl::StrFormat("%s%.2f pp", d < 0 ? "−" : "+", std::abs(d));
}

void RemoveDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::string ReportJson(JobContext& context, const std::string& runtime,
                       const google::protobuf::Message& spec,
                       const google::protobuf::Message& result) {
  return absl::StrCat("{\n\"job_id\": \"", context.job().id(), "\",\n\"seed\": \"",
                      context.job().seed(), "\",\n\"device\": \"", context.device(),
                      "\",\n\"runtime\": \"", runtime, "\",\n\"spec\": ", ProtoJson(spec),
                      ",\n\"result\": ", ProtoJson(result), "\n}\n");
}

// Prunes into `dir` and adds structure.svg; model.pt stays in `dir`.
absl::StatusOr<engine::PruneReport> Prune(const v1::PruneSpec& spec, JobContext& context,
                                          const std::string& dir) {
  engine::PruneOptions options = ToPruneOptions(spec, context.job().seed(), context.device(),
                                                context.resources(), dir);
  ASSIGN_OR_RETURN(engine::PruneReport report,
                   engine::RunPruning(options, &context.progress(), &context.cancel()));
  RETURN_IF_ERROR(context.cancel().Check());
  return report;
}

}  // namespace

engine::PruneOptions ToPruneOptions(const v1::PruneSpec& spec, uint64_t seed,
                                    const std::string& device, Resources& resources,
                                    const std::string& output_dir) {
  engine::PruneOptions o;
  o.model_path = resources.ModelPath(spec.model_id());
  o.calibration_dataset = resources.DatasetPath(spec.data().dataset_id());
  o.num_samples = spec.data().num_samples() > 0 ? spec.data().num_samples() : kDefaultSamples;
  o.batch_size = spec.data().batch_size() > 0 ? spec.data().batch_size() : kDefaultBatch;
  if (spec.has_saliency_samples()) o.saliency_samples = spec.saliency_samples();
  if (!spec.eval_dataset_id().empty()) {
    o.eval_dataset = resources.DatasetPath(spec.eval_dataset_id());
  }
  o.eval_samples = spec.has_eval_samples() ? spec.eval_samples() : 0;
  o.idx_dir = resources.BuiltinDataDir();
  switch (spec.target().target_case()) {
    case v1::PruneTarget::kParamsFraction:
      o.target = engine::PruneTargetKind::kParams;
      o.target_fraction = spec.target().params_fraction();
      break;
    case v1::PruneTarget::kLatencyFraction:
      o.target = engine::PruneTargetKind::kLatency;
      o.target_fraction = spec.target().latency_fraction();
      break;
    default:
      o.target = engine::PruneTargetKind::kFlops;
      o.target_fraction = spec.target().flops_fraction();
  }
  o.saliency = SaliencyFromProto(spec.saliency());
  o.latency_weight = spec.latency_weight();
  if (spec.has_head_group()) o.head_group = spec.head_group();
  if (spec.has_mlp_group()) o.mlp_group = spec.mlp_group();
  if (spec.has_min_heads()) o.min_heads = spec.min_heads();
  if (spec.has_min_mlp()) o.min_mlp = spec.min_mlp();
  if (spec.has_steps()) o.steps = spec.steps();
  const v1::RecoveryOptions& r = spec.recovery();
  o.recovery_steps = r.has_steps() ? r.steps() : kDefaultRecoverySteps;
  o.learning_rate = r.has_learning_rate() ? r.learning_rate() : kDefaultLearningRate;
  if (r.has_temperature()) o.temperature = r.temperature();
  if (!r.optimizer().empty()) o.optimizer = r.optimizer();
  if (spec.has_latency_batch()) o.latency_batch = spec.latency_batch();
  o.seed = seed;
  o.device = device;
  o.output_dir = output_dir;
  return o;
}

v1::PruneResult ToPruneResult(const engine::PruneReport& report) {
  v1::PruneResult r;
  r.set_style(report.style);
  r.set_saliency(report.saliency);
  r.set_target(report.target);
  r.set_target_fraction(report.target_fraction);
  r.set_target_met(report.target_met);
  r.set_achieved_fraction(report.achieved_fraction);
  for (const engine::PrunedBlock& b : report.blocks) {
    v1::PrunedBlock* p = r.add_blocks();
    p->set_name(b.name);
    p->set_heads_before(static_cast<int32_t>(b.heads_before));
    p->set_heads_after(static_cast<int32_t>(b.heads_after));
    p->set_mlp_before(static_cast<int32_t>(b.hidden_before));
    p->set_mlp_after(static_cast<int32_t>(b.hidden_after));
    for (int64_t h : b.kept_heads) p->add_kept_heads(static_cast<int32_t>(h));
    for (int64_t n : b.kept_neurons) p->add_kept_neurons(static_cast<int32_t>(n));
    p->set_prunable_heads(b.prunable_heads);
  }
  for (const engine::PruneRound& x : report.rounds) {
    v1::PruneRound* p = r.add_rounds();
    p->set_round(x.round);
    p->set_units_removed(static_cast<int32_t>(x.units_removed));
    p->set_macs(x.macs);
    p->set_params(x.params);
    p->set_predicted_latency_ms(x.predicted_latency_ms);
    p->set_loss_before_recovery(x.loss_before_recovery);
    p->set_loss_after_recovery(x.loss_after_recovery);
    if (x.accuracy_before_recovery) p->set_accuracy_before_recovery(*x.accuracy_before_recovery);
    if (x.accuracy) p->set_accuracy(*x.accuracy);
  }
  for (const engine::RankedUnit& u : report.ranking) {
    v1::RankedUnit* p = r.add_ranking();
    p->set_round(u.round);
    p->set_block(u.block);
    p->set_kind(u.kind);
    p->set_first(static_cast<int32_t>(u.first));
    p->set_count(static_cast<int32_t>(u.count));
    p->set_score(u.score);
    p->set_taylor(u.taylor);
    p->set_first_order(u.first_order);
    p->set_second_order(u.second_order);
    p->set_magnitude(u.magnitude);
    p->set_cost(u.cost);
    p->set_latency_ms(u.latency_ms);
    p->set_rank_key(u.rank_key);
    p->set_removed(u.removed);
  }
  r.set_macs_before(report.macs_before);
  r.set_macs_after(report.macs_after);
  r.set_params_before(report.params_before);
  r.set_params_after(report.params_after);
  r.set_bytes_before(report.bytes_before);
  r.set_bytes_after(report.bytes_after);
  r.set_latency_batch(report.latency_batch);
  if (report.latency_before_ms) r.set_latency_before_ms(*report.latency_before_ms);
  if (report.latency_after_ms) r.set_latency_after_ms(*report.latency_after_ms);
  r.set_predicted_latency_after_ms(report.predicted_latency_after_ms);
  if (report.accuracy_before) r.set_accuracy_before(*report.accuracy_before);
  if (report.accuracy_after) r.set_accuracy_after(*report.accuracy_after);
  r.set_eval_examples(report.eval_examples);
  r.set_hvp_count(report.hvp_count);
  for (const std::string& w : report.warnings) r.add_warnings(w);
  r.set_runtime(report.runtime);
  r.set_wall_seconds(report.wall_seconds);
  return r;
}

std::string PruneSummary(const v1::PruneResult& r) {
  std::string s = absl::StrFormat("%.1f%% of %s removed (%s saliency), %s → %s parameters",
                                  100 * r.achieved_fraction(), r.target(), r.saliency(),
                                  WithCommas(r.params_before()), WithCommas(r.params_after()));
  if (r.has_accuracy_before() && r.has_accuracy_after()) {
    absl::StrAppendFormat(&s, ", top-1 %.2f%% → %.2f%% (%s)", r.accuracy_before(),
                          r.accuracy_after(), Drop(r.accuracy_before(), r.accuracy_after()));
  }
  if (r.has_latency_before_ms() && r.has_latency_after_ms() && r.latency_after_ms() > 0) {
    absl::StrAppendFormat(&s, ", %.2fx faster at batch %d", r.latency_before_ms() / r.latency_after_ms(),
                          r.latency_batch());
  }
  if (!r.target_met()) absl::StrAppend(&s, "; target not met");
  return s;
}

std::string StructureSvg(const v1::PruneResult& r) {
  Axes axes;
  axes.title = absl::StrFormat("Kept per block (%s saliency, %.0f%% of %s removed)", r.saliency(),
                               100 * r.achieved_fraction(), r.target());
  axes.x_label = "block";
  axes.y_label = "kept fraction (heads, MLP neurons)";
  Series heads, mlp;
  heads.name = "heads";
  heads.color = "#1f77b4";
  heads.line = true;
  heads.radius = 5;
  mlp.name = "MLP neurons";
  mlp.color = "#d62728";
  mlp.line = true;
  mlp.radius = 5;
  for (int i = 0; i < r.blocks_size(); ++i) {
    const v1::PrunedBlock& b = r.blocks(i);
    heads.x.push_back(i);
    heads.y.push_back(b.heads_before() > 0 ? static_cast<double>(b.heads_after()) / b.heads_before()
                                           : 1.0);
    heads.labels.push_back(absl::StrFormat("%d/%d", b.heads_after(), b.heads_before()));
    mlp.x.push_back(i);
    mlp.y.push_back(b.mlp_before() > 0 ? static_cast<double>(b.mlp_after()) / b.mlp_before() : 1.0);
    mlp.labels.push_back(absl::StrFormat("%d/%d", b.mlp_after(), b.mlp_before()));
  }
  return ScatterSvg({heads, mlp}, axes);
}

absl::StatusOr<v1::JobResult> RunPrune(const v1::PruneSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(const std::string dir, MakeTempDir("prune"));
  auto remove_dir = absl::MakeCleanup([&dir] { RemoveDir(dir); });
  ASSIGN_OR_RETURN(engine::PruneReport report, Prune(spec, context, dir));
  v1::JobResult result;
  *result.mutable_prune() = ToPruneResult(report);
  const v1::PruneResult& r = result.prune();
  result.set_summary(PruneSummary(r));
  ASSIGN_OR_RETURN(const std::string model, ReadWholeFile(report.model_path));
  RETURN_IF_ERROR(context.AddArtifact("model.pt", "application/octet-stream", model).status());
  RETURN_IF_ERROR(context
                      .AddArtifact("report.json", "application/json",
                                   ReportJson(context, report.runtime, spec, r))
                      .status());
  RETURN_IF_ERROR(
      context.AddArtifact("structure.svg", "image/svg+xml", StructureSvg(r)).status());
  return result;
}

absl::StatusOr<v1::JobResult> RunCompress(const v1::CompressSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(const std::string prune_dir, MakeTempDir("compress"));
  auto remove_prune = absl::MakeCleanup([&prune_dir] { RemoveDir(prune_dir); });
  ASSIGN_OR_RETURN(engine::PruneReport pruned, Prune(spec.prune(), context, prune_dir));

  ASSIGN_OR_RETURN(const std::string quant_dir, MakeTempDir("compress"));
  auto remove_quant = absl::MakeCleanup([&quant_dir] { RemoveDir(quant_dir); });
  v1::QuantizeSpec qspec = spec.quantize();
  qspec.set_model_id(spec.prune().model_id());
  if (qspec.eval_dataset_id().empty()) {
    // The prune stage's evaluation, so that before and after compare.
    qspec.set_eval_dataset_id(spec.prune().eval_dataset_id());
    if (spec.prune().has_eval_samples()) qspec.set_eval_samples(spec.prune().eval_samples());
  }
  if (!qspec.has_data()) *qspec.mutable_data() = spec.prune().data();
  ASSIGN_OR_RETURN(engine::QuantizeOptions qo,
                   ToQuantizeOptions(qspec, context.job().seed(), context.device(),
                                     context.resources(), quant_dir));
  qo.model_path = pruned.model_path;
  ASSIGN_OR_RETURN(engine::QuantizeReport quantized,
                   engine::RunQuantization(qo, &context.progress(), &context.cancel()));
  RETURN_IF_ERROR(context.cancel().Check());

  v1::JobResult result;
  v1::CompressResult* c = result.mutable_compress();
  *c->mutable_prune() = ToPruneResult(pruned);
  *c->mutable_quantize() = ToQuantizeResult(quantized);
  c->set_bytes_before(pruned.bytes_before);
  c->set_bytes_after(quantized.bytes_after);
  if (pruned.accuracy_before) c->set_accuracy_before(*pruned.accuracy_before);
  if (quantized.accuracy_after) c->set_accuracy_after(*quantized.accuracy_after);
  std::string summary = absl::StrFormat(
      "%.1f%% of %s removed, %.2f average bits, %s → %s bytes (%.1fx)",
      100 * pruned.achieved_fraction, pruned.target, quantized.average_bits,
      WithCommas(c->bytes_before()), WithCommas(c->bytes_after()),
      c->bytes_after() > 0 ? static_cast<double>(c->bytes_before()) / c->bytes_after() : 0.0);
  if (c->has_accuracy_before() && c->has_accuracy_after()) {
    absl::StrAppendFormat(&summary, ", top-1 %.2f%% → %.2f%% (%s)", c->accuracy_before(),
                          c->accuracy_after(), Drop(c->accuracy_before(), c->accuracy_after()));
  }
  result.set_summary(summary);

  RETURN_IF_ERROR(AddQuantizeArtifacts(quantized, c->quantize(), context));
  ASSIGN_OR_RETURN(const std::string model, ReadWholeFile(pruned.model_path));
  RETURN_IF_ERROR(context.AddArtifact("pruned.pt", "application/octet-stream", model).status());
  RETURN_IF_ERROR(context
                      .AddArtifact("report.json", "application/json",
                                   ReportJson(context, quantized.runtime, spec, *c))
                      .status());
  RETURN_IF_ERROR(
      context.AddArtifact("structure.svg", "image/svg+xml", StructureSvg(c->prune())).status());
  return result;
}

}  // namespace compress::pipeline
