// Metrics: what Prometheus scrapes after the job layer, the upload and
// download paths and the RPC interceptor report. Read back from the text
// exposition served by MetricsHttpServer (parsed here), and compared with
// counts, sums and cumulative histogram buckets worked out by hand.
#include "server/service/metrics.h"

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "compress/v1/compress.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "server/service/metrics_http.h"
#include "tests/test_util.h"

namespace compress::service {
namespace {

namespace v1 = compress::v1;
using ::compress::testutil::HttpGet;
using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::IsSubsetOf;
using ::testing::Optional;

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

// The Prometheus text format (version 0.0.4), as much of it as compressd
// writes: "# HELP", "# TYPE" and `name{k="v",...} value` lines.
struct Exposition {
  std::map<std::string, std::string> types;
  std::map<std::string, std::string> helps;
  std::vector<Sample> samples;

  // The value of the sample with exactly these labels.
  std::optional<double> Value(const std::string& name, const Labels& labels = {}) const {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nullopt;
  }
  // A histogram's cumulative count at upper bound `le` (compared as a
  // number: the text form of 0.1 is the serializer's business).
  std::optional<double> Bucket(const std::string& name, const Labels& labels, double le) const {
    for (const Sample& s : samples) {
      if (s.name != name + "_bucket") continue;
      Labels rest = s.labels;
      auto it = rest.find("le");
      if (it == rest.end()) continue;
      double bound;
      if (it->second == "+Inf") {
        bound = INFINITY;
      } else if (!absl::SimpleAtod(it->second, &bound)) {
        continue;
      }
      rest.erase(it);
      if (rest == labels && bound == le) return s.value;
    }
    return std::nullopt;
  }
  int Count(const std::string& name) const {
    int n = 0;
    for (const Sample& s : samples) n += s.name == name ? 1 : 0;
    return n;
  }
  std::set<std::string> LabelNames() const {
    std::set<std::string> names;
    for (const Sample& s : samples) {
      for (const auto& [k, v] : s.labels) names.insert(k);
    }
    return names;
  }
};

Exposition Parse(const std::string& text) {
  Exposition e;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      if (f.size() == 2) e.types[f[0]] = f[1];
      continue;
    }
    if (absl::ConsumePrefix(&line, "# HELP ")) {
      std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(' ', 1));
      if (f.size() == 2) e.helps[f[0]] = f[1];
      continue;
    }
    if (absl::StartsWith(line, "#")) continue;
    Sample s;
    size_t brace = line.find('{');
    size_t space;
    if (brace != absl::string_view::npos) {
      s.name = std::string(line.substr(0, brace));
      size_t close = line.find('}', brace);
      EXPECT_NE(close, absl::string_view::npos) << line;
      absl::string_view labels = line.substr(brace + 1, close - brace - 1);
      for (absl::string_view pair : absl::StrSplit(labels, "\",", absl::SkipEmpty())) {
        std::vector<std::string> kv = absl::StrSplit(pair, absl::MaxSplits("=\"", 1));
        EXPECT_EQ(kv.size(), 2u) << line;
        if (kv.size() == 2) s.labels[kv[0]] = std::string(absl::StripSuffix(kv[1], "\""));
      }
      space = close + 1;
    } else {
      space = line.find(' ');
      s.name = std::string(line.substr(0, space));
    }
    std::vector<std::string> rest = absl::StrSplit(line.substr(space), ' ', absl::SkipEmpty());
    EXPECT_FALSE(rest.empty()) << line;
    if (rest.empty()) continue;
    if (rest[0] == "+Inf") {
      s.value = INFINITY;
    } else {
      EXPECT_TRUE(absl::SimpleAtod(rest[0], &s.value)) << line;
    }
    e.samples.push_back(std::move(s));
  }
  return e;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto http = MetricsHttpServer::Create("127.0.0.1:0", metrics_.registry());
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }

  // One scrape of /metrics.
  Exposition Scrape() {
    const std::string response = HttpGet(http_->port(), "/metrics");
    EXPECT_THAT(response, HasSubstr("200 OK"));
    EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4"));
    const size_t body = response.find("\r\n\r\n");
    EXPECT_NE(body, std::string::npos);
    return Parse(body == std::string::npos ? "" : response.substr(body + 4));
  }

  Metrics metrics_;
  std::unique_ptr<MetricsHttpServer> http_;
};

TEST_F(MetricsTest, AFreshServerExportsItsGaugesAtZero) {
  Exposition e = Scrape();
  for (const char* gauge :
       {"compressd_queue_depth", "compressd_workers_busy", "compressd_workers"}) {
    EXPECT_EQ(e.types[gauge], "gauge") << gauge;
    EXPECT_FALSE(e.helps[gauge].empty()) << gauge;
    EXPECT_THAT(e.Value(gauge), Optional(0.0)) << gauge;
  }
  // Labelled families have no samples until something is counted.
  EXPECT_EQ(e.Count("compressd_jobs_submitted_total"), 0);
  EXPECT_EQ(e.Count("compressd_rpcs_total"), 0);
}

TEST_F(MetricsTest, JobEventsBecomeCountsByKindAndOutcome) {
  metrics_.OnSubmitted(v1::JOB_KIND_ANALYZE);
  metrics_.OnSubmitted(v1::JOB_KIND_ANALYZE);
  metrics_.OnSubmitted(v1::JOB_KIND_INSPECT);
  metrics_.OnFinished(v1::JOB_KIND_QUANTIZE, v1::JOB_STATE_SUCCEEDED, 2.5);
  metrics_.OnFinished(v1::JOB_KIND_QUANTIZE, v1::JOB_STATE_FAILED, 0.05);
  metrics_.OnFinished(v1::JOB_KIND_PRUNE, v1::JOB_STATE_CANCELLED, 4000);
  Exposition e = Scrape();

  EXPECT_EQ(e.types["compressd_jobs_submitted_total"], "counter");
  EXPECT_THAT(e.Value("compressd_jobs_submitted_total", {{"kind", "analyze"}}), Optional(2.0));
  EXPECT_THAT(e.Value("compressd_jobs_submitted_total", {{"kind", "inspect"}}), Optional(1.0));
  EXPECT_EQ(e.Count("compressd_jobs_submitted_total"), 2);

  EXPECT_EQ(e.types["compressd_jobs_finished_total"], "counter");
  const std::string finished = "compressd_jobs_finished_total";
  EXPECT_THAT(e.Value(finished, {{"kind", "quantize"}, {"outcome", "succeeded"}}), Optional(1.0));
  EXPECT_THAT(e.Value(finished, {{"kind", "quantize"}, {"outcome", "failed"}}), Optional(1.0));
  EXPECT_THAT(e.Value(finished, {{"kind", "prune"}, {"outcome", "cancelled"}}), Optional(1.0));
  EXPECT_EQ(e.Count(finished), 3);

  // Run times: quantize 2.5 s and 0.05 s, prune 4000 s. Cumulative buckets.
  EXPECT_EQ(e.types["compressd_job_duration_seconds"], "histogram");
  const std::string duration = "compressd_job_duration_seconds";
  const std::vector<std::pair<double, double>> quantize = {
      {0.1, 1}, {0.5, 1}, {1, 1}, {5, 2}, {3600, 2}, {21600, 2}, {INFINITY, 2}};
  for (const auto& [le, count] : quantize) {
    EXPECT_THAT(e.Bucket(duration, {{"kind", "quantize"}}, le), Optional(count)) << le;
  }
  const std::vector<std::pair<double, double>> prune = {
      {0.1, 0}, {3600, 0}, {7200, 1}, {21600, 1}, {INFINITY, 1}};
  for (const auto& [le, count] : prune) {
    EXPECT_THAT(e.Bucket(duration, {{"kind", "prune"}}, le), Optional(count)) << le;
  }
  EXPECT_THAT(e.Value("compressd_job_duration_seconds_count", {{"kind", "quantize"}}),
              Optional(2.0));
  EXPECT_THAT(e.Value("compressd_job_duration_seconds_sum", {{"kind", "quantize"}}),
              Optional(DoubleNear(2.55, 1e-12)));
  EXPECT_THAT(e.Value("compressd_job_duration_seconds_sum", {{"kind", "prune"}}), Optional(4000.0));
  // 14 boundaries and +Inf per kind.
  EXPECT_EQ(e.Count(duration + "_bucket"), 2 * 15);
}

TEST_F(MetricsTest, GaugesHoldTheLastReportedValue) {
  metrics_.OnQueueDepth(7);
  metrics_.OnWorkers(2, 3);
  Exposition e = Scrape();
  EXPECT_THAT(e.Value("compressd_queue_depth"), Optional(7.0));
  EXPECT_THAT(e.Value("compressd_workers_busy"), Optional(2.0));
  EXPECT_THAT(e.Value("compressd_workers"), Optional(3.0));
  metrics_.OnQueueDepth(0);
  metrics_.OnWorkers(0, 3);
  e = Scrape();
  EXPECT_THAT(e.Value("compressd_queue_depth"), Optional(0.0));
  EXPECT_THAT(e.Value("compressd_workers_busy"), Optional(0.0));
  EXPECT_THAT(e.Value("compressd_workers"), Optional(3.0));
}

TEST_F(MetricsTest, TransferredBytesAddUpByResource) {
  metrics_.AddUploadedBytes("model", 1000);
  metrics_.AddUploadedBytes("model", 24);
  metrics_.AddUploadedBytes("dataset", 5);
  metrics_.AddDownloadedBytes("artifact", int64_t{1} << 20);
  metrics_.AddDownloadedBytes("artifact", 1);
  Exposition e = Scrape();
  EXPECT_EQ(e.types["compressd_uploaded_bytes_total"], "counter");
  EXPECT_THAT(e.Value("compressd_uploaded_bytes_total", {{"resource", "model"}}), Optional(1024.0));
  EXPECT_THAT(e.Value("compressd_uploaded_bytes_total", {{"resource", "dataset"}}), Optional(5.0));
  EXPECT_THAT(e.Value("compressd_downloaded_bytes_total", {{"resource", "artifact"}}),
              Optional(1048577.0));
  EXPECT_EQ(e.Count("compressd_downloaded_bytes_total"), 1);
}

// Codes by their names in grpc/status.h (google.rpc.Code); a number outside
// the enum is UNKNOWN.
TEST_F(MetricsTest, RpcsAreCountedByMethodAndCodeName) {
  const std::string submit = "/compress.v1.JobService/SubmitJob";
  metrics_.RecordRpc(submit, grpc::StatusCode::OK);
  metrics_.RecordRpc(submit, grpc::StatusCode::OK);
  metrics_.RecordRpc(submit, grpc::StatusCode::UNAVAILABLE);
  metrics_.RecordRpc(submit, grpc::StatusCode::RESOURCE_EXHAUSTED);
  metrics_.RecordRpc(submit, grpc::StatusCode::UNAUTHENTICATED);
  metrics_.RecordRpc(submit, grpc::StatusCode::DATA_LOSS);
  metrics_.RecordRpc(submit, static_cast<grpc::StatusCode>(99));
  metrics_.RecordRpc("/compress.v1.ModelService/GetModel", grpc::StatusCode::NOT_FOUND);
  Exposition e = Scrape();
  const std::string rpcs = "compressd_rpcs_total";
  EXPECT_EQ(e.types[rpcs], "counter");
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "OK"}}), Optional(2.0));
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "UNAVAILABLE"}}), Optional(1.0));
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "RESOURCE_EXHAUSTED"}}), Optional(1.0));
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "UNAUTHENTICATED"}}), Optional(1.0));
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "DATA_LOSS"}}), Optional(1.0));
  EXPECT_THAT(e.Value(rpcs, {{"method", submit}, {"code", "UNKNOWN"}}), Optional(1.0));
  EXPECT_THAT(
      e.Value(rpcs, {{"method", "/compress.v1.ModelService/GetModel"}, {"code", "NOT_FOUND"}}),
      Optional(1.0));
  EXPECT_EQ(e.Count(rpcs), 7);
}

TEST(KindLabelTest, IsTheLowerCaseKindName) {
  EXPECT_EQ(KindLabel(v1::JOB_KIND_INSPECT), "inspect");
  EXPECT_EQ(KindLabel(v1::JOB_KIND_ANALYZE), "analyze");
  EXPECT_EQ(KindLabel(v1::JOB_KIND_QUANTIZE), "quantize");
  EXPECT_EQ(KindLabel(v1::JOB_KIND_PRUNE), "prune");
  EXPECT_EQ(KindLabel(v1::JOB_KIND_COMPRESS), "compress");
  EXPECT_EQ(KindLabel(v1::JOB_KIND_UNSPECIFIED), "unspecified");
}

// Label values are bounded: after every kind of call, the only label names
// are the documented ones (no ids).
TEST_F(MetricsTest, OnlyBoundedLabelsAppear) {
  metrics_.OnSubmitted(v1::JOB_KIND_COMPRESS);
  metrics_.OnFinished(v1::JOB_KIND_COMPRESS, v1::JOB_STATE_SUCCEEDED, 1);
  metrics_.AddUploadedBytes("model", 1);
  metrics_.AddDownloadedBytes("artifact", 1);
  metrics_.RecordRpc("/compress.v1.JobService/GetJob", grpc::StatusCode::OK);
  Exposition e = Scrape();
  EXPECT_THAT(e.LabelNames(), IsSubsetOf(std::set<std::string>{"kind", "outcome", "resource",
                                                               "method", "code", "le"}));
  EXPECT_EQ(e.LabelNames().size(), 6u);
}

// The interceptor on a real in-process server: the default health service,
// and a JobService with no handlers (every method UNIMPLEMENTED). Every
// finished RPC is one count under its full method name and the code the
// client saw.
TEST_F(MetricsTest, TheInterceptorCountsEveryRpcWithTheCodeTheClientGot) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  v1::JobService::CallbackService unimplemented;
  builder.RegisterService(&unimplemented);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(metrics_.InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_NE(port, 0);

  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto check = [&](const std::string& service) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    return health->Check(&ctx, req, &resp).error_code();
  };
  int ok = 0, not_found = 0;
  for (const char* service : {"", "", "", "no.such.Service", "no.such.Service"}) {
    grpc::StatusCode code = check(service);
    ok += code == grpc::StatusCode::OK ? 1 : 0;
    not_found += code == grpc::StatusCode::NOT_FOUND ? 1 : 0;
  }
  ASSERT_EQ(ok, 3);
  ASSERT_EQ(not_found, 2);
  auto jobs = v1::JobService::NewStub(channel);
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    v1::Job job;
    ASSERT_EQ(jobs->GetJob(&ctx, req, &job).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }

  Exposition e = Scrape();
  const std::string method = "/grpc.health.v1.Health/Check";
  EXPECT_THAT(e.Value("compressd_rpcs_total", {{"method", method}, {"code", "OK"}}), Optional(3.0));
  EXPECT_THAT(e.Value("compressd_rpcs_total", {{"method", method}, {"code", "NOT_FOUND"}}),
              Optional(2.0));
  EXPECT_THAT(e.Value("compressd_rpcs_total",
                      {{"method", "/compress.v1.JobService/GetJob"}, {"code", "UNIMPLEMENTED"}}),
              Optional(1.0));
  EXPECT_EQ(e.Count("compressd_rpcs_total"), 3);
  server->Shutdown();
}

}  // namespace
}  // namespace compress::service
