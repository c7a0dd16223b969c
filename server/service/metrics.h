// Metrics: the Prometheus registry and every metric compressd exports.
//
// Label values are bounded (job kinds, states, RPC methods and codes, device
// types); ids never become labels. Also the JobObserver for the job layer and
// a gRPC interceptor that counts RPCs by method and code. Thread-safe.
#ifndef COMPRESS_SERVICE_METRICS_H_
#define COMPRESS_SERVICE_METRICS_H_

#include <memory>
#include <string>

#include "grpcpp/support/server_interceptor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/jobs/job_manager.h"

namespace compress::service {

class Metrics : public jobs::JobObserver {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // resource: "model", "dataset" or "artifact".
  void AddUploadedBytes(const std::string& resource, int64_t bytes);
  void AddDownloadedBytes(const std::string& resource, int64_t bytes);
  void RecordRpc(const std::string& method, grpc::StatusCode code);

  // jobs::JobObserver
  void OnSubmitted(compress::v1::JobKind kind) override;
  void OnFinished(compress::v1::JobKind kind, compress::v1::JobState state,
                  double run_seconds) override;
  void OnQueueDepth(int queued) override;
  void OnWorkers(int busy, int total) override;

  // Counts every RPC by method and final code.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& jobs_submitted_;
  prometheus::Family<prometheus::Counter>& jobs_finished_;
  prometheus::Family<prometheus::Histogram>& job_duration_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& workers_busy_;
  prometheus::Gauge& workers_total_;
  prometheus::Family<prometheus::Counter>& uploaded_bytes_;
  prometheus::Family<prometheus::Counter>& downloaded_bytes_;
  prometheus::Family<prometheus::Counter>& rpcs_;
};

// "inspect", "analyze", ... for labels.
std::string KindLabel(compress::v1::JobKind kind);

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_METRICS_H_
