// The real compressd with --blob_store=s3://... against s3rver on 127.0.0.1
// (tests/store/blob_s3rver.h): an upload lands in the bucket, not in
// <data_dir>/blobs, an INSPECT job runs on the model (its worker child opens
// the locally cached copy) and its artifact downloads whole from the bucket.
// Fails, saying what to install, without node or s3rver.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/s3/s3_blob_store.h"
#include "server/util/sha256.h"
#include "tests/e2e/server_process.h"
#include "tests/store/blob_s3rver.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::Connect;
using ::compress::testutil::FilesUnder;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::ServerProcess;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kBucket[] = "compressd-e2e";

// Runs a shell command; returns its stdout.
std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(S3BlobStoreE2eTest, UploadInspectAndDownloadThroughTheBucket) {
  ScopedTempDir dir;
  s3test::S3rver s3rver;
  const std::string started = s3rver.Start(dir.path() + "/s3rver");
  ASSERT_TRUE(started.empty()) << started;
  // compressd reads the credentials and endpoint this sets; its worker
  // children do not get them.
  auto bucket = s3test::BucketForCompressd(s3rver, kBucket, "prod/", dir.path() + "/s3tmp");
  ASSERT_TRUE(bucket.ok()) << bucket.status();
  const std::string data = dir.path() + "/data";
  ServerProcess server(data, {absl::StrCat("--blob_store=s3://", kBucket, "/prod")});
  ASSERT_TRUE(server.running());
  auto client = Connect(server);

  auto model = client->UploadModel(testutil::FixturePath("tiny_cnn.pt"), "cnn.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(*(*bucket)->Contains(model->id()));
  EXPECT_THAT(FilesUnder(data + "/blobs"), IsEmpty());

  v1::SubmitJobRequest req;
  req.mutable_spec()->mutable_inspect()->set_model_id(model->id());
  for (int64_t d : {1, 1, 8, 8}) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
  auto job = client->SubmitJob(req);
  ASSERT_TRUE(job.ok()) << job.status();
  auto state = client->WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(*state, v1::JOB_STATE_SUCCEEDED) << client->GetJob(job->id())->DebugString();

  auto artifacts = client->ListArtifacts(job->id());
  ASSERT_TRUE(artifacts.ok()) << artifacts.status();
  ASSERT_EQ(artifacts->size(), 1u);
  const v1::Artifact& a = (*artifacts)[0];
  EXPECT_TRUE(*(*bucket)->Contains(a.sha256()));
  const std::string out = dir.path() + "/report";
  auto downloaded = client->DownloadArtifact(job->id(), a.name(), out);
  ASSERT_TRUE(downloaded.ok()) << downloaded.status();
  EXPECT_EQ(Sha256Hex(ReadFile(out)), a.sha256());
  EXPECT_THAT(FilesUnder(data + "/blobs"), IsEmpty());

  // `compressd gc` marks from the metadata (the model and the artifact) and
  // sweeps the bucket: a blob nothing refers to, written just now, is kept
  // as young; a minimum age inside the reuse window is refused.
  auto orphan = (*bucket)->Put("nobody refers to this");
  ASSERT_TRUE(orphan.ok()) << orphan.status();
  const std::string gc = absl::StrCat(testutil::BinaryDir(), "/server/compressd gc --data_dir=",
                                      data, " --blob_store=s3://", kBucket, "/prod");
  EXPECT_EQ(RunCommand(gc + " --gc_min_age=25h"),
            "compressd gc: deleted 0 blob(s), 0 bytes; kept 2 referenced, 1 younger than 25h; "
            "0 foreign key(s) untouched\n");
  EXPECT_TRUE(*(*bucket)->Contains(*orphan));
  EXPECT_THAT(RunCommand(gc + " --gc_min_age=30m 2>&1"), HasSubstr("INVALID_ARGUMENT"));
}

}  // namespace
}  // namespace compress
