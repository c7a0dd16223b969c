#include "server/engine/model/unfused_forward.h"

namespace compress::engine {

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
