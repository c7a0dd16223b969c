// Pipeline: what each job kind does, composed from the engine.
//
// The job layer owns scheduling, persistence and events; it hands a pipeline
// a JobContext (progress, cancel token, artifact sink, resource lookup) and
// gets back a JobResult or an error status. The pipeline never sees gRPC or
// storage; the interfaces below are implemented by the job layer.
#ifndef COMPRESS_PIPELINE_PIPELINE_H_
#define COMPRESS_PIPELINE_PIPELINE_H_

#include <memory>
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

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Checks a spec before the job is accepted: INVALID_ARGUMENT for bad
  // numbers (naming the field), NOT_FOUND for unknown ids,
  // FAILED_PRECONDITION for a model the kind cannot handle, UNIMPLEMENTED for
  // kinds this server does not run yet.
  virtual absl::Status Validate(const compress::v1::JobSpec& spec, Resources& resources) = 0;
  // Runs the job to completion, or returns the error that ends it.
  virtual absl::StatusOr<compress::v1::JobResult> Run(JobContext& context) = 0;
};

// The production pipeline: dispatches on the spec's kind.
std::unique_ptr<Pipeline> NewDefaultPipeline();

// Kind of a spec (JOB_KIND_UNSPECIFIED when the oneof is empty).
compress::v1::JobKind KindOf(const compress::v1::JobSpec& spec);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_PIPELINE_H_
