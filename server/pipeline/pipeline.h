// What a running job sees of the server: Resources (models, datasets and
// jobs of its tenant) and JobContext (progress, cancel token, artifacts).
//
// The job layer owns scheduling, persistence and events; it hands a job
// kind's handler (job_kind.h) a JobContext and gets back a JobResult or an
// error status. The pipeline never sees gRPC or storage; these interfaces
// are implemented by the job layer. Torch-free (target compress_pipeline_api).
#ifndef COMPRESS_PIPELINE_PIPELINE_H_
#define COMPRESS_PIPELINE_PIPELINE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "compress/v1/compress.pb.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"

namespace compress::pipeline {

// Looks up models, datasets and jobs (implemented over the catalog and the
// metadata store).
class Resources {
 public:
  virtual ~Resources() = default;
  // NOT_FOUND for unknown ids.
  virtual absl::StatusOr<compress::v1::Model> GetModel(const std::string& id) = 0;
  virtual absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& id) = 0;
  // Where the engine reads the bytes (a file path, or a builtin id).
  virtual std::string ModelPath(const std::string& id) = 0;
  virtual std::string DatasetPath(const std::string& id) = 0;
  // Directory of the builtin datasets' IDX files.
  virtual std::string BuiltinDataDir() = 0;
  // A stored job, with its spec and result (a QUANTIZE job reads the traces
  // of the ANALYZE job it names). NOT_FOUND for unknown ids.
  virtual absl::StatusOr<compress::v1::Job> GetJob(const std::string& id) = 0;
};

// Everything a running job may touch. Thread-safe.
class JobContext {
 public:
  virtual ~JobContext() = default;
  virtual const compress::v1::Job& job() const = 0;
  // Device the job was assigned: "cpu" or "cuda:N".
  virtual const std::string& device() const = 0;
  virtual engine::ProgressSink& progress() = 0;
  virtual const engine::CancelToken& cancel() const = 0;
  virtual Resources& resources() = 0;
  // Stores an artifact and announces it with an artifact_ready event.
  virtual absl::StatusOr<compress::v1::Artifact> AddArtifact(const std::string& name,
                                                             const std::string& content_type,
                                                             absl::string_view bytes) = 0;
};

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_PIPELINE_H_
