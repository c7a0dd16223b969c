#include "server/engine/quant/weight_error.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/engine/model/model.h"
#include "server/util/status_macros.h"

namespace compress::engine {

absl::StatusOr<WeightErrors> RoundToNearestErrors(const std::string& model_path,
                                                  const std::vector<int>& bits) {
  for (int b : bits) {
    if (b < 2 || b > 16) return absl::InvalidArgumentError(absl::StrCat("bits ", b, " not in 2..16"));
  }
  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(model_path, "cpu"));
  WeightErrors errors;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& named : module.named_modules()) {
      for (const auto& param : named.value.named_parameters(/*recurse=*/false)) {
        if (param.name != "weight" || !param.value.is_floating_point()) continue;
        torch::Tensor w = param.value.detach().to(torch::kFloat64);
        torch::Tensor rows = w.dim() >= 2 ? w.reshape({w.size(0), -1}) : w.reshape({1, -1});
        torch::Tensor max_abs = rows.abs().amax(/*dim=*/1, /*keepdim=*/true);
        for (int b : bits) {
          double levels = std::pow(2.0, b - 1) - 1;
          // An all-zero channel quantizes exactly; avoid dividing by zero.
          torch::Tensor scale = torch::where(max_abs > 0, max_abs / levels, torch::ones_like(max_abs));
          torch::Tensor q = torch::clamp(torch::round(rows / scale), -levels, levels) * scale;
          errors[named.name][b] = (q - rows).pow(2).sum().item<double>();
        }
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("quantization error of ", model_path, ": ", e.what()));
  }
  return errors;
}

}  // namespace compress::engine
