// ANALYZE job: Hessian sensitivity of every layer (HAWQ-V2 traces, HAWQ /
// PyHessian eigenvalues, SLQ spectral density, Q-BERT), plus HAWQ-V2's
// Ω(b) = Tr(H_ii)/n_i · ‖Q_b(W_i) − W_i‖² for b = 2..8.
// Artifacts: report.json (every number, the settings, runtime, seed, wall
// time, HVP count), sensitivity.csv (one row per layer), sensitivity.svg
// (per-layer bar chart), spectrum.svg (density, log y; when requested).
#ifndef COMPRESS_PIPELINE_ANALYZE_H_
#define COMPRESS_PIPELINE_ANALYZE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/engine/hessian/analyze.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// The engine options an AnalyzeSpec asks for (defaults filled in).
absl::StatusOr<engine::AnalyzeOptions> ToAnalyzeOptions(const compress::v1::AnalyzeSpec& spec,
                                                        uint64_t seed, const std::string& device,
                                                        Resources& resources);

// One line, e.g. "12 layers, 240 HVPs (exact), 3.1 s, total trace 41.2 ± 0.9".
std::string AnalyzeSummary(const compress::v1::AnalyzeResult& result);

// The ANALYZE job kind (registry.h).
std::unique_ptr<JobKindHandler> NewAnalyzeKind();

absl::StatusOr<compress::v1::JobResult> RunAnalyze(const compress::v1::AnalyzeSpec& spec,
                                                   JobContext& context);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_ANALYZE_H_
