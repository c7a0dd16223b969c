// QUANTIZE job: mixed-precision weight quantization (HAWQ-V2/V3 bit
// allocation over Ω_i(b) = Tr(H_ii)/n_i · ‖Q_b(W_i) − W_i‖², RTN or GPTQ
// rounding), composed from engine::RunQuantization.
// Artifacts: model.pt (TorchScript with the dequantized weights: what was
// evaluated), weights.safetensors + manifest.json (packed codes), report.json
// (settings, seed, runtime, every number) and pareto.svg (the size/ΣΩ
// frontier with the chosen point and the baselines; for accuracy-bounded
// search, measured accuracy against size).
#ifndef COMPRESS_PIPELINE_QUANTIZE_H_
#define COMPRESS_PIPELINE_QUANTIZE_H_

#include <memory>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/engine/quant/quantize.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// The engine options a QuantizeSpec asks for, defaults filled in: 256
// calibration examples in batches of 64; candidates {2,3,4,8}; the engine's
// default pins (first and last layer at 8 bits) unless `pins` or
// `no_default_pins` say otherwise, pins at 16 or 32 bits kept in float; no
// budget means 4 average bits, or none for accuracy-bounded search.
// With `sensitivity_job_id`, the traces come from that job: NOT_FOUND when it
// does not exist, FAILED_PRECONDITION when it is not a SUCCEEDED ANALYZE job
// of the same model with traces. Assumes ValidateSpec passed.
absl::StatusOr<engine::QuantizeOptions> ToQuantizeOptions(const compress::v1::QuantizeSpec& spec,
                                                          uint64_t seed, const std::string& device,
                                                          Resources& resources,
                                                          const std::string& output_dir);

// The result proto for an engine report (no I/O).
compress::v1::QuantizeResult ToQuantizeResult(const engine::QuantizeReport& report);

// One line, e.g. "4.02 average bits, 139,018 → 34,000 bytes (4.1x),
// top-1 92.23% → 92.01% (−0.22 pp)".
std::string QuantizeSummary(const compress::v1::QuantizeResult& result);

// Adds model.pt, weights.safetensors, manifest.json (from the report's
// paths) and pareto.svg to the job's artifacts.
absl::Status AddQuantizeArtifacts(const engine::QuantizeReport& report,
                                  const compress::v1::QuantizeResult& result, JobContext& context);

// The QUANTIZE job kind (registry.h).
std::unique_ptr<JobKindHandler> NewQuantizeKind();

// Runs the job in a private temporary directory (removed afterwards) and
// stores the artifacts through the context.
absl::StatusOr<compress::v1::JobResult> RunQuantize(const compress::v1::QuantizeSpec& spec,
                                                    JobContext& context);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_QUANTIZE_H_
