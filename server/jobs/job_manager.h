// JobManager: the queue, the worker pool, cancellation, deadlines, the
// persisted event log and restart recovery.
//
// Jobs are rows in the MetadataStore; every state change and progress report
// is a JobEvent with a per-job sequence number (1, 2, 3, ...), written in the
// same transaction as the job row, so after a crash the log and the job agree.
// Start() re-queues jobs a crashed process left RUNNING. Workers are threads
// bound to one device slot each (N CPU slots, one per CUDA device); a job asks
// for "auto", "cpu" or "cuda:N".
//
// Two modes:
//   - In-memory queue (no JobManagerOptions::queue): one process owns every
//     job (SQLite, `--role=all`), as described above.
//   - Shared queue (JobManagerOptions::queue, PostgreSQL): any number of
//     processes submit into and claim from one store/job_queue.h. A worker
//     slot claims a job under a lease, renews it every renew_interval (and
//     so learns of a cancel requested on another replica), and every write it
//     makes about the job is fenced on (job, owner, attempt): a worker whose
//     lease expired changes nothing. A reaper on every process re-queues
//     expired leases (a killed worker's job runs again as the next attempt)
//     up to max_attempts. There is no restart recovery: leases are it. A
//     manager with no slots (`--role=api`) only submits, cancels and serves
//     events. Watchers of a job that runs elsewhere are woken by the
//     EventNotifier (LISTEN/NOTIFY), and polled while it is disconnected.
//
// Tenants: every job belongs to the tenant that submitted it. The calls that
// serve RPCs take the caller's tenant and answer NOT_FOUND for another
// tenant's job; a running job's pipeline sees only its tenant's resources.
//
// Thread-safe. Model work never runs under the lock. Listeners registered with
// Subscribe() are called on the appending thread, without the lock held, after
// the event is durable; they must be quick (they typically wake a gRPC
// reactor, which then reads with Events()).
#ifndef COMPRESS_JOBS_JOB_MANAGER_H_
#define COMPRESS_JOBS_JOB_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "compress/v1/compress.pb.h"
#include "server/engine/common/cancel.h"
#include "server/jobs/job_runner.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/limits.h"
#include "server/pipeline/pipeline.h"
#include "server/store/blob_store.h"
#include "server/store/event_notifier.h"
#include "server/store/job_queue.h"
#include "server/store/metadata_store.h"

namespace compress::jobs {

struct JobManagerOptions {
  int cpu_workers = 1;              // concurrent jobs on the CPU; default 1
  std::vector<std::string> cuda_devices;  // one slot each, e.g. {"cuda:0"}
  int max_queued = 1000;            // queued jobs before RESOURCE_EXHAUSTED
  absl::Duration default_deadline = absl::Hours(24);  // run time limit
  absl::Duration max_deadline = absl::Hours(7 * 24);  // cap on a job's own
  int max_attempts = 3;             // restarts a job survives before FAILED
  // Upper bounds on a spec's sizes, checked at submit; defaults and units
  // in pipeline/limits.h.
  pipeline::ServerLimits limits;
  // Minimum spacing of progress events per job (others are coalesced).
  absl::Duration progress_interval = absl::Milliseconds(200);
  // Where kind handlers run (must outlive the manager); default null = on
  // the worker thread (InProcessRunner). A runner's crash payload
  // (kWorkerCrashPayload) re-queues the job up to max_attempts.
  JobRunner* runner = nullptr;

  // Shared-queue mode (see the top of this file); null = in-memory queue.
  // Both must outlive the manager; notifier may be null (watchers poll).
  store::JobQueue* queue = nullptr;
  store::EventNotifier* notifier = nullptr;
  // Lease owner of this process (unique among live processes, e.g.
  // "host-pid"); slots append "/N". Required with queue and slots.
  std::string worker_id;
  absl::Duration lease = absl::Seconds(30);          // a silent worker loses its job after this
  absl::Duration renew_interval = absl::Seconds(2);  // lease renewal and cancel check
  absl::Duration poll_interval = absl::Milliseconds(500);  // idle claims; watchers without notifier
  absl::Duration reap_interval = absl::Seconds(5);   // expired-lease reaper
  // Storing a job's end state is retried (each failure logged) from this
  // delay, doubling up to the max, while the server runs: a full disk
  // leaves the job RUNNING with its slot busy, never with an idle worker.
  absl::Duration end_retry_initial = absl::Milliseconds(250);
  absl::Duration end_retry_max = absl::Seconds(30);
};

// Receives job-level metrics (the service maps them to Prometheus).
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void OnSubmitted(compress::v1::JobKind kind) = 0;
  virtual void OnFinished(compress::v1::JobKind kind, compress::v1::JobState state,
                          double run_seconds) = 0;
  virtual void OnQueueDepth(int queued) = 0;
  virtual void OnWorkers(int busy, int total) = 0;
};

// The pipeline's view of one tenant's models, datasets and jobs.
using ResourcesFactory =
    std::function<std::unique_ptr<pipeline::Resources>(const std::string& tenant)>;

struct SubmitRequest {
  std::string request_id;  // idempotency key; empty = none
  compress::v1::JobSpec spec;
  std::string device = "auto";
  uint64_t seed = 0;              // 0 = pick one
  int64_t deadline_seconds = 0;   // 0 = default
};

class JobManager {
 public:
  // `metadata`, `blobs`, `kinds` and `observer` must outlive the manager;
  // `observer` may be null. `resources` is called once per submit and run.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(
      const JobManagerOptions& options, store::MetadataStore* metadata,
      store::BlobStore* blobs, const pipeline::JobKindRegistry* kinds, ResourcesFactory resources,
      JobObserver* observer);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Recovers jobs left QUEUED or RUNNING by an earlier process and starts
  // the workers. FAILED_PRECONDITION when called twice.
  absl::Status Start() ABSL_LOCKS_EXCLUDED(mu_);
  // Stops accepting jobs (Submit answers UNAVAILABLE), lets running jobs
  // finish for up to `grace`, then interrupts them: an interrupted job goes
  // back to QUEUED and resumes when a server starts again. Joins the workers.
  void Drain(absl::Duration grace) ABSL_LOCKS_EXCLUDED(mu_);

  // Validates and enqueues a job owned by `tenant`. Same request_id (of the
  // same tenant) with the same spec: the existing job; with another spec:
  // ALREADY_EXISTS.
  absl::StatusOr<compress::v1::Job> Submit(const std::string& tenant,
                                           const SubmitRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> Get(const std::string& tenant, const std::string& job_id);
  absl::StatusOr<store::Page<compress::v1::Job>> List(const std::string& tenant,
                                                       const store::JobFilter& filter,
                                                       int page_size,
                                                       const std::string& page_token);
  // QUEUED: cancelled at once. RUNNING: the token is cancelled and the job
  // ends CANCELLED at its next check. Finished: FAILED_PRECONDITION.
  absl::StatusOr<compress::v1::Job> Cancel(const std::string& tenant, const std::string& job_id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Events after `after_sequence`, ascending, at most `limit`.
  absl::StatusOr<std::vector<compress::v1::JobEvent>> Events(const std::string& tenant,
                                                             const std::string& job_id,
                                                             int64_t after_sequence,
                                                             int limit = 256);
  // Calls `listener` after each new event of `job_id`. Returns a handle for
  // Unsubscribe(); after Unsubscribe returns the listener is not called again.
  uint64_t Subscribe(const std::string& job_id, std::function<void()> listener)
      ABSL_LOCKS_EXCLUDED(listeners_mu_);
  void Unsubscribe(const std::string& job_id, uint64_t handle) ABSL_LOCKS_EXCLUDED(listeners_mu_);

  bool accepting() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Slot {
    std::string device;
    bool busy = false;
  };
  struct Running {
    std::shared_ptr<engine::CancelToken> token;
    bool interrupted = false;  // by Drain: re-queue, don't cancel
    // Shared queue only: the lease, and whether it was lost (then the job
    // belongs to another attempt and nothing more is written).
    std::string owner;
    int attempt = 0;
    bool lost = false;
  };
  struct Listener {
    std::shared_ptr<std::function<void()>> fn;
    uint64_t notifier_handle = 0;
  };
  class Context;

  JobManager(const JobManagerOptions& options, store::MetadataStore* metadata,
             store::BlobStore* blobs, const pipeline::JobKindRegistry* kinds,
             ResourcesFactory resources, JobObserver* observer);

  // Start()'s work, under mu_ (taken here): recovery, then the workers. Jobs
  // that ran out of attempts go to given_up, so that Start() can tell the
  // observer without the lock.
  absl::Status RecoverAndStartWorkers(std::vector<compress::v1::Job>& given_up)
      ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerLoop(int slot) ABSL_LOCKS_EXCLUDED(mu_);
  void RunJob(int slot, compress::v1::Job job) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the handler of a job whose row says RUNNING; never throws.
  absl::StatusOr<compress::v1::JobResult> RunInContext(
      const compress::v1::Job& job, const std::shared_ptr<engine::CancelToken>& token,
      const std::string& owner, int attempt) ABSL_LOCKS_EXCLUDED(mu_);

  // Shared-queue mode (job_manager_queue.cc).
  bool shared() const { return options_.queue != nullptr; }
  absl::Status StartShared() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClaimLoop(int slot) ABSL_LOCKS_EXCLUDED(mu_);
  void RunClaimed(int slot, store::ClaimedJob claimed) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends or re-queues a claimed job after its handler returned.
  void FinishClaimed(compress::v1::Job job, const Running& run,
                     const absl::StatusOr<compress::v1::JobResult>& result, absl::Time start)
      ABSL_LOCKS_EXCLUDED(mu_);
  void RenewLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Reaps expired leases, reports the queue depth, polls watchers while the
  // notifier is down.
  void HousekeepingLoop() ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<compress::v1::Job> CancelShared(const std::string& tenant,
                                                 const std::string& job_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Marks a running job's lease lost and stops its handler.
  void LoseLease(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);
  void NotifyAll() ABSL_LOCKS_EXCLUDED(listeners_mu_);
  // The job's kind handler runs it; a result without a summary gets the
  // handler's.
  absl::StatusOr<compress::v1::JobResult> RunHandler(pipeline::JobContext& context)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Appends an event (sequence assigned here) and persists `job` with it.
  absl::Status AppendLocked(compress::v1::Job& job, compress::v1::JobEvent event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ChangeStateLocked(compress::v1::Job& job, compress::v1::JobState to)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ChangeStateLocked for a state the job must reach (its end, a re-queue):
  // retried with backoff until it is stored, another writer ended the job,
  // or the server stops (then the next start recovers the RUNNING job).
  // Waits release mu_.
  absl::Status StoreStateLocked(compress::v1::Job& job, compress::v1::JobState to)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify(const std::string& job_id) ABSL_LOCKS_EXCLUDED(listeners_mu_);
  void ReportGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SlotAccepts(int slot, const std::string& requested) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const JobManagerOptions options_;
  store::MetadataStore* const metadata_;
  store::BlobStore* const blobs_;
  const pipeline::JobKindRegistry* const kinds_;
  InProcessRunner in_process_;
  JobRunner* const runner_;
  const ResourcesFactory resources_;
  JobObserver* const observer_;

  mutable absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<compress::v1::Job> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Running> running_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
  // Shared queue: bumped by each local Submit, so idle slots claim at once.
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  // Shared queue: the renewer and housekeeping threads run until Drain has
  // joined the workers.
  bool background_stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> background_;

  absl::Mutex listeners_mu_;
  uint64_t next_listener_ ABSL_GUARDED_BY(listeners_mu_) = 1;
  std::map<std::string, std::map<uint64_t, Listener>> listeners_ ABSL_GUARDED_BY(listeners_mu_);
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(compress::v1::JobState state);

}  // namespace compress::jobs

#endif  // COMPRESS_JOBS_JOB_MANAGER_H_
