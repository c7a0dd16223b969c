// gRPC adapters for compress.v1: proto <-> domain calls, ToGrpcStatus,
// metrics. No business logic lives here: it is in catalog::Catalog and
// jobs::JobManager, which are tested without gRPC.
//
// Every handler first asks the Authenticator for the caller's tenant
// (UNAUTHENTICATED ends the call there) and acts for that tenant only.
// All handlers use the callback API. Work that can block (model validation
// after an upload, reading an artifact's bytes) runs on the `blocking` pool,
// never on a reactor thread.
#ifndef COMPRESS_SERVICE_SERVICES_H_
#define COMPRESS_SERVICE_SERVICES_H_

#include "compress/v1/compress.grpc.pb.h"
#include "server/jobs/job_manager.h"
#include "server/service/auth.h"
#include "server/service/metrics.h"
#include "server/catalog/catalog.h"
#include "server/util/thread_pool.h"

namespace compress::service {

class ModelServiceImpl final : public compress::v1::ModelService::CallbackService {
 public:
  ModelServiceImpl(Authenticator* auth, catalog::Catalog* catalog, ThreadPool* blocking,
                   Metrics* metrics)
      : auth_(auth), catalog_(catalog), blocking_(blocking), metrics_(metrics) {}

  grpc::ServerReadReactor<compress::v1::UploadRequest>* UploadModel(
      grpc::CallbackServerContext* context, compress::v1::Model* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const compress::v1::GetModelRequest* request,
                                     compress::v1::Model* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const compress::v1::ListModelsRequest* request,
                                       compress::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const compress::v1::DeleteModelRequest* request,
                                        compress::v1::DeleteModelResponse* response) override;

 private:
  Authenticator* auth_;
  catalog::Catalog* catalog_;
  ThreadPool* blocking_;
  Metrics* metrics_;
};

class DatasetServiceImpl final : public compress::v1::DatasetService::CallbackService {
 public:
  DatasetServiceImpl(Authenticator* auth, catalog::Catalog* catalog, ThreadPool* blocking,
                     Metrics* metrics)
      : auth_(auth), catalog_(catalog), blocking_(blocking), metrics_(metrics) {}

  grpc::ServerReadReactor<compress::v1::UploadRequest>* UploadDataset(
      grpc::CallbackServerContext* context, compress::v1::Dataset* response) override;
  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* context,
                                       const compress::v1::GetDatasetRequest* request,
                                       compress::v1::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* context,
                                         const compress::v1::ListDatasetsRequest* request,
                                         compress::v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* context,
                                          const compress::v1::DeleteDatasetRequest* request,
                                          compress::v1::DeleteDatasetResponse* response) override;

 private:
  Authenticator* auth_;
  catalog::Catalog* catalog_;
  ThreadPool* blocking_;
  Metrics* metrics_;
};

class JobServiceImpl final : public compress::v1::JobService::CallbackService {
 public:
  JobServiceImpl(Authenticator* auth, jobs::JobManager* jobs) : auth_(auth), jobs_(jobs) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context,
                                      const compress::v1::SubmitJobRequest* request,
                                      compress::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const compress::v1::GetJobRequest* request,
                                   compress::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const compress::v1::ListJobsRequest* request,
                                     compress::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const compress::v1::CancelJobRequest* request,
                                      compress::v1::Job* response) override;
  grpc::ServerWriteReactor<compress::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const compress::v1::WatchJobRequest* request) override;

 private:
  Authenticator* auth_;
  jobs::JobManager* jobs_;
};

class ArtifactServiceImpl final : public compress::v1::ArtifactService::CallbackService {
 public:
  ArtifactServiceImpl(Authenticator* auth, store::MetadataStore* metadata, store::BlobStore* blobs,
                      ThreadPool* blocking, Metrics* metrics)
      : auth_(auth), metadata_(metadata), blobs_(blobs), blocking_(blocking), metrics_(metrics) {}

  grpc::ServerUnaryReactor* ListArtifacts(grpc::CallbackServerContext* context,
                                          const compress::v1::ListArtifactsRequest* request,
                                          compress::v1::ListArtifactsResponse* response) override;
  grpc::ServerWriteReactor<compress::v1::DownloadArtifactResponse>* DownloadArtifact(
      grpc::CallbackServerContext* context,
      const compress::v1::DownloadArtifactRequest* request) override;

 private:
  Authenticator* auth_;
  store::MetadataStore* metadata_;
  store::BlobStore* blobs_;
  ThreadPool* blocking_;
  Metrics* metrics_;
};

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_SERVICES_H_
