#include "server/store/pg/pg_job_queue.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/store/pg_metadata_store.h"
#include "server/store/rows.h"
#include "server/util/client_text.h"
#include "server/util/status_macros.h"

namespace compress::store {
namespace v1 = compress::v1;
using pg::Connection;
using pg::Param;
using pg::Result;

namespace {

// Rows the reaper moves per transaction.
constexpr int kReapBatch = 64;

google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(ts.seconds()))));
  return ts;
}

v1::ErrorStatus ToErrorStatus(absl::StatusCode code, const std::string& message) {
  v1::ErrorStatus e;
  e.set_code(static_cast<int>(code));  // absl and gRPC codes share their numbers
  e.set_message(message);
  return e;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

int64_t Micros(absl::Duration d) { return absl::ToInt64Microseconds(d); }

absl::Status ValidLease(absl::Duration lease) {
  if (lease < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError("lease: must be at least 1 ms");
  }
  return absl::OkStatus();
}

absl::Status Fenced(const std::string& job_id, const std::string& owner, int attempt) {
  return absl::FailedPreconditionError(absl::StrCat("job ", job_id, ": ", owner, " (attempt ",
                                                    attempt,
                                                    ") no longer holds its lease; write refused"));
}

// Appends `event` to `job`, whose row this transaction has locked: the next
// sequence after the stored ones, then job.last_sequence follows it. The
// caller stores the job row.
absl::StatusOr<int64_t> AppendLocked(Connection& c, v1::Job& job, v1::JobEvent event) {
  ASSIGN_OR_RETURN(Result last, c.Exec("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = $1",
                                       {job.id()}));
  event.set_job_id(job.id());
  event.set_sequence(last.Int(0, 0) + 1);
  if (!event.has_time()) *event.mutable_time() = ToProto(absl::Now());
  RETURN_IF_ERROR(c.Exec("INSERT INTO events (job_id, seq, proto) VALUES ($1, $2, $3)",
                         {job.id(), event.sequence(), Param::Bytes(event.SerializeAsString())})
                      .status());
  job.set_last_sequence(event.sequence());
  return event.sequence();
}

// The state change to job.state() from `from`, as JobManager writes it.
v1::JobEvent StateEvent(const v1::Job& job, v1::JobState from) {
  v1::JobEvent e;
  v1::StateChange* sc = e.mutable_state_change();
  sc->set_from(from);
  sc->set_to(job.state());
  if (job.state() == v1::JOB_STATE_FAILED || job.state() == v1::JOB_STATE_CANCELLED) {
    *sc->mutable_error() = job.error();
  }
  sc->set_device(job.assigned_device());
  sc->set_attempt(job.attempts());
  return e;
}

v1::JobEvent LogEvent(const std::string& level, const std::string& message) {
  v1::JobEvent e;
  e.mutable_log()->set_level(level);
  e.mutable_log()->set_message(message);
  return e;
}

// Appends the state change of `job` (now in its new state) and stores the
// row; `release` also drops the lease.
absl::Status ChangeState(Connection& c, v1::Job& job, v1::JobState from, bool release) {
  RETURN_IF_ERROR(AppendLocked(c, job, StateEvent(job, from)).status());
  const std::string sql = release
                              ? "UPDATE jobs SET state = $2, proto = $3, lease_owner = NULL, "
                                "lease_expires_at = NULL, cancel_requested = false WHERE id = $1"
                              : "UPDATE jobs SET state = $2, proto = $3 WHERE id = $1";
  return c
      .Exec(sql,
            {job.id(), static_cast<int64_t>(job.state()), Param::Bytes(job.SerializeAsString())})
      .status();
}

// Locks the job row and returns the stored job when (owner, attempt) holds
// an unexpired lease on it; FAILED_PRECONDITION (fenced) otherwise.
absl::StatusOr<v1::Job> LockLeased(Connection& c, const std::string& job_id,
                                   const std::string& owner, int attempt) {
  ASSIGN_OR_RETURN(Result r,
                   c.Exec("SELECT proto, (lease_owner = $2 AND attempt = $3 AND state = $4 AND "
                          "lease_expires_at > clock_timestamp()) IS TRUE "
                          "FROM jobs WHERE id = $1 FOR UPDATE",
                          {job_id, owner, attempt, static_cast<int64_t>(v1::JOB_STATE_RUNNING)}));
  if (r.rows() == 0)
    return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(job_id), " not found"));
  if (r.Int(0, 1) == 0) return Fenced(job_id, owner, attempt);
  return rows::Parse<v1::Job>(r.Bytes(0, 0));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PgJobQueue>> PgJobQueue::Create(pg::Pool* pool) {
  if (pool == nullptr) return absl::InvalidArgumentError("job queue: a pool is required");
  ASSIGN_OR_RETURN(bool migrated, pool->RunRead([](Connection& c) -> absl::StatusOr<bool> {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec("SELECT 1 FROM information_schema.columns "
                            "WHERE table_schema = current_schema() AND table_name = 'jobs' "
                            "AND column_name = 'lease_owner'"));
    return r.rows() > 0;
  }));
  if (!migrated) {
    return absl::FailedPreconditionError(
        "job queue: the database has no lease columns; open it with PgMetadataStore::Create "
        "(or `compressd migrate`) first");
  }
  return std::unique_ptr<PgJobQueue>(new PgJobQueue(pool));
}

absl::StatusOr<std::optional<ClaimedJob>> PgJobQueue::Claim(const std::string& worker_id,
                                                            const std::string& device,
                                                            absl::Duration lease) {
  if (worker_id.empty()) return absl::InvalidArgumentError("worker_id: required");
  const std::string kind = DeviceKind(device);
  if (kind == "any") {
    return absl::InvalidArgumentError(
        absl::StrCat("device: \"", device, "\" is not cpu, cuda or cuda:N"));
  }
  RETURN_IF_ERROR(ValidLease(lease));
  using Out = absl::StatusOr<std::optional<ClaimedJob>>;
  return pool_->RunTransaction([&](Connection& c) -> Out {
    // SKIP LOCKED: a row another claimer holds is passed over, not waited on.
    ASSIGN_OR_RETURN(
        Result r,
        c.Exec("WITH next AS ("
               "  SELECT id FROM jobs WHERE state = $1 AND device_kind IN ('any', $2)"
               "  ORDER BY created_ns, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
               "UPDATE jobs j SET state = $3, lease_owner = $4, attempt = j.attempt + 1, "
               "  lease_expires_at = clock_timestamp() + make_interval(secs => $5::float8 / 1e6), "
               "  cancel_requested = false "
               "FROM next WHERE j.id = next.id RETURNING j.proto, j.attempt",
               {static_cast<int64_t>(v1::JOB_STATE_QUEUED), kind,
                static_cast<int64_t>(v1::JOB_STATE_RUNNING), worker_id, Micros(lease)}));
    if (r.rows() == 0) return std::optional<ClaimedJob>();
    ClaimedJob claimed;
    ASSIGN_OR_RETURN(claimed.job, rows::Parse<v1::Job>(r.Bytes(0, 0)));
    claimed.owner = worker_id;
    claimed.attempt = static_cast<int>(r.Int(0, 1));
    v1::Job& job = claimed.job;
    const v1::JobState from = job.state();
    job.set_state(v1::JOB_STATE_RUNNING);
    job.set_attempts(claimed.attempt);
    job.set_assigned_device(device);
    *job.mutable_start_time() = ToProto(absl::Now());
    RETURN_IF_ERROR(ChangeState(c, job, from, /*release=*/false));
    return std::optional<ClaimedJob>(std::move(claimed));
  });
}

absl::Status PgJobQueue::Renew(const std::string& job_id, const std::string& owner, int attempt,
                               absl::Duration lease) {
  RETURN_IF_ERROR(ValidLease(lease));
  return pool_->RunTransaction([&](Connection& c) -> absl::Status {
    ASSIGN_OR_RETURN(Result r,
                     c.Exec("UPDATE jobs SET lease_expires_at = clock_timestamp() + "
                            "make_interval(secs => $4::float8 / 1e6) "
                            "WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND state = $5 "
                            "AND lease_expires_at > clock_timestamp() RETURNING cancel_requested",
                            {job_id, owner, attempt, Micros(lease),
                             static_cast<int64_t>(v1::JOB_STATE_RUNNING)}));
    if (r.rows() == 0) return Fenced(job_id, owner, attempt);
    if (r.Int(0, 0) != 0) {
      return absl::CancelledError(absl::StrCat("job ", job_id, ": cancel requested"));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> PgJobQueue::AppendEvent(v1::JobEvent event, const v1::Job* job,
                                                const std::string& owner, int attempt) {
  if (job != nullptr && event.job_id().empty()) event.set_job_id(job->id());
  if (event.job_id().empty()) return absl::InvalidArgumentError("event.job_id: required");
  if (job != nullptr && (job->id() != event.job_id() || job->state() != v1::JOB_STATE_RUNNING)) {
    return absl::InvalidArgumentError(
        "job: must be the event's job, in state RUNNING (Complete ends a job)");
  }
  return pool_->RunTransaction([&](Connection& c) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(v1::Job stored, LockLeased(c, event.job_id(), owner, attempt));
    v1::Job row = job != nullptr ? *job : stored;
    if (event.has_artifact_ready()) {
      const v1::Artifact& a = event.artifact_ready();
      if (a.job_id() != event.job_id()) {
        return absl::InvalidArgumentError("artifact_ready.job_id: must be the event's job");
      }
      RETURN_IF_ERROR(c.Exec("INSERT INTO artifacts (job_id, name, sha256, proto) "
                             "VALUES ($1, $2, $3, $4) ON CONFLICT (job_id, name) DO UPDATE "
                             "SET sha256 = EXCLUDED.sha256, proto = EXCLUDED.proto",
                             {a.job_id(), a.name(), a.sha256(), Param::Bytes(a.SerializeAsString())})
                          .status());
    }
    ASSIGN_OR_RETURN(int64_t seq, AppendLocked(c, row, event));
    RETURN_IF_ERROR(c.Exec("UPDATE jobs SET proto = $2 WHERE id = $1",
                           {row.id(), Param::Bytes(row.SerializeAsString())})
                        .status());
    return seq;
  });
}

absl::StatusOr<int64_t> PgJobQueue::Complete(const std::string& job_id, const std::string& owner,
                                             int attempt, v1::Job job,
                                             v1::JobEvent terminal_event) {
  if (!IsTerminal(job.state())) {
    return absl::InvalidArgumentError("job.state: must be SUCCEEDED, FAILED or CANCELLED");
  }
  if (!terminal_event.has_state_change() || terminal_event.state_change().to() != job.state()) {
    return absl::InvalidArgumentError("terminal_event: must be a state change to job.state");
  }
  job.set_id(job_id);
  if (!job.has_end_time()) *job.mutable_end_time() = ToProto(absl::Now());
  terminal_event.set_job_id(job_id);
  return pool_->RunTransaction([&](Connection& c) -> absl::StatusOr<int64_t> {
    RETURN_IF_ERROR(LockLeased(c, job_id, owner, attempt).status());
    v1::Job row = job;
    ASSIGN_OR_RETURN(int64_t seq, AppendLocked(c, row, terminal_event));
    RETURN_IF_ERROR(
        c.Exec("UPDATE jobs SET state = $2, proto = $3, lease_owner = NULL, "
               "lease_expires_at = NULL, cancel_requested = false WHERE id = $1",
               {job_id, static_cast<int64_t>(row.state()), Param::Bytes(row.SerializeAsString())})
            .status());
    return seq;
  });
}

absl::StatusOr<int64_t> PgJobQueue::Release(const std::string& job_id, const std::string& owner,
                                            int attempt, const std::string& reason) {
  return pool_->RunTransaction([&](Connection& c) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(v1::Job job, LockLeased(c, job_id, owner, attempt));
    RETURN_IF_ERROR(AppendLocked(c, job, LogEvent("WARNING", reason)).status());
    job.clear_assigned_device();
    job.set_state(v1::JOB_STATE_QUEUED);
    RETURN_IF_ERROR(ChangeState(c, job, v1::JOB_STATE_RUNNING, /*release=*/true));
    return job.last_sequence();
  });
}

absl::StatusOr<int64_t> PgJobQueue::CountQueued() {
  return pool_->RunRead([](Connection& c) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT count(*) FROM jobs WHERE state = $1",
                                      {static_cast<int64_t>(v1::JOB_STATE_QUEUED)}));
    return r.Int(0, 0);
  });
}

absl::Status PgJobQueue::ReapOne(Connection& c, v1::Job job, const std::string& owner, int attempt,
                                 bool cancel_requested, int max_attempts) {
  const std::string lost = absl::StrCat("lease of ", owner, " expired during attempt ", attempt);
  v1::JobState to = v1::JOB_STATE_QUEUED;
  if (cancel_requested) {
    to = v1::JOB_STATE_CANCELLED;
    *job.mutable_error() =
        ToErrorStatus(absl::StatusCode::kCancelled, absl::StrCat("cancelled; ", lost));
  } else if (attempt >= max_attempts) {
    to = v1::JOB_STATE_FAILED;
    *job.mutable_error() = ToErrorStatus(
        absl::StatusCode::kAborted, absl::StrCat(lost, "; giving up after ", attempt,
                                                 " attempts (max_attempts ", max_attempts, ")"));
  }
  if (to == v1::JOB_STATE_QUEUED) {
    RETURN_IF_ERROR(
        AppendLocked(c, job, LogEvent("WARNING", absl::StrCat(lost, "; re-queued"))).status());
    job.clear_assigned_device();
  } else {
    RETURN_IF_ERROR(AppendLocked(c, job, LogEvent("ERROR", job.error().message())).status());
    *job.mutable_end_time() = ToProto(absl::Now());
  }
  const v1::JobState from = job.state();
  job.set_state(to);
  return ChangeState(c, job, from, /*release=*/true);
}

absl::StatusOr<int> PgJobQueue::ReapExpired(int max_attempts) {
  if (max_attempts < 1) return absl::InvalidArgumentError("max_attempts: must be at least 1");
  int moved = 0;
  while (true) {
    ASSIGN_OR_RETURN(int batch, pool_->RunTransaction([&](Connection& c) -> absl::StatusOr<int> {
      // FOR UPDATE re-checks the condition on rows changed since the
      // snapshot; SKIP LOCKED leaves rows another reaper (or a worker's
      // fenced write) holds: each expired job moves once.
      ASSIGN_OR_RETURN(Result r,
                       c.Exec("SELECT proto, lease_owner, attempt, cancel_requested FROM jobs "
                              "WHERE state = $1 AND lease_expires_at <= clock_timestamp() "
                              "ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                              {static_cast<int64_t>(v1::JOB_STATE_RUNNING), kReapBatch}));
      for (int i = 0; i < r.rows(); ++i) {
        ASSIGN_OR_RETURN(v1::Job job, rows::Parse<v1::Job>(r.Bytes(i, 0)));
        RETURN_IF_ERROR(ReapOne(c, std::move(job), r.Bytes(i, 1), static_cast<int>(r.Int(i, 2)),
                                r.Int(i, 3) != 0, max_attempts));
      }
      return r.rows();
    }));
    moved += batch;
    if (batch < kReapBatch) return moved;
  }
}

absl::StatusOr<v1::Job> PgJobQueue::RequestCancel(const std::string& tenant,
                                                  const std::string& job_id) {
  return pool_->RunTransaction([&](Connection& c) -> absl::StatusOr<v1::Job> {
    ASSIGN_OR_RETURN(Result r, c.Exec("SELECT proto FROM jobs WHERE id = $1 AND tenant = $2 "
                                      "FOR UPDATE",
                                      {job_id, tenant}));
    if (r.rows() == 0)
      return absl::NotFoundError(absl::StrCat("job ", QuoteClientText(job_id), " not found"));
    ASSIGN_OR_RETURN(v1::Job job, rows::Parse<v1::Job>(r.Bytes(0, 0)));
    if (IsTerminal(job.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " already finished: ", v1::JobState_Name(job.state())));
    }
    if (job.state() == v1::JOB_STATE_RUNNING) {
      // Its worker sees the flag at its next Renew and ends the job itself.
      RETURN_IF_ERROR(
          c.Exec("UPDATE jobs SET cancel_requested = true WHERE id = $1", {job_id}).status());
      return job;
    }
    const v1::JobState from = job.state();
    job.set_state(v1::JOB_STATE_CANCELLED);
    *job.mutable_error() = ToErrorStatus(absl::StatusCode::kCancelled, "cancelled before it ran");
    *job.mutable_end_time() = ToProto(absl::Now());
    RETURN_IF_ERROR(ChangeState(c, job, from, /*release=*/true));
    return job;
  });
}

}  // namespace compress::store
