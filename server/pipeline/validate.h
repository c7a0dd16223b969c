// Spec validation shared by every job kind: field ranges, referenced ids,
// and whether the model can be handled by the kind (e.g. PRUNE needs a ViT).
// Errors name the field, e.g. "analyze.traces.max_probes: must be >= 1".
#ifndef COMPRESS_PIPELINE_VALIDATE_H_
#define COMPRESS_PIPELINE_VALIDATE_H_

#include "absl/status/status.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// Each checks one kind's spec; `field` is the spec's path in the JobSpec
// ("quantize", or "compress.quantize" inside a COMPRESS spec).
absl::Status ValidateInspectSpec(const compress::v1::InspectSpec& spec, Resources& resources);
absl::Status ValidateAnalyzeSpec(const compress::v1::AnalyzeSpec& spec, Resources& resources);
// Everything but model_id (COMPRESS quantizes the model its prune stage makes).
absl::Status ValidateQuantizeSpec(const std::string& field, const compress::v1::QuantizeSpec& spec,
                                  Resources& resources);
absl::Status ValidatePruneSpec(const std::string& field, const compress::v1::PruneSpec& spec,
                               Resources& resources);
// INVALID_ARGUMENT "field: required" for an empty id, NOT_FOUND for an
// unknown one, INVALID_ARGUMENT when the id names a dataset instead.
// The model is copied to `out` when it is not null.
absl::Status CheckModel(const std::string& field, const std::string& id, Resources& resources,
                        compress::v1::Model* out = nullptr);

// True when a layer is named like an attention's projection PRUNE looks
// for (engine/prune/vit.h): attn.qkv, self_attention, or a layer ending in
// .q_proj, .query, .q, .c_attn, .qkv, .q_lin or .wq: a guess from layer
// names, used only for models stored without a prune_check (uploaded before
// the check existed); the run's discovery decides.
bool LooksLikeTransformer(const compress::v1::Model& model);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_VALIDATE_H_
