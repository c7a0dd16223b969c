#include "server/jobs/job_manager.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/blob_store.h"
#include "server/store/metadata_store.h"
#include "server/store/pg/connection.h"
#include "server/store/pg/listener.h"
#include "server/store/pg/pg_job_queue.h"
#include "server/store/pg_metadata_store.h"
#include "server/util/sha256.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace compress::jobs {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::testing::HasSubstr;
using ::testing::SizeIs;

const std::string kTenant = store::kDefaultTenant;

constexpr char kReport[] = R"({"ok": true, "layers": 2})";

// Behaviour on demand, chosen by the spec's inspect.model_id:
//   ok    - stage, progress 1..5, one artifact, a result
//   slow  - checks the cancel token every 10 ms for up to 30 s (or until
//           ReleaseSlow(), then succeeds)
//   fail  - INTERNAL
//   throw - throws std::runtime_error
// Registered as the only kind (INSPECT), so other kinds are UNIMPLEMENTED.
class FakeKind : public pipeline::JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_INSPECT; }

  absl::Status Validate(const v1::JobSpec& spec, pipeline::Resources& resources) const override {
    const std::string& id = spec.inspect().model_id();
    if (id == "ok" || id == "slow" || id == "fail" || id == "throw") return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("spec.inspect.model_id: model ", id, " not found"));
  }

  std::vector<std::string> ReferencedIds(const v1::JobSpec& spec) const override {
    return {spec.inspect().model_id()};
  }

  // "ok" jobs leave their summary to this.
  std::string Summary(const v1::JobResult& result) const override { return "ok done"; }

  absl::StatusOr<v1::JobResult> Run(pipeline::JobContext& context) const override {
    const std::string id = context.job().spec().inspect().model_id();
    {
      absl::MutexLock lock(&mu_);
      ++runs_[context.job().id()];
      devices_[context.job().id()] = context.device();
      attempts_seen_[context.job().id()] = context.job().attempts();
    }
    v1::JobResult result;
    if (id == "ok") {
      context.progress().StageStart("work", 0, 1);
      for (int i = 1; i <= 5; ++i) context.progress().Progress("work", i, 5);
      context.progress().Log("INFO", "halfway");
      context.progress().PartialResult("layer/0", "{\"numel\": 40}");
      context.progress().StageEnd("work");
      auto artifact = context.AddArtifact("report.json", "application/json", kReport);
      if (!artifact.ok()) return artifact.status();
      return result;
    }
    if (id == "slow") {
      absl::Time end = absl::Now() + absl::Seconds(30);
      while (absl::Now() < end) {
        absl::Status s = context.cancel().Check();
        if (!s.ok()) return s;
        if (release_slow_.load()) {
          result.set_summary("slow released");
          return result;
        }
        absl::SleepFor(absl::Milliseconds(10));
      }
      result.set_summary("slow ran 30 s");
      return result;
    }
    if (id == "fail") return absl::InternalError("boom: the fake failed");
    if (id == "throw") throw std::runtime_error("kaboom");
    return absl::NotFoundError("unknown model");
  }

  void ReleaseSlow() { release_slow_.store(true); }
  int Runs(const std::string& job_id) {
    absl::MutexLock lock(&mu_);
    auto it = runs_.find(job_id);
    return it == runs_.end() ? 0 : it->second;
  }
  std::string Device(const std::string& job_id) {
    absl::MutexLock lock(&mu_);
    return devices_[job_id];
  }
  int AttemptSeen(const std::string& job_id) {
    absl::MutexLock lock(&mu_);
    return attempts_seen_[job_id];
  }

 private:
  std::atomic<bool> release_slow_{false};
  mutable absl::Mutex mu_;
  mutable std::map<std::string, int> runs_ ABSL_GUARDED_BY(mu_);
  mutable std::map<std::string, std::string> devices_ ABSL_GUARDED_BY(mu_);
  mutable std::map<std::string, int> attempts_seen_ ABSL_GUARDED_BY(mu_);
};

class FakeResources : public pipeline::Resources {
 public:
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    return absl::NotFoundError("no models here");
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    return absl::NotFoundError("no datasets here");
  }
  std::string ModelPath(const std::string& id) override { return ""; }
  std::string DatasetPath(const std::string& id) override { return ""; }
  std::string BuiltinDataDir() override { return ""; }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    return absl::NotFoundError("no jobs here");
  }
};

ResourcesFactory FakeResourcesFactory() {
  return [](const std::string& tenant) { return std::make_unique<FakeResources>(); };
}

class FakeObserver : public JobObserver {
 public:
  void OnSubmitted(v1::JobKind kind) override {
    absl::MutexLock lock(&mu_);
    ++submitted_;
  }
  void OnFinished(v1::JobKind kind, v1::JobState state, double run_seconds) override {
    absl::MutexLock lock(&mu_);
    ++finished_[state];
  }
  void OnQueueDepth(int queued) override {
    absl::MutexLock lock(&mu_);
    max_queue_depth_ = std::max(max_queue_depth_, queued);
  }
  void OnWorkers(int busy, int total) override {
    absl::MutexLock lock(&mu_);
    bad_workers_ = bad_workers_ || busy < 0 || busy > total;
  }
  int submitted() {
    absl::MutexLock lock(&mu_);
    return submitted_;
  }
  int finished(v1::JobState state) {
    absl::MutexLock lock(&mu_);
    return finished_[state];
  }
  int max_queue_depth() {
    absl::MutexLock lock(&mu_);
    return max_queue_depth_;
  }
  bool bad_workers() {
    absl::MutexLock lock(&mu_);
    return bad_workers_;
  }

 private:
  absl::Mutex mu_;
  int submitted_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<v1::JobState, int> finished_ ABSL_GUARDED_BY(mu_);
  int max_queue_depth_ ABSL_GUARDED_BY(mu_) = 0;
  bool bad_workers_ ABSL_GUARDED_BY(mu_) = false;
};

// Polls `done` every 10 ms for up to 20 s.
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
  absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

SubmitRequest Request(const std::string& model_id, const std::string& request_id = "") {
  SubmitRequest r;
  r.request_id = request_id;
  r.spec.mutable_inspect()->set_model_id(model_id);
  r.spec.mutable_inspect()->add_input_shape(1);
  r.spec.mutable_inspect()->add_input_shape(4);
  return r;
}

// The in-memory queue over SQLite (JobManagerTest), and, for the tests that
// hold for both (JobManagerBothTest), also the shared queue over a
// PostgreSQL 15 the test starts (tests/pg_test_util.h): leases, fenced
// writes, LISTEN/NOTIFY.
class JobManagerTest : public ::testing::Test {
 protected:
  virtual bool Postgres() const { return false; }

  void SetUp() override {
    auto fake = std::make_unique<FakeKind>();
    fake_ = fake.get();
    ASSERT_TRUE(kinds_.Register(std::move(fake)).ok());
    ASSERT_TRUE(dir_.ok());
    auto blobs = store::BlobStore::Create(dir_.path() + "/data");
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = std::move(*blobs);
    if (Postgres()) {
      auto pg = testutil::TestPostgres::Get();
      ASSERT_TRUE(pg.ok()) << pg.status();
      auto url = (*pg)->NewDatabase();
      ASSERT_TRUE(url.ok()) << url.status();
      url_ = *url;
    }
    OpenMetadata();
    options_.cpu_workers = 1;
    options_.progress_interval = absl::Milliseconds(200);
  }
  void TearDown() override {
    for (auto& m : others_) m.reset();
    manager_.reset();
  }

  // Opens the store again (a new process would), and on PostgreSQL the
  // shared queue and a LISTEN connection over it.
  void OpenMetadata() {
    if (!Postgres()) {
      auto metadata = store::OpenMetadataStore(dir_.path() + "/meta.db");
      ASSERT_TRUE(metadata.ok()) << metadata.status();
      metadata_ = std::move(*metadata);
      return;
    }
    listener_.reset();
    queue_.reset();
    store::PgMetadataStoreOptions o;
    o.url = url_;
    auto metadata = store::PgMetadataStore::Create(o);
    ASSERT_TRUE(metadata.ok()) << metadata.status();
    auto queue = store::PgJobQueue::Create(&(*metadata)->pool());
    ASSERT_TRUE(queue.ok()) << queue.status();
    store::pg::ListenerOptions l;
    l.conninfo = url_;
    auto listener = store::pg::Listener::Create(l);
    ASSERT_TRUE(listener.ok()) << listener.status();
    metadata_ = std::move(*metadata);
    queue_ = std::move(*queue);
    listener_ = std::move(*listener);
    options_.queue = queue_.get();
    options_.notifier = listener_.get();
    options_.worker_id = "test-worker";
    // Short enough that tests of leases take a few seconds.
    options_.lease = absl::Seconds(2);
    options_.renew_interval = absl::Milliseconds(200);
    options_.poll_interval = absl::Milliseconds(50);
    options_.reap_interval = absl::Milliseconds(200);
  }

  // A new manager over the current stores, started.
  void StartManager() {
    auto manager = JobManager::Create(options_, metadata_.get(), blobs_.get(), &kinds_,
                                      FakeResourcesFactory(), &observer_);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = std::move(*manager);
    absl::Status s = manager_->Start();
    ASSERT_TRUE(s.ok()) << s;
  }

  v1::Job Submit(const SubmitRequest& request) {
    auto job = manager_->Submit(kTenant, request);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }

  v1::JobState StateOf(const std::string& id) {
    auto job = metadata_->GetJobAnyTenant(id);
    return job.ok() ? job->state() : v1::JOB_STATE_UNSPECIFIED;
  }
  // Waits for the job to reach `state`; returns the job row.
  v1::Job WaitForState(const std::string& id, v1::JobState state) {
    bool reached = WaitUntil([&] { return StateOf(id) == state; });
    EXPECT_TRUE(reached) << "job " << id << " is " << v1::JobState_Name(StateOf(id)) << ", wanted "
                         << v1::JobState_Name(state);
    auto job = metadata_->GetJobAnyTenant(id);
    return job.ok() ? *job : v1::Job();
  }

  std::vector<v1::JobEvent> AllEvents(const std::string& id) {
    auto events = metadata_->ListEvents(id, 0, 100000);
    EXPECT_TRUE(events.ok()) << events.status();
    return events.ok() ? *events : std::vector<v1::JobEvent>();
  }

  // Sequences 1..n without gaps, and the row's last_sequence agrees.
  void ExpectGapless(const std::string& id) {
    std::vector<v1::JobEvent> events = AllEvents(id);
    for (size_t i = 0; i < events.size(); ++i) {
      EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1)) << id;
      EXPECT_EQ(events[i].job_id(), id);
    }
    EXPECT_EQ(metadata_->GetJobAnyTenant(id)->last_sequence(), static_cast<int64_t>(events.size()));
  }

  // State transitions in event order, e.g. {QUEUED, RUNNING, SUCCEEDED}.
  std::vector<v1::JobState> Transitions(const std::string& id) {
    std::vector<v1::JobState> out;
    v1::JobState from = v1::JOB_STATE_UNSPECIFIED;
    for (const v1::JobEvent& e : AllEvents(id)) {
      if (!e.has_state_change()) continue;
      EXPECT_EQ(e.state_change().from(), from) << id << " seq " << e.sequence();
      from = e.state_change().to();
      out.push_back(from);
    }
    return out;
  }

  // Writes a job row as an earlier, crashed process would have left it.
  v1::Job PlantJob(const std::string& id, const std::string& model_id, v1::JobState state,
                   int attempts) {
    v1::Job job;
    job.set_id(id);
    job.set_kind(v1::JOB_KIND_INSPECT);
    *job.mutable_spec() = Request(model_id).spec;
    job.set_device("auto");
    job.set_seed(42);
    job.mutable_create_time()->set_seconds(1700000000);
    job.set_attempts(attempts);
    if (attempts > 0) job.set_assigned_device("cpu");
    EXPECT_TRUE(metadata_->InsertJob(kTenant, job, {}).ok());
    std::vector<v1::JobState> path = {v1::JOB_STATE_QUEUED};
    if (state == v1::JOB_STATE_RUNNING) path.push_back(v1::JOB_STATE_RUNNING);
    for (v1::JobState to : path) {
      v1::JobEvent e;
      e.set_job_id(id);
      e.set_sequence(job.last_sequence() + 1);
      e.mutable_state_change()->set_from(job.state());
      e.mutable_state_change()->set_to(to);
      job.set_state(to);
      job.set_last_sequence(e.sequence());
      EXPECT_TRUE(metadata_->AppendEvent(e, &job).ok());
    }
    return job;
  }

  ScopedTempDir dir_;
  JobManagerOptions options_;
  std::string url_;  // PostgreSQL: this test's database
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<store::MetadataStore> metadata_;
  std::unique_ptr<store::JobQueue> queue_;
  std::unique_ptr<store::pg::Listener> listener_;
  // The registry owns the fake; fake_ stays valid as long as kinds_.
  FakeKind* fake_ = nullptr;
  pipeline::JobKindRegistry kinds_;
  FakeObserver observer_;
  std::vector<std::unique_ptr<JobManager>> others_;  // more replicas
  std::unique_ptr<JobManager> manager_;  // last: destroyed first
};

class JobManagerBothTest : public JobManagerTest,
                           public ::testing::WithParamInterface<std::string> {
 protected:
  bool Postgres() const override { return GetParam() == "postgres"; }
};

INSTANTIATE_TEST_SUITE_P(Backends, JobManagerBothTest, ::testing::Values("sqlite", "postgres"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// --- Creation and validation ------------------------------------------------

TEST_F(JobManagerTest, CreateValidatesOptions) {
  JobManagerOptions bad = options_;
  bad.cpu_workers = -1;
  EXPECT_EQ(JobManager::Create(bad, metadata_.get(), blobs_.get(), &kinds_, FakeResourcesFactory(), nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  bad = options_;
  bad.cpu_workers = 0;
  EXPECT_EQ(JobManager::Create(bad, metadata_.get(), blobs_.get(), &kinds_, FakeResourcesFactory(), nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  bad = options_;
  bad.max_queued = 0;
  EXPECT_EQ(JobManager::Create(bad, metadata_.get(), blobs_.get(), &kinds_, FakeResourcesFactory(), nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(JobManagerBothTest, SubmitBeforeStartIsUnavailable) {
  auto manager =
      JobManager::Create(options_, metadata_.get(), blobs_.get(), &kinds_, FakeResourcesFactory(), nullptr);
  ASSERT_TRUE(manager.ok());
  EXPECT_FALSE((*manager)->accepting());
  EXPECT_EQ((*manager)->Submit(kTenant, Request("ok")).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(JobManagerTest, SubmitValidates) {
  StartManager();
  EXPECT_TRUE(manager_->accepting());
  // Through the kind handler's Validate.
  auto unknown = manager_->Submit(kTenant, Request("missing-model"));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("model_id"));
  SubmitRequest analyze;
  analyze.spec.mutable_analyze()->set_model_id("ok");
  EXPECT_EQ(manager_->Submit(kTenant, analyze).status().code(), absl::StatusCode::kUnimplemented);
  // By the manager itself.
  EXPECT_EQ(manager_->Submit(kTenant, SubmitRequest()).status().code(), absl::StatusCode::kInvalidArgument);
  SubmitRequest r = Request("ok");
  r.device = "cuda:7";
  auto no_device = manager_->Submit(kTenant, r);
  EXPECT_EQ(no_device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_device.status().message()), HasSubstr("device"));
  r = Request("ok");
  r.deadline_seconds = -1;
  EXPECT_EQ(manager_->Submit(kTenant, r).status().code(), absl::StatusCode::kInvalidArgument);
  r.deadline_seconds = absl::ToInt64Seconds(options_.max_deadline) + 1;
  auto too_long = manager_->Submit(kTenant, r);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_long.status().message()), HasSubstr("deadline_seconds"));
  // Nothing was stored for the refused ones.
  auto list = manager_->List(kTenant, {}, 100, "");
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->items.empty());
  EXPECT_EQ(observer_.submitted(), 0);
}

// The server's limits (JobManagerOptions::limits) before the kind's own
// checks; long client strings come back cut to a bounded prefix.
TEST_F(JobManagerTest, SubmitEnforcesTheServerLimits) {
  options_.limits.max_inspect_elements = 3;
  StartManager();
  auto over = manager_->Submit(kTenant, Request("ok"));  // [1, 4]: 4 elements
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(over.status().message(),
            "spec.inspect.input_shape: [1,4] is over the server limit of 3 input elements "
            "(--max_inspect_elements)");
  SubmitRequest r = Request("ok", std::string(257, 'r'));
  r.spec.mutable_inspect()->set_input_shape(1, 3);
  EXPECT_EQ(manager_->Submit(kTenant, r).status().message(),
            "request_id: 257 bytes is over the server limit of 256 (--max_name_bytes)");
  r.request_id.clear();
  r.device = std::string(1 << 20, 'd');
  auto device = manager_->Submit(kTenant, r);
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(device.status().message(),
            "device: 1048576 bytes is over the server limit of 256 (--max_name_bytes)");
  r.device = std::string(200, 'd');  // within the limit, but no such device: quoted short
  device = manager_->Submit(kTenant, r);
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(device.status().message().size(), 200u);
  EXPECT_THAT(std::string(device.status().message()), HasSubstr("...(200 bytes)"));
  auto missing = manager_->Get(kTenant, std::string(1 << 20, 'j'));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_LT(missing.status().message().size(), 200u);
  r.device = "auto";
  EXPECT_TRUE(manager_->Submit(kTenant, r).ok());  // [1, 3] is within the limit
}

// --- Running ----------------------------------------------------------------

TEST_P(JobManagerBothTest, OkJobSucceedsWithEventsAndArtifact) {
  StartManager();
  SubmitRequest r = Request("ok");
  r.seed = 1234;
  v1::Job submitted = Submit(r);
  EXPECT_EQ(submitted.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(submitted.kind(), v1::JOB_KIND_INSPECT);
  EXPECT_EQ(submitted.seed(), 1234u);
  EXPECT_EQ(submitted.device(), "auto");
  EXPECT_TRUE(absl::StartsWith(submitted.id(), "job-"));

  v1::Job job = WaitForState(submitted.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.result().summary(), "ok done");
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_EQ(job.assigned_device(), "cpu");
  EXPECT_EQ(fake_->Device(job.id()), "cpu");
  EXPECT_EQ(job.error().code(), 0);
  EXPECT_GT(job.start_time().seconds(), 0);
  EXPECT_GE(job.end_time().seconds(), job.start_time().seconds());
  EXPECT_EQ(job.progress().done(), 5);
  EXPECT_EQ(job.progress().total(), 5);
  EXPECT_EQ(fake_->Runs(job.id()), 1);

  ExpectGapless(job.id());
  EXPECT_EQ(Transitions(job.id()),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                       v1::JOB_STATE_SUCCEEDED}));
  std::vector<v1::JobEvent> events = AllEvents(job.id());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state_change().to(), v1::JOB_STATE_SUCCEEDED);
  int stage_starts = 0, stage_ends = 0, artifacts = 0, logs = 0, partials = 0;
  std::vector<int64_t> progress_done;
  for (const v1::JobEvent& e : events) {
    stage_starts += e.has_stage_start();
    stage_ends += e.has_stage_end();
    artifacts += e.has_artifact_ready();
    logs += e.has_log();
    partials += e.has_partial_result();
    if (e.has_progress()) progress_done.push_back(e.progress().done());
  }
  EXPECT_EQ(stage_starts, 1);
  EXPECT_EQ(stage_ends, 1);
  EXPECT_EQ(artifacts, 1);
  EXPECT_EQ(logs, 1);
  EXPECT_EQ(partials, 1);
  // First and last always; the ones between are coalesced (200 ms interval).
  ASSERT_GE(progress_done.size(), 2u);
  EXPECT_EQ(progress_done.front(), 1);
  EXPECT_EQ(progress_done.back(), 5);
  EXPECT_TRUE(std::is_sorted(progress_done.begin(), progress_done.end()));

  // The artifact: row, blob and digest agree with the bytes.
  auto listed = metadata_->ListArtifacts(job.id());
  ASSERT_TRUE(listed.ok());
  ASSERT_THAT(*listed, SizeIs(1));
  const v1::Artifact& a = (*listed)[0];
  EXPECT_EQ(a.name(), "report.json");
  EXPECT_EQ(a.content_type(), "application/json");
  EXPECT_EQ(a.sha256(), Sha256Hex(kReport));
  EXPECT_EQ(a.size_bytes(), static_cast<int64_t>(std::string(kReport).size()));
  EXPECT_EQ(ReadFile(blobs_->PathFor(a.sha256())), kReport);

  // Events() pages through the same log.
  auto tail = manager_->Events(kTenant, job.id(), 2, 3);
  ASSERT_TRUE(tail.ok());
  ASSERT_THAT(*tail, SizeIs(3));
  EXPECT_EQ((*tail)[0].sequence(), 3);
  EXPECT_EQ(manager_->Get(kTenant, job.id())->state(), v1::JOB_STATE_SUCCEEDED);

  EXPECT_EQ(observer_.submitted(), 1);
  EXPECT_TRUE(WaitUntil([&] { return observer_.finished(v1::JOB_STATE_SUCCEEDED) == 1; }));
  EXPECT_FALSE(observer_.bad_workers());
}

TEST_P(JobManagerBothTest, ServerPicksASeed) {
  StartManager();
  v1::Job a = Submit(Request("ok"));
  v1::Job b = Submit(Request("ok"));
  EXPECT_NE(a.seed(), 0u);
  EXPECT_NE(b.seed(), 0u);
  EXPECT_NE(a.id(), b.id());
  WaitForState(a.id(), v1::JOB_STATE_SUCCEEDED);
  WaitForState(b.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(metadata_->GetJobAnyTenant(a.id())->seed(), a.seed());
}

TEST_P(JobManagerBothTest, PipelineErrorFailsTheJob) {
  StartManager();
  v1::Job job = WaitForState(Submit(Request("fail")).id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_THAT(job.error().message(), HasSubstr("boom"));
  EXPECT_GT(job.end_time().seconds(), 0);
  ExpectGapless(job.id());
  std::vector<v1::JobEvent> events = AllEvents(job.id());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state_change().to(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(events.back().state_change().error().code(),
            static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_TRUE(WaitUntil([&] { return observer_.finished(v1::JOB_STATE_FAILED) == 1; }));
}

// A runner whose process dies on the first `crashes` attempts (as a
// ChildJobRunner reports it: a status with kWorkerCrashPayload), then runs
// the handler.
class CrashingRunner : public JobRunner {
 public:
  explicit CrashingRunner(int crashes) : crashes_(crashes) {}
  absl::StatusOr<v1::JobResult> Run(const pipeline::JobKindHandler& handler,
                                    pipeline::JobContext& context) override {
    if (calls_.fetch_add(1) < crashes_) {
      absl::Status s = absl::InternalError(
          "the worker process running the model killed by signal 11 (SIGSEGV)");
      s.SetPayload(kWorkerCrashPayload, absl::Cord("killed by signal 11 (SIGSEGV)"));
      return s;
    }
    return handler.Run(context);
  }
  int calls() const { return calls_.load(); }

 private:
  const int crashes_;
  std::atomic<int> calls_{0};
};

TEST_P(JobManagerBothTest, ACrashedAttemptIsRetriedInAFreshRun) {
  CrashingRunner runner(1);
  options_.runner = &runner;
  options_.max_attempts = 3;
  StartManager();
  v1::Job job = WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.attempts(), 2);
  EXPECT_EQ(runner.calls(), 2);
  bool logged = false;
  for (const v1::JobEvent& e : AllEvents(job.id())) {
    logged |= e.has_log() && absl::StrContains(e.log().message(),
                                               "attempt 1 of 3: killed by signal 11 (SIGSEGV); "
                                               "re-queued");
  }
  EXPECT_TRUE(logged);
  ExpectGapless(job.id());
}

TEST_P(JobManagerBothTest, AJobThatCrashesEveryAttemptFailsNamingTheSignal) {
  CrashingRunner runner(100);
  options_.runner = &runner;
  options_.max_attempts = 3;
  StartManager();
  v1::Job job = WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.attempts(), 3);
  EXPECT_EQ(runner.calls(), 3);  // not re-run forever
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_THAT(job.error().message(), HasSubstr("SIGSEGV"));
  EXPECT_THAT(job.error().message(), HasSubstr("on each of 3 attempts"));
  ExpectGapless(job.id());
}

TEST_P(JobManagerBothTest, ExceptionFailsTheJobAndTheWorkerLivesOn) {
  StartManager();
  v1::Job job = WaitForState(Submit(Request("throw")).id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_THAT(job.error().message(), HasSubstr("kaboom"));
  ExpectGapless(job.id());
  // The only worker still takes jobs.
  WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_P(JobManagerBothTest, ManyJobsOnTwoWorkersHaveGaplessLogs) {
  options_.cpu_workers = 2;
  StartManager();
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    ids.push_back(Submit(Request(i % 4 == 3 ? "fail" : "ok")).id());
  }
  for (int i = 0; i < 20; ++i) {
    v1::JobState want = i % 4 == 3 ? v1::JOB_STATE_FAILED : v1::JOB_STATE_SUCCEEDED;
    WaitForState(ids[i], want);
    ExpectGapless(ids[i]);
    EXPECT_EQ(Transitions(ids[i]),
              (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, want}));
    EXPECT_EQ(fake_->Runs(ids[i]), 1);
  }
  EXPECT_TRUE(WaitUntil([&] {
    return observer_.finished(v1::JOB_STATE_SUCCEEDED) == 15 &&
           observer_.finished(v1::JOB_STATE_FAILED) == 5;
  }));
  EXPECT_EQ(observer_.submitted(), 20);
  EXPECT_FALSE(observer_.bad_workers());

  // List: all 20, newest first, and the filter.
  std::vector<std::string> listed;
  std::string token;
  do {
    auto page = manager_->List(kTenant, {}, 7, token);
    ASSERT_TRUE(page.ok());
    for (const auto& j : page->items) listed.push_back(j.id());
    token = page->next_page_token;
  } while (!token.empty());
  EXPECT_THAT(listed, ::testing::UnorderedElementsAreArray(ids));
  store::JobFilter failed;
  failed.state = v1::JOB_STATE_FAILED;
  EXPECT_THAT(manager_->List(kTenant, failed, 100, "")->items, SizeIs(5));
}

TEST_P(JobManagerBothTest, DeviceSlots) {
  options_.cpu_workers = 1;
  options_.cuda_devices = {"cuda:0"};
  StartManager();
  SubmitRequest on_cuda = Request("ok");
  on_cuda.device = "cuda:0";
  v1::Job a = WaitForState(Submit(on_cuda).id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(a.device(), "cuda:0");
  EXPECT_EQ(a.assigned_device(), "cuda:0");
  EXPECT_EQ(fake_->Device(a.id()), "cuda:0");
  SubmitRequest on_cpu = Request("ok");
  on_cpu.device = "cpu";
  v1::Job b = WaitForState(Submit(on_cpu).id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(b.assigned_device(), "cpu");
}

// --- Idempotency ------------------------------------------------------------

TEST_P(JobManagerBothTest, RequestIdIsIdempotent) {
  StartManager();
  v1::Job first = Submit(Request("ok", "req-1"));
  v1::Job again = Submit(Request("ok", "req-1"));
  EXPECT_EQ(again.id(), first.id());
  EXPECT_EQ(again.seed(), first.seed());
  WaitForState(first.id(), v1::JOB_STATE_SUCCEEDED);
  // Also after it finished.
  v1::Job later = Submit(Request("ok", "req-1"));
  EXPECT_EQ(later.id(), first.id());
  EXPECT_EQ(later.state(), v1::JOB_STATE_SUCCEEDED);
  SubmitRequest same_seed = Request("ok", "req-1");
  same_seed.seed = first.seed();
  EXPECT_EQ(Submit(same_seed).id(), first.id());

  // Same key, another spec / device / seed.
  auto other_spec = manager_->Submit(kTenant, Request("fail", "req-1"));
  EXPECT_EQ(other_spec.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(other_spec.status().message()), HasSubstr(first.id()));
  SubmitRequest other_device = Request("ok", "req-1");
  other_device.device = "cpu";
  EXPECT_EQ(manager_->Submit(kTenant, other_device).status().code(), absl::StatusCode::kAlreadyExists);
  SubmitRequest other_seed = Request("ok", "req-1");
  other_seed.seed = first.seed() + 1;
  EXPECT_EQ(manager_->Submit(kTenant, other_seed).status().code(), absl::StatusCode::kAlreadyExists);

  EXPECT_THAT(manager_->List(kTenant, {}, 100, "")->items, SizeIs(1));
  EXPECT_EQ(fake_->Runs(first.id()), 1);
  EXPECT_EQ(observer_.submitted(), 1);
}

TEST_P(JobManagerBothTest, ConcurrentSubmitsWithOneRequestIdMakeOneJob) {
  StartManager();
  constexpr int kThreads = 6;
  std::vector<std::string> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto job = manager_->Submit(kTenant, Request("ok", "req-race"));
      if (job.ok()) ids[t] = job->id();
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(ids[t], ids[0]) << t;
  ASSERT_FALSE(ids[0].empty());
  WaitForState(ids[0], v1::JOB_STATE_SUCCEEDED);
  EXPECT_THAT(manager_->List(kTenant, {}, 100, "")->items, SizeIs(1));
  EXPECT_EQ(fake_->Runs(ids[0]), 1);
}

// --- Queue bound and cancellation ------------------------------------------

TEST_P(JobManagerBothTest, ReferencedIdsHoldWhileTheJobIsActive) {
  StartManager();
  // The handler names the ids; the store keeps them as rows with the job.
  v1::Job job = Submit(Request("slow"));
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(*metadata_->IsReferencedByActiveJob(kTenant, "slow"));
  EXPECT_FALSE(*metadata_->IsReferencedByActiveJob(kTenant, "ok"));
  EXPECT_FALSE(*metadata_->IsReferencedByActiveJob("alpha", "slow"));
  ASSERT_TRUE(manager_->Cancel(kTenant, job.id()).ok());
  WaitForState(job.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(*metadata_->IsReferencedByActiveJob(kTenant, "slow"));
}

TEST_P(JobManagerBothTest, QueueBoundAndCancel) {
  options_.max_queued = 2;
  StartManager();
  v1::Job running = Submit(Request("slow"));
  WaitForState(running.id(), v1::JOB_STATE_RUNNING);
  v1::Job q1 = Submit(Request("slow"));
  v1::Job q2 = Submit(Request("slow"));
  auto full = manager_->Submit(kTenant, Request("ok"));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  // The shared queue's depth is reported by the housekeeping loop.
  EXPECT_TRUE(WaitUntil([&] { return observer_.max_queue_depth() >= 2; }));

  // Queued: cancelled at once.
  auto c1 = manager_->Cancel(kTenant, q1.id());
  ASSERT_TRUE(c1.ok()) << c1.status();
  EXPECT_EQ(c1->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(c1->error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(StateOf(q1.id()), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(fake_->Runs(q1.id()), 0);
  ExpectGapless(q1.id());
  EXPECT_EQ(Transitions(q1.id()),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_CANCELLED}));
  // That freed a place.
  v1::Job q3 = Submit(Request("slow"));

  // Running: ends CANCELLED at the next check.
  auto c0 = manager_->Cancel(kTenant, running.id());
  ASSERT_TRUE(c0.ok()) << c0.status();
  v1::Job cancelled = WaitForState(running.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(Transitions(running.id()),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                       v1::JOB_STATE_CANCELLED}));
  ExpectGapless(running.id());

  // Finished: refused. Unknown: not found.
  EXPECT_EQ(manager_->Cancel(kTenant, running.id()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->Cancel(kTenant, q1.id()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->Cancel(kTenant, "job-nope").status().code(), absl::StatusCode::kNotFound);

  // The rest.
  for (const v1::Job& j : {q2, q3}) ASSERT_TRUE(manager_->Cancel(kTenant, j.id()).ok());
  WaitForState(q2.id(), v1::JOB_STATE_CANCELLED);
  WaitForState(q3.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(WaitUntil([&] { return observer_.finished(v1::JOB_STATE_CANCELLED) == 4; }));
}

TEST_P(JobManagerBothTest, CancelRightAfterSubmitAlwaysCancels) {
  // Races Cancel against the worker taking the job: whichever wins, a
  // cancel that was answered OK must end the job CANCELLED.
  options_.cpu_workers = 2;
  StartManager();
  std::vector<std::string> ids;
  for (int i = 0; i < 60; ++i) {
    v1::Job job = Submit(Request("slow"));
    if (i % 3 == 1) absl::SleepFor(absl::Microseconds(50 * i));
    auto c = manager_->Cancel(kTenant, job.id());
    ASSERT_TRUE(c.ok()) << c.status();
    ids.push_back(job.id());
  }
  for (const std::string& id : ids) {
    v1::Job job = WaitForState(id, v1::JOB_STATE_CANCELLED);
    ExpectGapless(id);
    EXPECT_LE(fake_->Runs(id), 1);
  }
}

TEST_P(JobManagerBothTest, DeadlineFailsWithDeadlineExceeded) {
  StartManager();
  SubmitRequest r = Request("slow");
  r.deadline_seconds = 1;
  v1::Job job = WaitForState(Submit(r).id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.deadline_seconds(), 1);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  ExpectGapless(job.id());
}

TEST_P(JobManagerBothTest, DefaultDeadlineApplies) {
  options_.default_deadline = absl::Milliseconds(200);
  StartManager();
  v1::Job job = WaitForState(Submit(Request("slow")).id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
}

// --- Subscriptions ------------------------------------------------------------

TEST_P(JobManagerBothTest, SubscribersHearDurableEvents) {
  StartManager();
  v1::Job job = Submit(Request("slow"));
  absl::Mutex mu;
  int calls = 0;
  int64_t max_seen = 0;
  uint64_t handle = manager_->Subscribe(job.id(), [&] {
    // Called after the event is durable: it must already be readable.
    auto events = manager_->Events(kTenant, job.id(), 0, 1000);
    absl::MutexLock lock(&mu);
    ++calls;
    if (events.ok() && !events->empty()) {
      max_seen = std::max(max_seen, events->back().sequence());
    }
  });
  int other_calls = 0;
  uint64_t other = manager_->Subscribe("job-other", [&] {
    absl::MutexLock lock(&mu);
    ++other_calls;
  });
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(manager_->Cancel(kTenant, job.id()).ok());
  v1::Job done = WaitForState(job.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(WaitUntil([&] {
    absl::MutexLock lock(&mu);
    return max_seen == done.last_sequence();
  }));
  {
    absl::MutexLock lock(&mu);
    EXPECT_GE(calls, 1);
    EXPECT_EQ(other_calls, 0);
  }
  manager_->Unsubscribe(job.id(), handle);
  manager_->Unsubscribe("job-other", other);
  manager_->Unsubscribe("job-other", other);  // twice is harmless
}

TEST_P(JobManagerBothTest, UnsubscribedListenerIsNotCalledAgain) {
  StartManager();
  // The only slot is busy, so the watched job's RUNNING event comes after
  // the subscription (a slow job writes nothing else): under load the
  // worker could otherwise start it before Subscribe.
  v1::Job blocker = Submit(Request("slow"));
  WaitForState(blocker.id(), v1::JOB_STATE_RUNNING);
  v1::Job job = Submit(Request("slow"));
  std::atomic<int> calls{0};
  uint64_t handle = manager_->Subscribe(job.id(), [&] { calls.fetch_add(1); });
  ASSERT_TRUE(manager_->Cancel(kTenant, blocker.id()).ok());
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(WaitUntil([&] { return calls.load() >= 1; }));
  manager_->Unsubscribe(job.id(), handle);
  int after = calls.load();
  ASSERT_TRUE(manager_->Cancel(kTenant, job.id()).ok());
  WaitForState(job.id(), v1::JOB_STATE_CANCELLED);
  // Let the worker finish its Notify for the CANCELLED event: the next job
  // only starts after it.
  WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(calls.load(), after);
}

// --- Restart recovery and drain ----------------------------------------------

TEST_F(JobManagerTest, StartRequeuesAJobLeftRunning) {
  PlantJob("job-crashed", "ok", v1::JOB_STATE_RUNNING, /*attempts=*/1);
  PlantJob("job-waiting", "ok", v1::JOB_STATE_QUEUED, /*attempts=*/0);
  StartManager();
  v1::Job job = WaitForState("job-crashed", v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.attempts(), 2);
  EXPECT_EQ(fake_->AttemptSeen("job-crashed"), 2);
  EXPECT_EQ(fake_->Runs("job-crashed"), 1);
  ExpectGapless("job-crashed");
  std::vector<v1::JobEvent> events = AllEvents("job-crashed");
  ASSERT_GE(events.size(), 4u);
  // seq 1-2 planted, then the recovery: a WARNING, then back to QUEUED.
  EXPECT_TRUE(events[2].has_log());
  EXPECT_EQ(events[2].log().level(), "WARNING");
  EXPECT_THAT(events[2].log().message(), HasSubstr("restart"));
  EXPECT_EQ(
      Transitions("job-crashed"),
      (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                 v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}));

  v1::Job waiting = WaitForState("job-waiting", v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(waiting.attempts(), 1);
  ExpectGapless("job-waiting");
}

TEST_F(JobManagerTest, StartFailsAJobOutOfAttempts) {
  options_.max_attempts = 3;
  PlantJob("job-doomed", "ok", v1::JOB_STATE_RUNNING, /*attempts=*/3);
  StartManager();
  v1::Job job = WaitForState("job-doomed", v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(job.attempts(), 3);
  EXPECT_EQ(fake_->Runs("job-doomed"), 0);
  ExpectGapless("job-doomed");
  bool error_logged = false;
  for (const v1::JobEvent& e : AllEvents("job-doomed")) {
    error_logged = error_logged || (e.has_log() && e.log().level() == "ERROR");
  }
  EXPECT_TRUE(error_logged);
  // The manager still runs new work.
  WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(JobManagerTest, RepeatedCrashesEndInFailure) {
  options_.max_attempts = 2;
  PlantJob("job-x", "slow", v1::JOB_STATE_RUNNING, /*attempts=*/1);
  // Attempt 2 starts, then the "process dies": simulate by writing the row
  // back to RUNNING while the manager is gone.
  StartManager();
  ASSERT_TRUE(WaitUntil([&] { return fake_->Runs("job-x") == 1; }));
  manager_->Drain(absl::ZeroDuration());
  manager_.reset();
  v1::Job job = *metadata_->GetJobAnyTenant("job-x");
  ASSERT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.attempts(), 2);
  v1::JobEvent e;
  e.set_job_id("job-x");
  e.set_sequence(job.last_sequence() + 1);
  e.mutable_state_change()->set_from(v1::JOB_STATE_QUEUED);
  e.mutable_state_change()->set_to(v1::JOB_STATE_RUNNING);
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_last_sequence(e.sequence());
  ASSERT_TRUE(metadata_->AppendEvent(e, &job).ok());

  StartManager();
  v1::Job failed = WaitForState("job-x", v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.error().code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(fake_->Runs("job-x"), 1);
  ExpectGapless("job-x");
}

TEST_P(JobManagerBothTest, DrainInterruptsAndANewManagerResumes) {
  StartManager();
  v1::Job job = Submit(Request("slow"));
  v1::Job queued = Submit(Request("ok"));
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  manager_->Drain(absl::Milliseconds(50));
  EXPECT_FALSE(manager_->accepting());
  EXPECT_EQ(manager_->Submit(kTenant, Request("ok")).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(StateOf(job.id()), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(StateOf(queued.id()), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(fake_->Runs(queued.id()), 0);
  bool warned = false;
  for (const v1::JobEvent& e : AllEvents(job.id())) {
    warned = warned || (e.has_log() && e.log().level() == "WARNING" &&
                        absl::StrContains(e.log().message(), "shutdown"));
  }
  EXPECT_TRUE(warned);
  EXPECT_EQ(observer_.finished(v1::JOB_STATE_CANCELLED), 0);

  // A new process: new manager, store reopened from disk.
  manager_.reset();
  metadata_.reset();
  OpenMetadata();
  fake_->ReleaseSlow();
  StartManager();
  v1::Job resumed = WaitForState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(resumed.attempts(), 2);
  EXPECT_EQ(resumed.result().summary(), "slow released");
  EXPECT_EQ(fake_->Runs(job.id()), 2);
  EXPECT_EQ(
      Transitions(job.id()),
      (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                 v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}));
  ExpectGapless(job.id());
  v1::Job other = WaitForState(queued.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(other.attempts(), 1);
  ExpectGapless(queued.id());
}

TEST_P(JobManagerBothTest, DrainLetsAJobFinishWithinGrace) {
  StartManager();
  v1::Job job = Submit(Request("slow"));
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(100));
    fake_->ReleaseSlow();
  });
  manager_->Drain(absl::Seconds(20));
  release.join();
  EXPECT_EQ(StateOf(job.id()), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(fake_->Runs(job.id()), 1);
}

TEST_P(JobManagerBothTest, DrainRightAfterSubmitDoesNotWaitForTheJob) {
  // Drain(0) racing the worker taking a fresh job must not let that job run
  // to completion (30 s) while Drain joins the workers.
  for (int i = 0; i < 10; ++i) {
    StartManager();
    v1::Job job = Submit(Request("slow"));
    if (i % 2 == 1) absl::SleepFor(absl::Microseconds(100 * i));
    absl::Time start = absl::Now();
    manager_->Drain(absl::ZeroDuration());
    EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "iteration " << i;
    EXPECT_EQ(StateOf(job.id()), v1::JOB_STATE_QUEUED);
    ExpectGapless(job.id());
    manager_.reset();
    // Clear the queue for the next round.
    auto leftover = metadata_->JobsInState(v1::JOB_STATE_QUEUED);
    ASSERT_TRUE(leftover.ok());
    for (v1::Job j : *leftover) {
      v1::JobEvent e;
      e.set_job_id(j.id());
      e.set_sequence(j.last_sequence() + 1);
      e.mutable_state_change()->set_from(j.state());
      e.mutable_state_change()->set_to(v1::JOB_STATE_CANCELLED);
      j.set_state(v1::JOB_STATE_CANCELLED);
      j.set_last_sequence(e.sequence());
      ASSERT_TRUE(metadata_->AppendEvent(e, &j).ok());
    }
  }
}

// --- Shared queue only: several replicas on one PostgreSQL -------------------

class SharedQueueTest : public JobManagerTest {
 protected:
  bool Postgres() const override { return true; }

  // Another process's manager over the same database: `slots` CPU slots (0 =
  // an API replica), its own worker id, its own queue object.
  JobManager* StartReplica(const std::string& worker_id, int slots) {
    JobManagerOptions o = options_;
    o.cpu_workers = slots;
    o.worker_id = worker_id;
    auto m = JobManager::Create(o, metadata_.get(), blobs_.get(), &kinds_, FakeResourcesFactory(),
                                nullptr);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return nullptr;
    EXPECT_TRUE((*m)->Start().ok());
    others_.push_back(std::move(*m));
    return others_.back().get();
  }

  // A connection of our own, to play a worker that vanished.
  std::unique_ptr<store::pg::Connection> Connect() {
    auto c = store::pg::Connection::Open(url_);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
};

TEST_F(SharedQueueTest, AnApiReplicaSubmitsWatchesAndCancelsWhileAWorkerRuns) {
  options_.cpu_workers = 0;  // manager_ is the API replica: no slots
  StartManager();
  JobManager* worker = StartReplica("worker-b", 1);
  ASSERT_NE(worker, nullptr);

  // The worker's events read back gapless through the API replica.
  v1::Job job = Submit(Request("ok"));
  v1::Job done = WaitForState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.assigned_device(), "cpu");
  EXPECT_EQ(done.result().summary(), "ok done");
  auto events = manager_->Events(kTenant, job.id(), 0, 1000);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(events->size(), AllEvents(job.id()).size());
  ExpectGapless(job.id());
  // The artifact was registered by the fenced event write.
  auto artifacts = metadata_->ListArtifacts(job.id());
  ASSERT_TRUE(artifacts.ok());
  ASSERT_THAT(*artifacts, SizeIs(1));
  EXPECT_EQ((*artifacts)[0].sha256(), Sha256Hex(kReport));

  // A cancel on the API replica reaches the job running on the worker
  // within a renewal or two, and the worker's CANCELLED event wakes a
  // watcher on the API replica (LISTEN/NOTIFY: written after the
  // subscription, so the wake-up is certain).
  v1::Job slow = Submit(Request("slow"));
  std::atomic<int> wakeups{0};
  uint64_t h = manager_->Subscribe(slow.id(), [&] { ++wakeups; });
  WaitForState(slow.id(), v1::JOB_STATE_RUNNING);
  const int before_cancel = wakeups.load();
  absl::Time asked = absl::Now();
  ASSERT_TRUE(manager_->Cancel(kTenant, slow.id()).ok());
  v1::Job cancelled = WaitForState(slow.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(WaitUntil([&] { return wakeups.load() > before_cancel; })) << wakeups.load();
  manager_->Unsubscribe(slow.id(), h);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(5));
  EXPECT_EQ(cancelled.error().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(Transitions(slow.id()),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                       v1::JOB_STATE_CANCELLED}));
  ExpectGapless(slow.id());
}

TEST_F(SharedQueueTest, AWorkerThatLostItsLeaseWritesNothingAndTheNextAttemptWins) {
  options_.cpu_workers = 1;
  options_.max_attempts = 3;
  StartManager();  // worker A
  v1::Job job = Submit(Request("slow"));
  WaitForState(job.id(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(WaitUntil([&] { return fake_->Runs(job.id()) == 1; }));
  // A is partitioned: its lease ends now (as if it stopped renewing), and
  // a reaper hands the job to worker B as attempt 2.
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Exec("UPDATE jobs SET lease_expires_at = clock_timestamp() - interval '1 s' "
                      "WHERE id = $1",
                      {job.id()})
                  .ok());
  JobManager* b = StartReplica("worker-b", 1);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(WaitUntil([&] { return fake_->Runs(job.id()) == 2; }));
  fake_->ReleaseSlow();
  v1::Job done = WaitForState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.attempts(), 2);
  // A's attempt learnt it lost the lease (renewal refused) and stopped
  // without writing: one terminal event, every sequence once.
  absl::SleepFor(absl::Milliseconds(500));
  int terminal = 0;
  for (const v1::JobEvent& e : AllEvents(job.id())) {
    terminal += e.has_state_change() && IsTerminal(e.state_change().to()) ? 1 : 0;
  }
  EXPECT_EQ(terminal, 1);
  EXPECT_EQ(Transitions(job.id()),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                       v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                       v1::JOB_STATE_SUCCEEDED}));
  ExpectGapless(job.id());
  // A is free again and takes new work.
  WaitForState(Submit(Request("ok")).id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(SharedQueueTest, TheJobOfAVanishedWorkerIsReapedAndRunsAgain) {
  options_.max_attempts = 2;
  options_.cpu_workers = 0;
  StartManager();  // an API replica: submits and reaps
  v1::Job job = Submit(Request("ok"));
  // A worker claims it, then vanishes (kill -9): it never renews.
  auto claimed = queue_->Claim("ghost/0", "cpu", absl::Milliseconds(300));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  EXPECT_EQ((*claimed)->attempt, 1);
  JobManager* b = StartReplica("worker-b", 1);
  ASSERT_NE(b, nullptr);
  v1::Job done = WaitForState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.attempts(), 2);
  bool warned = false;
  for (const v1::JobEvent& e : AllEvents(job.id())) {
    warned |= e.has_log() && absl::StrContains(e.log().message(),
                                               "lease of ghost/0 expired during attempt 1");
  }
  EXPECT_TRUE(warned);
  // The ghost's late writes are refused.
  v1::JobEvent late;
  late.mutable_log()->set_level("INFO");
  late.mutable_log()->set_message("too late");
  late.set_job_id(job.id());
  EXPECT_EQ(queue_->AppendEvent(late, nullptr, "ghost/0", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ExpectGapless(job.id());

  // Out of attempts: a job whose every worker vanishes ends FAILED.
  others_.clear();  // no worker now
  v1::Job doomed = Submit(Request("ok"));
  for (int attempt = 1; attempt <= 2; ++attempt) {
    ASSERT_TRUE(WaitUntil([&] { return StateOf(doomed.id()) == v1::JOB_STATE_QUEUED; }));
    auto c2 = queue_->Claim("ghost/1", "cpu", absl::Milliseconds(200));
    ASSERT_TRUE(c2.ok() && c2->has_value()) << attempt;
  }
  v1::Job failed = WaitForState(doomed.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.error().code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_THAT(failed.error().message(), HasSubstr("max_attempts 2"));
  ExpectGapless(doomed.id());
}

}  // namespace
}  // namespace compress::jobs
