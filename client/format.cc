#include "client/format.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "server/util/client_text.h"

namespace compress::client {
namespace {

std::string StripPrefix(const std::string& name, absl::string_view prefix) {
  return std::string(absl::StripPrefix(name, prefix));
}

template <typename Enum>
absl::StatusOr<Enum> ParseEnum(absl::string_view text, absl::string_view prefix,
                               bool (*parse)(const std::string&, Enum*),
                               const google::protobuf::EnumDescriptor* desc,
                               absl::string_view what) {
  std::string upper = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(upper, prefix)) upper = absl::StrCat(prefix, upper);
  Enum value{};
  if (!absl::EndsWith(upper, "UNSPECIFIED") && parse(upper, &value)) return value;
  std::vector<std::string> names;
  for (int i = 0; i < desc->value_count(); ++i) {
    std::string name = StripPrefix(desc->value(i)->name(), prefix);
    if (name != "UNSPECIFIED") names.push_back(absl::AsciiStrToLower(name));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", text, "' (one of ", absl::StrJoin(names, ", "), ")"));
}

std::string Pad(absl::string_view s, size_t width, bool right) {
  if (s.size() >= width) return std::string(s);
  const std::string fill(width - s.size(), ' ');
  return right ? absl::StrCat(fill, s) : absl::StrCat(s, fill);
}

std::string ParamSummary(const v1::Layer& layer) {
  std::vector<std::string> parts;
  for (const v1::ParameterInfo& p : layer.parameters()) {
    std::string leaf = p.name();
    const size_t dot = leaf.rfind('.');
    if (dot != std::string::npos) leaf = leaf.substr(dot + 1);
    parts.push_back(absl::StrCat(leaf, FormatShape(p.shape()),
                                 p.tied_to().empty() ? "" : absl::StrCat("=", p.tied_to())));
  }
  return absl::StrJoin(parts, " ");
}

// "\ntied: embed.weight = head.weight (one tensor, counted once)" per tie.
std::string TiedLines(const google::protobuf::RepeatedPtrField<v1::TiedParameter>& tied) {
  std::string out;
  for (const v1::TiedParameter& t : tied) {
    absl::StrAppend(&out, "\ntied: ",
                    EscapeControl(absl::StrCat(t.name(), " = ", absl::StrJoin(t.aliases(), " = "))),
                    " (one tensor, counted once)");
  }
  return out;
}

std::string ErrorText(const v1::ErrorStatus& error) {
  std::string text = absl::StrCat(StatusCodeName(error.code()), ": ", error.message());
  for (const v1::FieldViolation& v : error.violations()) {
    absl::StrAppend(&text, "; ", v.field(), ": ", v.description());
  }
  return text;
}

std::string ProgressText(const v1::Progress& p) {
  std::string text = p.stage();
  if (p.total() > 0) {
    absl::StrAppend(&text, text.empty() ? "" : " ", p.done(), "/", p.total());
  } else if (p.done() > 0) {
    absl::StrAppend(&text, text.empty() ? "" : " ", p.done());
  }
  return text;
}

}  // namespace

std::string StateName(v1::JobState state) {
  return StripPrefix(v1::JobState_Name(state), "JOB_STATE_");
}

std::string KindName(v1::JobKind kind) { return StripPrefix(v1::JobKind_Name(kind), "JOB_KIND_"); }

std::string DatasetFormatName(v1::DatasetFormat format) {
  return StripPrefix(v1::DatasetFormat_Name(format), "DATASET_FORMAT_");
}

absl::StatusOr<v1::JobState> ParseJobState(absl::string_view text) {
  return ParseEnum<v1::JobState>(text, "JOB_STATE_", &v1::JobState_Parse, v1::JobState_descriptor(),
                                 "job state");
}

absl::StatusOr<v1::JobKind> ParseJobKind(absl::string_view text) {
  return ParseEnum<v1::JobKind>(text, "JOB_KIND_", &v1::JobKind_Parse, v1::JobKind_descriptor(),
                                "job kind");
}

std::string StatusCodeName(int code) {
  if (code < 0 || code > 16) return absl::StrCat(code);
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string ShortId(absl::string_view id) {
  if (id.size() <= 12 || absl::StrContains(id, ':')) return std::string(id);
  return std::string(id.substr(0, 12));
}

std::vector<std::string> UniqueShortIds(const std::vector<std::string>& ids) {
  std::vector<std::string> sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  auto common = [](absl::string_view a, absl::string_view b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
  };
  std::vector<std::string> out;
  for (const std::string& id : ids) {
    std::string shortened = ShortId(id);
    if (shortened.size() < id.size()) {
      auto at = std::lower_bound(sorted.begin(), sorted.end(), id);
      size_t shared = 0;
      if (at != sorted.begin()) shared = std::max(shared, common(id, *(at - 1)));
      // Copies of `id` itself do not make it ambiguous.
      auto next = std::upper_bound(sorted.begin(), sorted.end(), id);
      if (next != sorted.end()) shared = std::max(shared, common(id, *next));
      if (shared + 1 > shortened.size()) shortened = id.substr(0, std::min(id.size(), shared + 1));
    }
    out.push_back(std::move(shortened));
  }
  return out;
}

std::string SpecModelId(const v1::JobSpec& spec) {
  const google::protobuf::Reflection* reflection = spec.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> set;
  reflection->ListFields(spec, &set);
  for (const google::protobuf::FieldDescriptor* f : set) {
    if (f->type() != google::protobuf::FieldDescriptor::TYPE_MESSAGE || f->is_repeated()) continue;
    const google::protobuf::Message& kind_spec = reflection->GetMessage(spec, f);
    const google::protobuf::FieldDescriptor* model =
        kind_spec.GetDescriptor()->FindFieldByName("model_id");
    if (model != nullptr && model->type() == google::protobuf::FieldDescriptor::TYPE_STRING &&
        !model->is_repeated()) {
      return kind_spec.GetReflection()->GetString(kind_spec, model);
    }
  }
  return "";
}

std::string HumanBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (value >= 1024 && unit < 3) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string HumanCount(int64_t count) {
  const double v = static_cast<double>(count);
  if (std::llabs(count) < 1000) return absl::StrCat(count);
  if (std::llabs(count) < 1000000) return absl::StrFormat("%.1fK", v / 1e3);
  if (std::llabs(count) < 1000000000) return absl::StrFormat("%.2fM", v / 1e6);
  return absl::StrFormat("%.2fG", v / 1e9);
}

std::string WithCommas(int64_t value) {
  const uint64_t magnitude =
      value < 0 ? uint64_t{0} - static_cast<uint64_t>(value) : static_cast<uint64_t>(value);
  const std::string digits = absl::StrCat(magnitude);
  std::string out;
  const int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    if (i > 0 && (n - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? absl::StrCat("-", out) : out;
}

std::string FormatEta(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "";
  const int64_t s = std::llround(seconds);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatShape(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

std::string FormatShape(const google::protobuf::RepeatedField<int64_t>& shape) {
  return FormatShape(absl::MakeConstSpan(shape.data(), shape.size()));
}

std::string FormatTimestamp(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(time.seconds()),
                          absl::UTCTimeZone());
}

std::string FormatTable(const std::vector<Column>& columns,
                        const std::vector<std::vector<std::string>>& rows) {
  // Cells hold names and ids from the server: a newline or an escape
  // sequence in one must not draw rows of its own.
  std::vector<std::vector<std::string>> cells;
  for (const auto& row : rows) {
    cells.emplace_back();
    for (const std::string& cell : row) cells.back().push_back(EscapeControl(cell));
  }
  std::vector<size_t> widths(columns.size());
  for (size_t c = 0; c < columns.size(); ++c) widths[c] = columns[c].header.size();
  for (const auto& row : cells) {
    for (size_t c = 0; c < columns.size() && c < row.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  auto render = [&](auto cell) {
    std::string line;
    for (size_t c = 0; c < columns.size(); ++c) {
      const bool last = c + 1 == columns.size();
      if (c > 0) line += "  ";
      // The last left-aligned column needs no padding.
      line += (last && !columns[c].right_align) ? std::string(cell(c))
                                                : Pad(cell(c), widths[c], columns[c].right_align);
    }
    line.erase(line.find_last_not_of(' ') + 1);
    return line + "\n";
  };
  std::string out = render([&](size_t c) { return absl::string_view(columns[c].header); });
  for (const auto& row : cells) {
    out += render(
        [&](size_t c) { return c < row.size() ? absl::string_view(row[c]) : absl::string_view(); });
  }
  return out;
}

std::string FormatKeyValues(const std::vector<std::pair<std::string, std::string>>& pairs) {
  size_t width = 0;
  for (const auto& [key, value] : pairs) width = std::max(width, key.size() + 1);
  std::string out;
  for (const auto& [key, value] : pairs) {
    absl::StrAppend(&out, Pad(absl::StrCat(key, ":"), width, false), " ", EscapeControl(value),
                    "\n");
  }
  return out;
}

std::string FormatModelTable(const std::vector<v1::Model>& models) {
  std::vector<std::string> ids;
  for (const v1::Model& m : models) ids.push_back(m.id());
  const std::vector<std::string> short_ids = UniqueShortIds(ids);
  std::vector<std::vector<std::string>> rows;
  for (const v1::Model& m : models) {
    rows.push_back({short_ids[rows.size()], m.name(), HumanBytes(m.size_bytes()),
                    WithCommas(m.num_parameters()), absl::StrCat(m.layers_size()),
                    FormatTimestamp(m.create_time())});
  }
  return FormatTable(
      {{"ID"}, {"NAME"}, {"SIZE", true}, {"PARAMS", true}, {"LAYERS", true}, {"CREATED"}}, rows);
}

std::string FormatModel(const v1::Model& model) {
  std::string out = FormatKeyValues({
      {"id", model.id()},
      {"name", model.name()},
      {"size", absl::StrCat(HumanBytes(model.size_bytes()), " (", WithCommas(model.size_bytes()),
                            " bytes)")},
      {"format", StripPrefix(v1::ModelFormat_Name(model.format()), "MODEL_FORMAT_")},
      {"parameters", WithCommas(model.num_parameters())},
      {"layers", absl::StrCat(model.layers_size())},
      {"created", FormatTimestamp(model.create_time())},
  });
  if (model.layers_size() > 0) {
    std::vector<std::vector<std::string>> rows;
    for (const v1::Layer& layer : model.layers()) {
      rows.push_back({layer.name().empty() ? "(root)" : layer.name(), layer.kind(),
                      WithCommas(layer.numel()), ParamSummary(layer)});
    }
    absl::StrAppend(&out, "\n",
                    FormatTable({{"LAYER"}, {"KIND"}, {"PARAMS", true}, {"SHAPES"}}, rows));
  }
  std::string notes = TiedLines(model.tied_parameters());
  if (model.prune_check().checked()) {
    absl::StrAppend(&notes, "\nprune: ",
                    model.prune_check().prunable()
                        ? "prunable"
                        : absl::StrCat("refused, ", EscapeControl(model.prune_check().reason())));
  }
  if (!notes.empty()) absl::StrAppend(&out, notes, "\n");
  return out;
}

std::string FormatDatasetTable(const std::vector<v1::Dataset>& datasets) {
  std::vector<std::string> ids;
  for (const v1::Dataset& d : datasets) ids.push_back(d.id());
  const std::vector<std::string> short_ids = UniqueShortIds(ids);
  std::vector<std::vector<std::string>> rows;
  for (const v1::Dataset& d : datasets) {
    rows.push_back({short_ids[rows.size()], d.name(), DatasetFormatName(d.format()),
                    WithCommas(d.num_examples()), FormatShape(d.input_shape()),
                    d.builtin() ? "builtin" : HumanBytes(d.size_bytes()),
                    FormatTimestamp(d.create_time())});
  }
  return FormatTable(
      {{"ID"}, {"NAME"}, {"FORMAT"}, {"EXAMPLES", true}, {"INPUT"}, {"SIZE", true}, {"CREATED"}},
      rows);
}

std::string FormatDataset(const v1::Dataset& d) {
  std::string targets = "none";
  if (d.has_targets()) {
    targets = absl::StrCat(FormatShape(d.target_shape()), " ", d.target_dtype());
  }
  std::vector<std::pair<std::string, std::string>> rows = {
      {"id", d.id()},
      {"name", d.name()},
      {"format", DatasetFormatName(d.format())},
      {"size", d.builtin() ? "builtin"
                           : absl::StrCat(HumanBytes(d.size_bytes()), " (",
                                          WithCommas(d.size_bytes()), " bytes)")},
      {"examples", WithCommas(d.num_examples())},
      {"inputs", absl::StrCat(FormatShape(d.input_shape()), " ", d.input_dtype())},
  };
  for (const v1::NamedInput& n : d.named_inputs()) {
    rows.emplace_back(absl::StrCat("inputs.", n.name()),
                      absl::StrCat(FormatShape(n.shape()), " ", n.dtype(), " (forward argument ",
                                   n.name(), "=)"));
  }
  rows.emplace_back("targets", targets);
  rows.emplace_back("created", FormatTimestamp(d.create_time()));
  return FormatKeyValues(rows);
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs,
                           const std::map<std::string, std::string>* model_names) {
  std::vector<std::string> ids;
  for (const v1::Job& j : jobs) ids.push_back(j.id());
  const std::vector<std::string> short_ids = UniqueShortIds(ids);
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& j : jobs) {
    std::string progress = "-";
    if (j.state() == v1::JOB_STATE_RUNNING && j.has_progress()) {
      progress = ProgressText(j.progress());
    }
    std::string device = j.assigned_device().empty() ? j.device() : j.assigned_device();
    const std::string model_id = SpecModelId(j.spec());
    std::string model = model_id.empty() ? "-" : ShortId(model_id);
    if (model_names != nullptr) {
      if (auto name = model_names->find(model_id); name != model_names->end()) {
        model = name->second;
      }
    }
    rows.push_back({short_ids[rows.size()], KindName(j.kind()), model, StateName(j.state()),
                    progress.empty() ? "-" : progress, device.empty() ? "-" : device,
                    FormatTimestamp(j.create_time())});
  }
  return FormatTable(
      {{"ID"}, {"KIND"}, {"MODEL"}, {"STATE"}, {"PROGRESS"}, {"DEVICE"}, {"CREATED"}}, rows);
}

std::string FormatJob(const v1::Job& job) {
  std::vector<std::pair<std::string, std::string>> pairs = {
      {"id", job.id()},
      {"kind", KindName(job.kind())},
      {"state", StateName(job.state())},
  };
  std::string device = job.device().empty() ? "auto" : job.device();
  if (!job.assigned_device().empty()) {
    absl::StrAppend(&device, " (ran on ", job.assigned_device(), ")");
  }
  pairs.push_back({"device", device});
  pairs.push_back({"seed", absl::StrCat(job.seed())});
  if (!job.request_id().empty()) pairs.push_back({"request id", job.request_id()});
  if (job.has_progress() && job.state() == v1::JOB_STATE_RUNNING) {
    std::string text = ProgressText(job.progress());
    const std::string eta = FormatEta(job.progress().eta_seconds());
    if (!eta.empty() && job.progress().eta_seconds() > 0) {
      absl::StrAppend(&text, " ETA ", eta);
    }
    pairs.push_back({"progress", text});
  }
  pairs.push_back({"created", FormatTimestamp(job.create_time())});
  pairs.push_back({"started", FormatTimestamp(job.start_time())});
  pairs.push_back({"ended", FormatTimestamp(job.end_time())});
  if (job.attempts() > 1) pairs.push_back({"attempts", absl::StrCat(job.attempts())});
  if (job.deadline_seconds() > 0) {
    pairs.push_back({"deadline", absl::StrCat(job.deadline_seconds(), "s")});
  }
  pairs.push_back({"events", absl::StrCat(job.last_sequence())});
  if (!job.result().summary().empty()) {
    pairs.push_back({"summary", job.result().summary()});
  }
  if (job.has_error() && job.error().code() != 0) {
    pairs.push_back({"error", ErrorText(job.error())});
  }
  std::string out = FormatKeyValues(pairs);
  if (job.result().has_analyze()) {
    absl::StrAppend(&out, "\n", FormatAnalyzeResult(job.result().analyze()));
  }
  if (job.result().has_inspect()) {
    absl::StrAppend(&out, "\n", FormatInspectResult(job.result().inspect()));
  }
  if (job.result().has_quantize()) {
    absl::StrAppend(&out, "\n", FormatQuantizeResult(job.result().quantize()));
  }
  if (job.result().has_prune()) {
    absl::StrAppend(&out, "\n", FormatPruneResult(job.result().prune()));
  }
  if (job.result().has_compress()) {
    absl::StrAppend(&out, "\n", FormatCompressResult(job.result().compress()));
  }
  return out;
}

// The bulk/outlier split of an ANALYZE result: one table row, and a hint
// when the top eigenvalues did not reach the bulk.
std::string FormatSpectrumOutliers(const v1::SpectrumOutliers& so) {
  std::vector<std::string> values;
  for (double v : so.outliers()) values.push_back(absl::StrFormat("%.4g", v));
  std::string out = FormatTable(
      {{"OUTLIERS", true}, {"CLASSES", true}, {"BULK", true}, {"WIDTH", true}, {"EIGENVALUES"}},
      {{absl::StrCat(so.count_is_lower_bound() ? ">= " : "", so.count()),
        so.num_classes() > 0 ? absl::StrCat(so.num_classes()) : "-",
        absl::StrFormat("[%.4g, %.4g]", so.bulk_min(), so.bulk_max()),
        absl::StrFormat("%.4g", so.bulk_width()),
        values.empty() ? "-" : absl::StrJoin(values, " ")}});
  if (so.count_is_lower_bound()) {
    absl::StrAppend(&out, "the top eigenvalues did not reach the bulk: ask for a larger --eigen K\n");
  }
  return out;
}

std::string FormatAnalyzeResult(const v1::AnalyzeResult& result) {
  std::vector<const v1::LayerSensitivity*> layers;
  for (const v1::LayerSensitivity& l : result.layers()) layers.push_back(&l);
  std::stable_sort(layers.begin(), layers.end(), [](const auto* a, const auto* b) {
    return a->trace_per_param() > b->trace_per_param();
  });
  std::vector<std::vector<std::string>> rows;
  int rank = 0;
  for (const v1::LayerSensitivity* l : layers) {
    auto omega = l->omega().find(4);
    rows.push_back(
        {absl::StrCat(++rank), l->name().empty() ? "(root)" : l->name(), l->kind(),
         WithCommas(l->numel()),
         absl::StrFormat("%.4g ± %.2g%s", l->trace(), l->trace_std_error(),
                         l->trace_converged() ? "" : " *"),
         absl::StrFormat("%.4g", l->trace_per_param()),
         omega == l->omega().end() ? "-" : absl::StrFormat("%.3g", omega->second),
         l->top_eigenvalues_size() > 0 ? absl::StrFormat("%.4g", l->top_eigenvalues(0)) : "-"});
  }
  std::string out = FormatTable({{"RANK", true},
                                 {"LAYER"},
                                 {"KIND"},
                                 {"PARAMS", true},
                                 {"TRACE ± SE", true},
                                 {"TRACE/PARAM", true},
                                 {"OMEGA(4)", true},
                                 {"TOP EIG", true}},
                                rows);
  absl::StrAppend(
      &out, "\ntotal trace ",
      absl::StrFormat("%.4g ± %.2g", result.total_trace(), result.total_trace_std_error()));
  if (result.eigenvalues_size() > 0) {
    absl::StrAppend(&out, ", top eigenvalues");
    for (int i = 0; i < result.eigenvalues_size(); ++i) {
      const bool converged = i >= result.eigen_converged_size() || result.eigen_converged(i);
      absl::StrAppend(&out, absl::StrFormat(" %.4g", result.eigenvalues(i)),
                      converged ? "" : " (not converged)");
    }
  }
  if (result.has_min_eigenvalue() && result.has_max_eigenvalue()) {
    absl::StrAppend(&out, absl::StrFormat(", spectrum [%.4g, %.4g] (Lanczos)",
                                          result.min_eigenvalue(), result.max_eigenvalue()));
  }
  if (result.has_spectrum_outliers()) {
    const std::string split = FormatSpectrumOutliers(result.spectrum_outliers());
    absl::StrAppend(&out, "\n", absl::StripSuffix(split, "\n"));
  }
  absl::StrAppend(&out, "\n", result.hvp_count(), " HVPs (",
                  absl::AsciiStrToLower(
                      absl::StripPrefix(v1::HvpMethod_Name(result.hvp_method()), "HVP_METHOD_")),
                  ") on ", result.num_examples(), " examples in ",
                  absl::StrFormat("%.1f s", result.wall_seconds()));
  if (result.fell_back()) {
    absl::StrAppend(&out, "; fell back: ", EscapeControl(result.fallback_reason()));
  }
  if (result.blocks_size() > 0) {
    std::vector<std::vector<std::string>> block_rows;
    for (const v1::BlockSensitivity& b : result.blocks()) {
      block_rows.push_back(
          {b.name().empty() ? "(root)" : b.name(), absl::StrCat(b.layers_size()),
           WithCommas(b.numel()),
           b.top_eigenvalues_size() > 0 ? absl::StrFormat("%.4g", b.top_eigenvalues(0)) : "-"});
    }
    absl::StrAppend(&out, "\n\n",
                    FormatTable({{"BLOCK"}, {"LAYERS", true}, {"PARAMS", true}, {"TOP EIG", true}},
                                block_rows));
  }
  for (const auto* l : layers) {
    if (l->tied_size() == 0) continue;
    absl::StrAppend(&out, "\ntied: ", EscapeControl(l->name()), " also holds ",
                    EscapeControl(absl::StrJoin(l->tied(), ", ")),
                    " (one tensor: its Hessian sums every use)");
  }
  for (const std::string& w : result.warnings()) {
    absl::StrAppend(&out, "\nwarning: ", EscapeControl(w));
  }
  bool any_unconverged = false;
  for (const auto* l : layers) any_unconverged |= !l->trace_converged();
  if (any_unconverged) absl::StrAppend(&out, "\n* relative standard error above the tolerance");
  absl::StrAppend(&out, "\n");
  return out;
}

std::string FormatInspectResult(const v1::InspectResult& result) {
  std::vector<std::vector<std::string>> rows;
  for (const v1::LayerInspection& layer : result.layers()) {
    std::string kind = layer.kind();
    if (layer.calls() > 1) absl::StrAppend(&kind, " x", layer.calls());
    rows.push_back({layer.name().empty() ? "(root)" : layer.name(), kind, WithCommas(layer.numel()),
                    WithCommas(layer.macs()), FormatShape(layer.output_shape())});
  }
  rows.push_back({"total", "", WithCommas(result.num_parameters()), WithCommas(result.total_macs()),
                  FormatShape(result.output_shape())});
  std::string out =
      FormatTable({{"LAYER"}, {"KIND"}, {"PARAMS", true}, {"MACS", true}, {"OUTPUT"}}, rows);
  absl::StrAppend(
      &out, "\n", result.layers_size(), result.layers_size() == 1 ? " layer, " : " layers, ",
      HumanCount(result.num_parameters()), " parameters (", HumanBytes(result.model_bytes()), "), ",
      HumanCount(result.total_macs()), " MACs");
  if (result.unattributed_macs() > 0) {
    absl::StrAppend(&out, " (", HumanCount(result.unattributed_macs()), " outside layers)");
  }
  absl::StrAppend(&out, TiedLines(result.tied_parameters()));
  absl::StrAppend(&out, "\ninput ", FormatShape(result.input_shape()), " -> output ",
                  FormatShape(result.output_shape()));
  if (result.forward_seconds() > 0) {
    absl::StrAppend(&out, absl::StrFormat(", forward %.2f ms", result.forward_seconds() * 1e3));
  }
  absl::StrAppend(&out, "\n");
  return out;
}

std::string FormatArtifactTable(const std::vector<v1::Artifact>& artifacts) {
  std::vector<std::vector<std::string>> rows;
  for (const v1::Artifact& a : artifacts) {
    rows.push_back({a.name(), HumanBytes(a.size_bytes()), ShortId(a.sha256()), a.content_type()});
  }
  return FormatTable({{"NAME"}, {"SIZE", true}, {"SHA256"}, {"TYPE"}}, rows);
}

std::string RenderProgressBar(const v1::Progress& progress, int width) {
  width = std::max(width, 1);
  int filled = 0;
  if (progress.total() > 0) {
    const int64_t done = std::clamp<int64_t>(progress.done(), 0, progress.total());
    filled = static_cast<int>(done * width / progress.total());
  }
  std::string out =
      absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "]");
  const std::string text = EscapeControl(ProgressText(progress));
  if (!text.empty()) absl::StrAppend(&out, " ", text);
  const std::string eta = FormatEta(progress.eta_seconds());
  if (!eta.empty()) absl::StrAppend(&out, " ETA ", eta);
  return out;
}

namespace {

std::string RawEventLine(const v1::JobEvent& event) {
  switch (event.event_case()) {
    case v1::JobEvent::kStateChange: {
      const v1::StateChange& s = event.state_change();
      // A job's first event has no state before it: "state QUEUED".
      std::string line = s.from() == v1::JOB_STATE_UNSPECIFIED
                             ? absl::StrCat("state ", StateName(s.to()))
                             : absl::StrCat("state ", StateName(s.from()), " -> ",
                                            StateName(s.to()));
      if (s.to() == v1::JOB_STATE_RUNNING && !s.device().empty()) {
        absl::StrAppend(&line, " on ", s.device());
      }
      if (s.attempt() > 1) absl::StrAppend(&line, " (attempt ", s.attempt(), ")");
      if (s.has_error() && s.error().code() != 0) {
        absl::StrAppend(&line, ": ", ErrorText(s.error()));
      }
      return line;
    }
    case v1::JobEvent::kStageStart: {
      const v1::StageStart& s = event.stage_start();
      std::string line = absl::StrCat("stage ", s.stage(), " started");
      if (s.count() > 0) absl::StrAppend(&line, " (", s.index() + 1, "/", s.count(), ")");
      return line;
    }
    case v1::JobEvent::kStageEnd:
      return absl::StrFormat("stage %s finished in %.1fs", event.stage_end().stage(),
                             event.stage_end().seconds());
    case v1::JobEvent::kProgress: {
      std::string line = absl::StrCat("progress ", ProgressText(event.progress()));
      const std::string eta = FormatEta(event.progress().eta_seconds());
      if (!eta.empty()) absl::StrAppend(&line, " ETA ", eta);
      return line;
    }
    case v1::JobEvent::kPartialResult:
      return absl::StrCat("result ", event.partial_result().key(), " ",
                          event.partial_result().json());
    case v1::JobEvent::kLog:
      return absl::StrCat("[", event.log().level().empty() ? "INFO" : event.log().level(), "] ",
                          event.log().message());
    case v1::JobEvent::kArtifactReady:
      return absl::StrCat("artifact ", event.artifact_ready().name(), " (",
                          event.artifact_ready().size_bytes(), " bytes)");
    case v1::JobEvent::EVENT_NOT_SET:
      break;
  }
  return absl::StrCat("event ", event.sequence());
}

}  // namespace

// One line, whatever the server's strings hold.
std::string FormatEventLine(const v1::JobEvent& event) {
  return EscapeControl(RawEventLine(event));
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::StrCat("{\"error\":\"cannot print ", message.GetDescriptor()->full_name(),
                        " as JSON\"}");
  }
  return json;
}

void EventPrinter::ClearBar() {
  if (bar_visible_) *out_ << "\r\x1b[K";
}

void EventPrinter::DrawBar() {
  *out_ << "\r" << RenderProgressBar(current_, bar_width_) << "\x1b[K";
  out_->flush();
  bar_visible_ = true;
}

void EventPrinter::Print(const v1::JobEvent& event) {
  if (mode_ == Mode::kJson) {
    *out_ << ToJson(event) << "\n";
    out_->flush();
    return;
  }
  if (mode_ == Mode::kPlain) {
    *out_ << FormatEventLine(event) << "\n";
    out_->flush();
    return;
  }
  // TTY: progress only moves the bar; everything else is a line above it.
  if (event.has_progress()) {
    current_ = event.progress();
    DrawBar();
    return;
  }
  const bool was_visible = bar_visible_;
  ClearBar();
  *out_ << FormatEventLine(event) << "\n";
  bar_visible_ = false;
  if (event.has_stage_start()) {
    current_.Clear();
    current_.set_stage(event.stage_start().stage());
    current_.set_eta_seconds(-1);
    DrawBar();
  } else if (event.has_state_change() && event.state_change().to() != v1::JOB_STATE_RUNNING &&
             event.state_change().to() != v1::JOB_STATE_QUEUED) {
    out_->flush();  // terminal: leave no bar behind
  } else if (was_visible) {
    DrawBar();
  } else {
    out_->flush();
  }
}

void EventPrinter::Finish() {
  if (mode_ == Mode::kTty && bar_visible_) {
    *out_ << "\n";
    out_->flush();
    bar_visible_ = false;
  }
}

namespace {

// "92.23% -> 92.07% (drop 0.16 pp) on 10,000 examples" for a result with
// optional accuracy_before/after and eval_examples.
template <typename Result>
std::string Top1Text(const Result& r) {
  auto text = [](bool has, double accuracy) {
    return has ? absl::StrFormat("%.2f%%", accuracy) : std::string("-");
  };
  std::string top1 = absl::StrCat(text(r.has_accuracy_before(), r.accuracy_before()), " -> ",
                                  text(r.has_accuracy_after(), r.accuracy_after()));
  if (r.has_accuracy_before() && r.has_accuracy_after()) {
    absl::StrAppend(&top1,
                    absl::StrFormat(" (drop %.2f pp)", r.accuracy_before() - r.accuracy_after()));
  }
  absl::StrAppend(&top1, " on ", WithCommas(r.eval_examples()), " examples");
  return top1;
}

// "9.0018 -> 9.1204 (+1.32%) on 32 sequences": a language model's perplexity
// before and after quantization.
std::string PerplexityText(const v1::QuantizeResult& r) {
  const double change = 100.0 * (r.perplexity_after() / r.perplexity_before() - 1.0);
  return absl::StrFormat("%.4f -> %.4f (%+.2f%%) on %s sequences", r.perplexity_before(),
                         r.perplexity_after(), change, WithCommas(r.eval_examples()));
}

// "138,896 -> 25,674 bytes (5.4x)".
std::string SizeText(int64_t before, int64_t after) {
  std::string size = absl::StrCat(WithCommas(before), " -> ", WithCommas(after), " bytes");
  if (after > 0) {
    absl::StrAppend(&size, absl::StrFormat(" (%.1fx)", static_cast<double>(before) / after));
  }
  return size;
}

}  // namespace

std::string FormatQuantizeResult(const v1::QuantizeResult& result) {
  constexpr int kFloat = 32;
  auto bits_text = [](int bits) {
    return bits >= kFloat ? std::string("float") : absl::StrCat(bits);
  };
  auto accuracy_text = [](bool has, double accuracy) {
    return has ? absl::StrFormat("%.2f%%", accuracy) : std::string("-");
  };
  bool any_gptq = false, any_pinned = false, any_fallback = false;
  for (const v1::QuantizedLayer& l : result.layers()) {
    any_gptq |= l.rounding() == "gptq";
    any_pinned |= l.pinned();
    any_fallback |= l.fallback();
  }
  std::vector<std::vector<std::string>> rows;
  int64_t params = 0, before = 0, after = 0;
  for (const v1::QuantizedLayer& l : result.layers()) {
    auto omega = l.omega().find(l.bits());
    std::vector<std::string> row = {
        l.name().empty() ? "(root)" : l.name(), l.kind(), WithCommas(l.numel()),
        // A blank where others have the pin mark keeps the digits aligned.
        absl::StrCat(bits_text(l.bits()), l.pinned()   ? "*"
                                          : any_pinned ? " "
                                                       : ""),
        omega == l.omega().end()
            ? "-"
            : absl::StrFormat("%.3g%s", omega->second, l.fallback() ? "!" : any_fallback ? " " : ""),
        absl::StrCat(WithCommas(l.bytes_before()), " -> ", WithCommas(l.bytes_after())),
        l.rounding()};
    if (any_gptq) {
      const bool ratio = l.rounding() == "gptq" && std::isfinite(l.gptq_error()) &&
                         std::isfinite(l.rtn_error()) && l.rtn_error() > 0;
      row.push_back(ratio ? absl::StrFormat("%.3f", l.gptq_error() / l.rtn_error()) : "-");
    }
    rows.push_back(std::move(row));
    params += l.numel();
    before += l.bytes_before();
    after += l.bytes_after();
  }
  std::vector<std::string> total = {"total",
                                    "",
                                    WithCommas(params),
                                    absl::StrFormat("%.2f", result.average_bits()),
                                    "",
                                    absl::StrCat(WithCommas(before), " -> ", WithCommas(after))};
  rows.push_back(std::move(total));
  std::vector<Column> columns = {{"LAYER"},      {"KIND"},        {"PARAMS", true},
                                 {"BITS", true}, {"OMEGA", true}, {"WEIGHT BYTES", true},
                                 {"ROUNDING"}};
  if (any_gptq) columns.push_back({"GPTQ/RTN", true});
  std::string out = FormatTable(columns, rows);
  if (any_pinned) absl::StrAppend(&out, "* pinned\n");
  if (any_fallback) {
    absl::StrAppend(&out,
                    "! Ω negative, or within a standard error of 0: priced at least as a "
                    "typical layer, curvature times ‖δ‖² (README \"Sensitivity hygiene\")\n");
  }
  for (const v1::QuantizedLayer& l : result.layers()) {
    if (!l.note().empty()) {
      absl::StrAppend(&out, "note: ", EscapeControl(l.name()), ": ", EscapeControl(l.note()), "\n");
    }
    if (l.tied_size() > 0) {
      absl::StrAppend(&out, "tied: ", EscapeControl(l.name()), " is also ",
                      EscapeControl(absl::StrJoin(l.tied(), ", ")),
                      "'s weight (quantized and stored once)\n");
    }
  }

  std::vector<std::pair<std::string, std::string>> pairs;
  const std::string size = SizeText(result.bytes_before(), result.bytes_after());
  pairs.push_back({"size", size});
  if (result.model_bytes() > 0) pairs.push_back({"model.pt", WithCommas(result.model_bytes())});
  pairs.push_back(
      {"average bits", absl::StrFormat("%.2f (search %s%s)", result.average_bits(), result.search(),
                                       result.search_exact() ? "" : ", coarsened")});
  if (result.has_accuracy_before() || result.has_accuracy_after()) {
    pairs.push_back({"top-1", Top1Text(result)});
  }
  if (result.has_perplexity_before() && result.has_perplexity_after()) {
    pairs.push_back({"perplexity", PerplexityText(result)});
  }
  pairs.push_back({"budget met", result.budget_met() ? "yes" : "NO"});
  if (result.search() == "bisection") {
    pairs.push_back({"tolerance met", result.tolerance_met() ? "yes" : "NO"});
  }
  std::string source = result.sensitivity_source();
  if (!result.omega().empty()) {
    absl::StrAppend(&source, ", ", result.omega(), " Ω of the ", result.perturbation(),
                    " rounding error");
  }
  if (result.hvp_count() > 0)
    absl::StrAppend(&source, " (", WithCommas(result.hvp_count()), " HVPs)");
  pairs.push_back({"sensitivity", source});
  if (result.has_searched_output_error() && result.has_uniform_output_error()) {
    pairs.push_back({"output error", absl::StrFormat("searched %.4g, uniform %.4g (calibration); %s kept",
                                                     result.searched_output_error(),
                                                     result.uniform_output_error(),
                                                     result.chose_uniform() ? "uniform" : "searched")});
  }
  if (result.has_int8()) {
    const v1::Int8ModelResult& i = result.int8();
    std::string text = absl::StrFormat(
        "model_int8.pt %s bytes (%s), %.3g ms vs %.3g ms float (%.2fx) at batch %d on %d "
        "thread%s",
        WithCommas(i.bytes()), i.engine(), i.latency_ms(), i.float_latency_ms(),
        i.latency_ms() > 0 ? i.float_latency_ms() / i.latency_ms() : 0.0, i.latency_batch(),
        i.threads(), i.threads() == 1 ? "" : "s");
    if (i.has_accuracy()) absl::StrAppendFormat(&text, ", top-1 %.2f%%", i.accuracy());
    pairs.push_back({"int8", text});
  }
  if (result.has_head_refit()) {
    const v1::HeadRefitResult& h = result.head_refit();
    std::string text = absl::StrFormat(
        "%s (%s): %s Newton, %d steps, calibration loss %.4g -> %.4g (%.4g before "
        "rounding again), %.2f s",
        h.head(), h.bits() > 0 ? absl::StrCat("rounded again at ", h.bits(), " bits") : "float",
        h.hessian(), h.iterations(), h.loss_before(), h.loss_after(), h.loss_refit(),
        h.seconds());
    if (h.has_accuracy_before() && result.has_accuracy_after()) {
      absl::StrAppendFormat(&text, ", top-1 %.2f%% -> %.2f%%", h.accuracy_before(),
                            result.accuracy_after());
    }
    pairs.push_back({"head re-fit", text});
  }
  absl::StrAppend(&out, "\n", FormatKeyValues(pairs));

  if (result.baselines_size() > 0) {
    double chosen_cost = 0;
    for (const v1::QuantizedLayer& l : result.layers()) {
      // The search's price (Ω, or its fallback), as the baselines' costs.
      const auto& prices = l.price().empty() ? l.omega() : l.price();
      auto omega = prices.find(l.bits());
      if (omega != prices.end()) chosen_cost += omega->second;
    }
    std::vector<std::vector<std::string>> baseline_rows = {
        {"chosen", absl::StrFormat("%.2f", result.average_bits()),
         WithCommas(result.predicted_bytes()), absl::StrFormat("%.3g", chosen_cost),
         accuracy_text(result.has_accuracy_after(), result.accuracy_after()), "-"}};
    for (const v1::QuantBaseline& b : result.baselines()) {
      // Examples only the chosen allocation / only this one gets right.
      const std::string paired =
          b.has_p_value() ? absl::StrFormat("%d / %d (p %.2g)", b.chosen_only_correct(),
                                            b.baseline_only_correct(), b.p_value())
                          : std::string("-");
      baseline_rows.push_back({b.name(), absl::StrFormat("%.2f", b.average_bits()),
                               WithCommas(b.weight_bytes()), absl::StrFormat("%.3g", b.cost()),
                               accuracy_text(b.has_accuracy(), b.accuracy()), paired});
    }
    absl::StrAppend(&out, "\n",
                    FormatTable({{"ALLOCATION"},
                                 {"AVG BITS", true},
                                 {"BYTES", true},
                                 {"SUM OMEGA", true},
                                 {"TOP-1", true},
                                 {"PAIRED", true}},
                                baseline_rows));
    bool paired = false;
    for (const v1::QuantBaseline& b : result.baselines()) paired = paired || b.has_p_value();
    if (paired) {
      absl::StrAppend(&out,
                      "paired: eval examples only the chosen allocation / only that one gets "
                      "right; p: McNemar's exact test\n");
    }
  }
  for (const std::string& w : result.warnings()) {
    absl::StrAppend(&out, "warning: ", EscapeControl(w), "\n");
  }
  return out;
}

std::string FormatPruneResult(const v1::PruneResult& result) {
  auto accuracy_text = [](bool has, double accuracy) {
    return has ? absl::StrFormat("%.2f%%", accuracy) : std::string("-");
  };
  std::vector<std::vector<std::string>> rows;
  for (const v1::PrunedBlock& b : result.blocks()) {
    rows.push_back({b.name(),
                    absl::StrCat(b.heads_before(), " -> ", b.heads_after(),
                                 b.prunable_heads() ? "" : " (fixed)"),
                    absl::StrCat(b.mlp_before(), " -> ", b.mlp_after())});
  }
  std::string out = FormatTable({{"BLOCK"}, {"HEADS", true}, {"MLP", true}}, rows);

  std::vector<std::vector<std::string>> round_rows;
  for (const v1::PruneRound& r : result.rounds()) {
    round_rows.push_back(
        {absl::StrCat(r.round()), absl::StrCat(r.units_removed()), WithCommas(r.macs()),
         absl::StrFormat("%.4f -> %.4f", r.loss_before_recovery(), r.loss_after_recovery()),
         absl::StrCat(accuracy_text(r.has_accuracy_before_recovery(), r.accuracy_before_recovery()),
                      " -> ", accuracy_text(r.has_accuracy(), r.accuracy()))});
  }
  if (!round_rows.empty()) {
    absl::StrAppend(&out, "\n",
                    FormatTable({{"ROUND", true},
                                 {"UNITS", true},
                                 {"MACS", true},
                                 {"LOSS (RECOVERY)", true},
                                 {"TOP-1 SLICE (RECOVERY)", true}},
                                round_rows));
  }

  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.push_back({"saliency", result.saliency()});
  pairs.push_back({"target", absl::StrFormat("%.1f%% of %s (achieved %.1f%%%s)",
                                             100 * result.target_fraction(), result.target(),
                                             100 * result.achieved_fraction(),
                                             result.target_met() ? "" : ", NOT MET")});
  pairs.push_back({"MACs", absl::StrCat(WithCommas(result.macs_before()), " -> ",
                                        WithCommas(result.macs_after()), " per example")});
  pairs.push_back({"parameters", absl::StrCat(WithCommas(result.params_before()), " -> ",
                                              WithCommas(result.params_after()))});
  if (result.has_latency_before_ms() && result.has_latency_after_ms()) {
    // The ratio only from an A/B comparison whose pairs agree (the server's
    // summary follows the same rule).
    const v1::LatencyComparison& c = result.latency_comparison();
    const std::string ratio = !result.has_latency_comparison() ? "no A/B comparison"
                              : c.reliable() ? absl::StrFormat("%.2fx", c.speedup())
                                             : absl::StrCat("speed-up unreliable: ", c.reason());
    pairs.push_back(
        {"latency",
         absl::StrFormat("%.2f -> %.2f ms at batch %d (%s; predicted %.2f ms)",
                         result.latency_before_ms(), result.latency_after_ms(),
                         result.latency_batch(), ratio, result.predicted_latency_after_ms())});
  }
  if (result.has_accuracy_before() || result.has_accuracy_after()) {
    pairs.push_back({"top-1", Top1Text(result)});
  }
  if (result.hvp_count() > 0) pairs.push_back({"HVPs", WithCommas(result.hvp_count())});
  absl::StrAppend(&out, "\n", FormatKeyValues(pairs));
  for (const std::string& w : result.warnings()) {
    absl::StrAppend(&out, "warning: ", EscapeControl(w), "\n");
  }
  return out;
}

std::string FormatCompressResult(const v1::CompressResult& result) {
  std::string out = absl::StrCat("PRUNE\n", FormatPruneResult(result.prune()), "\nQUANTIZE\n",
                                 FormatQuantizeResult(result.quantize()));
  std::vector<std::pair<std::string, std::string>> pairs;
  const std::string size = SizeText(result.bytes_before(), result.bytes_after());
  pairs.push_back({"total size", size});
  if (result.has_accuracy_before() && result.has_accuracy_after()) {
    pairs.push_back({"total top-1", absl::StrFormat("%.2f%% -> %.2f%% (drop %.2f pp)",
                                                    result.accuracy_before(),
                                                    result.accuracy_after(),
                                                    result.accuracy_before() -
                                                        result.accuracy_after())});
  }
  absl::StrAppend(&out, "\nCOMPRESS\n", FormatKeyValues(pairs));
  return out;
}

}  // namespace compress::client
