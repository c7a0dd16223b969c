// COMPRESS job: PRUNE (prune.h), then QUANTIZE (quantize.h) of the pruned
// model, in one job.
// Artifacts: model.pt (pruned and quantized: what was evaluated), pruned.pt
// (pruned, float), weights.safetensors + manifest.json, report.json (both
// stages), structure.svg and pareto.svg.
#ifndef COMPRESS_PIPELINE_COMPRESS_H_
#define COMPRESS_PIPELINE_COMPRESS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// One line, e.g. "30.2% of flops removed, 4.01 average bits, 139,018 →
// 25,001 bytes (5.6x), top-1 89.07% → 88.10% (−0.97 pp)".
std::string CompressSummary(const compress::v1::CompressResult& result);

// The COMPRESS job kind (registry.h).
std::unique_ptr<JobKindHandler> NewCompressKind();

absl::StatusOr<compress::v1::JobResult> RunCompress(const compress::v1::CompressSpec& spec,
                                                    JobContext& context);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_COMPRESS_H_
