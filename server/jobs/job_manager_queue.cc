// JobManager in shared-queue mode: claims, leases, fenced completion, the
// reaper and cross-process watchers (see job_manager.h).
#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/job_manager_internal.h"
#include "server/util/status_macros.h"

namespace compress::jobs {
namespace v1 = compress::v1;
using internal::CrashOf;
using internal::StateChangeEvent;
using internal::ToErrorStatus;
using internal::ToProto;

namespace {

// One line on stderr per failure of a background step; the loop retries.
void LogFailure(const char* what, const absl::Status& s) {
  fprintf(stderr, "compressd: %s: %s\n", what, s.ToString().c_str());
}

}  // namespace

absl::Status JobManager::StartShared() {
  accepting_ = true;
  stopping_ = false;
  background_stop_ = false;
  for (size_t i = 0; i < slots_.size(); ++i) {
    workers_.emplace_back([this, i] { ClaimLoop(static_cast<int>(i)); });
  }
  if (!slots_.empty()) background_.emplace_back([this] { RenewLoop(); });
  background_.emplace_back([this] { HousekeepingLoop(); });
  ReportGaugesLocked();
  return absl::OkStatus();
}

void JobManager::ClaimLoop(int slot) {
  std::string owner;
  std::string device;
  uint64_t seen = 0;
  {
    absl::MutexLock lock(&mu_);
    owner = absl::StrCat(options_.worker_id, "/", slot);
    device = slots_[slot].device;
    seen = submitted_;
  }
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      seen = submitted_;
    }
    absl::StatusOr<std::optional<store::ClaimedJob>> claimed =
        options_.queue->Claim(owner, device, options_.lease);
    if (claimed.ok() && claimed->has_value()) {
      {
        absl::MutexLock lock(&mu_);
        slots_[slot].busy = true;
        ReportGaugesLocked();
      }
      RunClaimed(slot, std::move(**claimed));
      absl::MutexLock lock(&mu_);
      slots_[slot].busy = false;
      ReportGaugesLocked();
      continue;  // there may be more
    }
    if (!claimed.ok()) LogFailure("claiming a job", claimed.status());
    // Idle: wait for a local submit, the poll interval, or Drain.
    absl::MutexLock lock(&mu_);
    auto woken = [this, &seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || submitted_ != seen;
    };
    mu_.AwaitWithTimeout(absl::Condition(&woken), options_.poll_interval);
  }
}

void JobManager::RunClaimed(int slot, store::ClaimedJob claimed) {
  (void)slot;
  auto token = std::make_shared<engine::CancelToken>();
  const absl::Time start = absl::Now();
  v1::Job job = std::move(claimed.job);
  absl::Duration deadline = job.deadline_seconds() > 0 ? absl::Seconds(job.deadline_seconds())
                                                       : options_.default_deadline;
  token->SetDeadline(start + deadline);
  bool stopping;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
    if (!stopping) running_[job.id()] = Running{token, false, claimed.owner, claimed.attempt, false};
  }
  if (stopping) {
    // Drain began between the claim and here: give it straight back.
    options_.queue
        ->Release(job.id(), claimed.owner, claimed.attempt,
                  "worker shutting down before the job started; re-queued")
        .status()
        .IgnoreError();
    return;
  }
  Notify(job.id());
  absl::StatusOr<v1::JobResult> result = RunInContext(job, token, claimed.owner, claimed.attempt);
  Running run;
  {
    absl::MutexLock lock(&mu_);
    run = running_[job.id()];
    running_.erase(job.id());
  }
  FinishClaimed(std::move(job), run, result, start);
}

void JobManager::FinishClaimed(v1::Job job, const Running& run,
                               const absl::StatusOr<v1::JobResult>& result, absl::Time start) {
  if (run.lost) {
    // Another attempt owns the job now; its writes are the ones that count.
    fprintf(stderr, "compressd: job %s: lease of %s (attempt %d) lost; result dropped\n",
            job.id().c_str(), run.owner.c_str(), run.attempt);
    return;
  }
  const auto crash = CrashOf(result);
  std::string requeue;
  if (run.interrupted && !result.ok()) {
    requeue = "interrupted by worker shutdown; re-queued";
  } else if (crash && run.attempt < options_.max_attempts) {
    requeue = absl::StrCat("attempt ", run.attempt, " of ", options_.max_attempts, ": ", *crash,
                           "; re-queued");
  }
  if (!requeue.empty()) {
    absl::Status s =
        options_.queue->Release(job.id(), run.owner, run.attempt, requeue).status();
    if (!s.ok()) LogFailure("re-queueing a job", s);
    Notify(job.id());
    return;
  }
  // The row as stored: progress and sequence as the events left them.
  auto fresh = metadata_->GetJobAnyTenant(job.id());
  if (fresh.ok()) job = *std::move(fresh);
  const v1::JobState from = job.state();
  *job.mutable_end_time() = ToProto(absl::Now());
  if (result.ok()) {
    *job.mutable_result() = *result;
    job.set_state(v1::JOB_STATE_SUCCEEDED);
  } else {
    absl::Status error = result.status();
    if (crash && run.attempt > 1) {
      error = absl::Status(error.code(), absl::StrCat(error.message(), " (on each of ",
                                                     run.attempt, " attempts)"));
    }
    *job.mutable_error() = ToErrorStatus(error);
    job.set_state(absl::IsCancelled(error) ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED);
  }
  // Retried within half a lease (renewal stopped when the handler returned);
  // after that the reaper re-runs the job, which then counts as an attempt.
  const absl::Time give_up = absl::Now() + options_.lease / 2;
  absl::Duration backoff = options_.end_retry_initial;
  absl::StatusOr<int64_t> done;
  while (true) {
    done = options_.queue->Complete(job.id(), run.owner, run.attempt, job,
                                    StateChangeEvent(job, from));
    if (done.ok() || absl::IsFailedPrecondition(done.status())) break;
    LogFailure("completing a job", done.status());
    if (absl::Now() + backoff > give_up) break;
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.end_retry_max);
  }
  if (!done.ok()) {
    LogFailure("completing a job (left to the lease reaper)", done.status());
  } else if (observer_ != nullptr) {
    observer_->OnFinished(job.kind(), job.state(), absl::ToDoubleSeconds(absl::Now() - start));
  }
  Notify(job.id());
}

void JobManager::LoseLease(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = running_.find(job_id);
  if (it == running_.end()) return;
  it->second.lost = true;
  it->second.token->Cancel();
}

void JobManager::RenewLoop() {
  while (true) {
    std::vector<std::pair<std::string, Running>> running;
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return background_stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.renew_interval);
      if (background_stop_) return;
      for (const auto& [id, run] : running_) {
        if (!run.lost) running.emplace_back(id, run);
      }
    }
    for (const auto& [id, run] : running) {
      absl::Status s = options_.queue->Renew(id, run.owner, run.attempt, options_.lease);
      if (absl::IsCancelled(s)) {
        run.token->Cancel();  // CancelJob on some replica: the handler stops
      } else if (absl::IsFailedPrecondition(s) || absl::IsNotFound(s)) {
        LoseLease(id);
      } else if (!s.ok()) {
        LogFailure("renewing a lease", s);  // the reaper decides if it lasts
      }
    }
  }
}

void JobManager::HousekeepingLoop() {
  absl::Time next_reap = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return background_stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.poll_interval);
      if (background_stop_) return;
    }
    // Without a live notifier, watchers re-read their job's events.
    if (options_.notifier == nullptr || !options_.notifier->connected()) NotifyAll();
    if (absl::Now() < next_reap) continue;
    next_reap = absl::Now() + options_.reap_interval;
    absl::StatusOr<int> reaped = options_.queue->ReapExpired(options_.max_attempts);
    if (!reaped.ok()) LogFailure("reaping expired leases", reaped.status());
    if (observer_ != nullptr) {
      absl::StatusOr<int64_t> queued = options_.queue->CountQueued();
      if (queued.ok()) observer_->OnQueueDepth(static_cast<int>(*queued));
    }
  }
}

absl::StatusOr<v1::Job> JobManager::CancelShared(const std::string& tenant,
                                                 const std::string& job_id) {
  ASSIGN_OR_RETURN(v1::Job job, options_.queue->RequestCancel(tenant, job_id));
  if (job.state() == v1::JOB_STATE_CANCELLED) {
    if (observer_ != nullptr) observer_->OnFinished(job.kind(), v1::JOB_STATE_CANCELLED, 0);
    Notify(job_id);
    return job;
  }
  // Running here: stop it now rather than at the next renewal.
  absl::MutexLock lock(&mu_);
  if (auto it = running_.find(job_id); it != running_.end()) it->second.token->Cancel();
  return job;
}

}  // namespace compress::jobs
