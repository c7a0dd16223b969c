#include "server/service/server.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/catalog/catalog.h"
#include "server/catalog/engine_describer.h"
#include "server/engine/common/runtime.h"
#include "server/jobs/job_manager.h"
#include "server/pipeline/pipeline.h"
#include "server/pipeline/registry.h"
#include "server/service/auth.h"
#include "server/service/metrics.h"
#include "server/service/metrics_http.h"
#include "server/service/services.h"
#include "server/service/unparsed_request.h"
#include "server/store/blob_store.h"
#include "server/store/metadata_store.h"
#include "server/store/pg/listener.h"
#include "server/store/pg/pg_job_queue.h"
#include "server/store/pg_metadata_store.h"
#include "server/store/s3/s3_backed_blob_store.h"
#include "server/store/s3/s3_config.h"
#include "server/util/status_macros.h"
#include "server/worker/child_runner.h"

namespace compress::service {
namespace v1 = compress::v1;

namespace {

// The pipeline's view of one tenant's models, datasets and stored jobs.
class CatalogResources : public pipeline::Resources {
 public:
  CatalogResources(catalog::Catalog* catalog, store::MetadataStore* metadata, std::string tenant)
      : catalog_(catalog), metadata_(metadata), tenant_(std::move(tenant)) {}
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    return catalog_->GetModel(tenant_, id);
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    return catalog_->GetDataset(tenant_, id);
  }
  std::string ModelPath(const std::string& id) override { return catalog_->ModelPath(id); }
  std::string DatasetPath(const std::string& id) override { return catalog_->DatasetPath(id); }
  std::string BuiltinDataDir() override { return catalog_->fashion_mnist_dir(); }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    return metadata_->GetJob(tenant_, id);
  }

 private:
  catalog::Catalog* catalog_;
  store::MetadataStore* metadata_;
  const std::string tenant_;
};

absl::StatusOr<std::unique_ptr<store::BlobStore>> OpenBlobStore(const ServerOptions& options) {
  if (options.blob_store.empty()) return store::BlobStore::Create(options.data_dir);
  store::S3BackedBlobStoreOptions o;
  absl::StatusOr<store::S3Config> config = store::S3ConfigFromEnvironment(options.blob_store);
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--blob_store ", options.blob_store, ": ", config.status().message()));
  }
  o.s3.client.config = *std::move(config);
  o.cache_dir = options.data_dir + "/blob-cache";
  o.cache_max_bytes = options.blob_cache_bytes;
  ASSIGN_OR_RETURN(std::unique_ptr<store::S3BackedBlobStore> s3,
                   store::S3BackedBlobStore::Create(o));
  return std::unique_ptr<store::BlobStore>(std::move(s3));
}

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(flag, " ", path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(flag, " ", path, ": not a PEM file"));
  }
  return text.str();
}

// TLS when a certificate is configured: the server's key pair, and with a
// client CA, clients must present a certificate it signed.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (options.tls_cert.empty()) {
    if (!options.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.private_key, ReadPem("--tls_key", options.tls_key));
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem("--tls_cert", options.tls_cert));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!options.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("--tls_client_ca", options.tls_client_ca));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  Metrics metrics;
  std::unique_ptr<Authenticator> auth;
  std::unique_ptr<store::BlobStore> blobs;
  std::unique_ptr<store::MetadataStore> metadata;
  // PostgreSQL only: the shared queue and the LISTEN connection (API roles).
  std::unique_ptr<store::JobQueue> queue;
  std::unique_ptr<store::pg::Listener> listener;
  std::unique_ptr<catalog::ContentDescriber> describer;
  std::unique_ptr<jobs::JobRunner> runner;
  std::unique_ptr<catalog::Catalog> catalog;
  std::unique_ptr<pipeline::JobKindRegistry> kinds;
  std::unique_ptr<jobs::JobManager> jobs;
  std::unique_ptr<ThreadPool> blocking;
  std::unique_ptr<ModelServiceImpl> model_service;
  std::unique_ptr<DatasetServiceImpl> dataset_service;
  std::unique_ptr<JobServiceImpl> job_service;
  std::unique_ptr<ArtifactServiceImpl> artifact_service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<grpc::Server> health_server;  // plaintext, health only
  int health_port = 0;
  int intra_op_threads = 1;
  std::unique_ptr<MetricsHttpServer> metrics_http;
  int port = 0;
  absl::Mutex drain_mu;
  bool drained ABSL_GUARDED_BY(drain_mu) = false;
  absl::Notification drain_done;
};

// Model work (upload validation, every job) in child processes when
// options.worker_executable is set; in this process otherwise (tests).
absl::Status Server::SetUpWorkers(const ServerOptions& options, Impl& impl) {
  if (options.worker_executable.empty()) {
    impl.describer = std::make_unique<catalog::EngineDescriber>();
    impl.runner = std::make_unique<jobs::InProcessRunner>();
    return absl::OkStatus();
  }
  worker::WorkerOptions w;
  w.executable = options.worker_executable;
  w.work_root = options.data_dir + "/work";
  w.memory_bytes = options.worker_memory_bytes;
  w.cpu_time = options.worker_cpu_time;
  w.grace = options.worker_grace;
  w.describe_deadline = options.validate_deadline;
  w.seccomp = options.worker_seccomp;
  w.threads = impl.intra_op_threads;
  // Working directories of children a killed server left behind.
  RETURN_IF_ERROR(worker::CleanWorkRoot(w.work_root));
  impl.describer = std::make_unique<worker::ChildDescriber>(w);
  impl.runner = std::make_unique<worker::ChildJobRunner>(w);
  return absl::OkStatus();
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Drain(absl::ZeroDuration()); }

// Blobs, metadata and, on PostgreSQL, the shared queue and its notifier.
absl::Status Server::OpenStores(const ServerOptions& options, Impl& impl) {
  ASSIGN_OR_RETURN(impl.blobs, OpenBlobStore(options));
  if (!store::IsPostgresUrl(options.database)) {
    if (options.role != "all") {
      return absl::InvalidArgumentError(absl::StrCat(
          "--role=", options.role, " shares its queue with other replicas: it needs "
          "--database=postgresql://... (SQLite serves --role=all only)"));
    }
    ASSIGN_OR_RETURN(impl.metadata, store::OpenMetadataStore(
                                        options.database.empty()
                                            ? options.data_dir + "/compressd.db"
                                            : options.database));
    return absl::OkStatus();
  }
  if (options.role != "all" && options.blob_store.empty()) {
    fprintf(stderr,
            "compressd: WARNING: --role=%s with blobs in %s/blobs: every replica must see "
            "the same directory (a ReadWriteMany volume), or use --blob_store=s3://...\n",
            options.role.c_str(), options.data_dir.c_str());
  }
  store::PgMetadataStoreOptions pg;
  pg.url = options.database;
  pg.migrate = options.migrate_on_start;
  ASSIGN_OR_RETURN(std::unique_ptr<store::PgMetadataStore> metadata,
                   store::PgMetadataStore::Create(pg));
  ASSIGN_OR_RETURN(impl.queue, store::PgJobQueue::Create(&metadata->pool()));
  if (options.role != "worker") {  // watchers live on API processes
    store::pg::ListenerOptions listen;
    listen.conninfo = options.database;
    ASSIGN_OR_RETURN(impl.listener, store::pg::Listener::Create(listen));
  }
  impl.metadata = std::move(metadata);
  return absl::OkStatus();
}

absl::Status Server::CreateJobManager(const ServerOptions& options, Impl& impl) {
  jobs::JobManagerOptions job_options;
  if (options.role != "api") {
    job_options.cpu_workers = options.cpu_workers;
    if (options.use_cuda) {
      for (const std::string& d : engine::AvailableDevices()) {
        if (d != "cpu") job_options.cuda_devices.push_back(d);
      }
    }
  } else {
    job_options.cpu_workers = 0;
  }
  job_options.max_queued = options.max_queued;
  job_options.default_deadline = options.default_deadline;
  job_options.max_attempts = options.max_attempts;
  job_options.limits = options.limits;
  job_options.runner = impl.runner.get();
  job_options.queue = impl.queue.get();
  job_options.notifier = impl.listener.get();
  job_options.worker_id = options.worker_id;
  if (job_options.worker_id.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    job_options.worker_id = absl::StrCat(host, "-", getpid());
  }
  job_options.lease = options.lease;
  job_options.renew_interval = std::min(absl::Seconds(2), options.lease / 3);
  job_options.reap_interval = std::min(absl::Seconds(5), options.lease / 2);
  jobs::ResourcesFactory resources = [catalog = impl.catalog.get(),
                                      metadata = impl.metadata.get()](const std::string& tenant) {
    return std::make_unique<CatalogResources>(catalog, metadata, tenant);
  };
  ASSIGN_OR_RETURN(impl.jobs, jobs::JobManager::Create(job_options, impl.metadata.get(),
                                                       impl.blobs.get(), impl.kinds.get(),
                                                       std::move(resources), &impl.metrics));
  return absl::OkStatus();
}

// The gRPC server (the API, or health only on a worker), the plaintext
// health port and the metrics endpoint.
absl::Status Server::StartGrpc(const ServerOptions& options,
                               std::shared_ptr<grpc::ServerCredentials> credentials,
                               Impl& impl) {
  impl.blocking = std::make_unique<ThreadPool>(std::max(1, options.blocking_threads));
  const bool api = options.role != "worker";
  if (api) {
    Authenticator* auth = impl.auth.get();
    impl.model_service = std::make_unique<ModelServiceImpl>(auth, impl.catalog.get(),
                                                            impl.blocking.get(), &impl.metrics);
    impl.dataset_service = std::make_unique<DatasetServiceImpl>(
        auth, impl.catalog.get(), impl.blocking.get(), &impl.metrics);
    impl.job_service = std::make_unique<JobServiceImpl>(auth, impl.jobs.get());
    impl.artifact_service = std::make_unique<ArtifactServiceImpl>(
        auth, impl.metadata.get(), impl.blobs.get(), impl.blocking.get(), &impl.metrics);
  }
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &impl.port);
  builder.SetMaxReceiveMessageSize(4 << 20);  // 1 MiB chunks plus headroom
  if (api) {
    builder.RegisterService(impl.model_service.get());
    builder.RegisterService(impl.dataset_service.get());
    builder.RegisterService(impl.job_service.get());
    builder.RegisterService(impl.artifact_service.get());
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  // First, so that the metrics count the status it corrects.
  creators.push_back(UnparsedRequestInterceptorFactory());
  creators.push_back(impl.metrics.InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  impl.grpc_server = builder.BuildAndStart();
  if (impl.grpc_server == nullptr || impl.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  impl.grpc_server->GetHealthCheckService()->SetServingStatus(false);

  if (!options.health_listen.empty()) {
    // Its own server, so that the plaintext port carries nothing but health.
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                                    &impl.health_port);
    impl.health_server = health_builder.BuildAndStart();
    if (impl.health_server == nullptr || impl.health_port == 0) {
      impl.grpc_server->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("--health_listen: cannot listen on ", options.health_listen));
    }
    impl.health_server->GetHealthCheckService()->SetServingStatus(false);
  }

  if (!options.metrics_listen.empty()) {
    auto http = MetricsHttpServer::Create(options.metrics_listen, impl.metrics.registry());
    if (!http.ok()) {
      impl.grpc_server->Shutdown();
      if (impl.health_server != nullptr) impl.health_server->Shutdown();
      return absl::Status(http.status().code(),
                          absl::StrCat("--metrics_listen: ", http.status().message()));
    }
    impl.metrics_http = *std::move(http);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  if (options.role != "all" && options.role != "api" && options.role != "worker") {
    return absl::InvalidArgumentError(
        absl::StrCat("--role=", options.role, ": must be all, api or worker"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->intra_op_threads = engine::ConfigureThreads(options.intra_op_threads, options.cpu_workers);
  // Credentials and tokens first: a bad file fails before anything starts.
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   MakeCredentials(options));
  ASSIGN_OR_RETURN(impl->auth, Authenticator::Create(options.token_file));

  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data_dir ", options.data_dir, ": ", ec.message()));
  }
  RETURN_IF_ERROR(OpenStores(options, *impl));
  RETURN_IF_ERROR(SetUpWorkers(options, *impl));
  catalog::CatalogOptions catalog_options;
  catalog_options.max_model_bytes = options.max_model_bytes;
  catalog_options.max_dataset_bytes = options.max_dataset_bytes;
  catalog_options.max_name_bytes = options.limits.max_name_bytes;
  catalog_options.fashion_mnist_dir = options.fashion_mnist_dir;
  ASSIGN_OR_RETURN(impl->catalog,
                   catalog::Catalog::Create(catalog_options, impl->blobs.get(),
                                            impl->metadata.get(), impl->describer.get()));
  ASSIGN_OR_RETURN(impl->kinds, pipeline::NewDefaultRegistry());
  RETURN_IF_ERROR(CreateJobManager(options, *impl));
  RETURN_IF_ERROR(StartGrpc(options, std::move(credentials), *impl));

  absl::Status started = impl->jobs->Start();
  if (!started.ok()) {
    impl->grpc_server->Shutdown();
    if (impl->health_server != nullptr) impl->health_server->Shutdown();
    return started;
  }
  impl->grpc_server->GetHealthCheckService()->SetServingStatus(true);
  if (impl->health_server != nullptr) {
    impl->health_server->GetHealthCheckService()->SetServingStatus(true);
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

int Server::health_port() const { return impl_->health_port; }
int Server::intra_op_threads() const { return impl_->intra_op_threads; }

int Server::metrics_port() const {
  return impl_->metrics_http == nullptr ? 0 : impl_->metrics_http->port();
}

void Server::Drain(absl::Duration grace) {
  {
    absl::MutexLock lock(&impl_->drain_mu);
    if (impl_->drained) return;
    impl_->drained = true;
  }
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  if (impl_->health_server != nullptr) {
    impl_->health_server->GetHealthCheckService()->SetServingStatus(false);
  }
  impl_->jobs->Drain(grace);
  // Streams (watchers) are ended by the deadline; a few seconds lets
  // in-flight unary calls finish.
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (impl_->health_server != nullptr) {
    impl_->health_server->Shutdown(std::chrono::system_clock::now());
  }
  impl_->blocking.reset();  // finishes queued upload validations and artifact reads
  if (impl_->metrics_http != nullptr) impl_->metrics_http->Stop();
  impl_->drain_done.Notify();
}

void Server::Wait() { impl_->drain_done.WaitForNotification(); }

}  // namespace compress::service
