#include "server/pipeline/common.h"

#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

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
    case v1::LOSS_KIND_LANGUAGE_MODELING:
      return engine::LossKind::kLanguageModeling;
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
    case engine::LossKind::kLanguageModeling:
      return v1::LOSS_KIND_LANGUAGE_MODELING;
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

std::string ReportJson(const JobContext& context, const std::string& runtime,
                       const google::protobuf::Message& spec,
                       const google::protobuf::Message& result,
                       const std::vector<std::pair<std::string, std::string>>& extra) {
  // ordered_json keeps the fields in the order a reader expects.
  nlohmann::ordered_json report;
  report["job_id"] = context.job().id();
  // A string: a uint64 seed does not survive JSON readers that use doubles.
  report["seed"] = absl::StrCat(context.job().seed());
  report["device"] = context.device();
  report["runtime"] = runtime;
  for (const auto& [key, value] : extra) report[key] = value;
  auto json_of = [](const google::protobuf::Message& m) {
    auto j = nlohmann::ordered_json::parse(ProtoJson(m), nullptr, /*allow_exceptions=*/false);
    return j.is_discarded() ? nlohmann::ordered_json() : j;
  };
  report["spec"] = json_of(spec);
  report["result"] = json_of(result);
  return report.dump(2) + "\n";
}

std::string ModelName(const std::string& id) { return absl::StrCat("model ", id); }

std::string DatasetName(const std::string& id) { return absl::StrCat("dataset ", id); }

std::string WithCommas(int64_t value) {
  std::string digits = absl::StrCat(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

std::string SignedPp(double difference) {
  return absl::StrFormat("%s%.2f pp", difference < 0 ? "−" : "+", std::abs(difference));
}

void RemoveTree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
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
