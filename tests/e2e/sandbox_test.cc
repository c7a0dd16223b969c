// Hostile models against the real compressd (--role=all, model work in
// child processes). Each: the upload or job ends with a precise code and
// message, the server stays up, and another tenant's job that ran at the
// same time gives the same numbers as when it runs alone.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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
using ::compress::testutil::Connect;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::ServerProcess;
using ::compress::testutil::WaitFor;
using ::testing::HasSubstr;

constexpr char kAlphaToken[] = "alpha-token-0123456789abcdef";
constexpr char kBetaToken[] = "beta-token-0123456789abcdef";

// Rewrites the code of a TorchScript archive: the first forward's return
// expression becomes `expression` (with Python's zipfile: the archive is a
// plain zip). Source-range pickles are dropped (they would not match).
// tiny_mlp.pt is an nn.Sequential whose forward's argument is `input`.
void PatchForward(const std::string& from, const std::string& to, const std::string& expression) {
  const std::string script = R"PY(
import sys, zipfile
src, dst, expr = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
        if info.filename.endswith(".debug_pkl"):
            continue
        data = zin.read(info.filename)
        if "/code/" in info.filename and b"def forward" in data:
            text = data.decode()
            i = text.index("return ", text.index("def forward"))
            j = text.index("\n", i)
            text = text[:i] + "return " + expr + text[j:]
            data = text.encode()
        zout.writestr(info, data)
)PY";
  const std::string py = to + ".py";
  const std::string expr_file = to + ".expr";
  std::ofstream(py) << script;
  std::ofstream(expr_file) << expression;
  const std::string command = absl::StrCat("/usr/bin/python3 ", py, " ", from, " ", to, " ",
                                           expr_file);
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    const std::string tokens = dir_.path() + "/tokens";
    std::ofstream(tokens) << kAlphaToken << " alpha\n" << kBetaToken << " beta\n";
    args_ = {"--token_file=" + tokens, "--cpu_workers=2", "--threads=1",
             "--worker_memory_limit=3000000000", "--worker_grace=1s"};
    server_ = std::make_unique<ServerProcess>(dir_.path() + "/data", args_);
    alpha_ = Connect(*server_, kAlphaToken);
    beta_ = Connect(*server_, kBetaToken);
    auto cnn = beta_->UploadModel(testutil::FixturePath("tiny_cnn.pt"), "cnn.pt");
    ASSERT_TRUE(cnn.ok()) << cnn.status();
    cnn_id_ = cnn->id();
  }

  static v1::SubmitJobRequest Inspect(const std::string& model_id, std::vector<int64_t> shape) {
    v1::SubmitJobRequest req;
    req.mutable_spec()->mutable_inspect()->set_model_id(model_id);
    for (int64_t d : shape) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
    return req;
  }

  // Beta's INSPECT of the CNN to the end: its result.
  v1::InspectResult BetaInspect() {
    auto job = beta_->SubmitJob(Inspect(cnn_id_, {2, 1, 28, 28}));
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return {};
    auto state = beta_->WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
    EXPECT_EQ(*state, v1::JOB_STATE_SUCCEEDED);
    return beta_->GetJob(job->id())->result().inspect();
  }

  void ExpectServerUp() {
    auto health = alpha_->CheckHealth("");
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, "SERVING");
    EXPECT_TRUE(server_->running());
  }

  static void ExpectSameInspection(const v1::InspectResult& a, const v1::InspectResult& b) {
    EXPECT_EQ(a.num_parameters(), b.num_parameters());
    EXPECT_EQ(a.total_macs(), b.total_macs());
    EXPECT_THAT(a.output_shape(), ::testing::ElementsAreArray(b.output_shape()));
    EXPECT_EQ(a.layers_size(), b.layers_size());
  }

  // Alpha's model whose forward never returns.
  std::string UploadLoopingModel() {
    const std::string loop = dir_.path() + "/loop.pt";
    testutil::MakeLoopingModel(loop);
    auto model = alpha_->UploadModel(loop, "loop.pt");
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? model->id() : "";
  }

  // Alpha's INSPECT of it, once RUNNING.
  std::string StartLoopingJob() {
    auto job = alpha_->SubmitJob(Inspect(UploadLoopingModel(), {4}));
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return "";
    EXPECT_TRUE(WaitFor(
        [&] { return alpha_->GetJob(job->id())->state() == v1::JOB_STATE_RUNNING; }));
    return job->id();
  }

  // Runs alpha's job on `model` while beta runs its INSPECT; returns alpha's
  // final job.
  v1::Job RunAlongsideBeta(const v1::SubmitJobRequest& alpha_request,
                           v1::InspectResult* beta_result) {
    auto job = alpha_->SubmitJob(alpha_request);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return {};
    *beta_result = BetaInspect();
    auto state = alpha_->WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
    EXPECT_TRUE(state.ok()) << state.status();
    return *alpha_->GetJob(job->id());
  }

  ScopedTempDir dir_;
  std::vector<std::string> args_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> alpha_, beta_;
  std::string cnn_id_;
};

TEST_F(SandboxTest, AnArchiveThatCrashesTheLoaderIsRefusedAndNothingIsKept) {
  const v1::InspectResult alone = BetaInspect();
  const std::string nested = dir_.path() + "/nested.pt";
  PatchForward(testutil::FixturePath("tiny_mlp.pt"), nested,
               std::string(50000, '(') + "input" + std::string(50000, ')'));
  std::thread beta([&] { ExpectSameInspection(BetaInspect(), alone); });
  auto upload = alpha_->UploadModel(nested, "nested.pt");
  beta.join();
  ASSERT_FALSE(upload.ok());
  EXPECT_EQ(upload.status().code(), absl::StatusCode::kInvalidArgument) << upload.status();
  EXPECT_THAT(upload.status().message(),
              HasSubstr("the TorchScript loader crashed on this archive: killed by signal 11 "
                        "(SIGSEGV)"));
  EXPECT_THAT(upload.status().message(), HasSubstr("SIGSEGV"));
  EXPECT_TRUE(alpha_->ListModels()->empty());
  ExpectServerUp();
  // The same tenant's next, valid upload works.
  EXPECT_TRUE(alpha_->UploadModel(testutil::FixturePath("tiny_mlp.pt"), "mlp.pt").ok());
}

TEST_F(SandboxTest, AMissingOpIsRefusedAtUpload) {
  const std::string missing = dir_.path() + "/missing_op.pt";
  PatchForward(testutil::FixturePath("tiny_mlp.pt"), missing, "ops.compress_missing.op(input)");
  auto upload = alpha_->UploadModel(missing, "missing_op.pt");
  ASSERT_FALSE(upload.ok());
  EXPECT_EQ(upload.status().code(), absl::StatusCode::kInvalidArgument) << upload.status();
  EXPECT_THAT(upload.status().message(), HasSubstr("compress_missing"));
  ExpectServerUp();
}

TEST_F(SandboxTest, AForwardPassPastTheMemoryLimitFailsItsJobOnly) {
  const v1::InspectResult alone = BetaInspect();
  const std::string greedy = dir_.path() + "/greedy.pt";
  testutil::MakeAllocatingModel(greedy);
  auto model = alpha_->UploadModel(greedy, "greedy.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  v1::InspectResult beta;
  v1::Job job = RunAlongsideBeta(Inspect(model->id(), {4}), &beta);
  ExpectSameInspection(beta, alone);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kResourceExhausted))
      << job.error().message();
  EXPECT_THAT(job.error().message(), HasSubstr("memory limit"));
  EXPECT_EQ(job.attempts(), 1);  // a resource limit is not retried
  ExpectServerUp();
}

TEST_F(SandboxTest, CancelEndsAForwardPassThatNeverReturns) {
  const std::string job_id = StartLoopingJob();
  // Beta's job runs in the other slot meanwhile.
  const v1::InspectResult beside = BetaInspect();
  EXPECT_GT(beside.total_macs(), 0);
  const absl::Time cancel = absl::Now();
  auto cancelled = alpha_->CancelJob(job_id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status() << "; job "
                              << alpha_->GetJob(job_id)->DebugString();
  auto state = alpha_->WatchJob(job_id, 0, [](const v1::JobEvent&) {});
  const absl::Duration took = absl::Now() - cancel;
  EXPECT_EQ(*state, v1::JOB_STATE_CANCELLED);
  EXPECT_LT(took, absl::Seconds(5)) << "cancel took " << took;
  ExpectServerUp();
}

TEST_F(SandboxTest, TheDeadlineEndsAForwardPassThatNeverReturns) {
  v1::SubmitJobRequest request = Inspect(UploadLoopingModel(), {4});
  request.set_deadline_seconds(2);
  auto job = alpha_->SubmitJob(request);
  ASSERT_TRUE(job.ok());
  auto state = alpha_->WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
  EXPECT_EQ(*state, v1::JOB_STATE_FAILED);
  v1::Job done = *alpha_->GetJob(job->id());
  EXPECT_EQ(done.error().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded))
      << done.error().message();
  ExpectServerUp();
}

TEST_F(SandboxTest, SigtermDrainsWithinTheGraceWhateverTheChildDoes) {
  const std::string job_id = StartLoopingJob();
  // --drain_grace=1s, --worker_grace=1s: well under 10 s in all.
  const absl::Duration took = server_->Kill(SIGTERM);
  EXPECT_LT(took, absl::Seconds(10)) << "drain took " << took;
  // The interrupted job was re-queued and runs again after a restart.
  server_ = std::make_unique<ServerProcess>(dir_.path() + "/data", args_);
  alpha_ = Connect(*server_, kAlphaToken);
  auto after = alpha_->GetJob(job_id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->state() == v1::JOB_STATE_QUEUED || after->state() == v1::JOB_STATE_RUNNING)
      << v1::JobState_Name(after->state());
  ASSERT_TRUE(alpha_->CancelJob(job_id).ok());
  EXPECT_EQ(*alpha_->WatchJob(job_id, 0, [](const v1::JobEvent&) {}), v1::JOB_STATE_CANCELLED);
}

}  // namespace
}  // namespace compress
