// INSPECT job: load the model, list layers, one forward pass, count MACs.
// Artifacts: inspection.json (the InspectResult as JSON).
#ifndef COMPRESS_PIPELINE_INSPECT_H_
#define COMPRESS_PIPELINE_INSPECT_H_

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

absl::StatusOr<compress::v1::JobResult> RunInspect(const compress::v1::InspectSpec& spec,
                                                   JobContext& context);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_INSPECT_H_
