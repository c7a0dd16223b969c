#include "server/engine/model/model.h"

#include <sys/stat.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>

#include <algorithm>
#include <exception>
#include <limits>
#include <mutex>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/engine/common/runtime.h"
#include "server/engine/quant/compact_model.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// The TensorExpr fuser compiles an LLVM kernel for every new input shape it
// profiles. LibTorch 2.x builds with LLVM turn it on for the CPU (Debian's
// 1.13 never fused on the CPU), and PRUNE changes the model's shapes every
// round: prune_test went from 13 s to over 600 s on LibTorch 2.6, nearly all
// of it in LLVMCodeGen. Off for every model the engine loads; results do not
// depend on it (RunForward runs graphs unoptimised anyway).
void DisableTensorExprFuser() {
  static std::once_flag once;
  std::call_once(once, [] { torch::jit::setTensorExprFuserEnabled(false); });
}

}  // namespace

absl::StatusOr<torch::jit::Module> LoadModel(const std::string& path,
                                             const std::string& device) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("model file ", path, " not found"));
  }
  RETURN_IF_ERROR(ValidateDevice(device));
  DisableTensorExprFuser();
  try {
    torch::jit::Module module = torch::jit::load(path, c10::Device(device));
    module.eval();
    // A QUANTIZE model.pt: its weights were rebuilt from the codes at load.
    ForgetCodes(module);
    return module;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is not a TorchScript model: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a TorchScript model: ", e.what()));
  }
}

absl::Status CheckTensorInStorage(const std::string& name, const torch::Tensor& t) {
  // Sparse, MKL-DNN and undefined tensors have no plain storage to reach past.
  if (!t.defined() || t.layout() != c10::kStrided || !t.has_storage()) return absl::OkStatus();
  // The last element's byte offset, in 128 bits: nothing here can wrap.
  constexpr int64_t kMaxExtent = int64_t{1} << 56;
  __int128 last = t.storage_offset();
  bool empty = false;
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (t.size(i) == 0) empty = true;
    if (t.size(i) < 0 || t.stride(i) < 0 || t.size(i) > kMaxExtent || t.stride(i) > kMaxExtent) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " has a size or stride out of range in dimension ", i));
    }
    if (t.size(i) > 0) last += static_cast<__int128>(t.size(i) - 1) * t.stride(i);
  }
  if (t.storage_offset() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has a negative storage offset"));
  }
  if (empty) return absl::OkStatus();
  const size_t nbytes = t.storage().nbytes();
  const __int128 end = (last + 1) * static_cast<__int128>(t.element_size());
  if (end > static_cast<__int128>(nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " reaches byte ",
        static_cast<int64_t>(std::min<__int128>(end, std::numeric_limits<int64_t>::max())),
        " of a storage of ", nbytes, " bytes"));
  }
  return absl::OkStatus();
}

std::map<std::string, std::string> TiedAliases(const torch::jit::Module& module) {
  using Key = std::tuple<const void*, std::vector<int64_t>, std::vector<int64_t>, c10::ScalarType>;
  std::map<Key, std::string> first;
  std::map<std::string, std::string> aliases;
  for (const auto& param : module.named_parameters(/*recurse=*/true)) {
    const torch::Tensor& t = param.value;
    if (!t.defined() || t.numel() == 0 || t.layout() != c10::kStrided) continue;
    Key key{t.data_ptr(), t.sizes().vec(), t.strides().vec(), t.scalar_type()};
    auto [it, inserted] = first.emplace(std::move(key), param.name);
    if (!inserted) aliases.emplace(param.name, it->second);
  }
  return aliases;
}

absl::StatusOr<torch::jit::Module> CloneKeepingTies(const torch::jit::Module& module) {
  try {
    torch::jit::Module copy = module.clone();
    const std::map<std::string, std::string> aliases = TiedAliases(module);
    if (aliases.empty()) return copy;
    std::map<std::string, torch::jit::Module> by_path;
    for (const auto& item : copy.named_modules()) by_path.emplace(item.name, item.value);
    std::map<std::string, torch::Tensor> tensors;
    for (const auto& param : copy.named_parameters(/*recurse=*/true)) {
      tensors.emplace(param.name, param.value);
    }
    for (const auto& [alias, name] : aliases) {
      const size_t dot = alias.rfind('.');
      const std::string path = dot == std::string::npos ? "" : alias.substr(0, dot);
      const std::string attr = dot == std::string::npos ? alias : alias.substr(dot + 1);
      by_path.at(path).register_parameter(attr, tensors.at(name), /*is_buffer=*/false);
    }
    return copy;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot copy the model: ", e.what()));
  }
}

std::string DtypeName(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float:
      return "float32";
    case c10::ScalarType::Double:
      return "float64";
    case c10::ScalarType::Half:
      return "float16";
    case c10::ScalarType::BFloat16:
      return "bfloat16";
    case c10::ScalarType::Long:
      return "int64";
    case c10::ScalarType::Int:
      return "int32";
    case c10::ScalarType::Short:
      return "int16";
    case c10::ScalarType::Char:
      return "int8";
    case c10::ScalarType::Byte:
      return "uint8";
    case c10::ScalarType::Bool:
      return "bool";
    case c10::ScalarType::ComplexFloat:
      return "complex64";
    case c10::ScalarType::ComplexDouble:
      return "complex128";
    case c10::ScalarType::QInt8:
      return "qint8";
    case c10::ScalarType::QUInt8:
      return "quint8";
    case c10::ScalarType::QInt32:
      return "qint32";
    default:
      return c10::toString(type);
  }
}

}  // namespace compress::engine
