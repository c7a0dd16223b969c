// GPTQ over a whole model, layer by layer (torch-including header).
//
// Layers are processed in module (definition) order. Each layer's H is
// collected by running the calibration batches through the model with all
// earlier layers already replaced by their quantized weights (as in the
// reference implementation), then GPTQ quantizes it and its dequantized
// weight is written into the model. The caller's module is not modified:
// the work happens on a deep clone, returned with the results.
//
// Layers whose inputs cannot be collected (grouped/depthwise or transposed
// convolutions, conv1d/3d, layers that never run) fall back to
// round-to-nearest; their `method` is "rtn" and `note` says why.
//
//   ASSIGN_OR_RETURN(torch::jit::Module folded, FoldBatchNorm(model));
//   QuantizerSpec spec;  // per-channel symmetric
//   ASSIGN_OR_RETURN(GptqModelResult r,
//                    GptqQuantizeModel(folded, batches, {{"fc", 4}}, spec,
//                                      GptqOptions{}, &progress, &cancel));
#ifndef COMPRESS_ENGINE_QUANT_GPTQ_MODEL_H_
#define COMPRESS_ENGINE_QUANT_GPTQ_MODEL_H_

#include <torch/script.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/inputs.h"
#include "server/engine/quant/gptq.h"
#include "server/engine/quant/quantizer.h"

namespace compress::engine {

struct LayerQuantResult {
  std::string name;    // module path
  std::string kind;    // "linear", "conv2d", or "" when not observed
  std::string method;  // "gptq" or "rtn"
  std::string note;    // why RTN was used; empty for GPTQ
  int bits = 0;
  QuantizedTensor quantized;  // what was written into the model
  // Relative output errors tr((W−Q)H(W−Q)ᵀ)/tr(WHWᵀ) on the calibration
  // inputs, of this result and of plain RTN with the same spec; NaN when
  // H could not be collected.
  double gptq_error = std::numeric_limits<double>::quiet_NaN();
  double rtn_error = std::numeric_limits<double>::quiet_NaN();
  int64_t calibration_rows = 0;  // N of H
  int64_t dead_columns = 0;
};

struct GptqModelResult {
  torch::jit::Module module;             // the clone, quantized weights in place
  std::vector<LayerQuantResult> layers;  // in processing order
};

// Quantizes the layers named in `bits` (module path -> bits, 2..8) with
// `spec` (its `bits` field is ignored). Other layers stay in float.
// INVALID_ARGUMENT for unknown layer names, a bad spec or batches that do
// not fit; CANCELLED/DEADLINE_EXCEEDED from `cancel` between layers and
// batches. `progress` (may be null) gets stage "gptq", one unit per layer,
// and a log line per layer.
absl::StatusOr<GptqModelResult> GptqQuantizeModel(
    const torch::jit::Module& module, const std::vector<ModelInputs>& batches,
    const std::map<std::string, int>& bits, const QuantizerSpec& spec, const GptqOptions& options,
    ProgressSink* progress = nullptr, const CancelToken* cancel = nullptr);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_GPTQ_MODEL_H_
