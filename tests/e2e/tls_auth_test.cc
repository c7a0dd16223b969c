// TLS, client certificates, bearer tokens and tenant isolation, end to end:
// the real server on localhost:0 with certificates made by the openssl CLI
// at test time, driven through the client library (the code compressctl
// runs) and the generated stubs.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "client/client.h"
#include "compress/v1/compress.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service/auth.h"
#include "server/service/server.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::WaitFor;
using ::compress::testutil::WriteFile;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kAlphaToken[] = "alpha-token-0123456789abcdef";
constexpr char kBetaToken[] = "beta-token-0123456789abcdef";

// Runs a shell command in `dir`; fails the test when it does not exit 0.
void Shell(const std::string& dir, const std::string& command) {
  std::string full = absl::StrCat("cd '", dir, "' && ", command, " >/dev/null 2>&1");
  ASSERT_EQ(std::system(full.c_str()), 0) << full;
}

// A CA, and a key + certificate it signed for `name` (server: SAN localhost
// and 127.0.0.1).
void MakeCa(const std::string& dir, const std::string& ca) {
  Shell(dir, absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=", ca,
                          " -keyout ", ca, ".key -out ", ca, ".crt"));
}
void MakeCert(const std::string& dir, const std::string& ca, const std::string& name) {
  WriteFile(dir + "/san.cnf", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  Shell(dir, absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=", name, " -keyout ",
                          name, ".key -out ", name, ".csr"));
  Shell(dir, absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".crt -CAkey ", ca,
                          ".key -CAcreateserial -days 1 -extfile san.cnf -out ", name, ".crt"));
}

class TlsAuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new ScopedTempDir();
    const std::string d = certs_->path();
    MakeCa(d, "ca");
    MakeCert(d, "ca", "server");
    MakeCert(d, "ca", "client");
    MakeCa(d, "rogue-ca");
    MakeCert(d, "rogue-ca", "rogue");
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  static std::string Cert(const std::string& name) { return certs_->path() + "/" + name; }

  void StartServer(bool require_client_cert) {
    token_file_ = dir_.path() + "/tokens";
    WriteFile(token_file_, absl::StrCat("# tenants\n", kAlphaToken, " alpha\n", kBetaToken,
                                        "   beta   # second team\n"));
    service::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.health_listen = "127.0.0.1:0";
    options.data_dir = dir_.path() + "/data";
    options.intra_op_threads = 1;
    options.use_cuda = false;
    options.tls_cert = Cert("server.crt");
    options.tls_key = Cert("server.key");
    if (require_client_cert) options.tls_client_ca = Cert("ca.crt");
    options.token_file = token_file_;
    auto server = service::Server::Create(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A client over TLS that trusts our CA, with the given token and optional
  // client certificate.
  std::unique_ptr<client::Client> Connect(const std::string& token,
                                          const std::string& client_cert = "") {
    client::Client::Options o;
    o.address = absl::StrCat("localhost:", server_->port());
    o.ca_file = Cert("ca.crt");
    o.token = token;
    if (!client_cert.empty()) {
      o.cert_file = Cert(client_cert + ".crt");
      o.key_file = Cert(client_cert + ".key");
    }
    o.timeout = absl::Seconds(30);
    o.max_reconnects = 1;
    auto c = client::Client::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Uploads tiny_cnn.pt through `c` and runs an INSPECT job to success.
  std::pair<v1::Model, v1::Job> ModelAndFinishedJob(const client::Client& c) {
    auto model = c.UploadModel(FixturePath("tiny_cnn.pt"), "alpha-cnn");
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    v1::SubmitJobRequest req;
    req.mutable_spec()->mutable_inspect()->set_model_id(model->id());
    for (int64_t d : {2, 1, 8, 8}) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
    auto job = c.SubmitJob(req);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return {};
    auto state = c.WatchJob(job->id(), 0, [](const v1::JobEvent&) {});
    EXPECT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(*state, v1::JOB_STATE_SUCCEEDED);
    return {*model, *c.GetJob(job->id())};
  }

  static ScopedTempDir* certs_;
  ScopedTempDir dir_;
  std::string token_file_;
  std::unique_ptr<service::Server> server_;
};

ScopedTempDir* TlsAuthTest::certs_ = nullptr;

// Every compress.v1 call, unary and streaming, without a valid token.
void ExpectEveryCallUnauthenticated(const client::Client& c) {
  const auto unauthenticated = absl::StatusCode::kUnauthenticated;
  EXPECT_EQ(c.ListModels().status().code(), unauthenticated);
  EXPECT_EQ(c.GetModel("abcd").status().code(), unauthenticated);
  EXPECT_EQ(c.DeleteModel("abcd").code(), unauthenticated);
  EXPECT_EQ(c.UploadModel(FixturePath("tiny_cnn.pt"), "x").status().code(), unauthenticated);
  EXPECT_EQ(c.ListDatasets().status().code(), unauthenticated);
  EXPECT_EQ(c.GetDataset("builtin:fashion-mnist/test").status().code(), unauthenticated);
  EXPECT_EQ(c.UploadDataset(FixturePath("tiny.safetensors"), "x").status().code(),
            unauthenticated);
  EXPECT_EQ(c.DeleteDataset("abcd").code(), unauthenticated);
  v1::SubmitJobRequest req;
  req.mutable_spec()->mutable_inspect()->set_model_id("abcd");
  EXPECT_EQ(c.SubmitJob(req).status().code(), unauthenticated);
  EXPECT_EQ(c.GetJob("job-x").status().code(), unauthenticated);
  EXPECT_EQ(c.ListJobs({}).status().code(), unauthenticated);
  EXPECT_EQ(c.CancelJob("job-x").status().code(), unauthenticated);
  EXPECT_EQ(c.WatchJob("job-x", 0, [](const v1::JobEvent&) {}).status().code(), unauthenticated);
  EXPECT_EQ(c.ListArtifacts("job-x").status().code(), unauthenticated);
  ScopedTempDir out;
  EXPECT_EQ(c.DownloadArtifact("job-x", "report.json", out.path() + "/r").status().code(),
            unauthenticated);
}

TEST_F(TlsAuthTest, MissingTokenIsUnauthenticated) {
  StartServer(/*require_client_cert=*/false);
  auto c = Connect("");
  ExpectEveryCallUnauthenticated(*c);
  auto s = c->ListModels().status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("no bearer token"));
}

TEST_F(TlsAuthTest, WrongTokenIsUnauthenticated) {
  StartServer(false);
  auto c = Connect("not-a-token-of-this-server");
  ExpectEveryCallUnauthenticated(*c);
  // The message never echoes what the client sent.
  EXPECT_THAT(std::string(c->ListModels().status().message()),
              ::testing::Not(HasSubstr("not-a-token")));
  // A token alone, without the "Bearer " scheme, is no bearer token either.
  auto channel = grpc::CreateChannel(absl::StrCat("localhost:", server_->port()),
                                     grpc::SslCredentials({ReadFile(Cert("ca.crt")), "", ""}));
  auto models = v1::ModelService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", kAlphaToken);
  v1::ListModelsResponse response;
  EXPECT_EQ(models->ListModels(&ctx, {}, &response).error_code(), grpc::UNAUTHENTICATED);
}

TEST_F(TlsAuthTest, HealthAndMetricsNeedNoToken) {
  StartServer(false);
  auto c = Connect("");
  auto tls_health = c->CheckHealth("");
  ASSERT_TRUE(tls_health.ok()) << tls_health.status();
  EXPECT_EQ(*tls_health, "SERVING");

  // The plaintext probe port answers health, and nothing else.
  client::Client::Options plain;
  plain.address = absl::StrCat("127.0.0.1:", server_->health_port());
  plain.timeout = absl::Seconds(10);
  auto probe = client::Client::Create(plain);
  ASSERT_TRUE(probe.ok());
  EXPECT_EQ(*(*probe)->CheckHealth(""), "SERVING");
  EXPECT_EQ((*probe)->ListModels().status().code(), absl::StatusCode::kUnimplemented);

  EXPECT_EQ(c->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  std::string metrics = testutil::HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("200 OK"));
  EXPECT_THAT(metrics, HasSubstr("compressd_queue_depth 0"));
  EXPECT_THAT(metrics, HasSubstr("code=\"UNAUTHENTICATED\""));
}

TEST_F(TlsAuthTest, PlaintextClientCannotUseTheTlsPort) {
  StartServer(false);
  client::Client::Options o;
  o.address = absl::StrCat("127.0.0.1:", server_->port());
  o.token = kAlphaToken;
  o.timeout = absl::Seconds(5);
  auto c = client::Client::Create(o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->ListModels().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TlsAuthTest, ServerCertificateFromAnotherCaIsRejected) {
  StartServer(false);
  client::Client::Options o;
  o.address = absl::StrCat("localhost:", server_->port());
  o.ca_file = Cert("rogue-ca.crt");
  o.token = kAlphaToken;
  o.timeout = absl::Seconds(5);
  auto c = client::Client::Create(o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->ListModels().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TlsAuthTest, ClientCertificateRequiredWhenConfigured) {
  StartServer(/*require_client_cert=*/true);
  EXPECT_EQ(Connect(kAlphaToken)->ListModels().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Connect(kAlphaToken, "rogue")->ListModels().status().code(),
            absl::StatusCode::kUnavailable);
  auto ok = Connect(kAlphaToken, "client")->ListModels();
  EXPECT_TRUE(ok.ok()) << ok.status();
  // A certificate does not replace the token.
  EXPECT_EQ(Connect("", "client")->ListModels().status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(TlsAuthTest, AnotherTenantsIdsAreNotFound) {
  StartServer(false);
  auto alpha = Connect(kAlphaToken);
  auto beta = Connect(kBetaToken);
  auto [model, job] = ModelAndFinishedJob(*alpha);
  ASSERT_FALSE(job.id().empty());
  auto artifacts = alpha->ListArtifacts(job.id());
  ASSERT_TRUE(artifacts.ok()) << artifacts.status();
  ASSERT_THAT(*artifacts, ::testing::Not(IsEmpty()));
  const std::string artifact = (*artifacts)[0].name();

  // Beta sees exactly what a nonexistent id gives: same code, same message
  // with the id swapped.
  const std::string missing_model(64, 'e');
  const std::string missing_job = "job-00000000000000000000000000";
  auto same = [](const absl::Status& got, const absl::Status& missing, const std::string& id,
                 const std::string& missing_id) {
    EXPECT_EQ(got.code(), absl::StatusCode::kNotFound) << got;
    EXPECT_EQ(std::string(got.message()),
              absl::StrReplaceAll(missing.message(), {{missing_id, id}}));
  };
  same(beta->GetModel(model.id()).status(), beta->GetModel(missing_model).status(), model.id(),
       missing_model);
  same(beta->DeleteModel(model.id()), beta->DeleteModel(missing_model), model.id(),
       missing_model);
  same(beta->GetJob(job.id()).status(), beta->GetJob(missing_job).status(), job.id(),
       missing_job);
  same(beta->CancelJob(job.id()).status(), beta->CancelJob(missing_job).status(), job.id(),
       missing_job);
  same(beta->ListArtifacts(job.id()).status(), beta->ListArtifacts(missing_job).status(),
       job.id(), missing_job);
  EXPECT_EQ(beta->WatchJob(job.id(), 0, [](const v1::JobEvent&) {}).status().code(),
            absl::StatusCode::kNotFound);
  ScopedTempDir out;
  EXPECT_EQ(beta->DownloadArtifact(job.id(), artifact, out.path() + "/a").status().code(),
            absl::StatusCode::kNotFound);
  // A job naming another tenant's model is refused like an unknown model.
  v1::SubmitJobRequest req;
  req.mutable_spec()->mutable_inspect()->set_model_id(model.id());
  for (int64_t d : {2, 1, 8, 8}) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
  EXPECT_EQ(beta->SubmitJob(req).status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(*beta->ListModels(), IsEmpty());
  EXPECT_THAT(*beta->ListJobs({}), IsEmpty());
  // Builtin datasets belong to everyone.
  EXPECT_TRUE(beta->GetDataset("builtin:fashion-mnist/test").ok() ||
              !std::filesystem::exists("/usr/share/datasets/fashion-mnist"));

  // Alpha still has everything.
  EXPECT_THAT(*alpha->ListModels(), SizeIs(1));
  EXPECT_THAT(*alpha->ListJobs({}), SizeIs(1));
  auto download = alpha->DownloadArtifact(job.id(), artifact, out.path() + "/mine");
  EXPECT_TRUE(download.ok()) << download.status();
}

TEST_F(TlsAuthTest, SameBytesAreEachTenantsOwnModel) {
  StartServer(false);
  auto alpha = Connect(kAlphaToken);
  auto beta = Connect(kBetaToken);
  auto a = alpha->UploadModel(FixturePath("tiny_cnn.pt"), "alpha-name");
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = beta->UploadModel(FixturePath("tiny_cnn.pt"), "beta-name");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->id(), b->id());          // content-addressed
  EXPECT_EQ(b->name(), "beta-name");    // but nothing of alpha's row leaks
  // Beta deleting its copy leaves alpha's model and bytes in place.
  ASSERT_TRUE(beta->DeleteModel(b->id()).ok());
  EXPECT_EQ(beta->GetModel(b->id()).status().code(), absl::StatusCode::kNotFound);
  auto [model, job] = ModelAndFinishedJob(*alpha);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(TlsAuthTest, RequestIdsArePerTenant) {
  StartServer(false);
  auto alpha = Connect(kAlphaToken);
  auto beta = Connect(kBetaToken);
  auto a = alpha->UploadModel(FixturePath("tiny_cnn.pt"), "m");
  auto b = beta->UploadModel(FixturePath("tiny_mlp.pt"), "m");
  ASSERT_TRUE(a.ok() && b.ok());
  auto submit = [](const client::Client& c, const std::string& model_id) {
    v1::SubmitJobRequest req;
    req.set_request_id("nightly-1");
    req.mutable_spec()->mutable_inspect()->set_model_id(model_id);
    for (int64_t d : {2, 1, 8, 8}) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
    return c.SubmitJob(req);
  };
  auto ja = submit(*alpha, a->id());
  ASSERT_TRUE(ja.ok()) << ja.status();
  // Beta's same request id with another spec is a new job, not ALREADY_EXISTS.
  auto jb = submit(*beta, b->id());
  ASSERT_TRUE(jb.ok()) << jb.status();
  EXPECT_NE(ja->id(), jb->id());
}

TEST_F(TlsAuthTest, TokenFileIsReloaded) {
  StartServer(false);
  constexpr char kGammaToken[] = "gamma-token-0123456789abcdef";
  auto gamma = Connect(kGammaToken);
  EXPECT_EQ(gamma->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  // Rewritten with another size, so the change is seen even within one
  // mtime tick; beta's token is revoked.
  WriteFile(token_file_, absl::StrCat(kAlphaToken, " alpha\n", kGammaToken, " gamma\n"));
  EXPECT_TRUE(WaitFor([&] { return gamma->ListModels().ok(); }, absl::Seconds(10)));
  EXPECT_EQ(Connect(kBetaToken)->ListModels().status().code(),
            absl::StatusCode::kUnauthenticated);
  // A broken file keeps the tokens in force.
  WriteFile(token_file_, "short alpha\n");
  absl::SleepFor(absl::Milliseconds(1100));  // past the recheck interval
  EXPECT_TRUE(gamma->ListModels().ok());
}

TEST(TlsAuthStartTest, BadTlsOrTokenFilesStopTheStart) {
  ScopedTempDir dir;
  service::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.data_dir = dir.path() + "/data";
  options.use_cuda = false;
  options.tls_cert = dir.path() + "/missing.crt";
  options.tls_key = dir.path() + "/missing.key";
  EXPECT_EQ(service::Server::Create(options).status().code(),
            absl::StatusCode::kFailedPrecondition);
  WriteFile(dir.path() + "/empty.crt", "");
  options.tls_cert = options.tls_key = dir.path() + "/empty.crt";
  auto empty = service::Server::Create(options);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("not a PEM file"));
  options.tls_cert = "";
  EXPECT_EQ(service::Server::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);  // key without cert
  options.tls_key = "";
  options.token_file = dir.path() + "/no-tokens";
  EXPECT_EQ(service::Server::Create(options).status().code(), absl::StatusCode::kNotFound);
}

TEST(ParseTokenFileTest, ReadsTokensAndRejectsMistakes) {
  auto ok = service::ParseTokenFile(
      "# comment\n\n  alpha-token-0123456789 alpha  # trailing\nbeta-token-0123456789\tbeta.team-2\r\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(*ok, SizeIs(2));
  EXPECT_EQ(service::ParseTokenFile("").value().size(), 0u);
  auto error = [](const std::string& text) {
    auto r = service::ParseTokenFile(text);
    EXPECT_FALSE(r.ok()) << text;
    return std::string(r.status().message());
  };
  EXPECT_THAT(error("alpha-token-0123456789\n"), HasSubstr("line 1: expected"));
  EXPECT_THAT(error("# x\nshort alpha\n"), HasSubstr("line 2: token shorter than 16"));
  EXPECT_THAT(error("alpha-token-0123456789 al/pha\n"), HasSubstr("tenant must match"));
  EXPECT_THAT(error("alpha-token-0123456789 a\nalpha-token-0123456789 b\n"),
              HasSubstr("line 2: repeated token"));
  EXPECT_THAT(error("alpha-token-0123456789 a b\n"), HasSubstr("3 fields"));
}

}  // namespace
}  // namespace compress
