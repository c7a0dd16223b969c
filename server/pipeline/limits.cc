#include "server/pipeline/limits.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

absl::Status Over(const std::string& field, int64_t value, int64_t limit, const char* flag) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", value, " is over the server limit of ", limit, " (--", flag, ")"));
}

// Unset optional fields read as 0 and pass.
absl::Status AtMost(const std::string& field, int64_t value, int64_t limit, const char* flag) {
  return value > limit ? Over(field, value, limit, flag) : absl::OkStatus();
}

absl::Status ToleranceAtLeast(const std::string& field, bool has, double value,
                              const ServerLimits& l) {
  // Zero and negative tolerances are the kind's own "must be in (0, 1)".
  if (!has || !(value > 0) || value >= l.min_tolerance) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", value, " is under the server limit of ", l.min_tolerance,
                   " (--min_tolerance); no run meets a tolerance that small"));
}

absl::Status CheckData(const std::string& f, const v1::CalibrationData& d, const ServerLimits& l) {
  RETURN_IF_ERROR(AtMost(f + ".num_samples", d.num_samples(), l.max_samples, "max_samples"));
  return AtMost(f + ".batch_size", d.batch_size(), l.max_batch_size, "max_batch_size");
}

absl::Status CheckAnalyze(const std::string& f, const v1::AnalyzeSpec& s, const ServerLimits& l) {
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), l));
  const v1::TraceOptions& t = s.traces();
  RETURN_IF_ERROR(AtMost(f + ".traces.max_probes", t.max_probes(), l.max_probes, "max_probes"));
  RETURN_IF_ERROR(AtMost(f + ".traces.min_probes", t.min_probes(), l.max_probes, "max_probes"));
  RETURN_IF_ERROR(ToleranceAtLeast(f + ".traces.tolerance", t.has_tolerance(), t.tolerance(), l));
  const v1::EigenOptions& e = s.eigen();
  RETURN_IF_ERROR(AtMost(f + ".eigen.k", e.k(), l.max_eigenvalues, "max_eigenvalues"));
  RETURN_IF_ERROR(AtMost(f + ".eigen.max_iterations", e.max_iterations(), l.max_eigen_iterations,
                         "max_eigen_iterations"));
  RETURN_IF_ERROR(ToleranceAtLeast(f + ".eigen.tolerance", e.has_tolerance(), e.tolerance(), l));
  const v1::DensityOptions& d = s.density();
  RETURN_IF_ERROR(AtMost(f + ".density.lanczos_steps", d.lanczos_steps(), l.max_lanczos_steps,
                         "max_lanczos_steps"));
  RETURN_IF_ERROR(AtMost(f + ".density.runs", d.runs(), l.max_density_runs, "max_density_runs"));
  RETURN_IF_ERROR(
      AtMost(f + ".density.grid_points", d.grid_points(), l.max_grid_points, "max_grid_points"));
  RETURN_IF_ERROR(AtMost(f + ".density.max_memory_bytes", d.max_memory_bytes(),
                         l.max_density_memory_bytes, "max_density_memory_bytes"));
  return AtMost(f + ".qbert.subsets", s.qbert().subsets(), l.max_qbert_subsets,
                "max_qbert_subsets");
}

absl::Status CheckQuantize(const std::string& f, const v1::QuantizeSpec& s, const ServerLimits& l) {
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), l));
  RETURN_IF_ERROR(AtMost(f + ".eval_samples", s.eval_samples(), l.max_samples, "max_samples"));
  RETURN_IF_ERROR(
      AtMost(f + ".trace_max_probes", s.trace_max_probes(), l.max_probes, "max_probes"));
  return ToleranceAtLeast(f + ".trace_tolerance", s.has_trace_tolerance(), s.trace_tolerance(), l);
}

absl::Status CheckPrune(const std::string& f, const v1::PruneSpec& s, const ServerLimits& l) {
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), l));
  RETURN_IF_ERROR(AtMost(f + ".steps", s.steps(), l.max_prune_steps, "max_prune_steps"));
  RETURN_IF_ERROR(AtMost(f + ".recovery.steps", s.recovery().steps(), l.max_recovery_steps,
                         "max_recovery_steps"));
  RETURN_IF_ERROR(
      AtMost(f + ".saliency_samples", s.saliency_samples(), l.max_samples, "max_samples"));
  RETURN_IF_ERROR(AtMost(f + ".eval_samples", s.eval_samples(), l.max_samples, "max_samples"));
  return AtMost(f + ".latency_batch", s.latency_batch(), l.max_batch_size, "max_batch_size");
}

absl::Status CheckInspect(const std::string& f, const v1::InspectSpec& s, const ServerLimits& l) {
  int64_t elements = 1;
  for (int64_t dim : s.input_shape()) {
    if (dim <= 0) return absl::OkStatus();  // the kind's own check names the dimension
    // elements * dim > limit, without overflow.
    if (elements > l.max_inspect_elements / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(f, ".input_shape: [", absl::StrJoin(s.input_shape(), ","),
                       "] is over the server limit of ", l.max_inspect_elements,
                       " input elements (--max_inspect_elements)"));
    }
    elements *= dim;
  }
  return absl::OkStatus();
}

// Every string (bytes) and every repeated field of a spec, whatever its kind.
absl::Status CheckStringsAndLists(const Message& m, const std::string& path,
                                  const ServerLimits& l) {
  std::vector<const FieldDescriptor*> fields;
  const auto& r = *m.GetReflection();
  r.ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string field = absl::StrCat(path, ".", f->name());
    const int n = f->is_repeated() ? r.FieldSize(m, f) : 1;
    if (f->is_repeated()) RETURN_IF_ERROR(AtMost(field, n, l.max_list_items, "max_list_items"));
    for (int i = 0; i < n; ++i) {
      const std::string item = f->is_repeated() ? absl::StrCat(field, "[", i, "]") : field;
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
        std::string scratch;
        const std::string& s = f->is_repeated() ? r.GetRepeatedStringReference(m, f, i, &scratch)
                                                : r.GetStringReference(m, f, &scratch);
        RETURN_IF_ERROR(CheckNameLength(item, s, l));
      } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        RETURN_IF_ERROR(CheckStringsAndLists(
            f->is_repeated() ? r.GetRepeatedMessage(m, f, i) : r.GetMessage(m, f), item, l));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckNameLength(const std::string& field, const std::string& value,
                             const ServerLimits& limits) {
  if (static_cast<int64_t>(value.size()) <= limits.max_name_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", value.size(),
                                                 " bytes is over the server limit of ",
                                                 limits.max_name_bytes, " (--max_name_bytes)"));
}

absl::Status CheckSpecLimits(const v1::JobSpec& spec, const ServerLimits& l) {
  RETURN_IF_ERROR(CheckStringsAndLists(spec, "spec", l));
  switch (spec.spec_case()) {
    case v1::JobSpec::kInspect:
      return CheckInspect("spec.inspect", spec.inspect(), l);
    case v1::JobSpec::kAnalyze:
      return CheckAnalyze("spec.analyze", spec.analyze(), l);
    case v1::JobSpec::kQuantize:
      return CheckQuantize("spec.quantize", spec.quantize(), l);
    case v1::JobSpec::kPrune:
      return CheckPrune("spec.prune", spec.prune(), l);
    case v1::JobSpec::kCompress:
      RETURN_IF_ERROR(CheckPrune("spec.compress.prune", spec.compress().prune(), l));
      return CheckQuantize("spec.compress.quantize", spec.compress().quantize(), l);
    default:
      return absl::OkStatus();  // the registry names a missing kind
  }
}

}  // namespace compress::pipeline
