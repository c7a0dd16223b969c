#include "server/engine/model/model.h"

#include <sys/stat.h>

#include <algorithm>
#include <exception>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/engine/common/runtime.h"
#include "server/util/status_macros.h"

namespace compress::engine {

absl::StatusOr<torch::jit::Module> LoadModel(const std::string& path,
                                             const std::string& device) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("model file ", path, " not found"));
  }
  RETURN_IF_ERROR(ValidateDevice(device));
  try {
    torch::jit::Module module = torch::jit::load(path, c10::Device(device));
    module.eval();
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
