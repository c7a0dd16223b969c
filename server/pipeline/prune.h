// PRUNE job: ViT structural pruning (engine::RunPruning); COMPRESS
// (compress.h) uses its stage too.
// Artifacts: model.pt (the pruned TorchScript model), report.json,
// structure.svg (heads and MLP width kept per block).
#ifndef COMPRESS_PIPELINE_PRUNE_H_
#define COMPRESS_PIPELINE_PRUNE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/engine/prune/prune.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// The engine options a PruneSpec asks for, defaults filled in: 256
// calibration examples in batches of 64, Hessian saliency, heads in groups
// of 1 and MLP neurons in groups of 16, 4 rounds, 100 Adam steps at 1e-4
// with temperature 1 per round. Assumes ValidateSpec passed.
engine::PruneOptions ToPruneOptions(const compress::v1::PruneSpec& spec, uint64_t seed,
                                    const std::string& device, Resources& resources,
                                    const std::string& output_dir);

// The result proto for an engine report (no I/O).
compress::v1::PruneResult ToPruneResult(const engine::PruneReport& report);

// One line, e.g. "50.2% of FLOPs removed (hessian saliency), 139,018 →
// 70,154 parameters, top-1 89.07% → 88.31% (−0.76 pp), 1.72x faster".
std::string PruneSummary(const compress::v1::PruneResult& result);

// Heads and MLP width per block, before and after.
std::string StructureSvg(const compress::v1::PruneResult& result);

// The PRUNE job kind (registry.h).
std::unique_ptr<JobKindHandler> NewPruneKind();

// Model and dataset ids a PruneSpec reads.
std::vector<std::string> PruneReferencedIds(const compress::v1::PruneSpec& spec);

// Prunes into `dir` (model.pt stays there); the prune stage of PRUNE and
// COMPRESS.
absl::StatusOr<engine::PruneReport> PruneInto(const compress::v1::PruneSpec& spec,
                                              JobContext& context, const std::string& dir);

absl::StatusOr<compress::v1::JobResult> RunPrune(const compress::v1::PruneSpec& spec,
                                                 JobContext& context);
}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_PRUNE_H_
