// Client library for the compressd gRPC API (compress.v1).
//
// `Client` wraps the four service stubs behind absl::Status-returning methods
// and adds what every caller would otherwise rewrite: chunked, digest-checked
// uploads; paging; a job watch that survives dropped connections; and
// resumable, digest-verified artifact downloads.
//
//   Client::Options options;
//   options.address = "localhost:50051";
//   ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(options));
//   ASSIGN_OR_RETURN(v1::Model model, client->UploadModel("cnn.pt", ""));
//   v1::SubmitJobRequest request;
//   request.mutable_spec()->mutable_inspect()->set_model_id(model.id());
//   ASSIGN_OR_RETURN(v1::Job job, client->SubmitJob(request));
//   ASSIGN_OR_RETURN(v1::JobState state,
//       client->WatchJob(job.id(), 0, [](const v1::JobEvent& e) { ... }));
//
// Errors: RPC failures come back as absl::Status with the gRPC code and
// message unchanged (grpc::StatusCode and absl::StatusCode share values).
// Local failures (unreadable file, digest mismatch) use the closest code.
//
// Thread safety: all methods are const and may be called concurrently; each
// call uses its own grpc::ClientContext. The object is not copyable.
#ifndef COMPRESS_CLIENT_CLIENT_H_
#define COMPRESS_CLIENT_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "compress/v1/compress.grpc.pb.h"
#include "compress/v1/compress.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace compress::client {

namespace v1 = ::compress::v1;

// Upload chunks are exactly this size (the last one may be smaller); the API
// allows at most 1 MiB per chunk.
inline constexpr int64_t kUploadChunkBytes = int64_t{1} << 20;

// Converts a gRPC status to an absl::Status with the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// True for the three terminal job states.
bool IsTerminal(v1::JobState state);

// Filters for ListJobs; UNSPECIFIED means "any".
struct JobFilter {
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  v1::JobKind kind = v1::JOB_KIND_UNSPECIFIED;
};

class Client {
 public:
  struct Options {
    // Server address, host:port. Default "localhost:50051".
    std::string address = "localhost:50051";
    // TLS: on when `tls` is true or any of the files is set. ca_file: PEM
    // CA bundle that signed the server's certificate (empty = the system
    // roots). cert_file + key_file: a client certificate, for servers that
    // verify clients (they go together). tls_server_name: the name the
    // server certificate is checked against instead of the address's host
    // (e.g. through a port-forward). Defaults: plaintext, all empty.
    bool tls = false;
    std::string ca_file;
    std::string cert_file;
    std::string key_file;
    std::string tls_server_name;
    // Bearer token sent as "authorization: Bearer <token>" on every call when
    // non-empty. Default empty (no metadata).
    std::string token;
    // Deadline for each RPC, streams included (each watch reconnect and each
    // download retry gets a fresh one). Default zero = no deadline.
    absl::Duration timeout = absl::ZeroDuration();
    // WatchJob/DownloadArtifact: reconnect attempts in a row without progress
    // before giving up. Default 8.
    int max_reconnects = 8;
    // Backoff before the first reconnect; doubles each time up to
    // max_backoff. Defaults 200 ms and 10 s.
    absl::Duration initial_backoff = absl::Milliseconds(200);
    absl::Duration max_backoff = absl::Seconds(10);
  };

  // Called once per event, in sequence order, each sequence exactly once.
  using EventCallback = std::function<void(const v1::JobEvent&)>;

  // Opens a channel to options.address (plaintext or TLS). Fails only on bad
  // options or unreadable TLS files; connection problems surface on the
  // first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const Options& options);
  // Uses an existing channel (tests, in-process servers). Transport fields of
  // `options` (address, TLS files) are ignored.
  static std::unique_ptr<Client> CreateWithChannel(
      std::shared_ptr<grpc::Channel> channel, const Options& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // --- Models and datasets -------------------------------------------------
  // Uploads the file at `path`: the header {name, size_bytes, sha256} (digest
  // computed by reading the file first), then 1 MiB chunks. `name` defaults to
  // the file's base name. ABORTED when the file changes while uploading.
  absl::StatusOr<v1::Model> UploadModel(const std::string& path,
                                        const std::string& name) const;
  absl::StatusOr<v1::Model> GetModel(const std::string& model_id) const;
  // All models, following next_page_token until the last page.
  absl::StatusOr<std::vector<v1::Model>> ListModels() const;
  absl::Status DeleteModel(const std::string& model_id) const;

  absl::StatusOr<v1::Dataset> UploadDataset(const std::string& path,
                                            const std::string& name) const;
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& dataset_id) const;
  absl::StatusOr<std::vector<v1::Dataset>> ListDatasets() const;
  absl::Status DeleteDataset(const std::string& dataset_id) const;

  // --- Jobs ----------------------------------------------------------------
  absl::StatusOr<v1::Job> SubmitJob(const v1::SubmitJobRequest& request) const;
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) const;
  // All jobs matching `filter`, across pages.
  absl::StatusOr<std::vector<v1::Job>> ListJobs(const JobFilter& filter) const;
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id) const;

  // Streams the job's events with sequence > after_sequence to `on_event`
  // and returns the terminal state once a state_change event reaches
  // SUCCEEDED, FAILED or CANCELLED. When the stream fails with UNAVAILABLE or
  // ends early, reconnects with after_sequence = the last sequence seen,
  // backing off exponentially; gives up after options.max_reconnects attempts
  // in a row that delivered no event. If the job had already ended before
  // after_sequence, the state comes from GetJob. Blocks the calling thread.
  absl::StatusOr<v1::JobState> WatchJob(const std::string& job_id,
                                        int64_t after_sequence,
                                        const EventCallback& on_event) const;

  // --- Artifacts -----------------------------------------------------------
  absl::StatusOr<std::vector<v1::Artifact>> ListArtifacts(
      const std::string& job_id) const;

  // Downloads artifact `name` of `job_id` to `out_path`. Bytes go to
  // out_path + ".part"; an existing .part is resumed (request offset = its
  // size), and UNAVAILABLE mid-stream resumes the same way (bounded like
  // WatchJob). When complete, the whole file is checked against the size and
  // sha256 from the first response message and renamed to `out_path`.
  //
  // On a digest or size mismatch the .part file is REMOVED and DATA_LOSS is
  // returned: the bad bytes may be anywhere in the file (e.g. a stale .part
  // from another download), so resuming from it would fail again forever; a
  // retry starts from byte 0. Any other error leaves the .part for a resume.
  // Returns the artifact metadata.
  absl::StatusOr<v1::Artifact> DownloadArtifact(
      const std::string& job_id, const std::string& name,
      const std::string& out_path) const;

  // grpc.health.v1 Check of `service` ("" = the whole server): the status
  // name, e.g. "SERVING" or "NOT_SERVING". Sends no token: health is open.
  absl::StatusOr<std::string> CheckHealth(const std::string& service) const;

  const Options& options() const { return options_; }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, const Options& options);

  // Applies the deadline and authorization metadata to a fresh context.
  void Prepare(grpc::ClientContext* context) const;
  // Sleeps before reconnect number `attempt` (1-based).
  void Backoff(int attempt) const;

  template <typename Response, typename StartFn>
  absl::StatusOr<Response> Upload(const std::string& path,
                                  const std::string& name, StartFn start) const;

  // One DownloadArtifact stream appending to `part_path`. Sets *artifact from
  // the first message.
  absl::Status DownloadOnce(const std::string& job_id, const std::string& name,
                            const std::string& part_path,
                            v1::Artifact* artifact, bool* progressed) const;

  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ModelService::Stub> models_;
  std::unique_ptr<v1::DatasetService::Stub> datasets_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::ArtifactService::Stub> artifacts_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace compress::client

#endif  // COMPRESS_CLIENT_CLIENT_H_
