#include "server/pipeline/registry.h"

#include "server/pipeline/analyze.h"
#include "server/pipeline/compress.h"
#include "server/pipeline/inspect.h"
#include "server/pipeline/prune.h"
#include "server/pipeline/quantize.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {

absl::StatusOr<std::unique_ptr<JobKindRegistry>> NewDefaultRegistry() {
  auto registry = std::make_unique<JobKindRegistry>();
  RETURN_IF_ERROR(registry->Register(NewInspectKind()));
  RETURN_IF_ERROR(registry->Register(NewAnalyzeKind()));
  RETURN_IF_ERROR(registry->Register(NewQuantizeKind()));
  RETURN_IF_ERROR(registry->Register(NewPruneKind()));
  RETURN_IF_ERROR(registry->Register(NewCompressKind()));
  return registry;
}

}  // namespace compress::pipeline
