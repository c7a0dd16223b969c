#include "server/engine/model/model.h"

#include <sys/stat.h>

#include <exception>

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
