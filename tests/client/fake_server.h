// An in-process fake of the compress.v1 services for client tests: a tiny,
// scriptable subset of compressd on localhost:0 (synchronous gRPC API).
//
//   FakeServer server;
//   server.jobs().AddJob(job, events);
//   server.jobs().DropWatchAfter(3);  // next WatchJob fails after 3 events
//   Client::Options options;
//   options.address = server.address();
//   auto client = Client::Create(options);
//
// What it records (uploads, watch requests, download offsets, metadata) is
// read back by the test after the client call returns. Thread-safe.
#ifndef COMPRESS_TESTS_CLIENT_FAKE_SERVER_H_
#define COMPRESS_TESTS_CLIENT_FAKE_SERVER_H_

#include <grpcpp/server.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "compress/v1/compress.grpc.pb.h"

namespace compress::client::testing {

namespace v1 = ::compress::v1;

// Models (upload, get, paged list, delete); also serves as the dataset fake.
class FakeModelService final : public v1::ModelService::Service {
 public:
  grpc::Status UploadModel(grpc::ServerContext* context,
                           grpc::ServerReader<v1::UploadRequest>* reader,
                           v1::Model* response) override;
  grpc::Status GetModel(grpc::ServerContext* context,
                        const v1::GetModelRequest* request,
                        v1::Model* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status DeleteModel(grpc::ServerContext* context,
                           const v1::DeleteModelRequest* request,
                           v1::DeleteModelResponse* response) override;

  void AddModel(const v1::Model& model) ABSL_LOCKS_EXCLUDED(mu_);
  // Every message of the last upload, in order.
  std::vector<v1::UploadRequest> last_upload() const ABSL_LOCKS_EXCLUDED(mu_);
  // Value of the "authorization" metadata of the last call ("" if none).
  std::string last_authorization() const ABSL_LOCKS_EXCLUDED(mu_);
  int list_calls() const ABSL_LOCKS_EXCLUDED(mu_);

  // Models per ListModels page, so that a handful of models needs paging.
  static constexpr int kPageSize = 2;

 private:
  void Record(grpc::ServerContext* context) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<v1::Model> models_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::UploadRequest> last_upload_ ABSL_GUARDED_BY(mu_);
  std::string last_authorization_ ABSL_GUARDED_BY(mu_);
  int list_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

class FakeDatasetService final : public v1::DatasetService::Service {
 public:
  grpc::Status UploadDataset(grpc::ServerContext* context,
                             grpc::ServerReader<v1::UploadRequest>* reader,
                             v1::Dataset* response) override;
  grpc::Status GetDataset(grpc::ServerContext* context,
                          const v1::GetDatasetRequest* request,
                          v1::Dataset* response) override;
  grpc::Status ListDatasets(grpc::ServerContext* context,
                            const v1::ListDatasetsRequest* request,
                            v1::ListDatasetsResponse* response) override;

  void AddDataset(const v1::Dataset& dataset) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<v1::UploadRequest> last_upload() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::vector<v1::Dataset> datasets_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::UploadRequest> last_upload_ ABSL_GUARDED_BY(mu_);
};

// Jobs with a fixed event log each. WatchJob streams the events after
// after_sequence and ends; failures are scripted per call.
class FakeJobService final : public v1::JobService::Service {
 public:
  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const v1::SubmitJobRequest* request,
                         v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context,
                        const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;

  // `job.last_sequence` is set from the events.
  void AddJob(v1::Job job, std::vector<v1::JobEvent> events)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The next submitted job gets this event log and, as stored (GetJob), the
  // state of the last state change and `result`; SubmitJob still answers
  // QUEUED.
  void ScriptNextSubmit(std::vector<v1::JobEvent> events, v1::JobResult result)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The next WatchJob call sends `events` events, then fails with UNAVAILABLE.
  // Calls queue up: one entry per future call.
  void DropWatchAfter(int events) ABSL_LOCKS_EXCLUDED(mu_);
  // The next WatchJob call ends OK (no error) after `events` events.
  void EndWatchEarlyAfter(int events) ABSL_LOCKS_EXCLUDED(mu_);
  // Every WatchJob call also resends the events at or before after_sequence
  // (a misbehaving or replaying server).
  void set_replay_backlog(bool replay) ABSL_LOCKS_EXCLUDED(mu_);
  // after_sequence of every WatchJob call, in order.
  std::vector<int64_t> watch_requests() const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<v1::SubmitJobRequest> submitted() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Script {
    int events;
    bool fail;  // UNAVAILABLE when true, OK otherwise
  };

  mutable absl::Mutex mu_;
  std::map<std::string, v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<v1::JobEvent>> events_ ABSL_GUARDED_BY(mu_);
  std::deque<Script> scripts_ ABSL_GUARDED_BY(mu_);
  bool replay_backlog_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> watch_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::SubmitJobRequest> submitted_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::JobEvent> next_events_ ABSL_GUARDED_BY(mu_);
  v1::JobResult next_result_ ABSL_GUARDED_BY(mu_);
};

// Artifacts as in-memory byte strings, streamed in kChunkBytes chunks from
// the requested offset.
class FakeArtifactService final : public v1::ArtifactService::Service {
 public:
  grpc::Status ListArtifacts(grpc::ServerContext* context,
                             const v1::ListArtifactsRequest* request,
                             v1::ListArtifactsResponse* response) override;
  grpc::Status DownloadArtifact(
      grpc::ServerContext* context, const v1::DownloadArtifactRequest* request,
      grpc::ServerWriter<v1::DownloadArtifactResponse>* writer) override;

  // Adds an artifact whose metadata carries the true size and sha256.
  void AddArtifact(const std::string& job_id, const std::string& name,
                   const std::string& content) ABSL_LOCKS_EXCLUDED(mu_);
  // Announce this sha256 instead of the true one (corruption in transit).
  void set_announced_sha256(const std::string& sha) ABSL_LOCKS_EXCLUDED(mu_);
  // The next download call fails with UNAVAILABLE after sending `bytes` bytes.
  void DropDownloadAfter(int64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Offset of every DownloadArtifact call, in order.
  std::vector<int64_t> download_offsets() const ABSL_LOCKS_EXCLUDED(mu_);

  static constexpr int64_t kChunkBytes = 64 * 1024;

 private:
  struct Stored {
    v1::Artifact artifact;
    std::string content;
  };
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, Stored> artifacts_
      ABSL_GUARDED_BY(mu_);
  std::string announced_sha256_ ABSL_GUARDED_BY(mu_);
  std::deque<int64_t> drops_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> download_offsets_ ABSL_GUARDED_BY(mu_);
};

// Starts all four services on localhost:0; stops them on destruction.
class FakeServer {
 public:
  FakeServer();
  ~FakeServer();
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  // "localhost:PORT".
  std::string address() const { return address_; }
  FakeModelService& models() { return models_; }
  FakeDatasetService& datasets() { return datasets_; }
  FakeJobService& jobs() { return jobs_; }
  FakeArtifactService& artifacts() { return artifacts_; }

 private:
  FakeModelService models_;
  FakeDatasetService datasets_;
  FakeJobService jobs_;
  FakeArtifactService artifacts_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

// Helpers to build event logs.
v1::JobEvent StateEvent(int64_t sequence, v1::JobState from, v1::JobState to);
v1::JobEvent ProgressEvent(int64_t sequence, const std::string& stage,
                           int64_t done, int64_t total);
v1::JobEvent LogEvent(int64_t sequence, const std::string& message);

}  // namespace compress::client::testing

#endif  // COMPRESS_TESTS_CLIENT_FAKE_SERVER_H_
