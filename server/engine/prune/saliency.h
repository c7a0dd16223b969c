// Saliency of a ViT's prunable units (torch-including header).
//
// A unit is a group of heads of one block (their q, k, v rows and biases,
// fused or not, and their output projection's columns) or a group of MLP neurons (fc1 rows and biases, fc2
// columns). Removing a unit is the same as setting its weights w_g to zero:
// a head with zero q, k, v rows outputs zero; a neuron with zero fc1 row and
// bias outputs GELU(0) = 0. So the loss change of removing it is
//   ΔL_g = L(θ − w_g) − L(θ) ≈ −ḡᵀw_g + ½ w_gᵀ H w_g,
// with ḡ the gradient and H the Hessian on the calibration data.
//
// Scores (lower = removed first):
//  - kTaylor (NViT's Taylor/Fisher form): E_b[(g_bᵀ w_g)²] over calibration
//    batches b, weighted by batch size. One gradient per batch.
//  - kHessian: the second-order estimate of ΔL_g above, −ḡᵀw_g + ½ w_gᵀ(Hw_g),
//    with one exact Hessian-vector product per unit (over all calibration
//    batches) whose vector is w_g, zero elsewhere.
//  - kMagnitude: ‖w_g‖₂ / sqrt(numel_g) (root mean square, so that heads and
//    MLP groups of different sizes compare).
// Every score's ingredients are reported whatever the kind, except the
// second-order term, which costs the HVPs and is computed for kHessian only.
#ifndef COMPRESS_ENGINE_PRUNE_SALIENCY_H_
#define COMPRESS_ENGINE_PRUNE_SALIENCY_H_

#include <torch/script.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/loss.h"
#include "server/engine/prune/prune.h"
#include "server/engine/prune/vit.h"

namespace compress::engine {

struct PruneUnit {
  int block = 0;
  bool head = false;    // a group of heads, else of MLP neurons
  int64_t first = 0;    // current index of the first head/neuron
  int64_t count = 0;    // heads/neurons in the group
};

// The block's heads in groups of `head_group` and its neurons in groups of
// `mlp_group` (the last group of a block may be smaller), in block order,
// heads first. Blocks whose heads are fixed contribute neuron groups only.
std::vector<PruneUnit> UnitsOf(const VitStructure& vit, int64_t head_group, int64_t mlp_group);

struct UnitSaliency {
  double taylor = 0;        // E_b[(g_bᵀw_g)²]
  double first_order = 0;   // ḡᵀw_g
  double second_order = 0;  // ½ w_gᵀ(Hw_g) (kHessian only)
  double magnitude = 0;     // ‖w_g‖ / sqrt(numel_g)
  double score = 0;         // the kind's score
  int64_t numel = 0;
};

// Scores every unit of `units` on `batches` (PrepareBatches on `module`).
// `module` is left unchanged. FAILED_PRECONDITION when the model has no
// double backward (kHessian); CANCELLED/DEADLINE_EXCEEDED from `cancel`.
// `hvp_count` (may be null) is increased by the HVPs computed.
absl::StatusOr<std::vector<UnitSaliency>> ComputeSaliency(
    torch::jit::Module& module, const VitStructure& vit, const std::vector<PruneUnit>& units,
    const PreparedBatches& batches, SaliencyKind kind, const CancelToken* cancel,
    int64_t* hvp_count = nullptr);

// The loss on `batches` (weighted mean over batches), without autograd.
absl::StatusOr<double> MeanLoss(torch::jit::Module& module, const PreparedBatches& batches);

// Multiplies the unit's weights (the slices it owns) by `factor` in place;
// 0 removes the unit's effect on the output.
absl::Status ScaleUnit(torch::jit::Module& module, const VitStructure& vit, const PruneUnit& unit,
                       double factor);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_SALIENCY_H_
