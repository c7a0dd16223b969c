// Round-to-nearest weight quantization error per layer (torch-free header).
//
// For each layer that owns a `weight` parameter: ‖Q_b(W) − W‖² with Q_b the
// symmetric per-output-channel uniform quantizer with 2^(b−1)−1 positive
// levels (scale = max|W_c| / (2^(b−1)−1), round to nearest, clamp). This is
// the perturbation term of HAWQ-V2's sensitivity Ω_i(b) = Tr(H_ii)/n_i ·
// ‖Q_b(W_i) − W_i‖².
#ifndef COMPRESS_ENGINE_QUANT_WEIGHT_ERROR_H_
#define COMPRESS_ENGINE_QUANT_WEIGHT_ERROR_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress::engine {

// layer name (module path, "" = root) -> bits -> squared error.
using WeightErrors = std::map<std::string, std::map<int, double>>;

// Loads `model_path` on the CPU and computes the error for every layer with
// a floating `weight` and every b in `bits` (each in 2..16).
absl::StatusOr<WeightErrors> RoundToNearestErrors(const std::string& model_path,
                                                  const std::vector<int>& bits);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_WEIGHT_ERROR_H_
