// The shared job queue on PostgreSQL (job_manager.h, shared-queue mode):
// throughput of a trivial job kind with 1, 2 and 4 worker replicas, and the
// latency of events from a worker to a watcher on the API replica
// (LISTEN/NOTIFY). Every replica is its own JobManager with its own
// PgMetadataStore (own connection pool) and PgJobQueue, as separate
// processes would be, but all in this process: one clock, so the latency
// (watcher read time - worker emit time, both absl::Now()) is exact.
//
// The PostgreSQL 15 is tests/pg_test_util.h's throwaway cluster (fsync off,
// synchronous_commit off): the numbers are the queue's and LISTEN/NOTIFY's
// costs, not a durable server's commit latency.
//
// Usage: bench_queue [--jobs=200] [--workers=1,2,4]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/jobs/job_manager.h"
#include "server/pipeline/job_kind.h"
#include "server/pipeline/pipeline.h"
#include "server/store/blob_store.h"
#include "server/store/metadata_store.h"
#include "server/store/pg/connection.h"
#include "server/store/pg/listener.h"
#include "server/store/pg/pg_job_queue.h"
#include "server/store/pg_metadata_store.h"
#include "tests/pg_test_util.h"

namespace v1 = compress::v1;
namespace jobs = compress::jobs;
namespace pipeline = compress::pipeline;
namespace store = compress::store;

namespace {

constexpr char kEmitPrefix[] = "emit_ns=";
const absl::Duration kPollInterval = absl::Milliseconds(50);
const absl::Duration kRenewInterval = absl::Seconds(1);
const absl::Duration kLease = absl::Seconds(10);

// INSPECT that does nothing: a stage with one progress report and two log
// lines, each carrying the wall time (Unix ns) at which it was emitted.
class NoopKind : public pipeline::JobKindHandler {
 public:
  v1::JobKind kind() const override { return v1::JOB_KIND_INSPECT; }
  absl::Status Validate(const v1::JobSpec&, pipeline::Resources&) const override {
    return absl::OkStatus();
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec&) const override { return {}; }
  std::string Summary(const v1::JobResult&) const override { return "noop"; }
  absl::StatusOr<v1::JobResult> Run(pipeline::JobContext& context) const override {
    auto& p = context.progress();
    p.StageStart("noop", 0, 1);
    p.Log("INFO", absl::StrCat(kEmitPrefix, absl::ToUnixNanos(absl::Now())));
    p.Progress("noop", 1, 1);
    p.Log("INFO", absl::StrCat(kEmitPrefix, absl::ToUnixNanos(absl::Now())));
    p.StageEnd("noop");
    return v1::JobResult();
  }
};

class NoResources : public pipeline::Resources {
 public:
  absl::StatusOr<v1::Model> GetModel(const std::string&) override {
    return absl::NotFoundError("no models");
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string&) override {
    return absl::NotFoundError("no datasets");
  }
  std::string ModelPath(const std::string&) override { return ""; }
  std::string DatasetPath(const std::string&) override { return ""; }
  std::string BuiltinDataDir() override { return ""; }
  absl::StatusOr<v1::Job> GetJob(const std::string&) override {
    return absl::NotFoundError("no jobs");
  }
};

// One "process": its own store (pool), queue, optional LISTEN connection and
// manager. Members are destroyed manager first.
struct Replica {
  std::unique_ptr<store::PgMetadataStore> metadata;
  std::unique_ptr<store::PgJobQueue> queue;
  std::unique_ptr<store::pg::Listener> listener;
  std::unique_ptr<jobs::JobManager> manager;
};

absl::StatusOr<std::unique_ptr<Replica>> StartReplica(const std::string& url,
                                                      const std::string& worker_id, int slots,
                                                      int max_queued, store::BlobStore* blobs,
                                                      const pipeline::JobKindRegistry* kinds) {
  auto r = std::make_unique<Replica>();
  store::PgMetadataStoreOptions so;
  so.url = url;
  auto metadata = store::PgMetadataStore::Create(so);
  if (!metadata.ok()) return metadata.status();
  r->metadata = std::move(*metadata);
  auto queue = store::PgJobQueue::Create(&r->metadata->pool());
  if (!queue.ok()) return queue.status();
  r->queue = std::move(*queue);
  jobs::JobManagerOptions o;
  o.cpu_workers = slots;
  o.max_queued = max_queued;
  o.queue = r->queue.get();
  o.worker_id = worker_id;
  o.lease = kLease;
  o.renew_interval = kRenewInterval;
  o.poll_interval = kPollInterval;
  if (slots == 0) {  // the API replica watches jobs that run elsewhere
    store::pg::ListenerOptions lo;
    lo.conninfo = url;
    auto listener = store::pg::Listener::Create(lo);
    if (!listener.ok()) return listener.status();
    r->listener = std::move(*listener);
    o.notifier = r->listener.get();
  }
  auto manager = jobs::JobManager::Create(
      o, r->metadata.get(), blobs, kinds,
      [](const std::string&) { return std::make_unique<NoResources>(); }, nullptr);
  if (!manager.ok()) return manager.status();
  r->manager = std::move(*manager);
  absl::Status s = r->manager->Start();
  if (!s.ok()) return s;
  return r;
}

// Watches every job on the API replica as a gRPC WatchJob reactor would: the
// subscription's callback (on the listener's thread) only queues the job id;
// this class's thread reads the new events with JobManager::Events and takes
// the time of that read.
class Watcher {
 public:
  explicit Watcher(jobs::JobManager* api) : api_(api), thread_([this] { Loop(); }) {}
  ~Watcher() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
    std::map<std::string, uint64_t> handles;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, job] : jobs_) handles[id] = job.handle;
    }
    for (auto& [id, h] : handles) api_->Unsubscribe(id, h);
  }

  // Call right after Submit.
  void Add(const std::string& id) {
    {
      absl::MutexLock lock(&mu_);
      jobs_[id];  // subscribed_at stays InfiniteFuture until Subscribe returned
    }
    uint64_t h = api_->Subscribe(id, [this, id] { Wake(id); });
    absl::MutexLock lock(&mu_);
    jobs_[id].handle = h;
    jobs_[id].subscribed_at = absl::Now();
  }

  // Waits until `n` jobs ended; false on timeout.
  bool AwaitFinished(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }

  struct Result {
    int finished = 0, succeeded = 0;
    absl::Time last_end;                 // when the last terminal event was read
    std::vector<double> latency_ms;      // per log event
    int early = 0;                       // log events emitted before Subscribe returned
    int sweeps = 0;                      // idle re-reads of unfinished jobs (lost wakeups)
    std::string first_error;
  };
  Result result() {
    absl::MutexLock lock(&mu_);
    return result_;
  }

 private:
  struct Job {
    uint64_t handle = 0;
    absl::Time subscribed_at = absl::InfiniteFuture();
    int64_t last_sequence = 0;
    bool done = false;
  };

  void Wake(const std::string& id) {
    absl::MutexLock lock(&mu_);
    if (pending_set_.insert(id).second) pending_.push_back(id);
  }

  void Loop() {
    while (true) {
      std::string id;
      int64_t after = 0;
      absl::Time subscribed_at;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || !pending_.empty();
        };
        if (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1))) {
          // Nothing for a second: re-read every unfinished job, in case a
          // notification was lost (counted; expected 0).
          bool any = false;
          for (auto& [jid, job] : jobs_) {
            if (!job.done && job.handle != 0 && pending_set_.insert(jid).second) {
              pending_.push_back(jid);
              any = true;
            }
          }
          if (any) ++result_.sweeps;
          continue;
        }
        if (stop_) return;
        id = pending_.front();
        pending_.pop_front();
        pending_set_.erase(id);
        Job& job = jobs_[id];
        if (job.done) continue;
        after = job.last_sequence;
        subscribed_at = job.subscribed_at;
      }
      std::vector<double> latencies;
      int early = 0;
      std::optional<v1::JobState> end;
      while (true) {
        auto events = api_->Events(store::kDefaultTenant, id, after, 256);
        const absl::Time read = absl::Now();
        if (!events.ok()) {
          absl::MutexLock lock(&mu_);
          if (result_.first_error.empty()) result_.first_error = events.status().ToString();
          break;
        }
        for (const v1::JobEvent& e : *events) {
          after = e.sequence();
          int64_t ns = 0;
          if (e.has_log() && absl::StartsWith(e.log().message(), kEmitPrefix) &&
              absl::SimpleAtoi(e.log().message().substr(sizeof(kEmitPrefix) - 1), &ns)) {
            absl::Time emitted = absl::FromUnixNanos(ns);
            if (emitted < subscribed_at) {
              ++early;
            } else {
              latencies.push_back(absl::ToDoubleMilliseconds(read - emitted));
            }
          }
          if (e.has_state_change() && jobs::IsTerminal(e.state_change().to())) {
            end = e.state_change().to();
          }
        }
        if (events->size() < 256) break;
      }
      absl::MutexLock lock(&mu_);
      Job& job = jobs_[id];
      job.last_sequence = after;
      result_.latency_ms.insert(result_.latency_ms.end(), latencies.begin(), latencies.end());
      result_.early += early;
      if (end && !job.done) {
        job.done = true;
        ++finished_;
        result_.finished = finished_;
        result_.last_end = absl::Now();
        if (*end == v1::JOB_STATE_SUCCEEDED) {
          ++result_.succeeded;
        } else if (result_.first_error.empty()) {
          result_.first_error = absl::StrCat("job ", id, " ended ", v1::JobState_Name(*end));
        }
      }
    }
  }

  jobs::JobManager* const api_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> pending_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> pending_set_ ABSL_GUARDED_BY(mu_);
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  Result result_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: starts after the rest is built
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

struct Row {
  int workers = 0, jobs = 0;
  double seconds = 0;
  double p50 = 0, p95 = 0;
  size_t samples = 0;
  int early = 0, sweeps = 0;
};

// One measurement on a fresh database: `workers` replicas of one slot each
// and one API replica; `n` jobs submitted back to back.
absl::StatusOr<Row> Measure(compress::testutil::TestPostgres* pg, int workers, int n,
                            store::BlobStore* blobs, const pipeline::JobKindRegistry* kinds) {
  auto url = pg->NewDatabase();
  if (!url.ok()) return url.status();
  const int max_queued = std::max(1000, n + 1);
  auto api = StartReplica(*url, "api", 0, max_queued, blobs, kinds);
  if (!api.ok()) return api.status();
  std::vector<std::unique_ptr<Replica>> replicas;
  for (int i = 0; i < workers; ++i) {
    auto w = StartReplica(*url, absl::StrCat("worker-", i), 1, max_queued, blobs, kinds);
    if (!w.ok()) return w.status();
    replicas.push_back(std::move(*w));
  }
  Row row;
  row.workers = workers;
  row.jobs = n;
  Watcher::Result r;
  {
    Watcher watcher((*api)->manager.get());
    jobs::SubmitRequest request;
    request.spec.mutable_inspect()->set_model_id("noop");
    request.spec.mutable_inspect()->add_input_shape(1);
    request.spec.mutable_inspect()->add_input_shape(4);
    const absl::Time start = absl::Now();
    for (int i = 0; i < n; ++i) {
      auto job = (*api)->manager->Submit(store::kDefaultTenant, request);
      if (!job.ok()) return job.status();
      watcher.Add(job->id());
    }
    const bool all = watcher.AwaitFinished(n, absl::Seconds(60) + n * absl::Seconds(1));
    r = watcher.result();
    if (!all) {
      return absl::DeadlineExceededError(
          absl::StrCat(r.finished, " of ", n, " jobs ended in time; ", r.first_error));
    }
    if (r.succeeded != n) {
      return absl::InternalError(absl::StrCat(r.succeeded, " of ", n, " jobs succeeded; ",
                                              r.first_error));
    }
    row.seconds = absl::ToDoubleSeconds(r.last_end - start);
  }  // the watcher unsubscribes before the replicas go
  for (auto& w : replicas) w->manager->Drain(absl::Seconds(5));
  (*api)->manager->Drain(absl::Seconds(5));
  replicas.clear();
  api->reset();
  row.p50 = Percentile(r.latency_ms, 0.50);
  row.p95 = Percentile(r.latency_ms, 0.95);
  row.samples = r.latency_ms.size();
  row.early = r.early;
  row.sweeps = r.sweeps;
  return row;
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--" + name + "=")) return a.substr(name.size() + 3);
  }
  return def;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "model name")) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

std::string ServerVersion(compress::testutil::TestPostgres* pg) {
  auto c = store::pg::Connection::Open(pg->Url("postgres"));
  if (!c.ok()) return "PostgreSQL (version unknown)";
  auto r = (*c)->Exec("SHOW server_version");
  if (!r.ok() || r->rows() < 1) return "PostgreSQL (version unknown)";
  return absl::StrCat("PostgreSQL ", r->Bytes(0, 0));
}

}  // namespace

int main(int argc, char** argv) {
  int n = 0;
  if (!absl::SimpleAtoi(Arg(argc, argv, "jobs", "200"), &n) || n < 1) {
    fprintf(stderr, "bench_queue: bad --jobs\n");
    return 2;
  }
  std::vector<int> worker_counts;
  for (absl::string_view w : absl::StrSplit(Arg(argc, argv, "workers", "1,2,4"), ',')) {
    int k = 0;
    if (!absl::SimpleAtoi(w, &k) || k < 1) {
      fprintf(stderr, "bench_queue: bad --workers\n");
      return 2;
    }
    worker_counts.push_back(k);
  }

  std::string load;
  {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    load = absl::StrCat(a, " ", b, " ", c);
  }
  auto pg = compress::testutil::TestPostgres::Get();
  if (!pg.ok()) {
    fprintf(stderr, "bench_queue: %s\n", pg.status().ToString().c_str());
    return 1;
  }
  std::string blob_dir = (std::filesystem::temp_directory_path() / "bench_queue_XXXXXX").string();
  if (mkdtemp(blob_dir.data()) == nullptr) {
    (*pg)->Stop();
    return 1;
  }
  int rc = 0;
  std::vector<Row> rows;
  {
    auto blobs = store::BlobStore::Create(blob_dir);
    pipeline::JobKindRegistry kinds;
    absl::Status reg = kinds.Register(std::make_unique<NoopKind>());
    if (!blobs.ok() || !reg.ok()) {
      fprintf(stderr, "bench_queue: %s\n",
              (!blobs.ok() ? blobs.status() : reg).ToString().c_str());
      rc = 1;
    }
    for (int w : worker_counts) {
      if (rc != 0) break;
      auto row = Measure(*pg, w, n, blobs->get(), &kinds);
      if (!row.ok()) {
        fprintf(stderr, "bench_queue: %d workers: %s\n", w, row.status().ToString().c_str());
        rc = 1;
        break;
      }
      rows.push_back(*row);
    }
  }
  const std::string version = ServerVersion(*pg);
  (*pg)->Stop();
  std::filesystem::remove_all(blob_dir);
  if (rc != 0) return rc;

  const double gib = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                     static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 30);
  printf("- machine: %u cores, %.0f GiB, %s; load average at start %s\n",
         std::thread::hardware_concurrency(), gib, CpuModel().c_str(), load.c_str());
  printf("- %s on 127.0.0.1, same machine (tests/pg_test_util.h's throwaway cluster: fsync "
         "off, synchronous_commit off)\n",
         version.c_str());
  printf("- each worker replica: its own JobManager, PgMetadataStore (pool of 8) and "
         "PgJobQueue, 1 CPU slot, poll_interval %.0f ms, renew %.0f s, lease %.0f s; one API "
         "replica (0 slots) submits and watches through its own LISTEN connection\n",
         absl::ToDoubleMilliseconds(kPollInterval), absl::ToDoubleSeconds(kRenewInterval),
         absl::ToDoubleSeconds(kLease));
  printf("- a job: INSPECT no-op emitting StageStart, Log, Progress, Log, StageEnd (plus "
         "QUEUED/RUNNING/SUCCEEDED); seconds = first submit -> API replica read the last "
         "SUCCEEDED; latency = API watcher's Events() read - worker's emit time of each Log\n\n");
  printf("| workers | jobs | seconds | jobs/s | event latency p50 ms | p95 ms |\n");
  printf("|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    printf("| %d | %d | %.2f | %.1f | %.1f | %.1f |\n", r.workers, r.jobs, r.seconds,
           r.jobs / r.seconds, r.p50, r.p95);
  }
  printf("\n");
  for (const Row& r : rows) {
    printf("- workers=%d: %zu latency samples; %d log events emitted before the watcher "
           "subscribed (left out); %d idle re-read sweeps\n",
           r.workers, r.samples, r.early, r.sweeps);
  }
  return 0;
}
