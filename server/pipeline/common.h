// Helpers shared by the job kinds' pipelines: the calibration defaults, the
// proto <-> engine loss mapping, and report.json.
#ifndef COMPRESS_PIPELINE_COMMON_H_
#define COMPRESS_PIPELINE_COMMON_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "compress/v1/compress.pb.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "server/util/defaults.h"
#include "server/engine/data/loss_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

// CalibrationData's server defaults (num_samples = 0, batch_size = 0).
inline constexpr int64_t kDefaultSamples = defaults::kCalibrationSamples;
inline constexpr int64_t kDefaultBatch = defaults::kCalibrationBatch;

// LOSS_KIND_UNSPECIFIED -> kAuto.
engine::LossKind LossFromProto(compress::v1::LossKind loss);
// kAuto -> LOSS_KIND_UNSPECIFIED.
compress::v1::LossKind LossToProto(engine::LossKind loss);

// Indented JSON with the .proto field names and every field printed (zeros
// too), as report.json carries specs and results.
std::string ProtoJson(const google::protobuf::Message& message);

// report.json of a job: its id, seed, device and runtime, then `extra`
// (kind-specific strings, in order), the spec and the result, as indented
// JSON built with nlohmann-json from the protos' JSON form.
std::string ReportJson(const JobContext& context, const std::string& runtime,
                       const google::protobuf::Message& spec,
                       const google::protobuf::Message& result,
                       const std::vector<std::pair<std::string, std::string>>& extra = {});

// How engine messages name a model and a dataset: "model <id>", "dataset
// <id>" (never the server's path of the blob).
std::string ModelName(const std::string& id);
std::string DatasetName(const std::string& id);

// "1,234,567".
std::string WithCommas(int64_t value);

// "−0.76 pp" / "+0.10 pp" for a difference in percentage points (U+2212
// lines up with "+").
std::string SignedPp(double difference);

// Removes a directory tree, ignoring errors (cleanup of MakeTempDir's).
void RemoveTree(const std::string& dir);

// A fresh directory like $TMPDIR/compressd-<kind>-XXXXXX.
absl::StatusOr<std::string> MakeTempDir(const std::string& kind);

// The whole file; INTERNAL naming it when it cannot be read (an engine
// output that should exist).
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_COMMON_H_
