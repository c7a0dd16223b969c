#include "server/engine/quant/bn_fold.h"

#include <torch/csrc/jit/passes/fold_conv_bn.h>

#include <exception>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/engine/model/model.h"

namespace compress::engine {
namespace {

// The pass copies the module with clone(), which gives each name of a tied
// tensor its own copy; this ties them again, as in `original`, where both
// still hold the same values (a tied conv weight that folding changed under
// one name only stays apart).
void TieAgain(const torch::jit::Module& original, torch::jit::Module& folded) {
  const std::map<std::string, std::string> aliases = TiedAliases(original);
  if (aliases.empty()) return;
  std::map<std::string, torch::jit::Module> by_path;
  for (const auto& item : folded.named_modules()) by_path.emplace(item.name, item.value);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& param : folded.named_parameters(/*recurse=*/true)) {
    tensors.emplace(param.name, param.value);
  }
  for (const auto& [alias, name] : aliases) {
    auto a = tensors.find(alias);
    auto n = tensors.find(name);
    if (a == tensors.end() || n == tensors.end() || !a->second.sizes().equals(n->second.sizes()) ||
        !torch::equal(a->second, n->second)) {
      continue;
    }
    const size_t dot = alias.rfind('.');
    const std::string path = dot == std::string::npos ? "" : alias.substr(0, dot);
    const std::string attr = dot == std::string::npos ? alias : alias.substr(dot + 1);
    by_path.at(path).register_parameter(attr, n->second, /*is_buffer=*/false);
  }
}

}  // namespace

absl::StatusOr<torch::jit::Module> FoldBatchNorm(const torch::jit::Module& module) {
  try {
    // The pass reads running statistics whatever the mode; cloning first
    // keeps the caller's module (and its training flag) untouched.
    torch::jit::Module copy = module.clone();
    copy.eval();
    torch::jit::Module folded = torch::jit::FoldConvBatchNorm(copy);
    folded.eval();
    TieAgain(module, folded);
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
