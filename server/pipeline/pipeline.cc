#include "server/pipeline/pipeline.h"

#include "absl/strings/str_cat.h"
#include "server/pipeline/analyze.h"
#include "server/pipeline/inspect.h"
#include "server/pipeline/prune.h"
#include "server/pipeline/quantize.h"
#include "server/pipeline/validate.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

v1::JobKind KindOf(const v1::JobSpec& spec) {
  switch (spec.spec_case()) {
    case v1::JobSpec::kInspect:
      return v1::JOB_KIND_INSPECT;
    case v1::JobSpec::kAnalyze:
      return v1::JOB_KIND_ANALYZE;
    case v1::JobSpec::kQuantize:
      return v1::JOB_KIND_QUANTIZE;
    case v1::JobSpec::kPrune:
      return v1::JOB_KIND_PRUNE;
    case v1::JobSpec::kCompress:
      return v1::JOB_KIND_COMPRESS;
    default:
      return v1::JOB_KIND_UNSPECIFIED;
  }
}

namespace {

class DefaultPipeline : public Pipeline {
 public:
  absl::Status Validate(const v1::JobSpec& spec, Resources& resources) override {
    absl::Status s = ValidateSpec(spec, resources);
    if (!s.ok() || spec.spec_case() == v1::JobSpec::kInspect) return s;
    if (spec.spec_case() == v1::JobSpec::kAnalyze) {
      // Options the engine cannot honour yet are refused at submit.
      return ToAnalyzeOptions(spec.analyze(), 0, "cpu", resources).status();
    }
    if (spec.spec_case() == v1::JobSpec::kQuantize) {
      // Resolves sensitivity_job_id: an unknown or unusable job is refused
      // now, not after the job has queued.
      return ToQuantizeOptions(spec.quantize(), 0, "cpu", resources, "").status();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::JobResult> Run(JobContext& context) override {
    const v1::JobSpec& spec = context.job().spec();
    switch (spec.spec_case()) {
      case v1::JobSpec::kInspect:
        return RunInspect(spec.inspect(), context);
      case v1::JobSpec::kAnalyze:
        return RunAnalyze(spec.analyze(), context);
      case v1::JobSpec::kQuantize:
        return RunQuantize(spec.quantize(), context);
      case v1::JobSpec::kPrune:
        return RunPrune(spec.prune(), context);
      case v1::JobSpec::kCompress:
        return RunCompress(spec.compress(), context);
      default:
        return absl::UnimplementedError(absl::StrCat(
            v1::JobKind_Name(KindOf(spec)), " jobs are not implemented by this server yet"));
    }
  }
};

}  // namespace

std::unique_ptr<Pipeline> NewDefaultPipeline() { return std::make_unique<DefaultPipeline>(); }

}  // namespace compress::pipeline
