#include "server/service/services.h"

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/service/grpc_status.h"

namespace compress::service {
namespace v1 = compress::v1;

namespace {

constexpr size_t kMaxChunk = 1 << 20;

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* context, const absl::Status& s) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}


// protobuf refuses a proto3 string that is not UTF-8, before our code sees
// the header.
constexpr char kUnparsedHeader[] =
    "header: the first message could not be parsed as an upload header; its strings "
    "(header.name, header.sha256) must be valid UTF-8";
constexpr char kNoHeader[] =
    "header: the stream ended before an upload header could be read (none was sent, or it "
    "could not be parsed: header.name and header.sha256 must be valid UTF-8)";

// Receives one upload (header, then chunks) into the catalog. The final
// check loads the model or dataset, so it runs on the blocking pool.
template <typename Resource>
class UploadReactor : public grpc::ServerReadReactor<v1::UploadRequest> {
 public:
  UploadReactor(absl::StatusOr<std::string> tenant, catalog::Catalog* catalog,
                catalog::ResourceKind kind, Resource* response, ThreadPool* blocking,
                Metrics* metrics)
      : catalog_(catalog), kind_(kind), response_(response), blocking_(blocking),
        metrics_(metrics) {
    if (!tenant.ok()) {
      Finish(ToGrpcStatus(tenant.status()));
      return;
    }
    tenant_ = *std::move(tenant);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (probing_) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, ok ? kUnparsedHeader : kNoHeader));
      return;
    }
    if (!ok) {
      // The client half-closed (or went away: then OnCancel runs too), or
      // the message did not parse: gRPC reports both alike.
      if (upload_ == nullptr) {
        // A message after the failed one tells them apart: a half-closed
        // stream has none, an unparsed header is followed by its chunks.
        probing_ = true;
        StartRead(&request_);
        return;
      }
      blocking_->Schedule([this] {
        absl::Status s;
        if constexpr (std::is_same_v<Resource, v1::Model>) {
          auto r = catalog_->FinishModelUpload(std::move(upload_));
          s = r.status();
          if (r.ok()) *response_ = *std::move(r);
        } else {
          auto r = catalog_->FinishDatasetUpload(std::move(upload_));
          s = r.status();
          if (r.ok()) *response_ = *std::move(r);
        }
        Finish(ToGrpcStatus(s));
      });
      return;
    }
    absl::Status s;
    if (upload_ == nullptr) {
      if (!request_.has_header()) {
        s = absl::InvalidArgumentError("header: the first message must be the upload header");
      } else {
        auto up = catalog_->BeginUpload(tenant_, kind_, request_.header());
        s = up.status();
        if (up.ok()) upload_ = *std::move(up);
      }
    } else if (request_.has_header()) {
      s = absl::InvalidArgumentError("header: sent twice");
    } else if (request_.chunk().size() > kMaxChunk) {
      s = absl::InvalidArgumentError(
          absl::StrCat("chunk: ", request_.chunk().size(), " bytes is over the 1 MiB limit"));
    } else {
      s = upload_->Append(request_.chunk());
      metrics_->AddUploadedBytes(kind_ == catalog::ResourceKind::kModel ? "model" : "dataset",
                                 static_cast<int64_t>(request_.chunk().size()));
    }
    if (!s.ok()) {
      upload_.reset();  // deletes the temp file
      Finish(ToGrpcStatus(s));
      return;
    }
    StartRead(&request_);
  }

  void OnCancel() override {}
  void OnDone() override { delete this; }

 private:
  catalog::Catalog* catalog_;
  catalog::ResourceKind kind_;
  Resource* response_;
  ThreadPool* blocking_;
  Metrics* metrics_;
  std::string tenant_;
  v1::UploadRequest request_;
  std::unique_ptr<catalog::Catalog::Upload> upload_;
  bool probing_ = false;  // the first read failed; reading once more
};

template <typename Item, typename Response>
void FillPage(store::Page<Item> page, Response* response,
              google::protobuf::RepeatedPtrField<Item>* items) {
  for (Item& item : page.items) *items->Add() = std::move(item);
  response->set_next_page_token(page.next_page_token);
}

}  // namespace

// ---------------------------------------------------------------------------
// Models

grpc::ServerReadReactor<v1::UploadRequest>* ModelServiceImpl::UploadModel(
    grpc::CallbackServerContext* context, v1::Model* response) {
  return new UploadReactor<v1::Model>(auth_->TenantOf(*context), catalog_,
                                      catalog::ResourceKind::kModel, response, blocking_, metrics_);
}

grpc::ServerUnaryReactor* ModelServiceImpl::GetModel(grpc::CallbackServerContext* context,
                                                     const v1::GetModelRequest* request,
                                                     v1::Model* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto m = catalog_->GetModel(*tenant, request->model_id());
  if (m.ok()) *response = *std::move(m);
  return Reply(context, m.status());
}

grpc::ServerUnaryReactor* ModelServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest* request,
                                                       v1::ListModelsResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto page = catalog_->ListModels(*tenant, request->page_size(), request->page_token());
  if (page.ok()) FillPage(*std::move(page), response, response->mutable_models());
  return Reply(context, page.status());
}

grpc::ServerUnaryReactor* ModelServiceImpl::DeleteModel(grpc::CallbackServerContext* context,
                                                        const v1::DeleteModelRequest* request,
                                                        v1::DeleteModelResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  return Reply(context, catalog_->DeleteModel(*tenant, request->model_id()));
}

// ---------------------------------------------------------------------------
// Datasets

grpc::ServerReadReactor<v1::UploadRequest>* DatasetServiceImpl::UploadDataset(
    grpc::CallbackServerContext* context, v1::Dataset* response) {
  return new UploadReactor<v1::Dataset>(auth_->TenantOf(*context), catalog_,
                                        catalog::ResourceKind::kDataset, response, blocking_,
                                        metrics_);
}

grpc::ServerUnaryReactor* DatasetServiceImpl::GetDataset(grpc::CallbackServerContext* context,
                                                         const v1::GetDatasetRequest* request,
                                                         v1::Dataset* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto d = catalog_->GetDataset(*tenant, request->dataset_id());
  if (d.ok()) *response = *std::move(d);
  return Reply(context, d.status());
}

grpc::ServerUnaryReactor* DatasetServiceImpl::ListDatasets(
    grpc::CallbackServerContext* context, const v1::ListDatasetsRequest* request,
    v1::ListDatasetsResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto page = catalog_->ListDatasets(*tenant, request->page_size(), request->page_token());
  if (page.ok()) FillPage(*std::move(page), response, response->mutable_datasets());
  return Reply(context, page.status());
}

grpc::ServerUnaryReactor* DatasetServiceImpl::DeleteDataset(
    grpc::CallbackServerContext* context, const v1::DeleteDatasetRequest* request,
    v1::DeleteDatasetResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  return Reply(context, catalog_->DeleteDataset(*tenant, request->dataset_id()));
}

// ---------------------------------------------------------------------------
// Jobs

grpc::ServerUnaryReactor* JobServiceImpl::SubmitJob(grpc::CallbackServerContext* context,
                                                    const v1::SubmitJobRequest* request,
                                                    v1::Job* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  jobs::SubmitRequest submit;
  submit.request_id = request->request_id();
  submit.spec = request->spec();
  submit.device = request->device();
  submit.seed = request->seed();
  submit.deadline_seconds = request->deadline_seconds();
  auto job = jobs_->Submit(*tenant, submit);
  if (job.ok()) *response = *std::move(job);
  return Reply(context, job.status());
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                 const v1::GetJobRequest* request,
                                                 v1::Job* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto job = jobs_->Get(*tenant, request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Reply(context, job.status());
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest* request,
                                                   v1::ListJobsResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  store::JobFilter filter;
  filter.state = request->state();
  filter.kind = request->kind();
  auto page = jobs_->List(*tenant, filter, request->page_size(), request->page_token());
  if (page.ok()) FillPage(*std::move(page), response, response->mutable_jobs());
  return Reply(context, page.status());
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                    const v1::CancelJobRequest* request,
                                                    v1::Job* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto job = jobs_->Cancel(*tenant, request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Reply(context, job.status());
}

namespace {

// Streams a job's events: the backlog after `after_sequence`, then live
// events as the job manager announces them, until the terminal state change.
// It always reads from the persisted log and tracks the last sequence sent,
// so a wake-up can never cause a gap or a duplicate.
class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchReactor(jobs::JobManager* jobs, std::string job_id, int64_t after_sequence)
      : jobs_(jobs),
        job_id_(std::move(job_id)),
        after_sequence_(after_sequence),
        last_sent_(after_sequence) {}

  // Second phase of construction: subscribing can call back at once.
  void Begin(absl::StatusOr<std::string> tenant) {
    if (!tenant.ok()) {
      FinishOnce(ToGrpcStatus(tenant.status()));
      return;
    }
    tenant_ = *std::move(tenant);
    auto job = jobs_->Get(tenant_, job_id_);
    if (!job.ok()) {
      FinishOnce(ToGrpcStatus(job.status()));
      return;
    }
    if (after_sequence_ < 0) {
      FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_sequence: must be >= 0"));
      return;
    }
    // Subscribe before the first read so no event falls between the two.
    handle_ = jobs_->Subscribe(job_id_, [this] { Pump(); });
    subscribed_ = true;
    Pump();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed by the client"));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      last_sent_ = current_.sequence();
      if (current_.has_state_change() && jobs::IsTerminal(current_.state_change().to())) {
        done_ = true;
      }
    }
    Pump();
  }

  void OnCancel() override { FinishOnce(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (subscribed_) jobs_->Unsubscribe(job_id_, handle_);
    delete this;
  }

 private:
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    if (done_) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    if (pending_.empty()) {
      auto events = jobs_->Events(tenant_, job_id_, last_sent_, 64);
      if (!events.ok()) {
        FinishLocked(ToGrpcStatus(events.status()));
        return;
      }
      for (v1::JobEvent& e : *events) pending_.push_back(std::move(e));
      if (pending_.empty()) {
        // Nothing new. A job that already ended (and whose terminal event the
        // client had before reconnecting) ends the stream here.
        auto job = jobs_->Get(tenant_, job_id_);
        if (job.ok() && jobs::IsTerminal(job->state()) && job->last_sequence() <= last_sent_) {
          FinishLocked(grpc::Status::OK);
        }
        return;
      }
    }
    current_ = std::move(pending_.front());
    pending_.pop_front();
    writing_ = true;
    StartWrite(&current_);
  }

  void FinishOnce(const grpc::Status& s) {
    absl::MutexLock lock(&mu_);
    FinishLocked(s);
  }
  void FinishLocked(const grpc::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(s);
  }

  jobs::JobManager* const jobs_;
  const std::string job_id_;
  const int64_t after_sequence_;  // as requested; last_sent_ starts here
  std::string tenant_;  // set by Begin, before any callback
  uint64_t handle_ = 0;
  bool subscribed_ = false;
  absl::Mutex mu_;
  int64_t last_sent_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  v1::JobEvent current_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::JobEvent> pending_ ABSL_GUARDED_BY(mu_);
};

// Streams one artifact: metadata first, then 1 MiB chunks from `offset`.
// The lookups run on the reactor thread, like every handler's; opening and
// reading the blob run on the blocking pool. One step is in flight at a time
// (a pool task or a write) and each pool task ends in StartWrite or Finish,
// touching nothing after it, so OnDone (which deletes this) never runs while
// a task still uses the reactor.
class DownloadReactor : public grpc::ServerWriteReactor<v1::DownloadArtifactResponse> {
 public:
  DownloadReactor(absl::StatusOr<std::string> tenant, store::MetadataStore* metadata,
                  store::BlobStore* blobs, ThreadPool* blocking, Metrics* metrics,
                  const v1::DownloadArtifactRequest& request)
      : blobs_(blobs), blocking_(blocking), metrics_(metrics) {
    if (!tenant.ok()) {
      Finish(ToGrpcStatus(tenant.status()));
      return;
    }
    // Another tenant's job answers like a missing one.
    if (auto job = metadata->GetJob(*tenant, request.job_id()); !job.ok()) {
      Finish(ToGrpcStatus(job.status()));
      return;
    }
    auto artifact = metadata->GetArtifact(request.job_id(), request.name());
    if (!artifact.ok()) {
      Finish(ToGrpcStatus(artifact.status()));
      return;
    }
    if (request.offset() < 0 || request.offset() > artifact->size_bytes()) {
      Finish(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                          absl::StrCat("offset: must be in [0, ", artifact->size_bytes(), "]")));
      return;
    }
    sha256_ = artifact->sha256();
    size_ = artifact->size_bytes();
    offset_ = request.offset();
    *response_.mutable_artifact() = *std::move(artifact);
    blocking_->Schedule([this, name = request.name()] { Open(name); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed by the client"));
      return;
    }
    blocking_->Schedule([this] { ReadChunk(); });
  }

  void OnDone() override { delete this; }

 private:
  // On the blocking pool: checks the blob is there, then sends the metadata.
  void Open(const std::string& name) {
    absl::Status there = blobs_->Size(sha256_).status();
    if (absl::IsNotFound(there)) {
      Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                          absl::StrCat("artifact ", name, ": blob missing")));
      return;
    }
    if (!there.ok()) {
      Finish(ToGrpcStatus(there));
      return;
    }
    StartWrite(&response_);
  }

  // On the blocking pool: sends the next chunk, or ends the stream at the end.
  void ReadChunk() {
    std::string* chunk = response_.mutable_chunk();
    chunk->clear();
    absl::Status read = absl::OkStatus();
    if (offset_ < size_) {
      read = blobs_->Read(sha256_, offset_, static_cast<int64_t>(kMaxChunk),
                          [chunk](absl::string_view bytes) {
                            chunk->append(bytes.data(), bytes.size());
                            return absl::OkStatus();
                          });
    }
    if (!read.ok() || chunk->empty()) {
      Finish(read.ok() ? grpc::Status::OK
                       : grpc::Status(grpc::StatusCode::DATA_LOSS,
                                      absl::StrCat("read error: ", read.message())));
      return;
    }
    offset_ += static_cast<int64_t>(chunk->size());
    metrics_->AddDownloadedBytes("artifact", static_cast<int64_t>(chunk->size()));
    StartWrite(&response_);
  }

  store::BlobStore* const blobs_;
  ThreadPool* const blocking_;
  Metrics* const metrics_;
  // Used by one step at a time (see the class comment); no lock needed.
  std::string sha256_;
  int64_t size_ = 0;
  int64_t offset_ = 0;
  v1::DownloadArtifactResponse response_;
};

}  // namespace

grpc::ServerWriteReactor<v1::JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  auto* reactor = new WatchReactor(jobs_, request->job_id(), request->after_sequence());
  reactor->Begin(auth_->TenantOf(*context));
  return reactor;
}

// ---------------------------------------------------------------------------
// Artifacts

grpc::ServerUnaryReactor* ArtifactServiceImpl::ListArtifacts(
    grpc::CallbackServerContext* context, const v1::ListArtifactsRequest* request,
    v1::ListArtifactsResponse* response) {
  absl::StatusOr<std::string> tenant = auth_->TenantOf(*context);
  if (!tenant.ok()) return Reply(context, tenant.status());
  auto job = metadata_->GetJob(*tenant, request->job_id());
  if (!job.ok()) return Reply(context, job.status());
  auto artifacts = metadata_->ListArtifacts(request->job_id());
  if (artifacts.ok()) {
    for (v1::Artifact& a : *artifacts) *response->add_artifacts() = std::move(a);
  }
  return Reply(context, artifacts.status());
}

grpc::ServerWriteReactor<v1::DownloadArtifactResponse>* ArtifactServiceImpl::DownloadArtifact(
    grpc::CallbackServerContext* context, const v1::DownloadArtifactRequest* request) {
  return new DownloadReactor(auth_->TenantOf(*context), metadata_, blobs_, blocking_, metrics_,
                             *request);
}

}  // namespace compress::service
