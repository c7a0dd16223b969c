#include "server/engine/quant/bn_fold.h"

#include <torch/csrc/jit/passes/fold_conv_bn.h>

#include <exception>

#include "absl/strings/str_cat.h"

namespace compress::engine {

absl::StatusOr<torch::jit::Module> FoldBatchNorm(const torch::jit::Module& module) {
  try {
    // The pass reads running statistics whatever the mode; cloning first
    // keeps the caller's module (and its training flag) untouched.
    torch::jit::Module copy = module.clone();
    copy.eval();
    torch::jit::Module folded = torch::jit::FoldConvBatchNorm(copy);
    folded.eval();
    return folded;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot fold BatchNorm into convolutions: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot fold BatchNorm into convolutions: ", e.what()));
  }
}

}  // namespace compress::engine
