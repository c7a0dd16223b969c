#include "server/catalog/engine_describer.h"

#include "server/engine/data/dataset_info.h"
#include "server/engine/model/model_info.h"
#include "server/engine/prune/prune.h"
#include "server/util/status_macros.h"

namespace compress::catalog {
namespace v1 = compress::v1;

namespace {

void FillDataset(const engine::DatasetSummary& s, v1::Dataset* d) {
  switch (s.format) {
    case engine::DatasetFileFormat::kSafetensors:
      d->set_format(v1::DATASET_FORMAT_SAFETENSORS);
      break;
    case engine::DatasetFileFormat::kTorchSave:
      d->set_format(v1::DATASET_FORMAT_TORCH_SAVE);
      break;
    case engine::DatasetFileFormat::kIdx:
      d->set_format(v1::DATASET_FORMAT_IDX);
      break;
  }
  d->set_num_examples(s.num_examples);
  for (int64_t v : s.input_shape) d->add_input_shape(v);
  d->set_input_dtype(s.input_dtype);
  d->set_has_targets(s.has_targets);
  for (int64_t v : s.target_shape) d->add_target_shape(v);
  d->set_target_dtype(s.target_dtype);
  for (const engine::NamedInputSummary& n : s.named_inputs) {
    v1::NamedInput* out = d->add_named_inputs();
    out->set_name(n.name);
    for (int64_t v : n.shape) out->add_shape(v);
    out->set_dtype(n.dtype);
  }
}

}  // namespace

absl::StatusOr<v1::Model> EngineDescriber::DescribeModel(const std::string& path) {
  absl::StatusOr<engine::ModelSummary> summary = engine::DescribeModelFile(path);
  // Whatever the loader says about these bytes is the uploader's problem.
  if (!summary.ok()) return absl::InvalidArgumentError(summary.status().message());
  v1::Model m;
  m.set_num_parameters(summary->num_parameters);
  for (const engine::LayerInfo& layer : summary->layers) {
    v1::Layer* l = m.add_layers();
    l->set_name(layer.name);
    l->set_kind(layer.kind);
    l->set_numel(layer.numel);
    for (const engine::ParameterInfo& p : layer.parameters) {
      v1::ParameterInfo* pi = l->add_parameters();
      pi->set_name(p.name);
      for (int64_t d : p.shape) pi->add_shape(d);
      pi->set_numel(p.numel);
      pi->set_dtype(p.dtype);
      pi->set_tied_to(p.tied_to);
    }
  }
  for (const auto& [name, aliases] : summary->tied) {
    v1::TiedParameter* t = m.add_tied_parameters();
    t->set_name(name);
    for (const std::string& alias : aliases) t->add_aliases(alias);
  }
  // PRUNE's own structure discovery, here where model code may run: its
  // submit check reads the verdict instead of guessing from layer names.
  const absl::Status prunable = engine::CheckPrunableModelFile(path);
  if (prunable.ok() || absl::IsFailedPrecondition(prunable)) {
    v1::PruneCheck* check = m.mutable_prune_check();
    check->set_checked(true);
    check->set_prunable(prunable.ok());
    check->set_reason(std::string(prunable.message()));
  }
  return m;
}

absl::StatusOr<v1::Dataset> EngineDescriber::DescribeDataset(const std::string& path) {
  absl::StatusOr<engine::DatasetSummary> summary = engine::DescribeDatasetFile(path);
  if (!summary.ok()) return absl::InvalidArgumentError(summary.status().message());
  v1::Dataset d;
  FillDataset(*summary, &d);
  return d;
}

absl::StatusOr<v1::Dataset> EngineDescriber::DescribeBuiltinDataset(const std::string& id,
                                                                    const std::string& dir) {
  ASSIGN_OR_RETURN(engine::DatasetSummary summary, engine::DescribeBuiltinDataset(id, dir));
  v1::Dataset d;
  FillDataset(summary, &d);
  return d;
}

}  // namespace compress::catalog
