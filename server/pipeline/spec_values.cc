#include "server/pipeline/spec_values.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace compress::pipeline {
namespace {

using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

absl::Status NotFinite(const std::string& path, double v) {
  const char* what = std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity");
  return absl::InvalidArgumentError(absl::StrCat(path, ": must be a finite number, got ", what));
}

absl::Status UnknownEnum(const std::string& path, const EnumDescriptor& type, int v) {
  std::vector<std::string> known;
  for (int i = 0; i < type.value_count(); ++i) known.push_back(type.value(i)->name());
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", v, " is not a ", type.name(),
                                                 " (known: ", absl::StrJoin(known, ", "), ")"));
}

absl::Status CheckMessage(const Message& m, const std::string& path);

// One value of `f`: element `i` of a repeated field, or the field (i < 0).
absl::Status CheckValue(const Message& m, const FieldDescriptor& f, int i,
                        const std::string& path) {
  const Reflection& r = *m.GetReflection();
  switch (f.cpp_type()) {
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      const double v = i < 0 ? r.GetDouble(m, &f) : r.GetRepeatedDouble(m, &f, i);
      return std::isfinite(v) ? absl::OkStatus() : NotFinite(path, v);
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      const float v = i < 0 ? r.GetFloat(m, &f) : r.GetRepeatedFloat(m, &f, i);
      return std::isfinite(v) ? absl::OkStatus() : NotFinite(path, v);
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int v = i < 0 ? r.GetEnumValue(m, &f) : r.GetRepeatedEnumValue(m, &f, i);
      return f.enum_type()->FindValueByNumber(v) != nullptr ? absl::OkStatus()
                                                            : UnknownEnum(path, *f.enum_type(), v);
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return CheckMessage(i < 0 ? r.GetMessage(m, &f) : r.GetRepeatedMessage(m, &f, i), path);
    default:
      return absl::OkStatus();
  }
}

absl::Status CheckMessage(const Message& m, const std::string& path) {
  std::vector<const FieldDescriptor*> fields;
  m.GetReflection()->ListFields(m, &fields);  // the fields that are set
  for (const FieldDescriptor* f : fields) {
    const std::string field_path = absl::StrCat(path, ".", f->name());
    if (!f->is_repeated()) {
      if (absl::Status s = CheckValue(m, *f, -1, field_path); !s.ok()) return s;
      continue;
    }
    const int n = m.GetReflection()->FieldSize(m, f);
    for (int i = 0; i < n; ++i) {
      if (absl::Status s = CheckValue(m, *f, i, absl::StrCat(field_path, "[", i, "]")); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSpecValues(const compress::v1::JobSpec& spec) {
  return CheckMessage(spec, "spec");
}

}  // namespace compress::pipeline
