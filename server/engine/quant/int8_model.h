// A real int8 TorchScript model (8-bit weights and activations) made with
// LibTorch's own graph-mode quantization passes (torch-including header).
//
// What torch.ao.quantization.quantize_jit does, from C++: BatchNorm folded
// into the convs (FoldConvBatchNorm), observers inserted on every value the
// quantized kernels need (InsertObservers), the calibration batches run
// through the observed model, quantize/dequantize inserted with the
// observed ranges (InsertQuantDeQuant), and the quant-op-dequant patterns
// fused into quantized kernels with prepacked weights (Finalize:
// quantized::conv2d(_relu), quantized::linear, quantized::add(_relu)). The
// observers are ours (TorchScript defined here, the same arithmetic as
// PyTorch's): activations per tensor, affine, quint8 over the observed
// [min, max] widened to contain 0; weights per output channel, symmetric,
// qint8, scale max|w| / 127.5. Inputs and outputs stay float: the model
// quantizes its input and dequantizes its output, so it is a drop-in
// replacement that loads and runs in stock LibTorch and PyTorch (CPU, the
// quantized engine of the process: onednn/fbgemm/qnnpack).
//
//   ASSIGN_OR_RETURN(Int8ModelInfo info,
//                    SaveInt8Model(float_model, calibration, "model_int8.pt"));
//
// Thread-safe: works on its own CPU copy of the module; the quantized
// engine is read, never set.
#ifndef COMPRESS_ENGINE_QUANT_INT8_MODEL_H_
#define COMPRESS_ENGINE_QUANT_INT8_MODEL_H_

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/data/inputs.h"

namespace compress::engine {

struct Int8ModelInfo {
  int64_t file_bytes = 0;
  std::string engine;        // the quantized engine: "onednn", "fbgemm", "qnnpack"
  int64_t quantized_ops = 0; // quantized:: kernels in forward's graph
};

// The quantized engine of this process ("onednn", ...; "none" when LibTorch
// has none).
std::string QuantizedEngineName();

// Saves the int8 version of float `model` (eval mode; any device) to
// `path`, calibrated on `calibration` (input batches of its forward).
// FAILED_PRECONDITION when LibTorch has no quantized engine or no layer
// could be quantized (the file would be the float model); INVALID_ARGUMENT
// when the batches do not fit the model; INTERNAL when a pass fails.
absl::StatusOr<Int8ModelInfo> SaveInt8Model(const torch::jit::Module& model,
                                            const std::vector<ModelInputs>& calibration,
                                            const std::string& path);

// Median milliseconds of one forward of `a` and of `b` on `inputs` (CPU,
// no autograd), timed alternately in this process (a, b, a, b, ...) after
// `warmup` rounds each, so both see the same machine load; `rounds` timed
// rounds each. INVALID_ARGUMENT when a model fails on the inputs.
absl::StatusOr<std::pair<double, double>> AlternateLatencyMs(torch::jit::Module& a,
                                                             torch::jit::Module& b,
                                                             const ModelInputs& inputs,
                                                             int warmup, int rounds);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_INT8_MODEL_H_
