// GPTQ (Frantar et al., 2022) for one layer, and the H = 2XXᵀ/N it needs.
//
// A layer's weight W is viewed as [rows, cols] (Linear: [out, in]; Conv2d:
// [out, in·kh·kw], the order of QuantizerSpec's matrix view). X holds one
// column per input vector the layer sees (Linear: each token; Conv2d: each
// kh×kw patch, in im2col order so its entries line up with W's columns), and
// H = 2XXᵀ/N with N the number of such vectors. (The reference code divides
// by the number of samples instead; GPTQ is invariant to H's scale.)
//
// GptqQuantize follows the reference implementation:
//  1. dead columns (H_jj = 0) get H_jj = 1 and W[:, j] = 0;
//  2. optionally (act_order) columns are visited by descending diag(H);
//  3. damp_percent · mean(diag(H)) is added to the diagonal;
//  4. U = upper Cholesky factor of H⁻¹;
//  5. columns are quantized one at a time, the error of column j,
//     e = (w_j − q_j) / U_jj, being fed back to the later columns
//     (W[:, k] −= e · U_jk), lazily in blocks of block_size columns.
// Per-tensor and per-channel parameters come from the original weight.
// Group parameters are computed when the first column of a group is reached,
// from the group's current (error-updated) columns; groups are contiguous
// in the original column order even with act_order, so the result packs with
// the plain quantizer layout (no column permutation to store). Computation is
// float64; the returned weight is exactly Dequantize(codes).
//
//   HessianAccumulator acc(in_features);
//   RETURN_IF_ERROR(acc.AddLinearInputs(x));        // for each batch
//   ASSIGN_OR_RETURN(torch::Tensor h, acc.Hessian());
//   ASSIGN_OR_RETURN(GptqResult r, GptqQuantize(weight, h, spec, {}));
//
// Functions are thread-safe; a HessianAccumulator is not.
#ifndef COMPRESS_ENGINE_QUANT_GPTQ_H_
#define COMPRESS_ENGINE_QUANT_GPTQ_H_

#include <torch/script.h>

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/engine/quant/quantizer.h"

namespace compress::engine {

struct GptqOptions {
  // Fraction of mean(diag(H)) added to H's diagonal; default 0.01 (1%).
  double damp_percent = 0.01;
  // Columns per lazy batch update; default 128. Any value ≥ 1 gives the same
  // result up to rounding.
  int64_t block_size = 128;
  // Default false: columns in natural order. True: descending diag(H).
  bool act_order = false;
};

// How a Conv2d turns its input into patches (torch.nn.Conv2d's arguments).
struct Conv2dGeometry {
  std::array<int64_t, 2> kernel = {1, 1};
  std::array<int64_t, 2> stride = {1, 1};
  std::array<int64_t, 2> padding = {0, 0};
  std::array<int64_t, 2> dilation = {1, 1};
  // Only 1 is supported: a grouped conv's weight does not see all channels.
  int64_t groups = 1;
};

// Sums XXᵀ (float64) over the input vectors it is given. Not thread-safe,
// not copyable.
class HessianAccumulator {
 public:
  // `columns`: the weight's column count (in_features or in·kh·kw).
  explicit HessianAccumulator(int64_t columns);
  HessianAccumulator(const HessianAccumulator&) = delete;
  HessianAccumulator& operator=(const HessianAccumulator&) = delete;

  // `rows` [n, columns]: one input vector per row.
  absl::Status AddRows(const torch::Tensor& rows);
  // A Linear's input [..., columns]: every leading index is one vector.
  absl::Status AddLinearInputs(const torch::Tensor& inputs);
  // A Conv2d's input [N, C, H, W] (or [C, H, W]); its patches are the
  // vectors. C·kh·kw must equal columns; UNIMPLEMENTED for groups ≠ 1.
  absl::Status AddConv2dInputs(const torch::Tensor& inputs, const Conv2dGeometry& geometry);

  int64_t columns() const { return columns_; }
  // Input vectors seen so far (N).
  int64_t rows() const { return rows_; }
  // 2XXᵀ/N, float64 [columns, columns]. FAILED_PRECONDITION before any row.
  absl::StatusOr<torch::Tensor> Hessian() const;

 private:
  int64_t columns_;
  int64_t rows_ = 0;
  torch::Tensor sum_;  // XXᵀ, float64; undefined until the first row
};

struct GptqResult {
  QuantizedTensor quantized;  // codes (weight's shape) and parameters
  torch::Tensor dequantized;  // float32, weight's shape; = Dequantize(quantized)
  int64_t dead_columns = 0;   // columns with H_jj = 0 (set to zero)
};

// Quantizes `weight` (any shape with ≥ 2 dims; rows = dim 0) given the H of
// its inputs ([cols, cols]). `spec.channel_axis` must be 0.
// FAILED_PRECONDITION when H + damping is not positive definite.
absl::StatusOr<GptqResult> GptqQuantize(const torch::Tensor& weight, const torch::Tensor& hessian,
                                        const QuantizerSpec& spec, const GptqOptions& options);

struct ReconstructionError {
  double absolute = 0;  // tr((W−Q) H (W−Q)ᵀ) = 2‖WX − QX‖²_F / N
  double relative = 0;  // absolute / tr(W H Wᵀ); 0 when both are 0
};

// Output error of replacing `weight` by `approx` for inputs with this H.
absl::StatusOr<ReconstructionError> OutputError(const torch::Tensor& weight,
                                                const torch::Tensor& approx,
                                                const torch::Tensor& hessian);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_GPTQ_H_
