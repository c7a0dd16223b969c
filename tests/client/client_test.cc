// Client library against the in-process fake server: upload chunking,
// paging, metadata, WatchJob reconnects, resumable downloads.
#include "client/client.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
#include "tests/client/fake_server.h"

namespace compress::client {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using testing::FakeServer;
using ::testing::HasSubstr;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "client_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    client_ = MakeClient("");
  }

  std::unique_ptr<Client> MakeClient(const std::string& token) {
    Client::Options options;
    options.address = server_.address();
    options.token = token;
    options.timeout = absl::Seconds(30);
    options.max_reconnects = 3;
    options.initial_backoff = absl::Milliseconds(1);
    options.max_backoff = absl::Milliseconds(4);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return std::move(client).value();
  }

  FakeServer server_;
  fs::path dir_;
  std::unique_ptr<Client> client_;
};

// --- Uploads -----------------------------------------------------------------

TEST_F(ClientTest, UploadSendsHeaderFirstThenMiBChunks) {
  const std::string content = RandomBytes(2 * kUploadChunkBytes + 12345, 1);
  const fs::path path = dir_ / "model.pt";
  WriteAll(path, content);

  absl::StatusOr<v1::Model> model = client_->UploadModel(path.string(), "");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->id(), Sha256Hex(content));
  EXPECT_EQ(model->name(), "model.pt");  // base name by default

  const std::vector<v1::UploadRequest> sent = server_.models().last_upload();
  ASSERT_EQ(sent.size(), 4u);
  ASSERT_TRUE(sent[0].has_header());
  EXPECT_EQ(sent[0].header().name(), "model.pt");
  EXPECT_EQ(sent[0].header().size_bytes(),
            static_cast<int64_t>(content.size()));
  EXPECT_EQ(sent[0].header().sha256(), Sha256Hex(content));
  std::string joined;
  std::vector<size_t> sizes;
  for (size_t i = 1; i < sent.size(); ++i) {
    ASSERT_TRUE(sent[i].has_chunk()) << i;
    EXPECT_LE(sent[i].chunk().size(), static_cast<size_t>(kUploadChunkBytes));
    sizes.push_back(sent[i].chunk().size());
    joined += sent[i].chunk();
  }
  EXPECT_THAT(sizes, ElementsAre(kUploadChunkBytes, kUploadChunkBytes, 12345));
  EXPECT_EQ(joined, content);
}

TEST_F(ClientTest, UploadUsesGivenNameAndHandlesEmptyFiles) {
  const fs::path path = dir_ / "empty.safetensors";
  WriteAll(path, "");
  absl::StatusOr<v1::Dataset> dataset =
      client_->UploadDataset(path.string(), "calib");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->name(), "calib");
  const std::vector<v1::UploadRequest> sent = server_.datasets().last_upload();
  ASSERT_EQ(sent.size(), 1u);  // header only
  EXPECT_EQ(sent[0].header().size_bytes(), 0);
  EXPECT_EQ(sent[0].header().sha256(), Sha256Hex(""));
}

TEST_F(ClientTest, UploadOfMissingFileFailsLocally) {
  absl::StatusOr<v1::Model> model =
      client_->UploadModel((dir_ / "missing.pt").string(), "");
  EXPECT_TRUE(absl::IsNotFound(model.status())) << model.status();
  EXPECT_TRUE(server_.models().last_upload().empty());
}

// --- Unary calls
// ---------------------------------------------------------------

TEST_F(ClientTest, RpcErrorsKeepCodeAndMessage) {
  absl::StatusOr<v1::Model> model = client_->GetModel("nope");
  EXPECT_TRUE(absl::IsNotFound(model.status())) << model.status();
  EXPECT_EQ(model.status().message(), "model nope not found");
}

TEST_F(ClientTest, TokenIsSentAsBearerMetadata) {
  ASSERT_FALSE(MakeClient("s3cret")->GetModel("x").ok());
  EXPECT_EQ(server_.models().last_authorization(), "Bearer s3cret");
  ASSERT_FALSE(client_->GetModel("x").ok());
  EXPECT_EQ(server_.models().last_authorization(), "");
}

TEST_F(ClientTest, ListModelsFollowsPages) {
  for (int i = 0; i < 5; ++i) {
    v1::Model m;
    m.set_id(absl::StrCat("m", i));
    server_.models().AddModel(m);
  }
  absl::StatusOr<std::vector<v1::Model>> models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 5u);
  EXPECT_EQ((*models)[4].id(), "m4");
  EXPECT_EQ(server_.models().list_calls(), 3);  // pages of 2
}

// TLS options are used, never silently dropped: a file that cannot be read
// or a certificate without its key is an error before any call.
// tests/e2e/tls_auth_test.cc covers TLS against a real server.
TEST_F(ClientTest, BadTlsOptionsAreErrors) {
  Client::Options options;
  options.ca_file = "/nonexistent/ca.pem";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(options);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), ::testing::HasSubstr("/nonexistent/ca.pem"));
  options.ca_file = "";
  options.cert_file = "/nonexistent/client.pem";
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.cert_file = "";
  options.tls = true;  // system roots
  EXPECT_TRUE(Client::Create(options).ok());
}

// --- WatchJob ----------------------------------------------------------------

class WatchTest : public ClientTest {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    job_.set_id("job1");
    job_.set_state(v1::JOB_STATE_SUCCEEDED);
    std::vector<v1::JobEvent> events;
    events.push_back(
        StateEvent(1, v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING));
    for (int i = 1; i <= 8; ++i)
      events.push_back(testing::ProgressEvent(i + 1, "s", i, 8));
    events.push_back(
        StateEvent(10, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED));
    server_.jobs().AddJob(job_, events);
  }

  static v1::JobEvent StateEvent(int64_t seq, v1::JobState from,
                                 v1::JobState to) {
    return testing::StateEvent(seq, from, to);
  }

  absl::StatusOr<v1::JobState> Watch(int64_t after) {
    return client_->WatchJob(job_.id(), after, [this](const v1::JobEvent& e) {
      seen_.push_back(e.sequence());
    });
  }

  static std::vector<int64_t> Range(int64_t from, int64_t to) {
    std::vector<int64_t> v;
    for (int64_t i = from; i <= to; ++i) v.push_back(i);
    return v;
  }

  v1::Job job_;
  std::vector<int64_t> seen_;
};

TEST_F(WatchTest, StreamsEveryEventAndReturnsTerminalState) {
  absl::StatusOr<v1::JobState> state = Watch(0);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(seen_, Range(1, 10));
  EXPECT_THAT(server_.jobs().watch_requests(), ElementsAre(0));
}

TEST_F(WatchTest, ReconnectsAfterUnavailableAndResumesAfterLastSequence) {
  server_.jobs().DropWatchAfter(5);
  absl::StatusOr<v1::JobState> state = Watch(0);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(seen_, Range(1, 10));  // every event exactly once
  EXPECT_THAT(server_.jobs().watch_requests(), ElementsAre(0, 5));
}

TEST_F(WatchTest, ReplayedEventsAreDeliveredOnce) {
  server_.jobs().set_replay_backlog(true);  // resends 1.. on every call
  server_.jobs().DropWatchAfter(4);
  server_.jobs().DropWatchAfter(7);
  absl::StatusOr<v1::JobState> state = Watch(0);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(seen_, Range(1, 10));
  EXPECT_THAT(server_.jobs().watch_requests(), ElementsAre(0, 4, 7));
}

TEST_F(WatchTest, StreamEndingEarlyWithoutErrorIsResumed) {
  server_.jobs().EndWatchEarlyAfter(3);
  absl::StatusOr<v1::JobState> state = Watch(0);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(seen_, Range(1, 10));
  EXPECT_THAT(server_.jobs().watch_requests(), ElementsAre(0, 3));
}

TEST_F(WatchTest, ResumingAfterTheEndAsksGetJob) {
  absl::StatusOr<v1::JobState> state = Watch(10);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(seen_.empty());
}

TEST_F(WatchTest, ResumesFromTheGivenSequence) {
  ASSERT_TRUE(Watch(6).ok());
  EXPECT_EQ(seen_, Range(7, 10));
}

TEST_F(WatchTest, GivesUpAfterBoundedReconnectsWithoutProgress) {
  for (int i = 0; i < 10; ++i) server_.jobs().DropWatchAfter(0);
  absl::StatusOr<v1::JobState> state = Watch(0);
  EXPECT_TRUE(absl::IsUnavailable(state.status())) << state.status();
  EXPECT_THAT(state.status().message(), HasSubstr("gave up"));
  EXPECT_EQ(server_.jobs().watch_requests().size(), 4u);  // 1 + max_reconnects
}

TEST_F(WatchTest, ProgressResetsTheRetryBudget) {
  // Five drops in a row, each after one event: more drops than
  // max_reconnects (3), but every attempt makes progress.
  for (int i = 0; i < 5; ++i) server_.jobs().DropWatchAfter(1);
  absl::StatusOr<v1::JobState> state = Watch(0);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(seen_, Range(1, 10));
}

TEST_F(WatchTest, OtherErrorsAreNotRetried) {
  absl::StatusOr<v1::JobState> state = client_->WatchJob("nope", 0, nullptr);
  EXPECT_TRUE(absl::IsNotFound(state.status())) << state.status();
  EXPECT_EQ(server_.jobs().watch_requests().size(), 1u);
}

// --- DownloadArtifact
// ----------------------------------------------------------

class DownloadTest : public ClientTest {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    content_ = RandomBytes(300 * 1000, 7);
    server_.artifacts().AddArtifact("job1", "model.pt", content_);
    out_ = dir_ / "model.pt";
    part_ = dir_ / "model.pt.part";
  }

  absl::StatusOr<v1::Artifact> Download() {
    return client_->DownloadArtifact("job1", "model.pt", out_.string());
  }

  std::string content_;
  fs::path out_;
  fs::path part_;
};

TEST_F(DownloadTest, WritesVerifiesAndRenames) {
  absl::StatusOr<v1::Artifact> artifact = Download();
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->sha256(), Sha256Hex(content_));
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_THAT(server_.artifacts().download_offsets(), ElementsAre(0));
}

TEST_F(DownloadTest, ResumesFromPartFile) {
  WriteAll(part_, content_.substr(0, 100000));
  absl::StatusOr<v1::Artifact> artifact = Download();
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_THAT(server_.artifacts().download_offsets(), ElementsAre(100000));
}

TEST_F(DownloadTest, ResumesAfterDroppedStream) {
  server_.artifacts().DropDownloadAfter(150000);
  absl::StatusOr<v1::Artifact> artifact = Download();
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_THAT(server_.artifacts().download_offsets(), ElementsAre(0, 150000));
}

TEST_F(DownloadTest, ShaMismatchRemovesPartAndRetryStartsOver) {
  server_.artifacts().set_announced_sha256(Sha256Hex("something else"));
  absl::StatusOr<v1::Artifact> artifact = Download();
  EXPECT_EQ(artifact.status().code(), absl::StatusCode::kDataLoss)
      << artifact.status();
  EXPECT_THAT(artifact.status().message(), HasSubstr("sha256 mismatch"));
  EXPECT_FALSE(fs::exists(out_));
  EXPECT_FALSE(fs::exists(part_));  // documented: removed, not resumed

  server_.artifacts().set_announced_sha256("");
  ASSERT_TRUE(Download().ok());
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_THAT(server_.artifacts().download_offsets(), ElementsAre(0, 0));
}

TEST_F(DownloadTest, StalePartWithWrongBytesIsDetectedAndDiscarded) {
  WriteAll(part_, std::string(1000, 'x'));
  absl::StatusOr<v1::Artifact> artifact = Download();
  EXPECT_EQ(artifact.status().code(), absl::StatusCode::kDataLoss)
      << artifact.status();
  EXPECT_FALSE(fs::exists(part_));
  EXPECT_FALSE(fs::exists(out_));
  ASSERT_TRUE(Download().ok());
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_THAT(server_.artifacts().download_offsets(), ElementsAre(1000, 0));
}

TEST_F(DownloadTest, PartLargerThanArtifactStartsOver) {
  WriteAll(part_, content_ + "trailing");
  absl::StatusOr<v1::Artifact> artifact = Download();
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(ReadAll(out_), content_);
  EXPECT_THAT(server_.artifacts().download_offsets(),
              ElementsAre(static_cast<int64_t>(content_.size() + 8), 0));
}

TEST_F(DownloadTest, UnknownArtifactLeavesNoFiles) {
  absl::StatusOr<v1::Artifact> artifact =
      client_->DownloadArtifact("job1", "nope", (dir_ / "nope").string());
  EXPECT_TRUE(absl::IsNotFound(artifact.status())) << artifact.status();
  EXPECT_FALSE(fs::exists(dir_ / "nope.part"));
}

}  // namespace
}  // namespace compress::client
