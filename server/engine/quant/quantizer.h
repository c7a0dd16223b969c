// Uniform affine quantization of one tensor (torch-including header).
//
// A QuantizerSpec says how: bits (2..8), symmetric or asymmetric, and the
// granularity of the scale: one per tensor, one per channel, or one per group
// of `group_size` consecutive columns of each channel (Q-BERT groups along
// the input features). The tensor is viewed as a matrix [rows, cols]: rows
// are the entries of `channel_axis` (0 = output channel of a Linear or Conv
// weight), cols everything else in row-major order, so a conv weight
// [out, in, kh, kw] is [out, in·kh·kw] and groups run along in·kh·kw; the last
// group of a row may be shorter. Nothing else assumes a weight, so the same
// spec can later describe activations (e.g. per-tensor).
//
// One convention for both modes: integer codes in 0..2^b−1 (stored as
// uint8) and an integer zero point, with
//
//   w ≈ scale · (code − zero_point)        (computed in float32)
//
//  - symmetric: q ∈ −(2^(b−1)−1)..2^(b−1)−1, scale = max|w| / (2^(b−1)−1),
//    code = q + 2^(b−1), so zero_point = 2^(b−1) and codes are 1..2^b−1
//    (code 0 is unused: the grid stays symmetric, as in GPTQ's and
//    PyTorch's symmetric weight observers);
//  - asymmetric: the range [min, max] is first widened to contain 0 (so 0 is
//    exactly representable), scale = (max − min) / (2^b − 1),
//    zero_point = round(−min / scale) clamped to 0..2^b−1, codes 0..2^b−1.
//
// code = clamp(round(w / scale) + zero_point, lo, hi) with round half to
// even (torch.round) evaluated in float64 against the float32 scale that is
// stored, so Dequantize(Quantize(w)) is reproducible from the stored numbers.
// A range of zero (e.g. an all-zero channel) gets scale 1: its values (all
// 0) quantize exactly. For values inside the range the error is ≤ scale/2.
//
//   QuantizerSpec spec;
//   spec.bits = 4;
//   spec.granularity = QuantGranularity::kGroup;
//   spec.group_size = 64;
//   ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(weight, spec));
//   ASSIGN_OR_RETURN(torch::Tensor w_hat, Dequantize(q));
//
// All functions are thread-safe (pure).
#ifndef COMPRESS_ENGINE_QUANT_QUANTIZER_H_
#define COMPRESS_ENGINE_QUANT_QUANTIZER_H_

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/util/defaults.h"

namespace compress::engine {

enum class QuantGranularity { kPerTensor, kPerChannel, kGroup };

// "per_tensor", "per_channel", "group" (the manifest's names).
std::string GranularityName(QuantGranularity granularity);
absl::StatusOr<QuantGranularity> ParseGranularity(const std::string& name);

struct QuantizerSpec {
  // Bits per code, 2..8.
  int bits = 8;
  // Default true: symmetric grid around 0 (zero_point = 2^(bits−1)).
  bool symmetric = true;
  // Default per output channel.
  QuantGranularity granularity = QuantGranularity::kPerChannel;
  // Columns per group for kGroup: 32, 64 or 128 (default 128); ignored
  // otherwise.
  int64_t group_size = defaults::kGroupSize;
  // Axis whose entries are the rows (channels); default 0, the output
  // channel of Linear/Conv weights. Negative counts from the end.
  int64_t channel_axis = 0;
};

// INVALID_ARGUMENT naming the field when `spec` is out of range.
absl::Status ValidateSpec(const QuantizerSpec& spec);

// Smallest and largest code the spec produces (1 and 2^b−1 when symmetric,
// 0 and 2^b−1 otherwise).
int64_t MinCode(const QuantizerSpec& spec);
int64_t MaxCode(const QuantizerSpec& spec);

// The parameters of one quantized tensor. scale and zero_point are
// [rows, num_groups] (per tensor: [1, 1]; per channel: [rows, 1]); entry
// (r, g) applies to columns g·group_size .. of row r.
struct QuantParams {
  QuantizerSpec spec;
  std::vector<int64_t> shape;  // the original tensor's shape
  torch::Tensor scale;         // float32
  torch::Tensor zero_point;    // uint8
};

// A tensor's integer codes and parameters. `codes` is uint8 with the
// original shape.
struct QuantizedTensor {
  QuantParams params;
  torch::Tensor codes;
};

// Rows and cols of the matrix view of a tensor of `shape` (see above).
absl::StatusOr<std::pair<int64_t, int64_t>> MatrixShape(const std::vector<int64_t>& shape,
                                                        const QuantizerSpec& spec);

// The matrix view [rows, cols] of `t` (channel axis moved first, the rest
// flattened) and back. Views when possible.
absl::StatusOr<torch::Tensor> ToMatrix(const torch::Tensor& t, const QuantizerSpec& spec);
absl::StatusOr<torch::Tensor> FromMatrix(const torch::Tensor& matrix,
                                         const std::vector<int64_t>& shape,
                                         const QuantizerSpec& spec);

// Scale and zero point of every (row, group) of `t` (any float dtype, at
// least one dimension). INVALID_ARGUMENT for a bad spec, an empty or
// non-float tensor, or non-finite values.
absl::StatusOr<QuantParams> ComputeParams(const torch::Tensor& t, const QuantizerSpec& spec);

// Scale/zero point of each row of `matrix` [rows, n] taken as one range
// (one group). Returns {scale [rows] float32, zero_point [rows] float64
// holding integers}. Building block of ComputeParams and GPTQ's group
// parameters; `matrix` must be finite and non-empty.
std::pair<torch::Tensor, torch::Tensor> RowParams(const torch::Tensor& matrix,
                                                  const QuantizerSpec& spec);

// Codes of `values` given per-element (broadcastable) scale and zero point,
// as float64 holding integers in MinCode..MaxCode.
torch::Tensor QuantizeValues(const torch::Tensor& values, const torch::Tensor& scale,
                             const torch::Tensor& zero_point, const QuantizerSpec& spec);

// Codes of `t` under `params` (which must describe a tensor of t's shape).
absl::StatusOr<QuantizedTensor> QuantizeWithParams(const torch::Tensor& t,
                                                   const QuantParams& params);

// ComputeParams then QuantizeWithParams: round to nearest (RTN).
absl::StatusOr<QuantizedTensor> Quantize(const torch::Tensor& t, const QuantizerSpec& spec);

// float32 tensor of the original shape: scale · (code − zero_point).
absl::StatusOr<torch::Tensor> Dequantize(const QuantizedTensor& q);

// scale and zero_point expanded to [rows, cols] (float32 each).
absl::StatusOr<std::pair<torch::Tensor, torch::Tensor>> ExpandParams(const QuantParams& params);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_QUANTIZER_H_
