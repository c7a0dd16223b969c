// JobKindHandler: everything the server knows about one job kind, in one
// place, and JobKindRegistry: the kinds this process runs.
//
// A job kind is a JobSpec oneof field, a JobKind enum value (see
// proto/compress/v1/job_kinds.h) and one handler class in its own file under
// server/pipeline/ (inspect.cc, analyze.cc, quantize.cc, prune.cc,
// compress.cc). The job layer never switches over kinds: it asks the registry
// for the spec's handler and calls it to validate a submitted spec, to list
// the models and datasets the job reads (stored as rows with the job, so a
// resource in use cannot be deleted), to run the job and to summarise its
// result. Adding a kind = a proto field + an enum value + one handler file +
// one line in NewDefaultRegistry() (server/pipeline/registry.h).
//
// This header and job_kind.cc are torch-free (target compress_pipeline_api):
// the job layer, the store and their tests link them without LibTorch; the
// handlers themselves live in compress_pipeline, which links the engine.
//
//   JobKindRegistry registry;
//   RETURN_IF_ERROR(registry.Register(std::make_unique<MyKind>()));
//   ASSIGN_OR_RETURN(const JobKindHandler* h, registry.Resolve(spec));
//   RETURN_IF_ERROR(h->Validate(spec, resources));
//
// Thread safety: handlers are immutable once registered and called from many
// threads at once; a registry is filled before it is shared and only read
// afterwards.
#ifndef COMPRESS_PIPELINE_JOB_KIND_H_
#define COMPRESS_PIPELINE_JOB_KIND_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {

class JobKindHandler {
 public:
  virtual ~JobKindHandler() = default;

  // The kind this handler runs; its spec is the JobSpec field of the same
  // name (v1::KindFieldName).
  virtual compress::v1::JobKind kind() const = 0;

  // Checks a spec of this kind before the job is accepted: INVALID_ARGUMENT
  // for bad numbers (naming the field), NOT_FOUND for unknown ids,
  // FAILED_PRECONDITION for a model the kind cannot handle. Cheap: it may
  // read resources but never loads a model.
  virtual absl::Status Validate(const compress::v1::JobSpec& spec,
                                Resources& resources) const = 0;

  // The ids of the models, datasets and jobs the spec reads (no duplicates,
  // no empties): stored with the job (a model or dataset in use cannot be
  // deleted) and, for a job that runs in a worker process, the snapshot of
  // resources that process gets.
  virtual std::vector<std::string> ReferencedIds(const compress::v1::JobSpec& spec) const = 0;

  // Runs the job to completion, or returns the error that ends it. Reports
  // progress through context.progress() and checks context.cancel().
  virtual absl::StatusOr<compress::v1::JobResult> Run(JobContext& context) const = 0;

  // One human-readable line for a result of this kind (JobResult.summary).
  virtual std::string Summary(const compress::v1::JobResult& result) const = 0;
};

class JobKindRegistry {
 public:
  JobKindRegistry() = default;
  JobKindRegistry(const JobKindRegistry&) = delete;
  JobKindRegistry& operator=(const JobKindRegistry&) = delete;

  // INVALID_ARGUMENT for JOB_KIND_UNSPECIFIED or a kind with no JobSpec
  // field; ALREADY_EXISTS when the kind has a handler already.
  absl::Status Register(std::unique_ptr<JobKindHandler> handler);

  // The handler of `kind`, or null.
  const JobKindHandler* Find(compress::v1::JobKind kind) const;

  // The handler of the spec's kind: INVALID_ARGUMENT (listing the kinds this
  // registry runs) for an empty spec, UNIMPLEMENTED for a kind it does not run.
  absl::StatusOr<const JobKindHandler*> Resolve(const compress::v1::JobSpec& spec) const;

  // The registered kinds, in enum order.
  std::vector<compress::v1::JobKind> kinds() const;

 private:
  std::map<compress::v1::JobKind, std::unique_ptr<JobKindHandler>> handlers_;
};

// Sorted, de-duplicated, empties dropped: the usual body of ReferencedIds.
std::vector<std::string> UniqueIds(std::vector<std::string> ids);

// `status` with the file path of every model and dataset among `ids`
// replaced by its id. Engine messages name the files they read (a torch
// error can quote one too); job errors reach clients, which must never see
// a server path. Builtin datasets, whose "path" is their id, stay as they are.
absl::Status WithResourceIds(const absl::Status& status, const std::vector<std::string>& ids,
                             Resources& resources);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_JOB_KIND_H_
