// Text rendering for compressctl: tables, key/value blocks, the watch
// progress bar and event lines, JSON. Everything here except EventPrinter is
// a pure function of its arguments (UTC timestamps, no terminal queries), so
// tests compare exact strings.
#ifndef COMPRESS_CLIENT_FORMAT_H_
#define COMPRESS_CLIENT_FORMAT_H_

#include <google/protobuf/message.h>
#include <google/protobuf/repeated_field.h>
#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <ostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "compress/v1/compress.pb.h"

namespace compress::client {

namespace v1 = ::compress::v1;

// --- Names and values ------------------------------------------------------
std::string StateName(v1::JobState state);  // JOB_STATE_RUNNING -> "RUNNING"
std::string KindName(v1::JobKind kind);     // JOB_KIND_INSPECT -> "INSPECT"
std::string DatasetFormatName(v1::DatasetFormat format);  // "SAFETENSORS"
// Case-insensitive, with or without the enum prefix: "running", "RUNNING",
// "JOB_STATE_RUNNING". UNSPECIFIED is rejected.
absl::StatusOr<v1::JobState> ParseJobState(absl::string_view text);
absl::StatusOr<v1::JobKind> ParseJobKind(absl::string_view text);
// "NOT_FOUND" for 5; the number itself for codes outside grpc's range.
std::string StatusCodeName(int code);

// Ids longer than 12 characters are cut to 12 for tables; ids with a ':'
// ("builtin:fashion-mnist/test") are names, not digests, and stay whole.
std::string ShortId(absl::string_view id);
// ShortId of each of `ids`, made longer where two would share it: each is
// the shortest prefix of at least 12 characters that no other id in the
// list starts with (job ids share their first 12: "job-" and the time).
std::vector<std::string> UniqueShortIds(const std::vector<std::string>& ids);
// The model a job's spec names (its kind's model_id), or "".
std::string SpecModelId(const v1::JobSpec& spec);
std::string HumanBytes(int64_t bytes);  // "512 B", "1.5 KiB", "3.0 MiB"
std::string HumanCount(int64_t count);  // "950", "12.3K", "4.56M", "1.20G"
std::string WithCommas(int64_t value);  // 1234567 -> "1,234,567"
// "3s", "1m05s", "2h03m" (rounded to the nearest second); "" when < 0.
std::string FormatEta(double seconds);
std::string FormatShape(absl::Span<const int64_t> shape);  // "[1,1,28,28]"
std::string FormatShape(const google::protobuf::RepeatedField<int64_t>& shape);
// "2024-05-01 12:00:03 UTC"; "-" when unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& time);

// --- Layout ----------------------------------------------------------------
struct Column {
  std::string header;
  bool right_align = false;  // numbers
};
// Header row, then rows; columns separated by two spaces, no trailing
// blanks, each line ending in '\n'. Rows shorter than the header are padded.
std::string FormatTable(const std::vector<Column>& columns,
                        const std::vector<std::vector<std::string>>& rows);
// "key:   value" lines with the values aligned.
std::string FormatKeyValues(
    const std::vector<std::pair<std::string, std::string>>& pairs);

// --- Resources (human output) ----------------------------------------------
std::string FormatModelTable(const std::vector<v1::Model>& models);
std::string FormatModel(const v1::Model& model);  // key/values + layer table
std::string FormatDatasetTable(const std::vector<v1::Dataset>& datasets);
std::string FormatDataset(const v1::Dataset& dataset);
// `model_names` (model id -> name) adds a MODEL column; without it, or for
// an id it lacks, the column shows the model's short id.
std::string FormatJobTable(const std::vector<v1::Job>& jobs,
                           const std::map<std::string, std::string>* model_names = nullptr);
// Key/values; the per-layer table for INSPECT results.
std::string FormatJob(const v1::Job& job);
// Per-layer table (name, kind, params, MACs, output shape), a total row and a
// line of totals.
std::string FormatInspectResult(const v1::InspectResult& result);
// Layers ranked by Hessian trace per parameter (most sensitive first).
std::string FormatAnalyzeResult(const v1::AnalyzeResult& result);
// Per-layer table (name, kind, params, bits, Ω at the chosen bits, bytes
// before -> after, rounding, GPTQ/RTN error ratio when any layer used GPTQ),
// totals (size and ratio, average bits, accuracy and drop, budget/tolerance
// flags) and the baselines next to the chosen allocation.
std::string FormatQuantizeResult(const v1::QuantizeResult& result);

// PRUNE: heads and MLP width per block, the rounds, then totals (MACs,
// parameters, latency, top-1) and warnings.
std::string FormatPruneResult(const v1::PruneResult& result);

// COMPRESS: the PRUNE and QUANTIZE parts, then the total size and top-1.
std::string FormatCompressResult(const v1::CompressResult& result);
std::string FormatArtifactTable(const std::vector<v1::Artifact>& artifacts);

// --- Watch -----------------------------------------------------------------
// "[######......] stage 12/40 ETA 3s": `width` cells, '#' for the done
// fraction (rounded down); "[......] stage 12" when total is unknown (<= 0);
// no ETA when eta_seconds < 0.
std::string RenderProgressBar(const v1::Progress& progress, int width);
// One line (no newline) per event for non-TTY output, e.g.
// "stage hessian started (2/4)", "progress hessian 12/40 ETA 3s",
// "[INFO] message", "artifact report.json (123 bytes)",
// "state RUNNING -> SUCCEEDED".
std::string FormatEventLine(const v1::JobEvent& event);

// Compact one-line JSON with the .proto field names (model_id, not modelId).
std::string ToJson(const google::protobuf::Message& message);

// Writes watch events to a stream. kTty redraws one progress bar line in
// place with '\r' and prints the other events as lines above it; kPlain
// prints FormatEventLine per event; kJson prints ToJson per event. Not
// thread-safe.
class EventPrinter {
 public:
  enum class Mode { kPlain, kTty, kJson };
  EventPrinter(std::ostream* out, Mode mode, int bar_width = 30)
      : out_(out), mode_(mode), bar_width_(bar_width) {}
  EventPrinter(const EventPrinter&) = delete;
  EventPrinter& operator=(const EventPrinter&) = delete;

  void Print(const v1::JobEvent& event);
  // Ends a progress bar line left on screen.
  void Finish();

 private:
  void ClearBar();
  void DrawBar();

  std::ostream* out_;
  Mode mode_;
  int bar_width_;
  v1::Progress current_;
  bool bar_visible_ = false;
};

}  // namespace compress::client

#endif  // COMPRESS_CLIENT_FORMAT_H_
