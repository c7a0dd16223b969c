#include "server/jobs/job_manager.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/jobs/job_manager_internal.h"
#include "server/pipeline/limits.h"
#include "server/pipeline/spec_values.h"
#include "server/util/client_text.h"
#include "server/util/status_macros.h"

namespace compress::jobs {
namespace v1 = compress::v1;
using internal::CrashOf;
using internal::StateChangeEvent;
using internal::ToErrorStatus;
using internal::ToProto;

namespace {

std::string NewJobId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  // Time prefix keeps ids roughly sortable by submission.
  return absl::StrFormat("job-%010x%016x", absl::ToUnixSeconds(absl::Now()),
                         absl::Uniform<uint64_t>(*gen));
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// ---------------------------------------------------------------------------
// Context: what the pipeline sees of a running job.

class JobManager::Context : public pipeline::JobContext, public engine::ProgressSink {
 public:
  // `owner` and `attempt`: the lease of a claimed job (shared queue); an
  // empty owner = the in-memory queue.
  Context(JobManager* manager, v1::Job job, std::shared_ptr<engine::CancelToken> token,
          std::unique_ptr<pipeline::Resources> resources, std::string owner, int attempt)
      : manager_(manager), job_(std::move(job)), token_(std::move(token)),
        resources_(std::move(resources)), owner_(std::move(owner)), attempt_(attempt),
        row_(job_) {}

  const v1::Job& job() const override { return job_; }
  const std::string& device() const override { return job_.assigned_device(); }
  engine::ProgressSink& progress() override { return *this; }
  const engine::CancelToken& cancel() const override { return *token_; }
  pipeline::Resources& resources() override { return *resources_; }

  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& name,
                                           const std::string& content_type,
                                           absl::string_view bytes) override {
    ASSIGN_OR_RETURN(std::string sha, manager_->blobs_->Put(bytes));
    v1::Artifact a;
    a.set_job_id(job_.id());
    a.set_name(name);
    a.set_size_bytes(static_cast<int64_t>(bytes.size()));
    a.set_sha256(sha);
    a.set_content_type(content_type);
    *a.mutable_create_time() = ToProto(absl::Now());
    // Shared queue: the fenced event write registers it (job_queue.h).
    if (owner_.empty()) RETURN_IF_ERROR(manager_->metadata_->PutArtifact(a));
    v1::JobEvent e;
    *e.mutable_artifact_ready() = a;
    RETURN_IF_ERROR(Emit(std::move(e)));
    return a;
  }

  // ProgressSink.
  void StageStart(const std::string& stage, int index, int count) override {
    {
      absl::MutexLock lock(&mu_);
      stage_start_ = absl::Now();
      last_progress_ = absl::InfinitePast();
    }
    v1::JobEvent e;
    auto* s = e.mutable_stage_start();
    s->set_stage(stage);
    s->set_index(index);
    s->set_count(count);
    Emit(std::move(e)).IgnoreError();
  }
  void StageEnd(const std::string& stage) override {
    double seconds;
    {
      absl::MutexLock lock(&mu_);
      seconds = absl::ToDoubleSeconds(absl::Now() - stage_start_);
    }
    v1::JobEvent e;
    e.mutable_stage_end()->set_stage(stage);
    e.mutable_stage_end()->set_seconds(seconds);
    Emit(std::move(e)).IgnoreError();
  }
  void Progress(const std::string& stage, int64_t done, int64_t total) override {
    absl::Time now = absl::Now();
    double eta = -1;
    {
      absl::MutexLock lock(&mu_);
      // First, last and at most one per interval: progress is for humans.
      bool edge = done <= 1 || done >= total;
      if (!edge && now - last_progress_ < manager_->options_.progress_interval) return;
      last_progress_ = now;
      if (done > 0 && total >= done) {
        eta = absl::ToDoubleSeconds(now - stage_start_) * static_cast<double>(total - done) /
              static_cast<double>(done);
      }
    }
    v1::JobEvent e;
    auto* p = e.mutable_progress();
    p->set_stage(stage);
    p->set_done(done);
    p->set_total(total);
    p->set_eta_seconds(eta);
    Emit(std::move(e)).IgnoreError();
  }
  void Log(const std::string& level, const std::string& message) override {
    v1::JobEvent e;
    e.mutable_log()->set_level(level);
    e.mutable_log()->set_message(message);
    Emit(std::move(e)).IgnoreError();
  }
  void PartialResult(const std::string& key, const std::string& json) override {
    v1::JobEvent e;
    e.mutable_partial_result()->set_key(key);
    e.mutable_partial_result()->set_json(json);
    Emit(std::move(e)).IgnoreError();
  }

 private:
  absl::Status Emit(v1::JobEvent event) {
    if (!owner_.empty()) return EmitFenced(std::move(event));
    absl::Status s;
    {
      absl::MutexLock lock(&manager_->mu_);
      // The manager's copy of the job row is authoritative; re-read it so the
      // row written with the event carries the latest progress and sequence.
      auto job = manager_->metadata_->GetJobAnyTenant(job_.id());
      if (!job.ok()) return job.status();
      if (event.has_progress()) *job->mutable_progress() = event.progress();
      s = manager_->AppendLocked(*job, std::move(event));
    }
    if (s.ok()) manager_->Notify(job_.id());
    return s;
  }

  // Shared queue: written only while this attempt holds the lease. A lost
  // lease stops the handler; the job is another attempt's now.
  absl::Status EmitFenced(v1::JobEvent event) {
    v1::Job row;
    {
      absl::MutexLock lock(&mu_);
      if (event.has_progress()) *row_.mutable_progress() = event.progress();
      row = row_;
    }
    absl::StatusOr<int64_t> seq =
        manager_->options_.queue->AppendEvent(std::move(event), &row, owner_, attempt_);
    if (absl::IsFailedPrecondition(seq.status())) manager_->LoseLease(job_.id());
    if (!seq.ok()) return seq.status();
    manager_->Notify(job_.id());
    return absl::OkStatus();
  }

  JobManager* const manager_;
  const v1::Job job_;
  const std::shared_ptr<engine::CancelToken> token_;
  const std::unique_ptr<pipeline::Resources> resources_;  // the job's tenant's
  const std::string owner_;
  const int attempt_;
  absl::Mutex mu_;
  v1::Job row_ ABSL_GUARDED_BY(mu_);  // shared queue: the row written with events
  absl::Time stage_start_ ABSL_GUARDED_BY(mu_) = absl::Now();
  absl::Time last_progress_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// ---------------------------------------------------------------------------

JobManager::JobManager(const JobManagerOptions& options, store::MetadataStore* metadata,
                       store::BlobStore* blobs, const pipeline::JobKindRegistry* kinds,
                       ResourcesFactory resources, JobObserver* observer)
    : options_(options),
      metadata_(metadata),
      blobs_(blobs),
      kinds_(kinds),
      runner_(options.runner != nullptr ? options.runner : &in_process_),
      resources_(std::move(resources)),
      observer_(observer) {}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    const JobManagerOptions& options, store::MetadataStore* metadata, store::BlobStore* blobs,
    const pipeline::JobKindRegistry* kinds, ResourcesFactory resources, JobObserver* observer) {
  if (options.cpu_workers < 0) return absl::InvalidArgumentError("cpu_workers must be >= 0");
  const bool slots = options.cpu_workers > 0 || !options.cuda_devices.empty();
  if (!slots && options.queue == nullptr) {
    return absl::InvalidArgumentError("no worker slots: cpu_workers is 0 and no CUDA device");
  }
  if (slots && options.queue != nullptr && options.worker_id.empty()) {
    return absl::InvalidArgumentError("worker_id: required to claim from a shared queue");
  }
  if (options.queue != nullptr &&
      (options.lease <= options.renew_interval || options.renew_interval <= absl::ZeroDuration())) {
    return absl::InvalidArgumentError("renew_interval: must be positive and shorter than lease");
  }
  if (options.max_queued <= 0) return absl::InvalidArgumentError("max_queued must be > 0");
  if (!resources) return absl::InvalidArgumentError("resources: a factory is required");
  if (kinds == nullptr) return absl::InvalidArgumentError("kinds: a registry is required");
  std::unique_ptr<JobManager> m(
      new JobManager(options, metadata, blobs, kinds, std::move(resources), observer));
  absl::MutexLock lock(&m->mu_);
  for (const std::string& d : options.cuda_devices) m->slots_.push_back({d});
  for (int i = 0; i < options.cpu_workers; ++i) m->slots_.push_back({"cpu"});
  return m;
}

JobManager::~JobManager() { Drain(absl::ZeroDuration()); }

bool JobManager::accepting() const {
  absl::MutexLock lock(&mu_);
  return accepting_;
}

absl::Status JobManager::Start() {
  std::vector<v1::Job> given_up;
  absl::Status s = RecoverAndStartWorkers(given_up);
  if (observer_ != nullptr) {
    for (const v1::Job& job : given_up) observer_->OnFinished(job.kind(), job.state(), 0);
  }
  return s;
}

absl::Status JobManager::RecoverAndStartWorkers(std::vector<v1::Job>& given_up) {
  absl::MutexLock lock(&mu_);
  if (!workers_.empty() || !background_.empty()) {
    return absl::FailedPreconditionError("job manager already started");
  }
  if (shared()) return StartShared();
  // A job RUNNING in the store was interrupted by a crash: run it again.
  ASSIGN_OR_RETURN(std::vector<v1::Job> running, metadata_->JobsInState(v1::JOB_STATE_RUNNING));
  for (v1::Job& job : running) {
    if (job.attempts() >= options_.max_attempts) {
      v1::JobEvent log;
      log.mutable_log()->set_level("ERROR");
      log.mutable_log()->set_message(absl::StrCat("interrupted ", job.attempts(),
                                                  " times by server restarts; giving up"));
      RETURN_IF_ERROR(AppendLocked(job, std::move(log)));
      *job.mutable_error() = ToErrorStatus(absl::AbortedError(
          absl::StrCat("job was interrupted by ", job.attempts(), " server restarts")));
      *job.mutable_end_time() = ToProto(absl::Now());
      RETURN_IF_ERROR(ChangeStateLocked(job, v1::JOB_STATE_FAILED));
      given_up.push_back(job);
      continue;
    }
    v1::JobEvent log;
    log.mutable_log()->set_level("WARNING");
    log.mutable_log()->set_message(
        absl::StrCat("server restarted during attempt ", job.attempts(), "; re-queued"));
    RETURN_IF_ERROR(AppendLocked(job, std::move(log)));
    RETURN_IF_ERROR(ChangeStateLocked(job, v1::JOB_STATE_QUEUED));
  }
  ASSIGN_OR_RETURN(std::vector<v1::Job> queued, metadata_->JobsInState(v1::JOB_STATE_QUEUED));
  for (v1::Job& job : queued) queue_.push_back(std::move(job));
  accepting_ = true;
  stopping_ = false;
  for (size_t i = 0; i < slots_.size(); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(static_cast<int>(i)); });
  }
  ReportGaugesLocked();
  return absl::OkStatus();
}

void JobManager::Drain(absl::Duration grace) {
  std::vector<std::thread> workers;
  {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
    stopping_ = true;  // workers take no new jobs
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&idle), grace);
    for (auto& [id, run] : running_) {
      run.interrupted = true;
      run.token->Cancel();
    }
    workers.swap(workers_);
  }
  for (std::thread& t : workers) t.join();
  std::vector<std::thread> background;
  {
    absl::MutexLock lock(&mu_);
    background_stop_ = true;
    background.swap(background_);
  }
  for (std::thread& t : background) t.join();
}

absl::StatusOr<v1::Job> JobManager::Submit(const std::string& tenant,
                                           const SubmitRequest& request) {
  ASSIGN_OR_RETURN(const pipeline::JobKindHandler* handler, kinds_->Resolve(request.spec));
  const v1::JobKind kind = handler->kind();
  std::string device = request.device.empty() ? "auto" : request.device;
  // Stored and listed with the job, as is request_id (below).
  RETURN_IF_ERROR(pipeline::CheckNameLength("device", device, options_.limits));
  if (shared()) {
    // Workers of other processes serve it: only the form can be checked.
    if (device != "auto" && device != "cpu" && device != "cuda" &&
        !absl::StartsWith(device, "cuda:")) {
      return absl::InvalidArgumentError(absl::StrCat("device: \"", QuoteClientText(device),
                                                     "\" is not auto, cpu, cuda or cuda:N"));
    }
  } else if (device != "auto") {
    bool known = false;
    {
      absl::MutexLock lock(&mu_);
      for (const Slot& s : slots_) known = known || s.device == device;
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("device: \"", QuoteClientText(device),
                       "\" has no worker on this server (use auto, cpu or a visible cuda:N)"));
    }
  }
  if (request.deadline_seconds < 0) {
    return absl::InvalidArgumentError("deadline_seconds: must be >= 0");
  }
  if (absl::Seconds(request.deadline_seconds) > options_.max_deadline) {
    return absl::InvalidArgumentError(absl::StrCat("deadline_seconds: over the server maximum of ",
                                                   absl::ToInt64Seconds(options_.max_deadline)));
  }
  RETURN_IF_ERROR(pipeline::CheckNameLength("request_id", request.request_id, options_.limits));
  if (!request.request_id.empty()) {
    auto existing = metadata_->GetJobByRequestId(tenant, request.request_id);
    if (existing.ok()) {
      bool same = google::protobuf::util::MessageDifferencer::Equals(existing->spec(), request.spec) &&
                  existing->device() == device &&
                  (request.seed == 0 || existing->seed() == request.seed);
      if (!same) {
        return absl::AlreadyExistsError(
            absl::StrCat("request_id ", QuoteClientText(request.request_id), " was used for job ",
                         existing->id(), " with a different spec"));
      }
      return existing;
    }
    if (!absl::IsNotFound(existing.status())) return existing.status();
  }
  // Every kind: declared enum values and finite numbers only, sizes within
  // the server's limits.
  RETURN_IF_ERROR(pipeline::CheckSpecValues(request.spec));
  RETURN_IF_ERROR(pipeline::CheckSpecLimits(request.spec, options_.limits));
  RETURN_IF_ERROR(handler->Validate(request.spec, *resources_(tenant)));

  v1::Job job;
  job.set_id(NewJobId());
  job.set_kind(kind);
  job.set_state(v1::JOB_STATE_UNSPECIFIED);
  *job.mutable_spec() = request.spec;
  job.set_device(device);
  uint64_t seed = request.seed;
  if (seed == 0) {
    absl::BitGen gen;
    seed = absl::Uniform<uint64_t>(gen, 1, UINT64_MAX);
  }
  job.set_seed(seed);
  job.set_request_id(request.request_id);
  job.set_deadline_seconds(request.deadline_seconds);
  *job.mutable_create_time() = ToProto(absl::Now());
  {
    absl::MutexLock lock(&mu_);
    if (!accepting_) return absl::UnavailableError("server is draining; submit to another replica");
    int64_t queued = static_cast<int64_t>(queue_.size());
    if (shared()) {
      ASSIGN_OR_RETURN(queued, options_.queue->CountQueued());
    }
    if (queued >= options_.max_queued) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "queue is full (", options_.max_queued, " jobs); retry later"));
    }
    absl::Status s = metadata_->InsertJob(tenant, job, handler->ReferencedIds(request.spec));
    if (absl::IsAlreadyExists(s) && !request.request_id.empty()) {
      // Lost a race with the same request id: answer like the first one.
      auto existing = metadata_->GetJobByRequestId(tenant, request.request_id);
      if (existing.ok()) return existing;
    }
    RETURN_IF_ERROR(s);
    RETURN_IF_ERROR(ChangeStateLocked(job, v1::JOB_STATE_QUEUED));
    if (shared()) {
      ++submitted_;  // wakes this process's idle slots; others poll
    } else {
      queue_.push_back(job);
      ReportGaugesLocked();
    }
  }
  if (observer_ != nullptr) observer_->OnSubmitted(kind);
  Notify(job.id());
  return job;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& tenant, const std::string& job_id) {
  return metadata_->GetJob(tenant, job_id);
}

absl::StatusOr<store::Page<v1::Job>> JobManager::List(const std::string& tenant,
                                                      const store::JobFilter& filter,
                                                      int page_size,
                                                      const std::string& page_token) {
  return metadata_->ListJobs(tenant, filter, page_size, page_token);
}

absl::StatusOr<v1::Job> JobManager::Cancel(const std::string& tenant, const std::string& job_id) {
  if (shared()) return CancelShared(tenant, job_id);
  v1::Job job;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(job, metadata_->GetJob(tenant, job_id));
    if (IsTerminal(job.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", job_id, " already finished: ", v1::JobState_Name(job.state())));
    }
    auto it = std::find_if(queue_.begin(), queue_.end(),
                           [&](const v1::Job& j) { return j.id() == job_id; });
    // QUEUED but not in queue_: a worker took it and RunJob has not marked it
    // RUNNING yet; cancelling the row makes RunJob skip it.
    if (it != queue_.end() || job.state() == v1::JOB_STATE_QUEUED) {
      if (it != queue_.end()) queue_.erase(it);
      *job.mutable_end_time() = ToProto(absl::Now());
      *job.mutable_error() = ToErrorStatus(absl::CancelledError("cancelled while queued"));
      if (observer_ != nullptr) observer_->OnFinished(job.kind(), v1::JOB_STATE_CANCELLED, 0);
      RETURN_IF_ERROR(ChangeStateLocked(job, v1::JOB_STATE_CANCELLED));
      ReportGaugesLocked();
    } else if (auto run = running_.find(job_id); run != running_.end()) {
      run->second.token->Cancel();
    }
  }
  if (job.state() == v1::JOB_STATE_CANCELLED) Notify(job_id);
  return job;
}

absl::StatusOr<std::vector<v1::JobEvent>> JobManager::Events(const std::string& tenant,
                                                            const std::string& job_id,
                                                            int64_t after_sequence, int limit) {
  RETURN_IF_ERROR(metadata_->GetJob(tenant, job_id).status());
  return metadata_->ListEvents(job_id, after_sequence, limit);
}

uint64_t JobManager::Subscribe(const std::string& job_id, std::function<void()> listener) {
  auto fn = std::make_shared<std::function<void()>>(std::move(listener));
  // Events of a job that runs in another process arrive through the notifier.
  uint64_t notifier_handle = 0;
  if (options_.notifier != nullptr) {
    notifier_handle = options_.notifier->Subscribe(job_id, [fn] { (*fn)(); });
  }
  absl::MutexLock lock(&listeners_mu_);
  uint64_t handle = next_listener_++;
  listeners_[job_id][handle] = Listener{std::move(fn), notifier_handle};
  return handle;
}

void JobManager::Unsubscribe(const std::string& job_id, uint64_t handle) {
  uint64_t notifier_handle = 0;
  {
    // The writer lock waits for Notify calls in flight (they hold a reader lock).
    absl::MutexLock lock(&listeners_mu_);
    auto it = listeners_.find(job_id);
    if (it == listeners_.end()) return;
    auto l = it->second.find(handle);
    if (l == it->second.end()) return;
    notifier_handle = l->second.notifier_handle;
    it->second.erase(l);
    if (it->second.empty()) listeners_.erase(it);
  }
  // Returns once the notifier's calls in flight are done.
  if (options_.notifier != nullptr) options_.notifier->Unsubscribe(job_id, notifier_handle);
}

void JobManager::Notify(const std::string& job_id) {
  absl::ReaderMutexLock lock(&listeners_mu_);
  auto it = listeners_.find(job_id);
  if (it == listeners_.end()) return;
  for (auto& [handle, l] : it->second) (*l.fn)();
}

void JobManager::NotifyAll() {
  absl::ReaderMutexLock lock(&listeners_mu_);
  for (auto& [job_id, listeners] : listeners_) {
    for (auto& [handle, l] : listeners) (*l.fn)();
  }
}

absl::Status JobManager::AppendLocked(v1::Job& job, v1::JobEvent event) {
  event.set_job_id(job.id());
  event.set_sequence(job.last_sequence() + 1);
  *event.mutable_time() = ToProto(absl::Now());
  job.set_last_sequence(event.sequence());
  absl::Status s = metadata_->AppendEvent(event, &job);
  if (!s.ok()) job.set_last_sequence(event.sequence() - 1);
  return s;
}

absl::Status JobManager::ChangeStateLocked(v1::Job& job, v1::JobState to) {
  v1::JobState from = job.state();
  job.set_state(to);
  absl::Status s = AppendLocked(job, StateChangeEvent(job, from));
  if (!s.ok()) job.set_state(from);
  return s;
}

absl::Status JobManager::StoreStateLocked(v1::Job& job, v1::JobState to) {
  absl::Duration backoff = options_.end_retry_initial;
  for (int attempt = 1;; ++attempt) {
    absl::Status s = ChangeStateLocked(job, to);
    if (s.ok()) return s;
    fprintf(stderr, "compressd: job %s: storing state %s failed (try %d): %s\n", job.id().c_str(),
            v1::JobState_Name(to).c_str(), attempt, s.ToString().c_str());
    if (stopping_) return s;
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop), backoff);
    backoff = std::min(backoff * 2, options_.end_retry_max);
    // A cancel may have written meanwhile: continue from the stored row.
    auto fresh = metadata_->GetJobAnyTenant(job.id());
    if (!fresh.ok()) continue;
    if (IsTerminal(fresh->state())) {
      job = *std::move(fresh);
      return absl::OkStatus();
    }
    job.set_state(fresh->state());
    job.set_last_sequence(fresh->last_sequence());
  }
}

bool JobManager::SlotAccepts(int slot, const std::string& requested) const {
  return requested == "auto" || requested == slots_[slot].device;
}

void JobManager::ReportGaugesLocked() {
  if (observer_ == nullptr) return;
  int busy = 0;
  for (const Slot& s : slots_) busy += s.busy ? 1 : 0;
  // Shared queue: the housekeeping loop reports the depth of the shared one.
  if (!shared()) observer_->OnQueueDepth(static_cast<int>(queue_.size()));
  observer_->OnWorkers(busy, static_cast<int>(slots_.size()));
}

void JobManager::WorkerLoop(int slot) {
  while (true) {
    v1::Job job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (stopping_) return true;
        for (const v1::Job& j : queue_) {
          if (SlotAccepts(slot, j.device())) return true;
        }
        return false;
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      // A plain loop, not std::find_if, so the analysis sees mu_ held here.
      auto it = queue_.begin();
      while (!SlotAccepts(slot, it->device())) ++it;  // `ready` saw a match
      job = std::move(*it);
      queue_.erase(it);
      slots_[slot].busy = true;
      ReportGaugesLocked();
    }
    RunJob(slot, std::move(job));
    absl::MutexLock lock(&mu_);
    slots_[slot].busy = false;
    ReportGaugesLocked();
  }
}

absl::StatusOr<v1::JobResult> JobManager::RunHandler(pipeline::JobContext& context) {
  ASSIGN_OR_RETURN(const pipeline::JobKindHandler* handler,
                   kinds_->Resolve(context.job().spec()));
  absl::StatusOr<v1::JobResult> ran = runner_->Run(*handler, context);
  if (!ran.ok()) {
    return pipeline::WithResourceIds(ran.status(), handler->ReferencedIds(context.job().spec()),
                                     context.resources());
  }
  v1::JobResult result = *std::move(ran);
  if (result.summary().empty()) result.set_summary(handler->Summary(result));
  return result;
}

absl::StatusOr<v1::JobResult> JobManager::RunInContext(
    const v1::Job& job, const std::shared_ptr<engine::CancelToken>& token,
    const std::string& owner, int attempt) {
  // The job sees only its own tenant's models, datasets and jobs.
  ASSIGN_OR_RETURN(std::string tenant, metadata_->JobTenant(job.id()));
  Context context(this, job, token, resources_(tenant), owner, attempt);
  try {
    return RunHandler(context);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("unexpected exception: ", e.what()));
  } catch (...) {
    return absl::InternalError("unexpected exception");
  }
}

void JobManager::RunJob(int slot, v1::Job job) {
  auto token = std::make_shared<engine::CancelToken>();
  absl::Time start = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    // Drain began after the worker took the job: leave it QUEUED for the next
    // server rather than start it (Drain would not interrupt it).
    if (stopping_) return;
    // Re-read: the queued copy may be stale (recovery appended events).
    auto fresh = metadata_->GetJobAnyTenant(job.id());
    if (fresh.ok()) job = *std::move(fresh);
    if (job.state() != v1::JOB_STATE_QUEUED) return;  // cancelled meanwhile
    job.set_attempts(job.attempts() + 1);
    job.set_assigned_device(slots_[slot].device);
    *job.mutable_start_time() = ToProto(start);
    job.clear_error();
    absl::Duration deadline = job.deadline_seconds() > 0 ? absl::Seconds(job.deadline_seconds())
                                                         : options_.default_deadline;
    token->SetDeadline(start + deadline);
    if (!ChangeStateLocked(job, v1::JOB_STATE_RUNNING).ok()) return;
    running_[job.id()] = Running{token, false, "", 0, false};
  }
  Notify(job.id());

  absl::StatusOr<v1::JobResult> result = RunInContext(job, token, "", 0);

  v1::JobKind kind = job.kind();
  v1::JobState final_state;
  {
    absl::MutexLock lock(&mu_);
    bool interrupted = running_[job.id()].interrupted;
    running_.erase(job.id());
    auto fresh = metadata_->GetJobAnyTenant(job.id());
    if (fresh.ok()) job = *std::move(fresh);
    if (interrupted && !result.ok()) {
      // Shutdown, not the user's cancel: leave it for the next server.
      v1::JobEvent log;
      log.mutable_log()->set_level("WARNING");
      log.mutable_log()->set_message("interrupted by server shutdown; re-queued");
      AppendLocked(job, std::move(log)).IgnoreError();  // the state change says enough
      StoreStateLocked(job, v1::JOB_STATE_QUEUED).IgnoreError();  // logged; RUNNING re-queues
      final_state = v1::JOB_STATE_QUEUED;
    } else if (const auto crash = CrashOf(result); crash && !stopping_ &&
                                                  job.attempts() < options_.max_attempts) {
      // The process that ran the model died: this attempt counts, the next
      // one runs in a fresh process.
      v1::JobEvent log;
      log.mutable_log()->set_level("WARNING");
      log.mutable_log()->set_message(absl::StrCat("attempt ", job.attempts(), " of ",
                                                  options_.max_attempts, ": ", *crash,
                                                  "; re-queued"));
      AppendLocked(job, std::move(log)).IgnoreError();
      if (StoreStateLocked(job, v1::JOB_STATE_QUEUED).ok()) queue_.push_back(job);
      final_state = v1::JOB_STATE_QUEUED;
    } else {
      *job.mutable_end_time() = ToProto(absl::Now());
      if (result.ok()) {
        *job.mutable_result() = *result;
        final_state = v1::JOB_STATE_SUCCEEDED;
      } else {
        absl::Status error = result.status();
        if (const auto crash = CrashOf(result); crash && job.attempts() > 1) {
          error = absl::Status(error.code(), absl::StrCat(error.message(), " (on each of ",
                                                         job.attempts(), " attempts)"));
        }
        *job.mutable_error() = ToErrorStatus(error);
        final_state = absl::IsCancelled(error) ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED;
      }
      // Metrics first: whoever sees the terminal event also sees it counted.
      if (observer_ != nullptr) {
        observer_->OnFinished(kind, final_state, absl::ToDoubleSeconds(absl::Now() - start));
      }
      // Logged on each failure; a server stopped meanwhile re-runs the job.
      StoreStateLocked(job, final_state).IgnoreError();
    }
  }
  Notify(job.id());
}

}  // namespace compress::jobs
