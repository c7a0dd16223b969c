// JobRunner: where a job kind's handler runs. The JobManager owns the queue,
// the state machine and the event log; a runner only executes one attempt.
//
// InProcessRunner calls the handler on the worker thread (tests with fake
// kinds, which run no model code). The server uses worker::ChildJobRunner
// (server/worker/child_runner.h): the handler runs in a child process the
// server can kill, so a model that crashes, loops or allocates without bound
// ends its job and nothing else.
#ifndef COMPRESS_JOBS_JOB_RUNNER_H_
#define COMPRESS_JOBS_JOB_RUNNER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "compress/v1/compress.pb.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"

namespace compress::jobs {

// The payload a runner attaches to a status when the process running the
// attempt died (a crash, a kill it did not ask for): the job manager then
// counts the attempt and re-queues the job up to max_attempts, then fails it
// naming the signal. Its value is the exit's description.
inline constexpr absl::string_view kWorkerCrashPayload = "compress.jobs/worker-crash";

class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // Runs one attempt of the context's job with `handler`. Thread-safe: the
  // manager calls it from every worker slot at once.
  virtual absl::StatusOr<compress::v1::JobResult> Run(const pipeline::JobKindHandler& handler,
                                                      pipeline::JobContext& context) = 0;
};

class InProcessRunner : public JobRunner {
 public:
  absl::StatusOr<compress::v1::JobResult> Run(const pipeline::JobKindHandler& handler,
                                              pipeline::JobContext& context) override {
    return handler.Run(context);
  }
};

}  // namespace compress::jobs

#endif  // COMPRESS_JOBS_JOB_RUNNER_H_
