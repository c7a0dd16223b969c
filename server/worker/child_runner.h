// The parent side of worker processes: ChildJobRunner runs a job kind's
// handler in `compressd --role=child` (child_main.h), and ChildDescriber
// validates uploads there, so that model code never runs in the process
// that serves RPCs and holds the queue.
//
// Each child gets a private working directory under `work_root` (removed
// afterwards, and at the next start after a crash), an address-space limit,
// optionally a CPU-time limit, the job's wall-clock deadline (enforced by the
// parent: SIGTERM, then SIGKILL after `grace`) and none of the server's
// secrets (sandbox/child_process.h). Whatever the child does, the parent
// ends up with a status: the child's own result or error, or a description of
// how it died (signal, limit), which it also logs.
#ifndef COMPRESS_WORKER_CHILD_RUNNER_H_
#define COMPRESS_WORKER_CHILD_RUNNER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/catalog/catalog.h"
#include "server/jobs/job_runner.h"

namespace compress::worker {

struct WorkerOptions {
  // The compressd binary the children run (with --role=child); required.
  std::string executable;
  // Parent of the children's working directories; required. Emptied by
  // CleanWorkRoot() at start.
  std::string work_root;
  // Address-space limit per child, bytes; 0 = none (CUDA jobs get none:
  // the driver reserves more address space than it uses).
  int64_t memory_bytes = 0;
  absl::Duration cpu_time = absl::InfiniteDuration();  // per child; default none
  absl::Duration grace = absl::Seconds(5);             // SIGTERM -> SIGKILL
  // Wall-clock limit of an upload's validation (loading the model).
  absl::Duration describe_deadline = absl::Minutes(5);
  int threads = 0;  // LibTorch intra-op threads per child; 0 = its cores
  // The seccomp deny-list of sandbox/seccomp.h (no network sockets, no
  // ptrace, no namespaces, ...) on every child.
  bool seccomp = true;
};

// Removes working directories left by a server that was killed.
absl::Status CleanWorkRoot(const std::string& work_root);

class ChildJobRunner : public jobs::JobRunner {
 public:
  explicit ChildJobRunner(const WorkerOptions& options) : options_(options) {}
  absl::StatusOr<compress::v1::JobResult> Run(const pipeline::JobKindHandler& handler,
                                              pipeline::JobContext& context) override;

 private:
  const WorkerOptions options_;
};

class ChildDescriber : public catalog::ContentDescriber {
 public:
  explicit ChildDescriber(const WorkerOptions& options) : options_(options) {}
  absl::StatusOr<compress::v1::Model> DescribeModel(const std::string& path) override;
  absl::StatusOr<compress::v1::Dataset> DescribeDataset(const std::string& path) override;
  // Builtin datasets are our own IDX files: read in this process (no model
  // code runs), through the engine's torch-free IDX reader.
  absl::StatusOr<compress::v1::Dataset> DescribeBuiltinDataset(const std::string& id,
                                                               const std::string& dir) override;

 private:
  const WorkerOptions options_;
};

}  // namespace compress::worker

#endif  // COMPRESS_WORKER_CHILD_RUNNER_H_
