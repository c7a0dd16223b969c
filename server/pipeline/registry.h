// The job kinds this server runs.
#ifndef COMPRESS_PIPELINE_REGISTRY_H_
#define COMPRESS_PIPELINE_REGISTRY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "server/pipeline/job_kind.h"

namespace compress::pipeline {

// INSPECT, ANALYZE, QUANTIZE, PRUNE and COMPRESS (one handler each, in the
// file of the same name).
absl::StatusOr<std::unique_ptr<JobKindRegistry>> NewDefaultRegistry();

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_REGISTRY_H_
