#include "server/engine/model/unfused_forward.h"

namespace compress::engine {
namespace {

bool BlockHasFusedOp(const torch::jit::Block* block) {
  static const c10::Symbol kFused[] = {
      c10::Symbol::fromQualString("aten::_transformer_encoder_layer_fwd"),
      c10::Symbol::fromQualString("aten::_native_multi_head_attention"),
      c10::Symbol::fromQualString("aten::_nested_tensor_from_mask"),
  };
  for (const torch::jit::Node* node : block->nodes()) {
    for (const c10::Symbol& fused : kFused) {
      if (node->kind() == fused) return true;
    }
    for (const torch::jit::Block* inner : node->blocks()) {
      if (BlockHasFusedOp(inner)) return true;
    }
  }
  return false;
}

}  // namespace

bool HasFusedFastPath(const torch::jit::Module& module) {
  for (const torch::jit::Module& m : module.modules()) {
    for (const torch::jit::Method& method : m.get_methods()) {
      if (BlockHasFusedOp(method.graph()->block())) return true;
    }
  }
  return false;
}

UnfusedForward::UnfusedForward(const torch::jit::Module& module) {
  // A frozen model (requires_grad=False everywhere) would still take the
  // fast path, whose check looks at the weights as well as the input.
  for (const auto& param : module.named_parameters(/*recurse=*/true)) {
    at::Tensor t = param.value;
    if (t.is_floating_point() && t.is_leaf() && !t.requires_grad()) {
      t.requires_grad_(true);
      flipped_.push_back(t);
    }
  }
}

UnfusedForward::~UnfusedForward() {
  for (at::Tensor& t : flipped_) t.requires_grad_(false);
}

}  // namespace compress::engine
