// Tests that run the real compressd binary as a child process: kill -9 and
// restart recovery, and a 200 MB upload.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
#include "tests/e2e/model_gen.h"
#include "tests/e2e/server_process.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::Connect;
using ::compress::testutil::ServerProcess;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::WaitFor;
using ::testing::HasSubstr;

v1::SubmitJobRequest Inspect(const std::string& model_id, std::vector<int64_t> shape) {
  v1::SubmitJobRequest req;
  req.mutable_spec()->mutable_inspect()->set_model_id(model_id);
  for (int64_t d : shape) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
  return req;
}

// Live (not zombie) processes whose parent is `parent`.
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so parse after ')'.
    std::vector<std::string> fields = absl::StrSplit(line.substr(line.rfind(')') + 2), ' ');
    pid_t ppid = 0;
    if (fields.size() > 1 && fields[0] != "Z" && absl::SimpleAtoi(fields[1], &ppid) &&
        ppid == parent) {
      children.push_back(pid);
    }
  }
  return children;
}

bool IsAlive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return false;
  return line.substr(line.rfind(')') + 2, 1) != "Z";
}

bool WaitUntilRunning(const client::Client& client, const std::string& job_id) {
  return WaitFor([&] {
    auto j = client.GetJob(job_id);
    return j.ok() && j->state() == v1::JOB_STATE_RUNNING;
  });
}

TEST(ProcessTest, KillNineThenRestartLosesNothing) {
  ScopedTempDir dir;
  std::string data = dir.path() + "/data";
  std::string slow_path = dir.path() + "/slow.pt";
  testutil::MakeSlowModel(slow_path, 256, 3000);

  auto server = std::make_unique<ServerProcess>(data);
  auto client = Connect(*server);
  auto slow = client->UploadModel(slow_path, "slow.pt");
  ASSERT_TRUE(slow.ok()) << slow.status();
  auto fast = client->UploadModel(testutil::FixturePath("tiny_cnn.pt"), "cnn.pt");
  ASSERT_TRUE(fast.ok()) << fast.status();

  // A job that finished before the crash, with an artifact.
  auto done_before = client->SubmitJob(Inspect(fast->id(), {1, 1, 8, 8}));
  ASSERT_TRUE(done_before.ok());
  ASSERT_EQ(*client->WatchJob(done_before->id(), 0, [](const v1::JobEvent&) {}),
            v1::JOB_STATE_SUCCEEDED);
  auto artifacts_before = client->ListArtifacts(done_before->id());
  ASSERT_TRUE(artifacts_before.ok());
  ASSERT_EQ(artifacts_before->size(), 1u);
  auto events_before_job = client->GetJob(done_before->id());

  // One running (slow) and one queued behind it (one CPU worker).
  auto running = client->SubmitJob(Inspect(slow->id(), {256, 256}));
  ASSERT_TRUE(running.ok());
  auto queued = client->SubmitJob(Inspect(fast->id(), {1, 1, 8, 8}));
  ASSERT_TRUE(queued.ok());
  ASSERT_TRUE(WaitUntilRunning(*client, running->id()));
  auto seen = client->GetJob(running->id());
  ASSERT_TRUE(seen.ok());
  const int64_t seen_sequence = seen->last_sequence();
  ASSERT_EQ(client->GetJob(queued->id())->state(), v1::JOB_STATE_QUEUED);

  // The running job's worker process dies with the server (no orphans).
  std::vector<pid_t> workers;
  ASSERT_TRUE(WaitFor([&] {
    workers = ChildrenOf(server->pid());
    return !workers.empty();
  }));
  // The child runs under the seccomp filter (--worker_seccomp, default on)
  // once it has exec'ed (right after fork it is still a copy of the server).
  for (pid_t w : workers) {
    std::string status;
    EXPECT_TRUE(WaitFor([&] {
      status = testutil::ReadFile(absl::StrCat("/proc/", w, "/status"));
      return absl::StrContains(status, "Seccomp:\t2");
    }, absl::Seconds(20))) << status;
    EXPECT_THAT(status, HasSubstr("NoNewPrivs:\t1"));
  }
  server->Kill(SIGKILL);
  EXPECT_TRUE(WaitFor([&] {
    for (pid_t w : workers) {
      if (IsAlive(w)) return false;
    }
    return true;
  })) << "a worker process outlived compressd";
  // The kill left the job's scratch directory (a copy of the tenant's
  // inputs may be in it); the next start removes it before any job runs.
  std::vector<std::filesystem::path> scratch;
  for (const auto& entry : std::filesystem::directory_iterator(data + "/work")) {
    scratch.push_back(entry.path());
  }
  EXPECT_FALSE(scratch.empty());
  server = std::make_unique<ServerProcess>(data);
  client = Connect(*server);
  for (const auto& path : scratch) EXPECT_FALSE(std::filesystem::exists(path)) << path;

  // Resume the watch where it stopped: no gap, no duplicate, and the job
  // re-runs to success as attempt 2.
  std::vector<v1::JobEvent> rest;
  auto final_state = client->WatchJob(running->id(), seen_sequence,
                                      [&](const v1::JobEvent& e) { rest.push_back(e); });
  ASSERT_TRUE(final_state.ok()) << final_state.status();
  EXPECT_EQ(*final_state, v1::JOB_STATE_SUCCEEDED);
  ASSERT_FALSE(rest.empty());
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_EQ(rest[i].sequence(), seen_sequence + static_cast<int64_t>(i) + 1);
  }
  bool requeue_logged = false;
  int attempt_seen = 0;
  for (const auto& e : rest) {
    if (e.has_log() && absl::StrContains(e.log().message(), "re-queued")) requeue_logged = true;
    if (e.has_state_change() && e.state_change().to() == v1::JOB_STATE_RUNNING) {
      attempt_seen = e.state_change().attempt();
    }
  }
  EXPECT_TRUE(requeue_logged);
  EXPECT_EQ(attempt_seen, 2);
  auto after = client->GetJob(running->id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->attempts(), 2);

  // The job queued at the crash still runs.
  EXPECT_EQ(*client->WatchJob(queued->id(), 0, [](const v1::JobEvent&) {}),
            v1::JOB_STATE_SUCCEEDED);

  // What was written before the kill is all still there.
  auto events_after_job = client->GetJob(done_before->id());
  ASSERT_TRUE(events_after_job.ok());
  EXPECT_EQ(events_after_job->SerializeAsString(), events_before_job->SerializeAsString());
  auto artifacts_after = client->ListArtifacts(done_before->id());
  ASSERT_TRUE(artifacts_after.ok());
  ASSERT_EQ(artifacts_after->size(), 1u);
  EXPECT_EQ((*artifacts_after)[0].sha256(), (*artifacts_before)[0].sha256());
  std::string out = dir.path() + "/a.json";
  auto got = client->DownloadArtifact(done_before->id(), (*artifacts_after)[0].name(), out);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*Sha256File(out), (*artifacts_before)[0].sha256());
  std::vector<int64_t> sequences;
  client->WatchJob(running->id(), 0, [&](const v1::JobEvent& e) { sequences.push_back(e.sequence()); })
      .IgnoreError();
  for (size_t i = 0; i < sequences.size(); ++i) EXPECT_EQ(sequences[i], static_cast<int64_t>(i + 1));
}

// An INSPECT job is one forward pass, which cannot be interrupted: on SIGTERM
// the server stops taking jobs and lets it finish before exiting. (Jobs with
// many steps are interrupted and re-queued: see jobs_job_manager_test.)
// The running job's forward pass runs in a worker process that SIGTERM
// cannot stop mid-step: the drain ends it after --drain_grace plus
// --worker_grace (bounded, whatever the model does), and the job runs again
// after the restart as attempt 2.
TEST(ProcessTest, SigtermDrainsWithinTheGracesAndLosesNothing) {
  ScopedTempDir dir;
  std::string data = dir.path() + "/data";
  std::string slow_path = dir.path() + "/slow.pt";
  testutil::MakeSlowModel(slow_path, 256, 3000);
  const std::vector<std::string> graces = {"--drain_grace=1s", "--worker_grace=1s"};
  auto server = std::make_unique<ServerProcess>(data, graces);
  auto client = Connect(*server);
  auto slow = client->UploadModel(slow_path, "slow.pt");
  ASSERT_TRUE(slow.ok());
  auto job = client->SubmitJob(Inspect(slow->id(), {256, 256}));
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(WaitUntilRunning(*client, job->id()));
  auto queued = client->SubmitJob(Inspect(slow->id(), {256, 256}));
  ASSERT_TRUE(queued.ok());
  const absl::Duration drain = server->Kill(SIGTERM);
  EXPECT_LT(drain, absl::Seconds(8)) << "drain took " << drain;
  server = std::make_unique<ServerProcess>(data, graces);
  client = Connect(*server);
  EXPECT_EQ(*client->WatchJob(job->id(), 0, [](const v1::JobEvent&) {}), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(client->GetJob(job->id())->attempts(), 2);
  // The queued job was not started by the draining server; the new one runs it.
  EXPECT_EQ(*client->WatchJob(queued->id(), 0, [](const v1::JobEvent&) {}),
            v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(client->GetJob(queued->id())->attempts(), 1);
}

TEST(ProcessTest, TwoHundredMegabyteModelUploadsInChunksWithItsDigest) {
  ScopedTempDir dir;
  std::string path = dir.path() + "/big.pt";
  testutil::MakeBigModel(path, 7250, 7250);  // 210 MB of float32
  int64_t size = static_cast<int64_t>(std::filesystem::file_size(path));
  ASSERT_GT(size, 200 * 1000 * 1000);
  auto sha = Sha256File(path);
  ASSERT_TRUE(sha.ok());
  auto server = std::make_unique<ServerProcess>(dir.path() + "/data");
  auto client = Connect(*server);
  auto model = client->UploadModel(path, "big.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->id(), *sha);
  EXPECT_EQ(model->size_bytes(), size);
  EXPECT_EQ(model->num_parameters(), int64_t{7250} * 7250);
  std::string blob = dir.path() + "/data/blobs/" + sha->substr(0, 2) + "/" + *sha;
  EXPECT_EQ(*Sha256File(blob), *sha);
}

}  // namespace
}  // namespace compress
