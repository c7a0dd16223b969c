// Scale-out with real processes: 2 `compressd --role=api` and 3
// `--role=worker` on one PostgreSQL 15 (tests/pg_test_util.h) and one S3
// bucket (s3rver, tests/store/blob_s3rver.h), all on 127.0.0.1.
//
// Two long jobs run on two workers while 50 short INSPECT jobs and an
// ANALYZE go through both API replicas. Then: the LISTEN connections of the API replicas are
// terminated (pg_terminate_backend), one long job's worker is killed -9, the
// other's is frozen (SIGSTOP) until its lease expired and its job re-ran,
// then thawed, so that its late writes meet the fence. WatchJob streams on
// the *other* API replica must see every event of both long jobs exactly
// once, in order. Afterwards the operation log in PostgreSQL is checked: no
// job lost, one terminal event per job, gapless per-job sequences, valid
// transitions, and attempt 2 for the two long jobs.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/pg/connection.h"
#include "server/store/pg_metadata_store.h"
#include "server/store/s3/s3_blob_store.h"
#include "tests/e2e/model_gen.h"
#include "tests/e2e/server_process.h"
#include "tests/pg_test_util.h"
#include "tests/store/blob_s3rver.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::Connect;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::ServerProcess;
using ::compress::testutil::WaitFor;
using ::testing::HasSubstr;

constexpr char kBucket[] = "compressd-scaleout";
constexpr int kShortJobs = 50;

v1::SubmitJobRequest Inspect(const std::string& model_id, std::vector<int64_t> shape) {
  v1::SubmitJobRequest r;
  r.mutable_spec()->mutable_inspect()->set_model_id(model_id);
  for (int64_t d : shape) r.mutable_spec()->mutable_inspect()->add_input_shape(d);
  return r;
}

// A small ANALYZE of the reference CNN on 64 Fashion-MNIST images, seeded.
v1::SubmitJobRequest Analyze(const std::string& model_id) {
  v1::SubmitJobRequest r;
  v1::AnalyzeSpec* a = r.mutable_spec()->mutable_analyze();
  a->set_model_id(model_id);
  a->mutable_data()->set_dataset_id("builtin:fashion-mnist/train");
  a->mutable_data()->set_num_samples(64);
  a->mutable_traces()->set_max_probes(10);
  r.set_seed(7);
  return r;
}

// name -> sha256 of a job's artifacts.
std::map<std::string, std::string> ArtifactDigests(client::Client& c, const std::string& job_id) {
  std::map<std::string, std::string> out;
  auto list = c.ListArtifacts(job_id);
  if (list.ok()) {
    for (const v1::Artifact& a : *list) out[a.name()] = a.sha256();
  }
  return out;
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A WatchJob stream on its own client and thread.
struct Watch {
  std::unique_ptr<client::Client> client;
  std::vector<v1::JobEvent> events;
  absl::StatusOr<v1::JobState> state = absl::UnknownError("not finished");
  std::thread thread;

  Watch(const ServerProcess& api, const std::string& job_id) : client(Connect(api)) {
    thread = std::thread([this, job_id] {
      state = client->WatchJob(job_id, 0, [this](const v1::JobEvent& e) { events.push_back(e); });
    });
  }
  ~Watch() {
    if (thread.joinable()) thread.join();
  }
};

class ScaleOutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    auto pg = testutil::TestPostgres::Get();
    ASSERT_TRUE(pg.ok()) << pg.status();
    auto url = (*pg)->NewDatabase();
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;

    const std::string started = s3rver_.Start(dir_.path() + "/s3rver");
    ASSERT_TRUE(started.empty()) << started;
    auto bucket = s3test::BucketForCompressd(s3rver_, kBucket, "", dir_.path() + "/s3tmp");
    ASSERT_TRUE(bucket.ok()) << bucket.status();

    // The schema first, as a deployment's migrate Job would; the replicas
    // then only check it.
    ASSERT_EQ(RunMigrate(), 0);
  }

  int RunMigrate() {
    const std::string cmd = absl::StrCat(testutil::BinaryDir(), "/server/compressd migrate --database='",
                                         url_, "' >/dev/null");
    return std::system(cmd.c_str());
  }

  std::vector<std::string> Common() const {
    return {"--database=" + url_, absl::StrCat("--blob_store=s3://", kBucket, "/prod"),
            "--migrate_on_start=false", "--max_attempts=3"};
  }

  std::unique_ptr<ServerProcess> StartApi(int i) {
    std::vector<std::string> args = Common();
    args.push_back("--role=api");
    return std::make_unique<ServerProcess>(absl::StrCat(dir_.path(), "/api", i), args,
                                           absl::StrCat(dir_.path(), "/api", i, ".log"));
  }

  std::unique_ptr<ServerProcess> StartWorker(int i) {
    std::vector<std::string> args = Common();
    for (std::string a : {"--role=worker", "--cpu_workers=1", "--threads=1", "--lease=3s"}) {
      args.push_back(a);
    }
    args.push_back(absl::StrCat("--worker_id=w", i));
    return std::make_unique<ServerProcess>(absl::StrCat(dir_.path(), "/w", i), args,
                                           WorkerLog(i));
  }
  std::string WorkerLog(int i) const { return absl::StrCat(dir_.path(), "/w", i, ".log"); }

  // The worker index that holds the job's lease, or -1.
  int LeaseHolder(store::pg::Connection& c, const std::string& job_id) {
    auto r = c.Exec("SELECT lease_owner FROM jobs WHERE id = $1 AND lease_owner IS NOT NULL",
                    {job_id});
    if (!r.ok() || r->rows() == 0) return -1;
    const std::string owner = r->Bytes(0, 0);  // "wN/0"
    return owner.size() > 1 ? owner[1] - '0' : -1;
  }

  ScopedTempDir dir_;
  std::string url_;
  s3test::S3rver s3rver_;
};

TEST_F(ScaleOutTest, TwoApisThreeWorkersSurviveAKilledAndAFrozenWorker) {
  std::vector<std::unique_ptr<ServerProcess>> apis;
  for (int i = 0; i < 2; ++i) apis.push_back(StartApi(i));
  std::vector<std::unique_ptr<ServerProcess>> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(StartWorker(i));
  for (const auto& p : apis) ASSERT_TRUE(p->running());
  for (const auto& p : workers) ASSERT_TRUE(p->running());
  auto api0 = Connect(*apis[0]);
  auto api1 = Connect(*apis[1]);
  auto db = store::pg::Connection::Open(url_);
  ASSERT_TRUE(db.ok()) << db.status();

  // Uploads through one replica are visible through the other (validated
  // in a child of the API process, stored in the bucket).
  const std::string slow_path = dir_.path() + "/slow.pt";
  testutil::MakeSlowModel(slow_path, 256, 6000);
  auto slow = api0->UploadModel(slow_path, "slow.pt");
  ASSERT_TRUE(slow.ok()) << slow.status();
  auto fast = api1->UploadModel(testutil::FixturePath("tiny_cnn.pt"), "cnn.pt");
  ASSERT_TRUE(fast.ok()) << fast.status();
  auto cnn = api1->UploadModel(testutil::SourceDir() + "/models/fmnist_cnn.pt", "fmnist_cnn.pt");
  ASSERT_TRUE(cnn.ok()) << cnn.status();
  ASSERT_TRUE(api0->GetModel(fast->id()).ok());

  // Two long jobs, submitted on replica 0, each on a worker of its own.
  std::vector<std::string> long_jobs;
  for (int i = 0; i < 2; ++i) {
    auto job = api0->SubmitJob(Inspect(slow->id(), {256, 256}));
    ASSERT_TRUE(job.ok()) << job.status();
    long_jobs.push_back(job->id());
  }
  int killed = -1, frozen = -1;
  ASSERT_TRUE(WaitFor([&] {
    killed = LeaseHolder(**db, long_jobs[0]);
    frozen = LeaseHolder(**db, long_jobs[1]);
    return killed >= 0 && frozen >= 0;
  }, absl::Seconds(60)));
  ASSERT_NE(killed, frozen);
  // Watched on replica 1 from the first event.
  Watch watch_killed(*apis[1], long_jobs[0]);
  Watch watch_frozen(*apis[1], long_jobs[1]);

  // 50 short jobs through both replicas, and a real ANALYZE among them.
  auto analyze = api1->SubmitJob(Analyze(cnn->id()));
  ASSERT_TRUE(analyze.ok()) << analyze.status();
  std::vector<std::string> short_jobs = {analyze->id()};
  for (int i = 0; i < kShortJobs; ++i) {
    auto job = (i % 2 == 0 ? api0 : api1)->SubmitJob(Inspect(fast->id(), {1, 1, 8, 8}));
    ASSERT_TRUE(job.ok()) << job.status();
    short_jobs.push_back(job->id());
  }

  // The API replicas' LISTEN connections die; watchers must not miss a beat.
  auto terminated = (*db)->Exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
      "WHERE application_name = 'compressd-listener'");
  ASSERT_TRUE(terminated.ok()) << terminated.status();
  EXPECT_EQ(terminated->rows(), 2);  // one per API replica

  // One worker dies mid-job; another freezes past its lease.
  workers[killed]->Kill(SIGKILL);
  ASSERT_EQ(kill(workers[frozen]->pid(), SIGSTOP), 0);
  ASSERT_TRUE(WaitFor([&] {
    const int holder = LeaseHolder(**db, long_jobs[1]);
    return holder >= 0 && holder != frozen;
  }, absl::Seconds(60))) << "the frozen worker's job was not handed to another worker";
  ASSERT_EQ(kill(workers[frozen]->pid(), SIGCONT), 0);

  // Everything finishes.
  watch_killed.thread.join();
  watch_frozen.thread.join();
  ASSERT_TRUE(watch_killed.state.ok()) << watch_killed.state.status();
  EXPECT_EQ(*watch_killed.state, v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE(watch_frozen.state.ok()) << watch_frozen.state.status();
  EXPECT_EQ(*watch_frozen.state, v1::JOB_STATE_SUCCEEDED);
  for (const std::string& id : short_jobs) {
    ASSERT_TRUE(WaitFor([&] {
      auto j = api1->GetJob(id);
      return j.ok() && IsTerminal(j->state());
    }, absl::Seconds(180))) << id;
    EXPECT_EQ(api1->GetJob(id)->state(), v1::JOB_STATE_SUCCEEDED) << id;
  }

  // The operation log.
  store::PgMetadataStoreOptions o;
  o.url = url_;
  o.migrate = false;
  auto store = store::PgMetadataStore::Create(o);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<std::string> all = long_jobs;
  all.insert(all.end(), short_jobs.begin(), short_jobs.end());
  std::map<std::string, std::vector<v1::JobEvent>> logs;
  for (const std::string& id : all) {
    auto events = (*store)->ListEvents(id, 0, 100000);
    ASSERT_TRUE(events.ok()) << events.status();
    int terminal = 0;
    v1::JobState from = v1::JOB_STATE_UNSPECIFIED;
    for (size_t i = 0; i < events->size(); ++i) {
      const v1::JobEvent& e = (*events)[i];
      EXPECT_EQ(e.sequence(), static_cast<int64_t>(i + 1)) << id;
      if (!e.has_state_change()) continue;
      EXPECT_EQ(e.state_change().from(), from) << id << " seq " << e.sequence();
      from = e.state_change().to();
      terminal += IsTerminal(from) ? 1 : 0;
    }
    EXPECT_EQ(terminal, 1) << id;
    EXPECT_EQ(from, v1::JOB_STATE_SUCCEEDED) << id;
    logs[id] = *events;
  }
  // No live lease is left behind.
  auto leases = (*db)->Exec("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL");
  ASSERT_TRUE(leases.ok());
  EXPECT_EQ(leases->Int(0, 0), 0);

  // The long jobs re-ran as attempt 2 after their first worker's lease
  // expired, and the watchers on replica 1 saw each event once, in order.
  const std::vector<std::pair<Watch*, int>> watched = {{&watch_killed, killed},
                                                       {&watch_frozen, frozen}};
  for (size_t k = 0; k < 2; ++k) {
    const std::string& id = long_jobs[k];
    EXPECT_EQ(api1->GetJob(id)->attempts(), 2) << id;
    bool requeued = false;
    for (const v1::JobEvent& e : logs[id]) {
      requeued |= e.has_log() &&
                  absl::StrContains(e.log().message(),
                                    absl::StrCat("lease of w", watched[k].second,
                                                 "/0 expired during attempt 1; re-queued"));
    }
    EXPECT_TRUE(requeued) << id;
    const std::vector<v1::JobEvent>& seen = watched[k].first->events;
    ASSERT_EQ(seen.size(), logs[id].size()) << id;
    for (size_t i = 0; i < seen.size(); ++i) {
      EXPECT_EQ(seen[i].sequence(), logs[id][i].sequence()) << id;
      EXPECT_EQ(seen[i].SerializeAsString(), logs[id][i].SerializeAsString()) << id << " " << i;
    }
  }
  // The thawed worker tried to write for its lost attempt and was refused.
  EXPECT_TRUE(WaitFor([&] {
    const std::string log = ReadAll(WorkerLog(frozen));
    return absl::StrContains(log, "write refused") || absl::StrContains(log, "lost; result dropped");
  }, absl::Seconds(30))) << ReadAll(WorkerLog(frozen));
  // The surviving processes still serve, and the same ANALYZE run alone on
  // a quiet cluster gives the same numbers as in the middle of all that.
  auto again = api0->SubmitJob(Analyze(cnn->id()));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*api1->WatchJob(again->id(), 0, [](const v1::JobEvent&) {}), v1::JOB_STATE_SUCCEEDED);
  // (report.json also records run times; the per-layer numbers are in the
  // CSV, and the plot is drawn from them.)
  auto busy = ArtifactDigests(*api0, analyze->id());
  auto quiet = ArtifactDigests(*api1, again->id());
  ASSERT_EQ(busy.count("sensitivity.csv"), 1u);
  EXPECT_EQ(quiet["sensitivity.csv"], busy["sensitivity.csv"]);
  EXPECT_EQ(quiet["sensitivity.svg"], busy["sensitivity.svg"]);
  auto trace = [](const std::string& summary) { return summary.substr(summary.find("total trace")); };
  EXPECT_EQ(trace(api0->GetJob(again->id())->result().summary()),
            trace(api0->GetJob(analyze->id())->result().summary()));
}

}  // namespace
}  // namespace compress
