// Helpers shared by the job kinds' pipelines: the calibration defaults, the
// proto <-> engine loss mapping, and the JSON form of results for report.json.
#ifndef COMPRESS_PIPELINE_COMMON_H_
#define COMPRESS_PIPELINE_COMMON_H_

#include <cstdint>
#include <string>

#include "compress/v1/compress.pb.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "server/engine/data/loss_kind.h"

namespace compress::pipeline {

// CalibrationData's server defaults (num_samples = 0, batch_size = 0).
inline constexpr int64_t kDefaultSamples = 256;
inline constexpr int64_t kDefaultBatch = 64;

// LOSS_KIND_UNSPECIFIED -> kAuto.
engine::LossKind LossFromProto(compress::v1::LossKind loss);
// kAuto -> LOSS_KIND_UNSPECIFIED.
compress::v1::LossKind LossToProto(engine::LossKind loss);

// Indented JSON with the .proto field names and every field printed (zeros
// too), as report.json carries specs and results.
std::string ProtoJson(const google::protobuf::Message& message);

// "1,234,567".
std::string WithCommas(int64_t value);

// A fresh directory like $TMPDIR/compressd-<kind>-XXXXXX.
absl::StatusOr<std::string> MakeTempDir(const std::string& kind);

// The whole file; INTERNAL naming it when it cannot be read (an engine
// output that should exist).
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_COMMON_H_
