// INSPECT job: load the model, list layers, one forward pass, count MACs.
// Artifacts: inspection.json (the InspectResult as JSON).
#ifndef COMPRESS_PIPELINE_INSPECT_H_
#define COMPRESS_PIPELINE_INSPECT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// One line, e.g. "139,018 parameters, 556,072 bytes, 2,345,678 MACs per
// forward pass, output [1, 10]".
std::string InspectSummary(const compress::v1::InspectResult& result);

// The INSPECT job kind (registry.h).
std::unique_ptr<JobKindHandler> NewInspectKind();

absl::StatusOr<compress::v1::JobResult> RunInspect(const compress::v1::InspectSpec& spec,
                                                   JobContext& context);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_INSPECT_H_
