#include "server/pipeline/inspect.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "server/engine/model/model_info.h"
#include "server/pipeline/validate.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

class InspectKind final : public JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_INSPECT; }
  absl::Status Validate(const v1::JobSpec& spec, Resources& resources) const override {
    return ValidateInspectSpec(spec.inspect(), resources);
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec& spec) const override {
    return UniqueIds({spec.inspect().model_id(), spec.inspect().dataset_id()});
  }
  absl::StatusOr<v1::JobResult> Run(JobContext& context) const override {
    return RunInspect(context.job().spec().inspect(), context);
  }
  std::string Summary(const v1::JobResult& result) const override {
    return InspectSummary(result.inspect());
  }
};

}  // namespace

std::unique_ptr<JobKindHandler> NewInspectKind() { return std::make_unique<InspectKind>(); }

std::string InspectSummary(const v1::InspectResult& r) {
  return absl::StrCat(r.num_parameters(), " parameters, ", r.model_bytes(), " bytes, ",
                      r.total_macs(), " MACs per forward pass, output [",
                      absl::StrJoin(r.output_shape(), ", "), "]");
}

absl::StatusOr<v1::JobResult> RunInspect(const v1::InspectSpec& spec, JobContext& context) {
  engine::ProgressSink& progress = context.progress();
  engine::InspectOptions options;
  options.device = context.device();
  options.input_shape.assign(spec.input_shape().begin(), spec.input_shape().end());
  // The probe takes the dataset's dtype (token ids stay integer) unless the
  // spec names one, and its further forward arguments (as ones).
  if (options.input_shape.empty() || !spec.dataset_id().empty()) {
    ASSIGN_OR_RETURN(v1::Dataset dataset, context.resources().GetDataset(spec.dataset_id()));
    if (options.input_shape.empty()) {
      options.input_shape.push_back(1);
      options.input_shape.insert(options.input_shape.end(), dataset.input_shape().begin(),
                                 dataset.input_shape().end());
    }
    if (!dataset.input_dtype().empty()) options.input_dtype = dataset.input_dtype();
    for (const v1::NamedInput& n : dataset.named_inputs()) {
      engine::NamedProbeInput probe{n.name(), {options.input_shape[0]}, n.dtype()};
      probe.shape.insert(probe.shape.end(), n.shape().begin(), n.shape().end());
      options.named_inputs.push_back(std::move(probe));
    }
  }
  if (!spec.input_dtype().empty()) options.input_dtype = spec.input_dtype();
  std::string named;
  for (const engine::NamedProbeInput& n : options.named_inputs) {
    absl::StrAppend(&named, named.empty() ? " and " : ", ", n.name, " [",
                    absl::StrJoin(n.shape, ", "), "] (ones)");
  }
  progress.StageStart("inspect", 0, 1);
  progress.Log("INFO", absl::StrCat("forward pass on ", options.device, " with ",
                                    options.input_dtype, " input of shape [",
                                    absl::StrJoin(options.input_shape, ", "), "]", named));
  progress.Progress("inspect", 0, 1);
  ASSIGN_OR_RETURN(engine::Inspection ins,
                   engine::InspectModelFile(context.resources().ModelPath(spec.model_id()),
                                            options, &context.cancel()));
  progress.Progress("inspect", 1, 1);
  progress.StageEnd("inspect");

  v1::JobResult result;
  v1::InspectResult* r = result.mutable_inspect();
  for (int64_t d : ins.input_shape) r->add_input_shape(d);
  for (int64_t d : ins.output_shape) r->add_output_shape(d);
  r->set_num_parameters(ins.summary.num_parameters);
  r->set_model_bytes(ins.summary.model_bytes);
  r->set_total_macs(ins.total_macs);
  r->set_unattributed_macs(ins.unattributed_macs);
  r->set_forward_seconds(ins.forward_seconds);
  for (const engine::LayerCost& c : ins.layers) {
    v1::LayerInspection* l = r->add_layers();
    l->set_name(c.name);
    l->set_kind(c.kind);
    l->set_numel(c.numel);
    l->set_macs(c.macs);
    for (int64_t d : c.output_shape) l->add_output_shape(d);
    l->set_calls(c.calls);
  }
  for (const auto& [name, aliases] : ins.summary.tied) {
    v1::TiedParameter* t = r->add_tied_parameters();
    t->set_name(name);
    for (const std::string& alias : aliases) t->add_aliases(alias);
  }
  result.set_summary(InspectSummary(*r));

  std::string json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.add_whitespace = true;
  json_options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(*r, &json, json_options).ok()) {
    return absl::InternalError("cannot encode inspection.json");
  }
  RETURN_IF_ERROR(context.AddArtifact("inspection.json", "application/json", json).status());
  return result;
}

}  // namespace compress::pipeline
