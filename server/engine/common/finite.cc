#include "server/engine/common/finite.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace compress::engine {
namespace {

bool Floating(const torch::Tensor& t) {
  return t.defined() && (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()));
}

// True when every value is finite: the one pass the checks cost.
bool AllFinite(const torch::Tensor& t) {
  if (!Floating(t) || t.numel() == 0) return true;
  return torch::isfinite(t.detach()).all().item<bool>();
}

}  // namespace

std::string NonFiniteName(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  return "finite";
}

std::string DescribeNonFinite(const torch::Tensor& tensor) {
  if (AllFinite(tensor)) return "";
  torch::Tensor t = tensor.detach();
  if (at::isComplexType(t.scalar_type())) t = torch::view_as_real(t);
  const int64_t count = torch::logical_not(torch::isfinite(t)).sum().item<int64_t>();
  std::vector<std::string> kinds;
  if (torch::isnan(t).any().item<bool>()) kinds.push_back("NaN");
  if (torch::isposinf(t).any().item<bool>()) kinds.push_back("+Inf");
  if (torch::isneginf(t).any().item<bool>()) kinds.push_back("-Inf");
  return absl::StrCat(count, count == 1 ? " non-finite value (" : " non-finite values (",
                      absl::StrJoin(kinds, ", "), ")");
}

absl::Status CheckFiniteExamples(const torch::Tensor& tensor, absl::string_view what,
                                 int64_t first_example) {
  if (AllFinite(tensor)) return absl::OkStatus();
  std::string description = DescribeNonFinite(tensor);
  if (tensor.dim() > 0) {
    // Replace the closing parenthesis with the first bad example.
    const torch::Tensor bad = torch::logical_not(torch::isfinite(tensor.detach()));
    const int64_t first =
        bad.reshape({tensor.size(0), -1}).any(1).nonzero().select(1, 0)[0].item<int64_t>();
    description.pop_back();
    absl::StrAppend(&description, "; first at example ", first_example + first, ")");
  }
  return absl::FailedPreconditionError(absl::StrCat(what, " hold ", description));
}

absl::Status CheckFiniteParameters(const torch::jit::Module& module, absl::string_view model,
                                   absl::string_view context) {
  for (const torch::jit::NameTensor& p : module.named_parameters(/*recurse=*/true)) {
    if (AllFinite(p.value)) continue;
    return absl::FailedPreconditionError(absl::StrCat(model, ": parameter ", p.name, " holds ",
                                                      DescribeNonFinite(p.value), context));
  }
  return absl::OkStatus();
}

std::vector<std::string> NonFiniteBuffers(const torch::jit::Module& module,
                                          absl::string_view model) {
  std::vector<std::string> warnings;
  for (const torch::jit::NameTensor& b : module.named_buffers(/*recurse=*/true)) {
    if (AllFinite(b.value)) continue;
    warnings.push_back(
        absl::StrCat(model, ": buffer ", b.name, " holds ", DescribeNonFinite(b.value)));
  }
  return warnings;
}

absl::Status CheckFiniteValue(double value, absl::string_view what, absl::string_view detail) {
  if (std::isfinite(value)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(what, " is ", NonFiniteName(value), detail));
}

}  // namespace compress::engine
