#include "server/service/metrics.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace compress::service {
namespace v1 = compress::v1;

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : "UNKNOWN";
}

std::string StateLabel(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  return absl::AsciiStrToLower(absl::StripPrefix(name, "JOB_STATE_"));
}

class RpcCounter : public grpc::experimental::Interceptor {
 public:
  RpcCounter(Metrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->RecordRpc(method_, methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  Metrics* metrics_;
  std::string method_;
};

class RpcCounterFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcCounterFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcCounter(metrics_, info->method() ? info->method() : "unknown");
  }

 private:
  Metrics* metrics_;
};

}  // namespace

std::string KindLabel(v1::JobKind kind) {
  std::string name = v1::JobKind_Name(kind);
  return absl::AsciiStrToLower(absl::StripPrefix(name, "JOB_KIND_"));
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      jobs_submitted_(prometheus::BuildCounter()
                          .Name("compressd_jobs_submitted_total")
                          .Help("Jobs accepted, by kind.")
                          .Register(*registry_)),
      jobs_finished_(prometheus::BuildCounter()
                         .Name("compressd_jobs_finished_total")
                         .Help("Jobs finished, by kind and outcome (succeeded, failed, cancelled).")
                         .Register(*registry_)),
      job_duration_(prometheus::BuildHistogram()
                        .Name("compressd_job_duration_seconds")
                        .Help("Run time of finished jobs, by kind.")
                        .Register(*registry_)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("compressd_queue_depth")
                       .Help("Jobs waiting for a worker.")
                       .Register(*registry_)
                       .Add({})),
      workers_busy_(prometheus::BuildGauge()
                        .Name("compressd_workers_busy")
                        .Help("Worker slots running a job.")
                        .Register(*registry_)
                        .Add({})),
      workers_total_(prometheus::BuildGauge()
                         .Name("compressd_workers")
                         .Help("Worker slots (CPU and CUDA).")
                         .Register(*registry_)
                         .Add({})),
      uploaded_bytes_(prometheus::BuildCounter()
                          .Name("compressd_uploaded_bytes_total")
                          .Help("Bytes received in uploads, by resource.")
                          .Register(*registry_)),
      downloaded_bytes_(prometheus::BuildCounter()
                            .Name("compressd_downloaded_bytes_total")
                            .Help("Bytes sent in downloads, by resource.")
                            .Register(*registry_)),
      rpcs_(prometheus::BuildCounter()
                .Name("compressd_rpcs_total")
                .Help("RPCs handled, by method and status code.")
                .Register(*registry_)) {}

void Metrics::AddUploadedBytes(const std::string& resource, int64_t bytes) {
  uploaded_bytes_.Add({{"resource", resource}}).Increment(static_cast<double>(bytes));
}

void Metrics::AddDownloadedBytes(const std::string& resource, int64_t bytes) {
  downloaded_bytes_.Add({{"resource", resource}}).Increment(static_cast<double>(bytes));
}

void Metrics::RecordRpc(const std::string& method, grpc::StatusCode code) {
  rpcs_.Add({{"method", method}, {"code", CodeName(code)}}).Increment();
}

void Metrics::OnSubmitted(v1::JobKind kind) {
  jobs_submitted_.Add({{"kind", KindLabel(kind)}}).Increment();
}

void Metrics::OnFinished(v1::JobKind kind, v1::JobState state, double run_seconds) {
  jobs_finished_.Add({{"kind", KindLabel(kind)}, {"outcome", StateLabel(state)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600};
  job_duration_.Add({{"kind", KindLabel(kind)}}, kBuckets).Observe(run_seconds);
}

void Metrics::OnQueueDepth(int queued) { queue_depth_.Set(queued); }

void Metrics::OnWorkers(int busy, int total) {
  workers_busy_.Set(busy);
  workers_total_.Set(total);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
Metrics::InterceptorFactory() {
  return std::make_unique<RpcCounterFactory>(this);
}

}  // namespace compress::service
