// Measured latency of ViT blocks over a grid of (heads, MLP width), and of
// whole models (torch-including header).
//
// Timing: a few warm-up calls, then calls until `min_seconds` of wall time
// (at least 3, at most 50); the median. On CUDA each call is synchronised.
// Before/after comparisons time the two models alternately (CompareLatency).
// Inference mode, no autograd. The grid covers every head count up to 12
// (a geometric-ish subset beyond) and five MLP widths from the minimum to
// the full width; predictions between grid points are bilinear.
#ifndef COMPRESS_ENGINE_PRUNE_LATENCY_H_
#define COMPRESS_ENGINE_PRUNE_LATENCY_H_

#include <torch/script.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/stats.h"
#include "server/engine/data/inputs.h"
#include "server/engine/prune/vit.h"

namespace compress::engine {

struct LatencyTable {
  std::vector<int64_t> heads;   // ascending
  std::vector<int64_t> widths;  // ascending
  std::vector<double> ms;       // heads.size() x widths.size(), row-major

  // Bilinear in (heads, width), clamped to the grid.
  double Predict(int64_t heads, int64_t width) const;
};

// Times copies of block `block` of `module` (the original is not changed)
// pruned to each grid point, on inputs [batch, tokens, dim].
absl::StatusOr<LatencyTable> MeasureBlockLatency(const torch::jit::Module& module,
                                                 const VitStructure& vit, int block,
                                                 int64_t batch, int64_t min_width,
                                                 const CancelToken* cancel);

// Median milliseconds of `module.forward(input)`.
absl::StatusOr<double> MeasureLatencyMs(torch::jit::Module& module, const ModelInputs& input,
                                        double min_seconds = 0.3);

// Times `before` and `after` alternately on `input` (pairs in the order
// AB, BA, AB, ...: neither model always runs second), after two warm-up
// calls each, until `min_seconds` of wall time have passed and at least
// kMinTimingPairs pairs are taken (at most 50), and compares the pairs
// (common/stats.h). Cancellable between pairs.
absl::StatusOr<TimingComparison> CompareLatency(torch::jit::Module& before,
                                                torch::jit::Module& after,
                                                const ModelInputs& input,
                                                const CancelToken* cancel,
                                                double min_seconds = 1.0);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_LATENCY_H_
