// Calibration: which layers can be quantized, and the H = 2XXᵀ/N of one
// layer's inputs collected while the model runs (torch-including header).
//
// A thread-local at::RecordFunction callback watches the outermost operators
// the forward pass dispatches on the calling thread (aten::conv2d,
// aten::convolution, aten::_convolution, aten::linear, aten::addmm,
// aten::mm, aten::matmul) and picks those whose weight argument shares its
// data pointer with the layer's `weight` parameter (addmm/mm/matmul: with
// weight.t()). Their input goes into a HessianAccumulator, with the conv's
// stride/padding/dilation read from the operator's own arguments. Nothing in
// the model is changed, and other threads are not observed.
//
// nn.MultiheadAttention's in_proj_weight is seen whole by self-attention
// (query, key and value the same tensor: one aten::linear); with distinct
// key/value its three row blocks are used apart, which is UNIMPLEMENTED.
//
//   ASSIGN_OR_RETURN(LayerHessian h,
//                    CollectLayerHessian(module, "features.0", batches));
#ifndef COMPRESS_ENGINE_QUANT_CALIBRATION_H_
#define COMPRESS_ENGINE_QUANT_CALIBRATION_H_

#include <torch/script.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"
#include "server/engine/data/inputs.h"

namespace compress::engine {

struct QuantizableLayer {
  // The module path for a module's `weight` ("block.conv1"); the parameter's
  // full name for an attention's in_proj ("enc.0.self_attn.in_proj_weight").
  std::string name;
  std::string param;     // full parameter name: "block.conv1.weight", or = name
  std::string module;    // path of the module owning the parameter
  std::string kind;      // "Conv2d", "Linear", ..., "MultiheadAttention.in_proj"
  torch::Tensor weight;  // the parameter itself (shares storage)
  // Later modules whose `weight` is this very tensor (tied weights,
  // model.h: TiedAliases), e.g. {"b"} when `b.weight = a.weight`.
  std::vector<std::string> tied;
};

// Modules with a floating `weight` parameter of 2 or more dimensions
// (Linear, ConvNd, ...), and nn.MultiheadAttention's packed input projection
// `in_proj_weight` [3E, E] (kind "MultiheadAttention.in_proj"), a parameter
// of the attention module itself rather than a Linear's weight. (An
// attention with kdim/vdim other than E holds q/k/v_proj_weight instead;
// those stay float.) In module (definition) order, a module's own
// parameters before its children's: an attention's in_proj before its
// out_proj. A module whose weight is tied to an earlier listed one is not
// listed again: it is in that layer's `tied`, so the tensor is quantized
// once. The layer's Hessian (CollectLayerHessian) then sums the inputs of
// every use of the tensor.
absl::StatusOr<std::vector<QuantizableLayer>> QuantizableLayers(const torch::jit::Module& module);

struct LayerHessian {
  std::string kind;       // "linear" or "conv2d": how the weight was used
  torch::Tensor hessian;  // float64 [cols, cols], 2XXᵀ/N
  int64_t rows = 0;       // N: input vectors (tokens, patches) seen
  int64_t calls = 0;      // operator calls that used the weight
};

// Runs `module.forward(batch)` for every batch (without autograd) and
// accumulates the inputs of layer `layer`. NOT_FOUND for an unknown layer;
// UNIMPLEMENTED when the weight is only used by operators not listed above
// or by a grouped conv; FAILED_PRECONDITION when the layer never ran;
// INVALID_ARGUMENT when a batch does not fit the model. Not safe to call
// concurrently on the same module object.
absl::StatusOr<LayerHessian> CollectLayerHessian(torch::jit::Module& module,
                                                 const std::string& layer,
                                                 const std::vector<ModelInputs>& batches,
                                                 const CancelToken* cancel = nullptr);

// OK when `h`'s Hessian is finite; else FAILED_PRECONDITION "GPTQ Hessian
// of layer fc1's inputs has 4 non-finite values (+Inf)" (the layer's inputs
// overflowed). Callers check it apart from CollectLayerHessian, whose
// FAILED_PRECONDITION means "round this layer to nearest instead".
absl::Status CheckFiniteHessian(const LayerHessian& h, const std::string& layer);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_CALIBRATION_H_
