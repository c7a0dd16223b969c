#include "server/pipeline/compress.h"

#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/pipeline/common.h"
#include "server/pipeline/prune.h"
#include "server/pipeline/quantize.h"
#include "server/pipeline/validate.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

class CompressKind final : public JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_COMPRESS; }
  absl::Status Validate(const v1::JobSpec& spec, Resources& resources) const override {
    const v1::CompressSpec& c = spec.compress();
    RETURN_IF_ERROR(ValidatePruneSpec("compress.prune", c.prune(), resources));
    if (!c.quantize().sensitivity_job_id().empty()) {
      return absl::InvalidArgumentError(
          "compress.quantize.sensitivity_job_id: an ANALYZE job's traces describe the unpruned "
          "model; COMPRESS computes them on the pruned one (leave it empty)");
    }
    if (c.quantize().has_data()) {
      RETURN_IF_ERROR(ValidateQuantizeSpec("compress.quantize", c.quantize(), resources));
    }
    return absl::OkStatus();
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec& spec) const override {
    std::vector<std::string> ids = PruneReferencedIds(spec.compress().prune());
    ids.push_back(spec.compress().quantize().data().dataset_id());
    ids.push_back(spec.compress().quantize().eval_dataset_id());
    return UniqueIds(std::move(ids));
  }
  absl::StatusOr<v1::JobResult> Run(JobContext& context) const override {
    return RunCompress(context.job().spec().compress(), context);
  }
  std::string Summary(const v1::JobResult& result) const override {
    return CompressSummary(result.compress());
  }
};

}  // namespace

std::unique_ptr<JobKindHandler> NewCompressKind() { return std::make_unique<CompressKind>(); }

std::string CompressSummary(const v1::CompressResult& c) {
  std::string summary = absl::StrFormat(
      "%.1f%% of %s removed, %.2f average bits, %s → %s bytes (%.1fx)",
      100 * c.prune().achieved_fraction(), c.prune().target(), c.quantize().average_bits(),
      WithCommas(c.bytes_before()), WithCommas(c.bytes_after()),
      c.bytes_after() > 0 ? static_cast<double>(c.bytes_before()) / c.bytes_after() : 0.0);
  if (c.has_accuracy_before() && c.has_accuracy_after()) {
    absl::StrAppendFormat(&summary, ", top-1 %.2f%% → %.2f%% (%s)", c.accuracy_before(),
                          c.accuracy_after(), SignedPp(c.accuracy_after() - c.accuracy_before()));
  }
  return summary;
}

absl::StatusOr<v1::JobResult> RunCompress(const v1::CompressSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(const std::string prune_dir, MakeTempDir("compress"));
  auto remove_prune = absl::MakeCleanup([&prune_dir] { RemoveTree(prune_dir); });
  ASSIGN_OR_RETURN(engine::PruneReport pruned, PruneInto(spec.prune(), context, prune_dir));

  ASSIGN_OR_RETURN(const std::string quant_dir, MakeTempDir("compress"));
  auto remove_quant = absl::MakeCleanup([&quant_dir] { RemoveTree(quant_dir); });
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
  qo.model_name = absl::StrCat("the pruned ", qo.model_name);
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
  result.set_summary(CompressSummary(*c));

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
