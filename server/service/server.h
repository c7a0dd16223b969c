// Server: compressd assembled — stores, catalog, job manager, gRPC services,
// health, reflection and the Prometheus endpoint.
//
//   ServerOptions options;            // defaults: see each field
//   options.data_dir = "/var/lib/compressd";
//   ASSIGN_OR_RETURN(auto server, Server::Create(options));
//   ... server->port() ...
//   server->Drain(absl::Seconds(30));  // on SIGTERM
//
// Create() returns once the server is SERVING: the gRPC port is open first
// (health answers NOT_SERVING meanwhile), jobs of an earlier process are
// recovered, then health turns SERVING. Thread-safe.
#ifndef COMPRESS_SERVICE_SERVER_H_
#define COMPRESS_SERVICE_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/pipeline/limits.h"
#include "server/util/defaults.h"

namespace grpc {
class ServerCredentials;
}  // namespace grpc

namespace compress::service {

struct ServerOptions {
  std::string listen = "0.0.0.0:50051";   // gRPC address; port 0 = pick one
  std::string metrics_listen = "0.0.0.0:9464";  // Prometheus; "" = off
  // Plaintext gRPC port that serves grpc.health.v1 only (kubelet probes
  // speak no TLS); "" = off, health is then on `listen` only.
  std::string health_listen;
  // TLS: PEM server certificate chain and key; both empty = plaintext.
  std::string tls_cert;
  std::string tls_key;
  // PEM CA bundle; set = clients must present a certificate it signed.
  std::string tls_client_ca;
  // "TOKEN TENANT" lines (see auth.h); "" = single tenant, no tokens.
  std::string token_file;
  std::string data_dir = "./compressd-data";     // blobs/ and compressd.db
  // Metadata: "" = SQLite at <data_dir>/compressd.db; a postgresql:// URL =
  // PostgreSQL 15: metadata, the shared job queue (leases) and the event
  // log, for any number of replicas.
  std::string database;
  // "all": the API and job slots in one process (the default). "api": the
  // gRPC API only, no job slots. "worker": claims and runs jobs from the
  // shared queue; its gRPC port serves health only. api and worker need a
  // postgresql:// database and a blob store every replica sees.
  std::string role = "all";
  // Lease owner of this process in the shared queue; "" = <hostname>-<pid>.
  std::string worker_id;
  absl::Duration lease = absl::Seconds(30);  // a silent worker loses its job after this
  // PostgreSQL: migrate the schema at start (false: refuse to start unless
  // `compressd migrate` already did).
  bool migrate_on_start = true;
  // "" = blobs in <data_dir>/blobs; "s3://bucket/prefix" = an S3-compatible
  // bucket (endpoint and credentials from the environment, see
  // store/s3/s3_config.h) with a local cache in <data_dir>/blob-cache.
  std::string blob_store;
  // S3 only: bound of <data_dir>/blob-cache in bytes (least recently used
  // blobs go first, none used in the last 10 minutes); 0 = unbounded.
  int64_t blob_cache_bytes = 0;
  int cpu_workers = 1;              // concurrent jobs on the CPU
  bool use_cuda = true;             // one worker slot per visible CUDA device
  int intra_op_threads = 0;         // LibTorch threads per job; 0 = the available
                                    // cores split between the CPU workers
  int max_queued = 1000;            // queued jobs before RESOURCE_EXHAUSTED
  int64_t max_model_bytes = int64_t{2} << 30;    // upload limit, bytes
  int64_t max_dataset_bytes = int64_t{4} << 30;  // upload limit, bytes
  absl::Duration default_deadline = absl::Hours(24);  // job run time limit
  int max_attempts = 3;             // restarts a job survives
  // Upper bounds on what a spec or an upload may ask for (eigenvalues,
  // probes, grid points, input elements, name bytes, ...); each field's
  // default and unit in pipeline/limits.h.
  pipeline::ServerLimits limits;
  std::string fashion_mnist_dir = defaults::kFashionMnistDir;
  int blocking_threads = 4;         // threads for upload validation and artifact reads
  // The compressd binary that runs model work as `--role=child` (upload
  // validation and every job); "" = in this process, for tests only.
  std::string worker_executable;
  int64_t worker_memory_bytes = 0;  // address-space limit per child; 0 = none
  absl::Duration worker_cpu_time = absl::InfiniteDuration();  // per child; default none
  absl::Duration worker_grace = absl::Seconds(5);     // SIGTERM -> SIGKILL of a child
  absl::Duration validate_deadline = absl::Minutes(5);  // loading an uploaded model
  // Each child runs under the seccomp deny-list of sandbox/seccomp.h (no
  // network sockets, no ptrace, no namespaces, ...).
  bool worker_seccomp = true;
  bool reflection = true;           // gRPC server reflection
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;          // bound gRPC port
  int metrics_port() const;  // bound metrics port, 0 when off
  int health_port() const;   // bound plaintext health port, 0 when off
  int intra_op_threads() const;  // LibTorch threads per job, as configured
  // Health NOT_SERVING, refuse new jobs, let running jobs finish for up to
  // `grace` (then re-queue them for the next start), stop gRPC. Idempotent.
  void Drain(absl::Duration grace);
  // Blocks until Drain() has completed.
  void Wait();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  static absl::Status SetUpWorkers(const ServerOptions& options, Impl& impl);
  static absl::Status OpenStores(const ServerOptions& options, Impl& impl);
  static absl::Status CreateJobManager(const ServerOptions& options, Impl& impl);
  static absl::Status StartGrpc(const ServerOptions& options,
                                std::shared_ptr<grpc::ServerCredentials> credentials,
                                Impl& impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_SERVER_H_
