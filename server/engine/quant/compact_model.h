// A quantized model saved as TorchScript with its weights as integer codes
// (torch-including header).
//
// The model that QUANTIZE evaluates holds float weights rounded to the
// grid; saved as is it is as large as the float model. SaveCompactModel
// saves the same module with, for every quantized weight, the integer codes
// (two 4-bit or four 2-bit codes per byte: 2 bits for b = 2, 4 bits for
// b = 3, 4, a byte for b = 5..8), the float32 scales and the uint8 zero
// points instead of the float tensor, and TorchScript methods that rebuild
// the weight when the file is loaded:
//
//   w = scale · (code − zero_point)   (float32, the same operations as
//                                      quantizer.h's Dequantize)
//
// The rebuild runs in `__setstate__` of the module that owns the weight
// (a Conv2d, Linear, ...), which torch.jit.load (LibTorch and stock
// PyTorch, no extra code) calls while it unpickles the module, so every
// method sees the weight, not only forward, and the loaded model is the
// simulated one bit for bit. Saving the loaded model again writes the codes
// again (`__getstate__`). Each such module type gets these attributes
// (None on the instances whose weight stays float; instances of one
// TorchScript type share its methods):
//   _compressd_codes       Optional[Tensor] uint8, the codes of the matrix
//                          view [rows, cols] (quantizer.h), row-major,
//                          low bits first within a byte
//   _compressd_scale       Optional[Tensor] float32 [rows, groups]
//   _compressd_zero_point  Optional[Tensor] uint8 [rows, groups]
//   _compressd_meta        List[int] [bits per code in the file (2, 4 or
//                          8), group size (0 unless groups), channel axis,
//                          rows, cols, 1 when the weight requires grad
//                          (as a float file's parameters do; not when
//                          loaded under inference mode)]
//   _compressd_shape       List[int] the weight's shape
// Tied weights (model.h: TiedAliases): every module holding the tensor gets
// the same codes (stored once); after loading each has its own copy of the
// weight (equal values, no longer one tensor).
//
//   ASSIGN_OR_RETURN(CompactModelInfo info,
//                    SaveCompactModel(model, {{"conv1", q}}, "model.pt"));
//
// Thread-safe: works on its own copy of the module.
#ifndef COMPRESS_ENGINE_QUANT_COMPACT_MODEL_H_
#define COMPRESS_ENGINE_QUANT_COMPACT_MODEL_H_

#include <torch/script.h>

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "server/engine/quant/quantizer.h"

namespace compress::engine {

struct CompactModelInfo {
  int64_t file_bytes = 0;  // size of the saved file
  // Modules whose weight is stored as codes (ties included); 0 when the
  // plain file was smaller.
  int64_t modules = 0;
};

// Saves `module` to `path` with the `weight` of each module named in
// `layers` (module path -> its quantized weight, whose Dequantize() the
// module's weight must be) stored as codes, as above, or as it is (modules
// 0) when that file would not be smaller (the methods' code outweighs the
// codes' savings on a tiny model). `module` itself is not changed. FAILED_PRECONDITION (nothing written) when a module type
// cannot take the methods: a weight that is not float32, a type that has
// its own __getstate__, an attribute name or type TorchScript source cannot
// spell; INVALID_ARGUMENT for an unknown module path; INTERNAL when LibTorch
// fails.
absl::StatusOr<CompactModelInfo> SaveCompactModel(
    const torch::jit::Module& module, const std::map<std::string, QuantizedTensor>& layers,
    const std::string& path);

// Makes a module loaded from such a file a plain float model: the codes
// are dropped (the weights were rebuilt at load), so saving it after its
// weights change writes the new weights. LoadModel calls it. Throws what
// LibTorch throws.
void ForgetCodes(torch::jit::Module& module);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_COMPACT_MODEL_H_
