#include "proto/compress/v1/job_kinds.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace compress::v1 {
namespace {

namespace pb = google::protobuf;

constexpr char kPrefix[] = "JOB_KIND_";

JobKind KindOfField(const pb::FieldDescriptor* field) {
  if (field == nullptr) return JOB_KIND_UNSPECIFIED;
  JobKind kind = JOB_KIND_UNSPECIFIED;
  if (!JobKind_Parse(absl::StrCat(kPrefix, absl::AsciiStrToUpper(field->name())), &kind)) {
    return JOB_KIND_UNSPECIFIED;
  }
  return kind;
}

JobKind KindOfOneof(const pb::Message& message, const char* oneof_name) {
  const pb::OneofDescriptor* oneof = message.GetDescriptor()->FindOneofByName(oneof_name);
  if (oneof == nullptr) return JOB_KIND_UNSPECIFIED;
  return KindOfField(message.GetReflection()->GetOneofFieldDescriptor(message, oneof));
}

}  // namespace

JobKind KindOf(const JobSpec& spec) { return KindOfOneof(spec, "spec"); }

JobKind KindOf(const JobResult& result) { return KindOfOneof(result, "result"); }

std::string KindFieldName(JobKind kind) {
  if (kind == JOB_KIND_UNSPECIFIED || !JobKind_IsValid(kind)) return "";
  const std::string& name = JobKind_Name(kind);
  if (!absl::StartsWith(name, kPrefix)) return "";
  return absl::AsciiStrToLower(name.substr(sizeof(kPrefix) - 1));
}

std::vector<JobKind> AllJobKinds() {
  std::vector<JobKind> kinds;
  const pb::OneofDescriptor* oneof = JobSpec::descriptor()->FindOneofByName("spec");
  for (int i = 0; i < oneof->field_count(); ++i) {
    JobKind kind = KindOfField(oneof->field(i));
    if (kind != JOB_KIND_UNSPECIFIED) kinds.push_back(kind);
  }
  return kinds;
}

}  // namespace compress::v1
