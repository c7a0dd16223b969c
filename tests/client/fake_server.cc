#include "tests/client/fake_server.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/compress/v1/job_kinds.h"
#include "server/util/sha256.h"

namespace compress::client::testing {
namespace {

// Reads one upload stream: header first, then chunks whose size and digest
// must match it.
grpc::Status ReadUpload(grpc::ServerReader<v1::UploadRequest>* reader,
                        std::vector<v1::UploadRequest>* messages,
                        v1::UploadHeader* header, std::string* digest) {
  v1::UploadRequest request;
  Sha256 sha;
  int64_t size = 0;
  while (reader->Read(&request)) {
    messages->push_back(request);
    if (messages->size() == 1) {
      if (!request.has_header()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "header must come first");
      }
      *header = request.header();
      continue;
    }
    if (!request.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "second header");
    }
    sha.Update(request.chunk());
    size += static_cast<int64_t>(request.chunk().size());
  }
  if (messages->empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty upload");
  }
  *digest = sha.HexDigest();
  if (size != header->size_bytes() || *digest != header->sha256()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "size or sha256 mismatch");
  }
  return grpc::Status::OK;
}

grpc::Status NotFound(const std::string& what) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat(what, " not found"));
}

}  // namespace

// --- Models ------------------------------------------------------------------

void FakeModelService::Record(grpc::ServerContext* context) {
  auto it = context->client_metadata().find("authorization");
  last_authorization_ = it == context->client_metadata().end()
                            ? ""
                            : std::string(it->second.data(), it->second.size());
}

grpc::Status FakeModelService::UploadModel(
    grpc::ServerContext* context, grpc::ServerReader<v1::UploadRequest>* reader,
    v1::Model* response) {
  std::vector<v1::UploadRequest> messages;
  v1::UploadHeader header;
  std::string digest;
  grpc::Status status = ReadUpload(reader, &messages, &header, &digest);
  absl::MutexLock lock(&mu_);
  Record(context);
  last_upload_ = std::move(messages);
  if (!status.ok()) return status;
  // Content-addressed like the real server: the same bytes again are the
  // model already stored, under its first name.
  for (const v1::Model& m : models_) {
    if (m.id() == digest) {
      *response = m;
      return grpc::Status::OK;
    }
  }
  response->set_id(digest);
  response->set_name(header.name());
  response->set_size_bytes(header.size_bytes());
  response->set_format(v1::MODEL_FORMAT_TORCHSCRIPT);
  models_.push_back(*response);
  return grpc::Status::OK;
}

grpc::Status FakeModelService::GetModel(grpc::ServerContext* context,
                                        const v1::GetModelRequest* request,
                                        v1::Model* response) {
  absl::MutexLock lock(&mu_);
  Record(context);
  for (const v1::Model& m : models_) {
    if (m.id() == request->model_id()) {
      *response = m;
      return grpc::Status::OK;
    }
  }
  return NotFound(absl::StrCat("model ", request->model_id()));
}

grpc::Status FakeModelService::ListModels(grpc::ServerContext* context,
                                          const v1::ListModelsRequest* request,
                                          v1::ListModelsResponse* response) {
  absl::MutexLock lock(&mu_);
  Record(context);
  ++list_calls_;
  size_t start = 0;
  if (!request->page_token().empty() &&
      !absl::SimpleAtoi(request->page_token(), &start)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad page token");
  }
  const size_t end = std::min(models_.size(), start + kPageSize);
  for (size_t i = start; i < end; ++i) *response->add_models() = models_[i];
  if (end < models_.size()) response->set_next_page_token(absl::StrCat(end));
  return grpc::Status::OK;
}

grpc::Status FakeModelService::DeleteModel(
    grpc::ServerContext* context, const v1::DeleteModelRequest* request,
    v1::DeleteModelResponse* response) {
  absl::MutexLock lock(&mu_);
  Record(context);
  auto it = std::find_if(
      models_.begin(), models_.end(),
      [&](const v1::Model& m) { return m.id() == request->model_id(); });
  if (it == models_.end())
    return NotFound(absl::StrCat("model ", request->model_id()));
  models_.erase(it);
  return grpc::Status::OK;
}

void FakeModelService::AddModel(const v1::Model& model) {
  absl::MutexLock lock(&mu_);
  models_.push_back(model);
}

std::vector<v1::UploadRequest> FakeModelService::last_upload() const {
  absl::MutexLock lock(&mu_);
  return last_upload_;
}

std::string FakeModelService::last_authorization() const {
  absl::MutexLock lock(&mu_);
  return last_authorization_;
}

int FakeModelService::list_calls() const {
  absl::MutexLock lock(&mu_);
  return list_calls_;
}

// --- Datasets ----------------------------------------------------------------

grpc::Status FakeDatasetService::UploadDataset(
    grpc::ServerContext* context, grpc::ServerReader<v1::UploadRequest>* reader,
    v1::Dataset* response) {
  std::vector<v1::UploadRequest> messages;
  v1::UploadHeader header;
  std::string digest;
  grpc::Status status = ReadUpload(reader, &messages, &header, &digest);
  absl::MutexLock lock(&mu_);
  last_upload_ = std::move(messages);
  if (!status.ok()) return status;
  response->set_id(digest);
  response->set_name(header.name());
  response->set_size_bytes(header.size_bytes());
  response->set_format(v1::DATASET_FORMAT_SAFETENSORS);
  datasets_.push_back(*response);
  return grpc::Status::OK;
}

grpc::Status FakeDatasetService::GetDataset(
    grpc::ServerContext* context, const v1::GetDatasetRequest* request,
    v1::Dataset* response) {
  absl::MutexLock lock(&mu_);
  for (const v1::Dataset& d : datasets_) {
    if (d.id() == request->dataset_id()) {
      *response = d;
      return grpc::Status::OK;
    }
  }
  return NotFound(absl::StrCat("dataset ", request->dataset_id()));
}

grpc::Status FakeDatasetService::ListDatasets(
    grpc::ServerContext* context, const v1::ListDatasetsRequest* request,
    v1::ListDatasetsResponse* response) {
  absl::MutexLock lock(&mu_);
  for (const v1::Dataset& d : datasets_) *response->add_datasets() = d;
  return grpc::Status::OK;
}

void FakeDatasetService::AddDataset(const v1::Dataset& dataset) {
  absl::MutexLock lock(&mu_);
  datasets_.push_back(dataset);
}

std::vector<v1::UploadRequest> FakeDatasetService::last_upload() const {
  absl::MutexLock lock(&mu_);
  return last_upload_;
}

// --- Jobs --------------------------------------------------------------------

grpc::Status FakeJobService::SubmitJob(grpc::ServerContext* context,
                                       const v1::SubmitJobRequest* request,
                                       v1::Job* response) {
  absl::MutexLock lock(&mu_);
  submitted_.push_back(*request);
  v1::Job job;
  job.set_id(Sha256Hex(absl::StrCat("job", submitted_.size())));
  job.set_kind(v1::KindOf(request->spec()));
  job.set_state(v1::JOB_STATE_QUEUED);
  *job.mutable_spec() = request->spec();
  job.set_device(request->device());
  job.set_seed(request->seed());
  job.set_request_id(request->request_id());
  job.set_deadline_seconds(request->deadline_seconds());
  *response = job;
  std::vector<v1::JobEvent> events = std::move(next_events_);
  next_events_.clear();
  for (v1::JobEvent& e : events) {
    e.set_job_id(job.id());
    if (e.has_state_change()) {
      job.set_state(e.state_change().to());
      if (e.state_change().has_error()) *job.mutable_error() = e.state_change().error();
    }
  }
  job.set_last_sequence(events.empty() ? 0 : events.back().sequence());
  *job.mutable_result() = std::move(next_result_);
  next_result_.Clear();
  jobs_[job.id()] = job;
  events_[job.id()] = std::move(events);
  return grpc::Status::OK;
}

void FakeJobService::ScriptNextSubmit(std::vector<v1::JobEvent> events,
                                      v1::JobResult result) {
  absl::MutexLock lock(&mu_);
  next_events_ = std::move(events);
  next_result_ = std::move(result);
}

grpc::Status FakeJobService::GetJob(grpc::ServerContext* context,
                                    const v1::GetJobRequest* request,
                                    v1::Job* response) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(request->job_id());
  if (it == jobs_.end())
    return NotFound(absl::StrCat("job ", request->job_id()));
  *response = it->second;
  return grpc::Status::OK;
}

grpc::Status FakeJobService::ListJobs(grpc::ServerContext* context,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    if (request->state() != v1::JOB_STATE_UNSPECIFIED &&
        job.state() != request->state()) {
      continue;
    }
    if (request->kind() != v1::JOB_KIND_UNSPECIFIED &&
        job.kind() != request->kind()) {
      continue;
    }
    *response->add_jobs() = job;
  }
  return grpc::Status::OK;
}

grpc::Status FakeJobService::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request,
                                       v1::Job* response) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(request->job_id());
  if (it == jobs_.end())
    return NotFound(absl::StrCat("job ", request->job_id()));
  it->second.set_state(v1::JOB_STATE_CANCELLED);
  *response = it->second;
  return grpc::Status::OK;
}

grpc::Status FakeJobService::WatchJob(
    grpc::ServerContext* context, const v1::WatchJobRequest* request,
    grpc::ServerWriter<v1::JobEvent>* writer) {
  std::vector<v1::JobEvent> events;
  std::optional<Script> script;
  bool replay = false;
  {
    absl::MutexLock lock(&mu_);
    watch_requests_.push_back(request->after_sequence());
    auto it = events_.find(request->job_id());
    if (it == events_.end())
      return NotFound(absl::StrCat("job ", request->job_id()));
    events = it->second;
    if (!scripts_.empty()) {
      script = scripts_.front();
      scripts_.pop_front();
    }
    replay = replay_backlog_;
  }
  int sent = 0;
  for (const v1::JobEvent& event : events) {
    if (!replay && event.sequence() <= request->after_sequence()) continue;
    if (script.has_value() && sent == script->events) {
      return script->fail ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                         "fake: connection dropped")
                          : grpc::Status::OK;
    }
    if (!writer->Write(event)) return grpc::Status::CANCELLED;
    ++sent;
  }
  return grpc::Status::OK;
}

void FakeJobService::AddJob(v1::Job job, std::vector<v1::JobEvent> events) {
  absl::MutexLock lock(&mu_);
  for (v1::JobEvent& e : events) e.set_job_id(job.id());
  job.set_last_sequence(events.empty() ? 0 : events.back().sequence());
  jobs_[job.id()] = job;
  events_[job.id()] = std::move(events);
}

void FakeJobService::DropWatchAfter(int events) {
  absl::MutexLock lock(&mu_);
  scripts_.push_back({events, true});
}

void FakeJobService::EndWatchEarlyAfter(int events) {
  absl::MutexLock lock(&mu_);
  scripts_.push_back({events, false});
}

void FakeJobService::set_replay_backlog(bool replay) {
  absl::MutexLock lock(&mu_);
  replay_backlog_ = replay;
}

std::vector<int64_t> FakeJobService::watch_requests() const {
  absl::MutexLock lock(&mu_);
  return watch_requests_;
}

std::vector<v1::SubmitJobRequest> FakeJobService::submitted() const {
  absl::MutexLock lock(&mu_);
  return submitted_;
}

// --- Artifacts ---------------------------------------------------------------

grpc::Status FakeArtifactService::ListArtifacts(
    grpc::ServerContext* context, const v1::ListArtifactsRequest* request,
    v1::ListArtifactsResponse* response) {
  absl::MutexLock lock(&mu_);
  for (const auto& [key, stored] : artifacts_) {
    if (key.first == request->job_id())
      *response->add_artifacts() = stored.artifact;
  }
  return grpc::Status::OK;
}

grpc::Status FakeArtifactService::DownloadArtifact(
    grpc::ServerContext* context, const v1::DownloadArtifactRequest* request,
    grpc::ServerWriter<v1::DownloadArtifactResponse>* writer) {
  Stored stored;
  int64_t drop = -1;
  {
    absl::MutexLock lock(&mu_);
    download_offsets_.push_back(request->offset());
    auto it = artifacts_.find({request->job_id(), request->name()});
    if (it == artifacts_.end())
      return NotFound(absl::StrCat("artifact ", request->name()));
    stored = it->second;
    if (!announced_sha256_.empty())
      stored.artifact.set_sha256(announced_sha256_);
    if (!drops_.empty()) {
      drop = drops_.front();
      drops_.pop_front();
    }
  }
  const int64_t size = static_cast<int64_t>(stored.content.size());
  if (request->offset() < 0 || request->offset() > size) {
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "offset past the end");
  }
  v1::DownloadArtifactResponse message;
  *message.mutable_artifact() = stored.artifact;
  if (!writer->Write(message)) return grpc::Status::CANCELLED;
  int64_t sent = 0;
  for (int64_t pos = request->offset(); pos < size;) {
    int64_t n = std::min(kChunkBytes, size - pos);
    if (drop >= 0) n = std::min(n, drop - sent);
    if (n <= 0) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "fake: connection dropped");
    }
    message.set_chunk(stored.content.substr(pos, n));
    if (!writer->Write(message)) return grpc::Status::CANCELLED;
    pos += n;
    sent += n;
  }
  return grpc::Status::OK;
}

void FakeArtifactService::AddArtifact(const std::string& job_id,
                                      const std::string& name,
                                      const std::string& content) {
  absl::MutexLock lock(&mu_);
  Stored& stored = artifacts_[{job_id, name}];
  stored.content = content;
  stored.artifact.set_job_id(job_id);
  stored.artifact.set_name(name);
  stored.artifact.set_size_bytes(static_cast<int64_t>(content.size()));
  stored.artifact.set_sha256(Sha256Hex(content));
  stored.artifact.set_content_type("application/octet-stream");
}

void FakeArtifactService::set_announced_sha256(const std::string& sha) {
  absl::MutexLock lock(&mu_);
  announced_sha256_ = sha;
}

void FakeArtifactService::DropDownloadAfter(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  drops_.push_back(bytes);
}

std::vector<int64_t> FakeArtifactService::download_offsets() const {
  absl::MutexLock lock(&mu_);
  return download_offsets_;
}

// --- Server ------------------------------------------------------------------

FakeServer::FakeServer() {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("localhost:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&models_);
  builder.RegisterService(&datasets_);
  builder.RegisterService(&jobs_);
  builder.RegisterService(&artifacts_);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("localhost:", port);
}

FakeServer::~FakeServer() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

v1::JobEvent StateEvent(int64_t sequence, v1::JobState from, v1::JobState to) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_state_change()->set_from(from);
  event.mutable_state_change()->set_to(to);
  return event;
}

v1::JobEvent ProgressEvent(int64_t sequence, const std::string& stage,
                           int64_t done, int64_t total) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_progress()->set_stage(stage);
  event.mutable_progress()->set_done(done);
  event.mutable_progress()->set_total(total);
  event.mutable_progress()->set_eta_seconds(-1);
  return event;
}

v1::JobEvent LogEvent(int64_t sequence, const std::string& message) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_log()->set_level("INFO");
  event.mutable_log()->set_message(message);
  return event;
}

}  // namespace compress::client::testing
