#include "server/service/server.h"

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/service/metrics_http.h"
#include "server/engine/common/runtime.h"
#include "server/jobs/job_manager.h"
#include "server/pipeline/pipeline.h"
#include "server/service/metrics.h"
#include "server/service/services.h"
#include "server/store/blob_store.h"
#include "server/store/catalog.h"
#include "server/store/metadata_store.h"
#include "server/util/status_macros.h"

namespace compress::service {
namespace v1 = compress::v1;

namespace {

// The pipeline's view of models, datasets and stored jobs.
class CatalogResources : public pipeline::Resources {
 public:
  CatalogResources(store::Catalog* catalog, store::MetadataStore* metadata)
      : catalog_(catalog), metadata_(metadata) {}
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    return catalog_->GetModel(id);
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    return catalog_->GetDataset(id);
  }
  std::string ModelPath(const std::string& id) override { return catalog_->ModelPath(id); }
  std::string DatasetPath(const std::string& id) override { return catalog_->DatasetPath(id); }
  std::string BuiltinDataDir() override { return catalog_->fashion_mnist_dir(); }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override { return metadata_->GetJob(id); }

 private:
  store::Catalog* catalog_;
  store::MetadataStore* metadata_;
};

}  // namespace

struct Server::Impl {
  ServerOptions options;
  Metrics metrics;
  std::unique_ptr<store::BlobStore> blobs;
  std::unique_ptr<store::MetadataStore> metadata;
  std::unique_ptr<store::Catalog> catalog;
  std::unique_ptr<CatalogResources> resources;
  std::unique_ptr<pipeline::Pipeline> pipeline;
  std::unique_ptr<jobs::JobManager> jobs;
  std::unique_ptr<ThreadPool> blocking;
  std::unique_ptr<ModelServiceImpl> model_service;
  std::unique_ptr<DatasetServiceImpl> dataset_service;
  std::unique_ptr<JobServiceImpl> job_service;
  std::unique_ptr<ArtifactServiceImpl> artifact_service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<MetricsHttpServer> metrics_http;
  int port = 0;
  absl::Mutex drain_mu;
  bool drained ABSL_GUARDED_BY(drain_mu) = false;
  absl::Notification drain_done;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Drain(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  engine::ConfigureThreads(options.intra_op_threads);

  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data_dir ", options.data_dir, ": ", ec.message()));
  }
  ASSIGN_OR_RETURN(impl->blobs, store::BlobStore::Create(options.data_dir));
  ASSIGN_OR_RETURN(impl->metadata,
                   store::MetadataStore::Create(options.data_dir + "/compressd.db"));
  store::CatalogOptions catalog_options;
  catalog_options.max_model_bytes = options.max_model_bytes;
  catalog_options.max_dataset_bytes = options.max_dataset_bytes;
  catalog_options.fashion_mnist_dir = options.fashion_mnist_dir;
  ASSIGN_OR_RETURN(impl->catalog, store::Catalog::Create(catalog_options, impl->blobs.get(),
                                                         impl->metadata.get()));
  impl->resources = std::make_unique<CatalogResources>(impl->catalog.get(), impl->metadata.get());
  impl->pipeline = pipeline::NewDefaultPipeline();

  jobs::JobManagerOptions job_options;
  job_options.cpu_workers = options.cpu_workers;
  if (options.use_cuda) {
    for (const std::string& d : engine::AvailableDevices()) {
      if (d != "cpu") job_options.cuda_devices.push_back(d);
    }
  }
  job_options.max_queued = options.max_queued;
  job_options.default_deadline = options.default_deadline;
  job_options.max_attempts = options.max_attempts;
  ASSIGN_OR_RETURN(impl->jobs, jobs::JobManager::Create(job_options, impl->metadata.get(),
                                                        impl->blobs.get(), impl->pipeline.get(),
                                                        impl->resources.get(), &impl->metrics));

  impl->blocking = std::make_unique<ThreadPool>(std::max(1, options.blocking_threads));
  impl->model_service = std::make_unique<ModelServiceImpl>(impl->catalog.get(),
                                                           impl->blocking.get(), &impl->metrics);
  impl->dataset_service = std::make_unique<DatasetServiceImpl>(
      impl->catalog.get(), impl->blocking.get(), &impl->metrics);
  impl->job_service = std::make_unique<JobServiceImpl>(impl->jobs.get());
  impl->artifact_service = std::make_unique<ArtifactServiceImpl>(
      impl->metadata.get(), impl->blobs.get(), &impl->metrics);

  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.SetMaxReceiveMessageSize(4 << 20);  // 1 MiB chunks plus headroom
  builder.RegisterService(impl->model_service.get());
  builder.RegisterService(impl->dataset_service.get());
  builder.RegisterService(impl->job_service.get());
  builder.RegisterService(impl->artifact_service.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(impl->metrics.InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  grpc::HealthCheckServiceInterface* health = impl->grpc_server->GetHealthCheckService();
  health->SetServingStatus(false);

  if (!options.metrics_listen.empty()) {
    auto http = MetricsHttpServer::Create(options.metrics_listen, impl->metrics.registry());
    if (!http.ok()) {
      impl->grpc_server->Shutdown();
      return absl::Status(http.status().code(),
                          absl::StrCat("--metrics_listen: ", http.status().message()));
    }
    impl->metrics_http = *std::move(http);
  }

  absl::Status started = impl->jobs->Start();
  if (!started.ok()) {
    impl->grpc_server->Shutdown();
    return started;
  }
  health->SetServingStatus(true);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

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
  impl_->jobs->Drain(grace);
  // Streams (watchers) are ended by the deadline; a few seconds lets
  // in-flight unary calls finish.
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->blocking.reset();  // finishes queued upload validations
  if (impl_->metrics_http != nullptr) impl_->metrics_http->Stop();
  impl_->drain_done.Notify();
}

void Server::Wait() { impl_->drain_done.WaitForNotification(); }

}  // namespace compress::service
