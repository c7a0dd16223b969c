// PgJobQueue (claims, leases, fencing, the reaper, cancel) and pg::Listener
// (NOTIFY fan-out, reconnection) on a real PostgreSQL 15 started for this
// binary (tests/pg_test_util.h). Workers are threads with connections of
// their own, as separate processes would have. Leases are 300 ms; the tests
// wait for one to expire where that is the point, never for readiness.
#include "server/store/pg/pg_job_queue.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/job_queue.h"
#include "server/store/pg/connection.h"
#include "server/store/pg/listener.h"
#include "server/store/pg/pool.h"
#include "server/store/pg_metadata_store.h"
#include "tests/pg_test_util.h"

namespace compress::store {
namespace {

namespace v1 = compress::v1;
using pg::Connection;
using ::testing::HasSubstr;

constexpr char kTenant[] = "tenant-a";
constexpr absl::Duration kLease = absl::Milliseconds(300);

// A queue with a pool of its own: one worker process.
struct Worker {
  std::unique_ptr<pg::Pool> pool;
  std::unique_ptr<PgJobQueue> queue;
};

// Counts calls of a callback; waits for a count without sleeping blindly.
class Counter {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++n_;
  }
  int Get() {
    absl::MutexLock lock(&mu_);
    return n_;
  }
  bool AwaitAbove(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto above = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return n_ > n; };
    return mu_.AwaitWithTimeout(absl::Condition(&above), timeout);
  }

 private:
  absl::Mutex mu_;
  int n_ ABSL_GUARDED_BY(mu_) = 0;
};

class PgJobQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = testutil::TestPostgres::Get();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = *pg;
    auto url = pg_->NewDatabase();
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;
    PgMetadataStoreOptions options;
    options.url = url_;
    auto store = PgMetadataStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto queue = PgJobQueue::Create(&store_->pool());
    ASSERT_TRUE(queue.ok()) << queue.status();
    queue_ = std::move(*queue);
    auto admin = Connection::Open(pg_->Url("postgres"));
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = std::move(*admin);
  }

  Worker NewWorker() {
    pg::PoolOptions options;
    options.conninfo = url_;
    options.max_connections = 1;
    auto pool = pg::Pool::Create(options);
    EXPECT_TRUE(pool.ok()) << pool.status();
    Worker w;
    w.pool = std::move(*pool);
    auto queue = PgJobQueue::Create(w.pool.get());
    EXPECT_TRUE(queue.ok()) << queue.status();
    w.queue = std::move(*queue);
    return w;
  }

  // A QUEUED job; `order` sets its creation time (smaller = older).
  void Insert(const std::string& id, const std::string& device = "auto", int order = 0) {
    v1::Job job;
    job.set_id(id);
    job.set_kind(v1::JOB_KIND_INSPECT);
    job.set_state(v1::JOB_STATE_QUEUED);
    job.set_device(device);
    job.mutable_create_time()->set_seconds(1'700'000'000 + order);
    ASSERT_TRUE(store_->InsertJob(kTenant, job, {}).ok());
  }

  v1::Job Get(const std::string& id) {
    auto job = store_->GetJobAnyTenant(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }

  std::vector<v1::JobEvent> Events(const std::string& id) {
    auto events = store_->ListEvents(id, 0, -1);
    EXPECT_TRUE(events.ok()) << events.status();
    return events.ok() ? *events : std::vector<v1::JobEvent>();
  }

  // Everything stored about a job (row and events), to compare before and
  // after a refused write.
  std::string Snapshot(const std::string& id) {
    auto conn = Connection::Open(url_);
    EXPECT_TRUE(conn.ok()) << conn.status();
    auto r = (*conn)->Exec(
        "SELECT state::text || '|' || encode(proto, 'hex') || '|' || COALESCE(lease_owner, '') "
        "|| '|' || attempt || '|' || COALESCE(lease_expires_at::text, '') || '|' || "
        "cancel_requested || '|' || (SELECT string_agg(seq || encode(e.proto, 'hex'), ',' "
        "ORDER BY seq) FROM events e WHERE e.job_id = $1) FROM jobs WHERE id = $1",
        {id});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->rows() == 1 ? r->Bytes(0, 0) : std::string();
  }

  static v1::JobEvent Log(const std::string& message, const std::string& job_id = "job-1") {
    v1::JobEvent e;
    e.set_job_id(job_id);
    e.mutable_log()->set_level("INFO");
    e.mutable_log()->set_message(message);
    return e;
  }

  // The final row and event of a job that ended in `state`.
  static std::pair<v1::Job, v1::JobEvent> Ending(v1::Job job, v1::JobState state) {
    v1::JobEvent e;
    e.mutable_state_change()->set_from(job.state());
    e.mutable_state_change()->set_to(state);
    e.mutable_state_change()->set_attempt(job.attempts());
    job.set_state(state);
    return {job, e};
  }

  absl::StatusOr<int64_t> Finish(JobQueue& q, const ClaimedJob& c,
                                 v1::JobState state = v1::JOB_STATE_SUCCEEDED) {
    auto [job, event] = Ending(c.job, state);
    return q.Complete(c.job.id(), c.owner, c.attempt, job, event);
  }

  ClaimedJob MustClaim(JobQueue& q, const std::string& worker, const std::string& device = "cpu") {
    auto c = q.Claim(worker, device, kLease);
    EXPECT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c.ok() && c->has_value()) << worker << " claimed nothing";
    return c.ok() && c->has_value() ? **c : ClaimedJob();
  }

  static void WaitForExpiry() { absl::SleepFor(kLease + absl::Milliseconds(100)); }

  testutil::TestPostgres* pg_ = nullptr;
  std::string url_;
  std::unique_ptr<PgMetadataStore> store_;
  std::unique_ptr<PgJobQueue> queue_;
  std::unique_ptr<Connection> admin_;
};

TEST_F(PgJobQueueTest, ConcurrentWorkersClaimEachJobExactlyOnce) {
  constexpr int kJobs = 60;
  constexpr int kWorkers = 6;
  for (int i = 0; i < kJobs; ++i) Insert(absl::StrCat("job-", i), "auto", i);

  std::vector<std::vector<std::string>> claimed(kWorkers);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      Worker worker = NewWorker();
      const std::string id = absl::StrCat("worker-", w);
      while (true) {
        auto c = worker.queue->Claim(id, "cpu", absl::Seconds(30));
        ASSERT_TRUE(c.ok()) << c.status();
        if (!c->has_value()) return;
        EXPECT_EQ((*c)->attempt, 1);
        EXPECT_EQ((*c)->owner, id);
        claimed[w].push_back((*c)->job.id());
        EXPECT_TRUE(Finish(*worker.queue, **c).ok());
      }
    });
  }
  for (auto& t : threads) t.join();

  std::multiset<std::string> all;
  for (const auto& ids : claimed) all.insert(ids.begin(), ids.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kJobs));
  for (int i = 0; i < kJobs; ++i) {
    const std::string id = absl::StrCat("job-", i);
    EXPECT_EQ(all.count(id), 1u) << id;
    v1::Job job = Get(id);
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << id;
    EXPECT_EQ(job.attempts(), 1) << id;
    std::vector<v1::JobEvent> events = Events(id);
    ASSERT_EQ(events.size(), 2u) << id;  // RUNNING, SUCCEEDED
    EXPECT_EQ(events[0].state_change().to(), v1::JOB_STATE_RUNNING);
    EXPECT_EQ(events[1].state_change().to(), v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(job.last_sequence(), 2);
  }
}

TEST_F(PgJobQueueTest, ClaimTakesOldestFittingJobAndSkipsLeasedOnes) {
  Insert("cpu-old", "cpu", 1);
  Insert("cuda-job", "cuda:1", 2);
  Insert("auto-job", "auto", 3);
  Insert("auto-new", "auto", 4);
  Worker a = NewWorker();
  Worker b = NewWorker();

  ClaimedJob first = MustClaim(*a.queue, "worker-a", "cpu");
  EXPECT_EQ(first.job.id(), "cpu-old");
  EXPECT_EQ(first.job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(first.job.assigned_device(), "cpu");
  EXPECT_EQ(first.job.last_sequence(), 1);

  {
    // A row another transaction has locked is passed over, not waited on.
    auto holder = Connection::Open(url_);
    ASSERT_TRUE(holder.ok()) << holder.status();
    auto tx = pg::Transaction::Begin(**holder);
    ASSERT_TRUE(tx.ok()) << tx.status();
    ASSERT_TRUE((*holder)->Exec("SELECT 1 FROM jobs WHERE id = 'auto-job' FOR UPDATE").ok());
    ClaimedJob second = MustClaim(*b.queue, "worker-b", "cpu");
    EXPECT_EQ(second.job.id(), "auto-new");  // cpu-old leased, cuda-job does not fit
  }                                          // ~Transaction rolls back: auto-job is free again

  ClaimedJob third = MustClaim(*b.queue, "worker-b", "cpu");
  EXPECT_EQ(third.job.id(), "auto-job");
  auto none = b.queue->Claim("worker-b", "cpu", kLease);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value()) << (*none)->job.id();

  ClaimedJob gpu = MustClaim(*a.queue, "worker-gpu", "cuda:0");
  EXPECT_EQ(gpu.job.id(), "cuda-job");
  EXPECT_EQ(gpu.job.assigned_device(), "cuda:0");

  EXPECT_EQ(a.queue->Claim("w", "auto", kLease).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PgJobQueueTest, StaleWorkerIsFencedAfterItsLeaseExpired) {
  Insert("job-1");
  Worker a = NewWorker();
  Worker b = NewWorker();
  ClaimedJob first = MustClaim(*a.queue, "worker-a");
  ASSERT_EQ(first.attempt, 1);
  EXPECT_TRUE(a.queue->Renew("job-1", "worker-a", 1, kLease).ok());
  auto seq = a.queue->AppendEvent(Log("step 1"), &first.job, "worker-a", 1);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, 2);

  WaitForExpiry();
  // Expired and not yet reaped: already no longer the owner's.
  EXPECT_EQ(a.queue->Renew("job-1", "worker-a", 1, kLease).code(),
            absl::StatusCode::kFailedPrecondition);
  auto reaped = queue_->ReapExpired(3);
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);
  EXPECT_EQ(Get("job-1").state(), v1::JOB_STATE_QUEUED);

  ClaimedJob second = MustClaim(*b.queue, "worker-b");
  EXPECT_EQ(second.job.id(), "job-1");
  EXPECT_EQ(second.attempt, 2);
  EXPECT_EQ(second.job.attempts(), 2);

  // Attempt 1 writes late: every write is refused and nothing changes.
  const std::string before = Snapshot("job-1");
  ASSERT_FALSE(before.empty());
  v1::Job stale = first.job;
  stale.mutable_progress()->set_done(99);
  EXPECT_EQ(a.queue->AppendEvent(Log("late"), &stale, "worker-a", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.queue->AppendEvent(Log("late"), nullptr, "worker-a", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Finish(*a.queue, first).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.queue->Renew("job-1", "worker-a", 1, kLease).code(),
            absl::StatusCode::kFailedPrecondition);
  // The right owner with the old attempt number is stale too.
  EXPECT_EQ(b.queue->AppendEvent(Log("late"), nullptr, "worker-b", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Snapshot("job-1"), before);

  // Attempt 2 writes and completes; afterwards nobody holds the job.
  EXPECT_TRUE(b.queue->Renew("job-1", "worker-b", 2, kLease).ok());
  ASSERT_TRUE(b.queue->AppendEvent(Log("step 1 again"), nullptr, "worker-b", 2).ok());
  auto done = Finish(*b.queue, second);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(b.queue->Renew("job-1", "worker-b", 2, kLease).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Finish(*b.queue, second).status().code(), absl::StatusCode::kFailedPrecondition);

  std::vector<v1::JobEvent> events = Events("job-1");
  ASSERT_EQ(events.size(), 7u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), i + 1);
  EXPECT_EQ(events[0].state_change().to(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(events[1].log().message(), "step 1");
  EXPECT_EQ(events[2].log().level(), "WARNING");
  EXPECT_EQ(events[2].log().message(), "lease of worker-a expired during attempt 1; re-queued");
  EXPECT_EQ(events[3].state_change().to(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events[4].state_change().to(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(events[4].state_change().attempt(), 2);
  EXPECT_EQ(events[5].log().message(), "step 1 again");
  EXPECT_EQ(events[6].state_change().to(), v1::JOB_STATE_SUCCEEDED);
  v1::Job job = Get("job-1");
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.last_sequence(), 7);
  EXPECT_EQ(job.progress().done(), 0);  // the stale row never landed
}

TEST_F(PgJobQueueTest, ReaperRequeuesThenFailsAtMaxAttempts) {
  Insert("job-1");
  Worker a = NewWorker();
  MustClaim(*a.queue, "worker-a");
  WaitForExpiry();
  auto reaped = queue_->ReapExpired(2);
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);
  EXPECT_EQ(Get("job-1").state(), v1::JOB_STATE_QUEUED);

  ClaimedJob second = MustClaim(*a.queue, "worker-b");
  EXPECT_EQ(second.attempt, 2);
  // Not expired yet: the reaper leaves it alone.
  reaped = queue_->ReapExpired(2);
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 0);
  WaitForExpiry();
  reaped = queue_->ReapExpired(2);
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);

  v1::Job job = Get("job-1");
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_THAT(job.error().message(),
              HasSubstr("lease of worker-b expired during attempt 2; giving up after 2 attempts"));
  std::vector<v1::JobEvent> events = Events("job-1");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state_change().to(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(events.back().state_change().error().message(), HasSubstr("giving up"));
  auto nothing = a.queue->Claim("worker-c", "cpu", kLease);
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());
}

TEST_F(PgJobQueueTest, ReapersOnEveryReplicaMoveEachJobOnce) {
  constexpr int kJobs = 20;
  constexpr int kReapers = 4;
  for (int i = 0; i < kJobs; ++i) Insert(absl::StrCat("job-", i), "auto", i);
  Worker a = NewWorker();
  for (int i = 0; i < kJobs; ++i) MustClaim(*a.queue, "worker-a");
  WaitForExpiry();

  std::atomic<int> moved{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < kReapers; ++r) {
    threads.emplace_back([&] {
      Worker reaper = NewWorker();
      auto n = reaper.queue->ReapExpired(3);
      ASSERT_TRUE(n.ok()) << n.status();
      moved += *n;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(moved.load(), kJobs);
  for (int i = 0; i < kJobs; ++i) {
    const std::string id = absl::StrCat("job-", i);
    EXPECT_EQ(Get(id).state(), v1::JOB_STATE_QUEUED) << id;
    EXPECT_EQ(Events(id).size(), 3u) << id;  // RUNNING, WARNING, QUEUED
  }
}

TEST_F(PgJobQueueTest, ConcurrentFencedAppendsKeepSequencesGapless) {
  constexpr int kWriters = 4;
  constexpr int kEach = 25;
  Insert("job-1");
  ClaimedJob c;
  {
    auto claimed = queue_->Claim("worker-a", "cpu", absl::Seconds(60));
    ASSERT_TRUE(claimed.ok() && claimed->has_value());
    c = **claimed;
  }
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      Worker writer = NewWorker();
      for (int i = 0; i < kEach; ++i) {
        auto seq =
            writer.queue->AppendEvent(Log(absl::StrCat(w, ":", i)), nullptr, "worker-a", c.attempt);
        ASSERT_TRUE(seq.ok()) << seq.status();
      }
    });
  }
  // A stale attempt keeps trying meanwhile; none of its writes land.
  threads.emplace_back([&] {
    Worker stale = NewWorker();
    for (int i = 0; i < kEach; ++i) {
      EXPECT_EQ(stale.queue->AppendEvent(Log("stale"), nullptr, "worker-a", c.attempt - 1)
                    .status()
                    .code(),
                absl::StatusCode::kFailedPrecondition);
    }
  });
  for (auto& t : threads) t.join();

  std::vector<v1::JobEvent> events = Events("job-1");
  ASSERT_EQ(events.size(), static_cast<size_t>(1 + kWriters * kEach));
  std::map<int, int> last_of_writer;  // each writer's events keep their order
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
    EXPECT_NE(events[i].log().message(), "stale");
    if (i == 0) continue;
    const std::string& m = events[i].log().message();
    const int w = std::stoi(m.substr(0, m.find(':')));
    const int n = std::stoi(m.substr(m.find(':') + 1));
    if (last_of_writer.count(w) != 0) {
      EXPECT_EQ(n, last_of_writer[w] + 1);
    }
    last_of_writer[w] = n;
  }
  EXPECT_EQ(Get("job-1").last_sequence(), 1 + kWriters * kEach);
}

TEST_F(PgJobQueueTest, CancelQueuedAndClaimedJobs) {
  Insert("queued", "auto", 1);
  Insert("running", "auto", 2);
  Worker a = NewWorker();

  // Another tenant's job answers like a missing one.
  EXPECT_EQ(queue_->RequestCancel("tenant-b", "queued").status().code(),
            absl::StatusCode::kNotFound);
  auto cancelled = queue_->RequestCancel(kTenant, "queued");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get("queued").state(), v1::JOB_STATE_CANCELLED);
  std::vector<v1::JobEvent> events = Events("queued");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].state_change().from(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events[0].state_change().to(), v1::JOB_STATE_CANCELLED);

  ClaimedJob c = MustClaim(*a.queue, "worker-a");
  EXPECT_EQ(c.job.id(), "running");  // the cancelled one is not claimable
  EXPECT_TRUE(a.queue->Renew("running", "worker-a", c.attempt, kLease).ok());
  auto requested = queue_->RequestCancel(kTenant, "running");
  ASSERT_TRUE(requested.ok()) << requested.status();
  EXPECT_EQ(requested->state(), v1::JOB_STATE_RUNNING);  // the worker ends it
  EXPECT_EQ(a.queue->Renew("running", "worker-a", c.attempt, kLease).code(),
            absl::StatusCode::kCancelled);
  ASSERT_TRUE(Finish(*a.queue, c, v1::JOB_STATE_CANCELLED).ok());
  v1::Job ended = Get("running");
  EXPECT_EQ(ended.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(ended.has_end_time());
  EXPECT_EQ(queue_->RequestCancel(kTenant, "running").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(PgJobQueueTest, CancelOfJobWhoseWorkerVanishedEndsCancelled) {
  Insert("job-1");
  MustClaim(*queue_, "worker-a");
  ASSERT_TRUE(queue_->RequestCancel(kTenant, "job-1").ok());
  WaitForExpiry();
  auto reaped = queue_->ReapExpired(3);
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);
  v1::Job job = Get("job-1");
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kCancelled));
}

TEST_F(PgJobQueueTest, ListenerGetsNotificationsAndReconnectsAfterTermination) {
  Insert("job-1", "auto", 1);
  Insert("job-2", "auto", 2);
  pg::ListenerOptions options;
  options.conninfo = url_;
  auto listener = pg::Listener::Create(options);
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_TRUE((*listener)->connected());
  EXPECT_EQ((*listener)->connections(), 1);
  Counter one, two;
  const uint64_t h1 = (*listener)->Subscribe("job-1", [&] { one.Add(); });
  const uint64_t h2 = (*listener)->Subscribe("job-2", [&] { two.Add(); });

  // The RUNNING event of the claim notifies job-1's subscribers only.
  ClaimedJob c = MustClaim(*queue_, "worker-a");
  ASSERT_EQ(c.job.id(), "job-1");
  ASSERT_TRUE(one.AwaitAbove(0, absl::Seconds(10)));
  // Plain MetadataStore appends notify too (the trigger is on the table).
  v1::JobEvent e = Log("from the store");
  e.set_job_id("job-2");
  e.set_sequence(1);
  ASSERT_TRUE(store_->AppendEvent(e).ok());
  ASSERT_TRUE(two.AwaitAbove(0, absl::Seconds(10)));
  EXPECT_EQ(one.Get(), 1);

  // The server ends the LISTEN connection: the listener notices, reconnects
  // and, having maybe missed notifications, calls every subscriber once.
  const int pid = (*listener)->backend_pid();
  auto r = admin_->Exec("SELECT pg_terminate_backend($1::int, 10000)", {pid});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->Int(0, 0), 1);
  ASSERT_TRUE((*listener)->AwaitConnections(2, absl::Seconds(20)));
  EXPECT_TRUE((*listener)->connected());
  EXPECT_NE((*listener)->backend_pid(), pid);
  EXPECT_EQ(one.Get(), 2);
  EXPECT_EQ(two.Get(), 2);

  // Later notifications arrive on the new connection.
  ASSERT_TRUE(queue_->AppendEvent(Log("after"), nullptr, "worker-a", c.attempt).ok());
  ASSERT_TRUE(one.AwaitAbove(2, absl::Seconds(10)));

  // Unsubscribed: not called again.
  (*listener)->Unsubscribe("job-1", h1);
  (*listener)->Unsubscribe("job-2", h2);
  const int before = one.Get();
  ASSERT_TRUE(queue_->AppendEvent(Log("unheard"), nullptr, "worker-a", c.attempt).ok());
  Counter sentinel;
  const uint64_t h3 = (*listener)->Subscribe("job-1", [&] { sentinel.Add(); });
  ASSERT_TRUE(queue_->AppendEvent(Log("heard"), nullptr, "worker-a", c.attempt).ok());
  ASSERT_TRUE(sentinel.AwaitAbove(0, absl::Seconds(10)));  // notifications arrive in order
  EXPECT_EQ(one.Get(), before);
  (*listener)->Unsubscribe("job-1", h3);
}

TEST_F(PgJobQueueTest, ListenerRefusesABadChannelName) {
  pg::ListenerOptions options;
  options.conninfo = url_;
  options.channel = "events; DROP TABLE jobs";
  EXPECT_EQ(pg::Listener::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PgJobQueueTest, CreateRefusesAnUnmigratedDatabase) {
  auto url = pg_->NewDatabase();
  ASSERT_TRUE(url.ok()) << url.status();
  pg::PoolOptions options;
  options.conninfo = *url;
  auto pool = pg::Pool::Create(options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(PgJobQueue::Create(pool->get()).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace compress::store
