// MetricsHttpServer: serves GET /metrics in the Prometheus text format.
//
// Why not prometheus-cpp's Exposer: it runs on civetweb, whose worker threads
// get a fixed 100 KiB stack (Debian's build), too small for the static TLS of
// a process that links LibTorch: pthread_create fails and the Exposer throws
// "null context when constructing CivetServer". Metric types and the text
// encoding still come from prometheus-cpp; only the transport is ours.
//
// One thread, one connection at a time (scrapes are small and rare); each
// connection has a 5 s I/O timeout. Thread-safe; Stop() is idempotent.
#ifndef COMPRESS_SERVICE_METRICS_HTTP_H_
#define COMPRESS_SERVICE_METRICS_HTTP_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace compress::service {

class MetricsHttpServer {
 public:
  // `address` is host:port; port 0 picks a free port (see port()).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry);
  void Loop();
  void Serve(int client);

  const int fd_;
  const int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_METRICS_HTTP_H_
