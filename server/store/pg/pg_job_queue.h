// PgJobQueue: the JobQueue on PostgreSQL 15, over the tables of
// PgMetadataStore (schema version 2 adds the lease columns: lease_owner,
// lease_expires_at, attempt, cancel_requested, device_kind).
//
//   - Claim is one statement: a CTE picks the oldest fitting QUEUED row with
//     SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1 (claimers never wait on each
//     other) and an UPDATE takes the lease; the RUNNING event follows in the
//     same transaction, which commits at once.
//   - Fenced writes lock the job row (SELECT ... FOR UPDATE) and check
//     (lease_owner, attempt, state RUNNING, lease not expired) under it, so a
//     reaper or a new claimer cannot slip in between the check and the write.
//   - Event sequences: MAX(seq) + 1 under the job row lock, as
//     PgMetadataStore::AppendEvent does. An insert trigger on events sends
//     pg_notify('compress_events', job_id) at commit (see pg/listener.h).
//   - Lease times come from the database clock (clock_timestamp()).
//   - The reaper locks expired rows with SKIP LOCKED and re-checks them under
//     the lock, so replicas reaping together move each job once.
//
// Thread-safe; the pool is shared with the PgMetadataStore or not, as the
// caller likes.
//
//   ASSIGN_OR_RETURN(auto store, PgMetadataStore::Create(options));  // migrates
//   ASSIGN_OR_RETURN(auto queue, PgJobQueue::Create(&store->pool()));
#ifndef COMPRESS_STORE_PG_PG_JOB_QUEUE_H_
#define COMPRESS_STORE_PG_PG_JOB_QUEUE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/store/job_queue.h"
#include "server/store/pg/pool.h"

namespace compress::store {

class PgJobQueue final : public JobQueue {
 public:
  // `pool` must outlive the queue, and its database must have been migrated
  // by PgMetadataStore::Create (FAILED_PRECONDITION otherwise).
  static absl::StatusOr<std::unique_ptr<PgJobQueue>> Create(pg::Pool* pool);
  ~PgJobQueue() override = default;

  absl::StatusOr<std::optional<ClaimedJob>> Claim(const std::string& worker_id,
                                                  const std::string& device,
                                                  absl::Duration lease) override;
  absl::Status Renew(const std::string& job_id, const std::string& owner, int attempt,
                     absl::Duration lease) override;
  absl::StatusOr<int64_t> AppendEvent(compress::v1::JobEvent event, const compress::v1::Job* job,
                                      const std::string& owner, int attempt) override;
  absl::StatusOr<int64_t> Complete(const std::string& job_id, const std::string& owner, int attempt,
                                   compress::v1::Job job,
                                   compress::v1::JobEvent terminal_event) override;
  absl::StatusOr<int64_t> Release(const std::string& job_id, const std::string& owner,
                                  int attempt, const std::string& reason) override;
  absl::StatusOr<int64_t> CountQueued() override;
  absl::StatusOr<int> ReapExpired(int max_attempts) override;
  absl::StatusOr<compress::v1::Job> RequestCancel(const std::string& tenant,
                                                  const std::string& job_id) override;

 private:
  explicit PgJobQueue(pg::Pool* pool) : pool_(pool) {}
  // Moves one locked, expired job back to QUEUED, or to FAILED or CANCELLED.
  absl::Status ReapOne(pg::Connection& c, compress::v1::Job job, const std::string& owner,
                       int attempt, bool cancel_requested, int max_attempts);

  pg::Pool* const pool_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_PG_PG_JOB_QUEUE_H_
