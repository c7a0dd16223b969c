// JobQueue: jobs shared by several worker processes through leases.
//
// A worker claims a QUEUED job and holds it under a lease (owner, attempt,
// expiry) that it renews every few seconds while the job runs. Every write a
// worker makes about the job afterwards (an event, the final row) is fenced
// on (job, owner, attempt): once the lease expired and the job was handed to
// someone else, the old worker's writes are refused and change nothing. A
// reaper, safe to run on every replica at once, returns jobs whose lease
// expired to the queue, or fails them after `max_attempts`.
//
// Each transaction is short and committed at once: nothing is held open for
// the length of a job. Times (lease expiry) come from the database's clock,
// so replicas with skewed clocks agree.
//
// Events keep the MetadataStore's contract: per-job sequence numbers 1, 2, 3,
// ... without gaps, assigned here under the job row.
//
// Devices: a job asks for "auto" (any worker), "cpu", or "cuda"/"cuda:N"
// (any CUDA worker: one GPU per worker process, so the index is not matched).
//
// Errors: FAILED_PRECONDITION when the caller no longer holds the lease
// ("fenced"), CANCELLED from Renew when a cancel was requested, NOT_FOUND,
// INVALID_ARGUMENT; UNAVAILABLE / ABORTED / RESOURCE_EXHAUSTED from the
// database as in metadata_store.h.
//
// Implementations are thread-safe.
//
//   ASSIGN_OR_RETURN(std::optional<ClaimedJob> claimed,
//                    queue->Claim("worker-7", "cuda:0", absl::Seconds(30)));
//   if (!claimed) return;  // nothing to do
//   ... every few seconds:
//   absl::Status s = queue->Renew(id, "worker-7", claimed->attempt, absl::Seconds(30));
//   if (absl::IsCancelled(s)) ... stop and Complete(... CANCELLED ...)
//   if (absl::IsFailedPrecondition(s)) ... lost the job: stop, write nothing
#ifndef COMPRESS_STORE_JOB_QUEUE_H_
#define COMPRESS_STORE_JOB_QUEUE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "compress/v1/compress.pb.h"

namespace compress::store {

// A job handed to one worker by Claim.
struct ClaimedJob {
  compress::v1::Job job;  // state RUNNING, attempts == attempt, last_sequence set
  std::string owner;      // the worker id that claimed it
  int attempt = 0;        // 1 for the first run, 2 after one re-queue, ...
};

class JobQueue {
 public:
  virtual ~JobQueue() = default;

  // Takes the oldest QUEUED job whose requested device fits `device`
  // ("cpu", "cuda" or "cuda:N"; stored as the job's assigned_device), marks
  // it RUNNING under a lease of `lease` for `worker_id` with attempt + 1, and
  // appends the RUNNING state-change event, all in one short transaction.
  // Returns nullopt when no job fits. Two workers never claim one job.
  virtual absl::StatusOr<std::optional<ClaimedJob>> Claim(const std::string& worker_id,
                                                          const std::string& device,
                                                          absl::Duration lease) = 0;

  // Extends the lease to now + `lease`. FAILED_PRECONDITION when (owner,
  // attempt) no longer holds an unexpired lease on the job; CANCELLED (the
  // lease is extended all the same) when RequestCancel asked the job to stop.
  virtual absl::Status Renew(const std::string& job_id, const std::string& owner, int attempt,
                             absl::Duration lease) = 0;

  // Appends `event` (job_id, sequence and time are set here; the sequence is
  // returned) while (owner, attempt) holds the lease; FAILED_PRECONDITION
  // otherwise, and nothing is written. With `job`, stores it in the same
  // transaction (its state must be RUNNING: Complete ends a job). An
  // artifact_ready event also registers its artifact in that transaction,
  // so a fenced-off worker's artifact is never listed.
  virtual absl::StatusOr<int64_t> AppendEvent(compress::v1::JobEvent event,
                                              const compress::v1::Job* job,
                                              const std::string& owner, int attempt) = 0;

  // Ends the job: stores `job` (state SUCCEEDED, FAILED or CANCELLED) and
  // appends `terminal_event` (a state change to that state) and releases the
  // lease, fenced like AppendEvent. Sets job.end_time when unset. Returns the
  // event's sequence.
  virtual absl::StatusOr<int64_t> Complete(const std::string& job_id, const std::string& owner,
                                           int attempt, compress::v1::Job job,
                                           compress::v1::JobEvent terminal_event) = 0;

  // Gives the job back before its lease expires (the worker is shutting
  // down, or the process that ran the model died): appends a WARNING log
  // `reason`, then the state change to QUEUED, and drops the lease, fenced
  // like AppendEvent. The attempt stays counted. Returns the last sequence.
  virtual absl::StatusOr<int64_t> Release(const std::string& job_id, const std::string& owner,
                                          int attempt, const std::string& reason) = 0;

  // How many jobs are QUEUED (all tenants): the submit limit and the
  // queue-depth gauge.
  virtual absl::StatusOr<int64_t> CountQueued() = 0;

  // Returns every RUNNING job whose lease expired to QUEUED, with a WARNING
  // log event "lease of <owner> expired during attempt N; re-queued"; a job
  // at `max_attempts` goes to FAILED (ABORTED, the reason in its error) and
  // one whose cancel was requested to CANCELLED. Returns how many it moved.
  // Safe to run on every replica at once: each expired job moves once.
  virtual absl::StatusOr<int> ReapExpired(int max_attempts) = 0;

  // Cancels a job of `tenant` (NOT_FOUND for another tenant's): a QUEUED job
  // becomes CANCELLED at once; a RUNNING one is flagged, and its worker
  // learns of it from its next Renew (CANCELLED). FAILED_PRECONDITION when
  // the job already finished. Returns the job as stored afterwards.
  virtual absl::StatusOr<compress::v1::Job> RequestCancel(const std::string& tenant,
                                                          const std::string& job_id) = 0;

 protected:
  JobQueue() = default;
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_JOB_QUEUE_H_
