#include "server/pipeline/common.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

engine::LossKind LossFromProto(v1::LossKind loss) {
  switch (loss) {
    case v1::LOSS_KIND_CROSS_ENTROPY:
      return engine::LossKind::kCrossEntropy;
    case v1::LOSS_KIND_PSEUDO_LABEL:
      return engine::LossKind::kPseudoLabel;
    case v1::LOSS_KIND_MSE:
      return engine::LossKind::kMse;
    default:
      return engine::LossKind::kAuto;
  }
}

v1::LossKind LossToProto(engine::LossKind loss) {
  switch (loss) {
    case engine::LossKind::kCrossEntropy:
      return v1::LOSS_KIND_CROSS_ENTROPY;
    case engine::LossKind::kPseudoLabel:
      return v1::LOSS_KIND_PSEUDO_LABEL;
    case engine::LossKind::kMse:
      return v1::LOSS_KIND_MSE;
    default:
      return v1::LOSS_KIND_UNSPECIFIED;
  }
}

std::string ProtoJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string WithCommas(int64_t value) {
  std::string digits = absl::StrCat(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

absl::StatusOr<std::string> MakeTempDir(const std::string& kind) {
  std::error_code ec;
  std::filesystem::path base = std::filesystem::temp_directory_path(ec);
  if (ec) base = "/tmp";
  std::string pattern = (base / absl::StrCat("compressd-", kind, "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a directory like ", pattern));
  }
  return pattern;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError(absl::StrCat("engine output ", path, " is missing"));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace compress::pipeline
