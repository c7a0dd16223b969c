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
//   UnfusedForward unfused(module);
//   module.forward({input});  // aten::linear, aten::bmm, ... one by one
//
// Costs: the forward records an autograd graph (freed with its outputs), so
// it needs more memory than an inference forward. Not usable inside
// c10::InferenceMode (inference tensors cannot be saved for backward).
// A model traced with the fused operator already in its graph keeps it.
// Thread-compatible: grad mode is per thread; the flags are the module's.
#ifndef COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_
#define COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_

#include <c10/core/GradMode.h>
#include <torch/script.h>

#include <vector>

namespace compress::engine {

// Enables grad mode on this thread and sets requires_grad on every floating
// parameter of `module` that lacks it; the destructor restores both. The
// module must outlive the scope and not run elsewhere meanwhile.
class UnfusedForward {
 public:
  explicit UnfusedForward(const torch::jit::Module& module);
  ~UnfusedForward();
  UnfusedForward(const UnfusedForward&) = delete;
  UnfusedForward& operator=(const UnfusedForward&) = delete;

 private:
  c10::AutoGradMode grad_mode_{true};
  std::vector<at::Tensor> flipped_;  // parameters whose flag we set
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_MODEL_UNFUSED_FORWARD_H_
