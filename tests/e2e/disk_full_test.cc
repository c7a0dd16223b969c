// A full disk under the real compressd: its data directory is a small tmpfs
// mounted by the test (root only; skipped with the reason otherwise). An
// upload past capacity and a job that cannot store its output answer
// RESOURCE_EXHAUSTED without a server path; the job's end state is retried
// until space returns, so it never stays RUNNING; every storage error is
// logged; scratch directories are removed.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/model_gen.h"
#include "tests/e2e/server_process.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace v1 = compress::v1;
namespace fs = std::filesystem;
using ::compress::testutil::Connect;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::ServerProcess;
using ::compress::testutil::WaitFor;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kTmpfsBytes = 24 << 20;

// A tmpfs of kTmpfsBytes at `dir`, unmounted at the end.
class SmallDisk {
 public:
  explicit SmallDisk(const std::string& dir) : dir_(dir) {
    fs::create_directories(dir);
    const std::string options = absl::StrCat("size=", kTmpfsBytes);
    if (mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      error_ = absl::StrCat("mount tmpfs: ", std::strerror(errno));
    }
  }
  ~SmallDisk() {
    if (error_.empty()) umount2(dir_.c_str(), MNT_DETACH);
  }
  const std::string& error() const { return error_; }

  // Writes `path` until the disk refuses (ENOSPC): nothing is left free.
  static void FillWith(const std::string& path) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::string block(1 << 16, 'x');
    while (write(fd, block.data(), block.size()) > 0) {
    }
    std::string byte(1, 'x');
    while (write(fd, byte.data(), 1) > 0) {
    }
    EXPECT_EQ(errno, ENOSPC);
    close(fd);
  }

 private:
  std::string dir_;
  std::string error_;
};

void WriteRandom(const std::string& path, int64_t bytes) {
  std::mt19937_64 gen(7);
  std::ofstream out(path, std::ios::binary);
  for (int64_t i = 0; i < bytes; i += 8) {
    const uint64_t v = gen();
    out.write(reinterpret_cast<const char*>(&v), 8);
  }
}

v1::SubmitJobRequest Inspect(const std::string& model_id, std::vector<int64_t> shape) {
  v1::SubmitJobRequest req;
  req.mutable_spec()->mutable_inspect()->set_model_id(model_id);
  for (int64_t d : shape) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
  return req;
}

TEST(DiskFullTest, FullDiskAnswersResourceExhaustedAndNoJobStaysRunning) {
  ScopedTempDir dir;
  const std::string data = dir.path() + "/data";
  SmallDisk disk(data);
  if (!disk.error().empty()) GTEST_SKIP() << disk.error() << " (needs root)";
  const std::string slow_path = dir.path() + "/slow.pt";
  testutil::MakeSlowModel(slow_path, 256, 3000);
  const std::string log = dir.path() + "/server.log";
  auto server = std::make_unique<ServerProcess>(data, std::vector<std::string>{}, log);
  auto client = Connect(*server);
  auto slow = client->UploadModel(slow_path, "slow.pt");
  ASSERT_TRUE(slow.ok()) << slow.status();
  auto cnn = client->UploadModel(testutil::FixturePath("tiny_cnn.pt"), "cnn.pt");
  ASSERT_TRUE(cnn.ok()) << cnn.status();

  // 1. An upload bigger than the free space.
  const std::string big = dir.path() + "/big.bin";
  WriteRandom(big, kTmpfsBytes + (4 << 20));
  auto too_big = client->UploadModel(big, "big.pt");
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("storage is full"));
  EXPECT_THAT(std::string(too_big.status().message()), Not(HasSubstr(dir.path())));
  EXPECT_THAT(std::string(too_big.status().message()), Not(HasSubstr("/tmp/")));

  // 2. A job that is running when the disk fills: its report cannot be
  // stored, and storing its end state may fail too until space returns.
  auto job = client->SubmitJob(Inspect(slow->id(), {256, 256}));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(WaitFor([&] {
    auto j = client->GetJob(job->id());
    return j.ok() && j->state() == v1::JOB_STATE_RUNNING;
  }));
  const std::string filler = data + "/filler";
  SmallDisk::FillWith(filler);
  // While the disk is full: a submit is refused precisely or accepted (the
  // database may reuse free pages); either way nothing leaks a path.
  auto during = client->SubmitJob(Inspect(cnn->id(), {1, 1, 8, 8}));
  if (!during.ok()) {
    EXPECT_EQ(during.status().code(), absl::StatusCode::kResourceExhausted) << during.status();
    EXPECT_THAT(std::string(during.status().message()), Not(HasSubstr(dir.path())));
  }
  // Let the slow job reach its end on the full disk (FAILED, or its end
  // state refused and being retried), then free the space.
  const std::string retrying = absl::StrCat("job ", job->id(), ": storing state");
  ASSERT_TRUE(WaitFor([&] {
    auto j = client->GetJob(job->id());
    return (j.ok() && j->state() == v1::JOB_STATE_FAILED) ||
           absl::StrContains(testutil::ReadFile(log), retrying);
  }, absl::Seconds(120)));
  fs::remove(filler);
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  ASSERT_TRUE(WaitFor([&] {
    auto j = client->GetJob(job->id());
    if (!j.ok()) return false;
    final_state = j->state();
    return j->state() == v1::JOB_STATE_FAILED || j->state() == v1::JOB_STATE_SUCCEEDED;
  }, absl::Seconds(90))) << "job stayed " << v1::JobState_Name(final_state);
  auto ended = client->GetJob(job->id());
  ASSERT_TRUE(ended.ok());
  ASSERT_EQ(ended->state(), v1::JOB_STATE_FAILED) << ended->DebugString();
  EXPECT_EQ(ended->error().code(), static_cast<int>(absl::StatusCode::kResourceExhausted))
      << ended->error().message();
  EXPECT_THAT(ended->error().message(), HasSubstr("storage is full"));
  EXPECT_THAT(ended->error().message(), Not(HasSubstr(dir.path())));
  EXPECT_EQ(ended->attempts(), 1) << "a full disk is not a crash to retry";
  // WatchJob ends.
  auto watched = client->WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
  ASSERT_TRUE(watched.ok()) << watched.status();
  EXPECT_EQ(*watched, v1::JOB_STATE_FAILED);

  // 3. With space back, the server works: a job runs to success.
  auto after = client->SubmitJob(Inspect(cnn->id(), {1, 1, 8, 8}));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*client->WatchJob(after->id(), 0, [](const v1::JobEvent&) {}),
            v1::JOB_STATE_SUCCEEDED);
  if (during.ok()) {
    auto state = client->WatchJob(during->id(), 0, [](const v1::JobEvent&) {});
    ASSERT_TRUE(state.ok()) << state.status();
  }

  // Every storage error was logged, with the detail the client did not get.
  const std::string logged = testutil::ReadFile(log);
  for (absl::string_view line : absl::StrSplit(logged, '\n')) {
    if (absl::StrContains(line, "storage") || absl::StrContains(line, "storing state")) {
      std::cout << "server log: " << line << "\n";
    }
  }
  EXPECT_THAT(logged, HasSubstr("compressd: storage error: cannot"));
  EXPECT_THAT(logged, HasSubstr("No space left on device"));
  // No scratch directory is left behind once jobs end.
  EXPECT_TRUE(WaitFor([&] {
    std::error_code ec;
    return fs::is_empty(data + "/work", ec) || ec;
  }))
      << "left in " << data << "/work";
}

}  // namespace
}  // namespace compress
