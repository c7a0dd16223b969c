// Makes a TorchScript forward dispatch the operators that training runs,
// not PyTorch's fused inference kernels (torch-including header).
//
// With grad disabled, nn.TransformerEncoderLayer runs as one
// aten::_transformer_encoder_layer_fwd and nn.MultiheadAttention as one
// aten::_native_multi_head_attention (the "fast path"). Code that watches the
// operators of a forward pass (MAC counting, GPTQ's capture of Linear inputs)
// then sees neither the attention products nor the Linear layers inside.
// The fast path is skipped when grad is enabled and any of its tensor
// arguments requires grad; inside this scope both hold.
//
//   std::optional<UnfusedForward> unfused;
//   std::optional<c10::InferenceMode> inference;
//   if (HasFusedFastPath(module)) unfused.emplace(module); else inference.emplace();
//   module.forward({input});  // aten::linear, aten::bmm, ... one by one
//
// Costs: the forward records an autograd graph (freed with its outputs), so
// it holds every activation at once and needs more memory and time than an
// inference forward; hence only for models that HasFusedFastPath. Not usable
// inside c10::InferenceMode (inference tensors cannot be saved for backward).
// A model traced with the fused operator already in its graph keeps it.
// Thread-compatible: grad mode is per thread; the flags are the module's.
#ifndef COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_
#define COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_

#include <c10/core/GradMode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <vector>

namespace compress::engine {

// Whether any method of `module` or its submodules can dispatch one of
// PyTorch's fused inference kernels (aten::_transformer_encoder_layer_fwd,
// aten::_native_multi_head_attention, aten::_nested_tensor_from_mask):
// scripted nn.TransformerEncoderLayer, nn.MultiheadAttention and
// nn.TransformerEncoder hold them behind their fast-path checks.
bool HasFusedFastPath(const torch::jit::Module& module);

// Enables grad mode and disables the TorchScript graph optimiser on this
// thread, and sets requires_grad on every floating parameter of `module`
// that lacks it; the destructor restores all three. The module must outlive
// the scope and not run elsewhere meanwhile.
class UnfusedForward {
 public:
  explicit UnfusedForward(const torch::jit::Module& module);
  ~UnfusedForward();
  UnfusedForward(const UnfusedForward&) = delete;
  UnfusedForward& operator=(const UnfusedForward&) = delete;

 private:
  c10::AutoGradMode grad_mode_{true};
  // With the optimiser on, a grad-mode INSPECT of the ViT fixture made the
  // pruning job's later InferenceMode forwards of its own copy of the model
  // fail ("Inference tensors cannot be saved for backward"): the executor
  // kept an optimised plan with autograd inside. Unoptimised, nothing is
  // kept (RunForward in data/loss.cc runs so for the same reason).
  torch::jit::GraphOptimizerEnabledGuard no_optimizer_{false};
  std::vector<at::Tensor> flipped_;  // parameters whose flag we set
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_
