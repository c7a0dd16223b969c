// Folding BatchNorm into the preceding convolution (torch-including header).
//
// Wraps torch::jit::FoldConvBatchNorm: every `bn(conv(x))` pair in the
// TorchScript graphs becomes one conv with W' = W·γ/√(σ²+ε) (per output
// channel) and b' = (b − μ)·γ/√(σ²+ε) + β, using BatchNorm's running
// statistics, so it is only meaningful in eval mode. Parameter names keep
// their module paths ("conv1.weight"; a conv without bias gains
// "conv1.bias"); the BatchNorm submodules stay but are no longer called.
// Tied parameters (model.h: TiedAliases) stay tied unless folding changed
// the tensor under one of its names.
//
//   ASSIGN_OR_RETURN(torch::jit::Module folded, FoldBatchNorm(model));
#ifndef COMPRESS_ENGINE_QUANT_BN_FOLD_H_
#define COMPRESS_ENGINE_QUANT_BN_FOLD_H_

#include <torch/script.h>

#include "absl/status/statusor.h"

namespace compress::engine {

// A folded copy of `module`, in eval mode; `module` is not changed.
// INVALID_ARGUMENT (with LibTorch's message) when the pass fails.
// Thread-safe as long as nobody modifies `module` meanwhile.
absl::StatusOr<torch::jit::Module> FoldBatchNorm(const torch::jit::Module& module);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_BN_FOLD_H_
