// Spec validation shared by every job kind: field ranges, referenced ids,
// and whether the model can be handled by the kind (e.g. PRUNE needs a ViT).
// Errors name the field, e.g. "analyze.traces.max_probes: must be >= 1".
#ifndef COMPRESS_PIPELINE_VALIDATE_H_
#define COMPRESS_PIPELINE_VALIDATE_H_

#include "absl/status/status.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

absl::Status ValidateSpec(const compress::v1::JobSpec& spec, Resources& resources);

// True when the model has DeiT/timm-style (attn.qkv) or torchvision
// (self_attention) attention blocks.
bool LooksLikeViT(const compress::v1::Model& model);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_VALIDATE_H_
