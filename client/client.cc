#include "client/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/util/sha256.h"
#include "server/util/status_macros.h"

namespace compress::client {
namespace {

namespace fs = std::filesystem;

// Page size asked for by the List* helpers.
constexpr int kPageSize = 500;

using FilePtr = std::unique_ptr<FILE, int (*)(FILE*)>;

FilePtr OpenFile(const std::string& path, const char* mode) {
  return FilePtr(std::fopen(path.c_str(), mode), std::fclose);
}

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  const int err = errno;
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM)
    return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

// Follows next_page_token until it is empty. `fetch(token, &items, &next)`
// fetches one page. A server that hands out the same token twice would loop
// forever, so that is an error.
template <typename Item, typename Fetch>
absl::StatusOr<std::vector<Item>> CollectPages(Fetch fetch) {
  std::vector<Item> items;
  std::set<std::string> seen_tokens;
  std::string token;
  do {
    std::string next;
    RETURN_IF_ERROR(fetch(token, &items, &next));
    if (!next.empty() && !seen_tokens.insert(next).second) {
      return absl::InternalError(
          absl::StrCat("server repeated page token '", next, "'"));
    }
    token = std::move(next);
  } while (!token.empty());
  return items;
}

int64_t FileSizeOrZero(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : static_cast<int64_t>(size);
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

Client::Client(std::shared_ptr<grpc::Channel> channel, const Options& options)
    : options_(options),
      channel_(std::move(channel)),
      models_(v1::ModelService::NewStub(channel_)),
      datasets_(v1::DatasetService::NewStub(channel_)),
      jobs_(v1::JobService::NewStub(channel_)),
      artifacts_(v1::ArtifactService::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& what, const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const Options& options) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("server address is empty");
  }
  const bool tls = options.tls || !options.ca_file.empty() || !options.cert_file.empty() ||
                   !options.key_file.empty() || !options.tls_server_name.empty();
  if (!tls) {
    return CreateWithChannel(
        grpc::CreateChannel(options.address, grpc::InsecureChannelCredentials()), options);
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both --cert and --key");
  }
  grpc::SslCredentialsOptions ssl;
  ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile("--ca", options.ca_file));
  ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemFile("--cert", options.cert_file));
  ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPemFile("--key", options.key_file));
  grpc::ChannelArguments args;
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return CreateWithChannel(
      grpc::CreateCustomChannel(options.address, grpc::SslCredentials(ssl), args), options);
}

std::unique_ptr<Client> Client::CreateWithChannel(
    std::shared_ptr<grpc::Channel> channel, const Options& options) {
  return std::unique_ptr<Client>(new Client(std::move(channel), options));
}

void Client::Prepare(grpc::ClientContext* context) const {
  if (options_.timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
  if (!options_.token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options_.token));
  }
}

absl::StatusOr<std::string> Client::CheckHealth(const std::string& service) const {
  grpc::ClientContext context;
  if (options_.timeout > absl::ZeroDuration()) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(health_->Check(&context, request, &response)));
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

void Client::Backoff(int attempt) const {
  absl::Duration delay = options_.initial_backoff;
  for (int i = 1; i < attempt && delay < options_.max_backoff; ++i) delay *= 2;
  absl::SleepFor(std::min(delay, options_.max_backoff));
}

// ---------------------------------------------------------------------------
// Uploads

template <typename Response, typename StartFn>
absl::StatusOr<Response> Client::Upload(const std::string& path,
                                        const std::string& name,
                                        StartFn start) const {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("not a regular file: ", path));
  }
  const int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) return absl::NotFoundError(absl::StrCat("cannot stat ", path));
  // The header carries the digest, so the file is read twice: once here,
  // once while sending (and hashed again to catch concurrent modification).
  ASSIGN_OR_RETURN(const std::string digest, Sha256File(path));
  FilePtr file = OpenFile(path, "rb");
  if (!file) return ErrnoError("cannot open", path);

  grpc::ClientContext context;
  Prepare(&context);
  Response response;
  auto writer = start(&context, &response);

  v1::UploadRequest request;
  v1::UploadHeader* header = request.mutable_header();
  header->set_name(name.empty() ? fs::path(path).filename().string() : name);
  header->set_size_bytes(size);
  header->set_sha256(digest);
  bool ok = writer->Write(request);

  Sha256 resent;
  int64_t sent = 0;
  std::string buffer(kUploadChunkBytes, '\0');
  while (ok) {
    const size_t n = std::fread(buffer.data(), 1, buffer.size(), file.get());
    if (n == 0) break;
    resent.Update(absl::string_view(buffer.data(), n));
    sent += static_cast<int64_t>(n);
    request.set_chunk(buffer.data(), n);
    ok = writer->Write(request);
  }
  if (ok) {
    absl::Status local;
    if (std::ferror(file.get())) {
      local = absl::DataLossError(absl::StrCat("read error on ", path));
    } else if (sent != size || resent.HexDigest() != digest) {
      local = absl::AbortedError(
          absl::StrCat(path, " changed while it was being uploaded"));
    }
    if (!local.ok()) {
      context.TryCancel();
      writer->Finish();
      return local;
    }
    writer->WritesDone();
  }
  // When a Write failed the server has already answered; Finish says why.
  RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  return response;
}

absl::StatusOr<v1::Model> Client::UploadModel(const std::string& path,
                                              const std::string& name) const {
  return Upload<v1::Model>(path, name,
                           [this](grpc::ClientContext* c, v1::Model* m) {
                             return models_->UploadModel(c, m);
                           });
}

absl::StatusOr<v1::Dataset> Client::UploadDataset(
    const std::string& path, const std::string& name) const {
  return Upload<v1::Dataset>(path, name,
                             [this](grpc::ClientContext* c, v1::Dataset* d) {
                               return datasets_->UploadDataset(c, d);
                             });
}

// ---------------------------------------------------------------------------
// Models and datasets

absl::StatusOr<v1::Model> Client::GetModel(const std::string& model_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetModelRequest request;
  request.set_model_id(model_id);
  v1::Model model;
  RETURN_IF_ERROR(FromGrpcStatus(models_->GetModel(&context, request, &model)));
  return model;
}

absl::StatusOr<std::vector<v1::Model>> Client::ListModels() const {
  return CollectPages<v1::Model>([this](const std::string& token,
                                        std::vector<v1::Model>* items,
                                        std::string* next) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListModelsRequest request;
    request.set_page_size(kPageSize);
    request.set_page_token(token);
    v1::ListModelsResponse response;
    RETURN_IF_ERROR(
        FromGrpcStatus(models_->ListModels(&context, request, &response)));
    for (auto& m : *response.mutable_models()) items->push_back(std::move(m));
    *next = response.next_page_token();
    return absl::OkStatus();
  });
}

absl::Status Client::DeleteModel(const std::string& model_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DeleteModelRequest request;
  request.set_model_id(model_id);
  v1::DeleteModelResponse response;
  return FromGrpcStatus(models_->DeleteModel(&context, request, &response));
}

absl::StatusOr<v1::Dataset> Client::GetDataset(
    const std::string& dataset_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetDatasetRequest request;
  request.set_dataset_id(dataset_id);
  v1::Dataset dataset;
  RETURN_IF_ERROR(
      FromGrpcStatus(datasets_->GetDataset(&context, request, &dataset)));
  return dataset;
}

absl::StatusOr<std::vector<v1::Dataset>> Client::ListDatasets() const {
  return CollectPages<v1::Dataset>([this](const std::string& token,
                                          std::vector<v1::Dataset>* items,
                                          std::string* next) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListDatasetsRequest request;
    request.set_page_size(kPageSize);
    request.set_page_token(token);
    v1::ListDatasetsResponse response;
    RETURN_IF_ERROR(
        FromGrpcStatus(datasets_->ListDatasets(&context, request, &response)));
    for (auto& d : *response.mutable_datasets()) items->push_back(std::move(d));
    *next = response.next_page_token();
    return absl::OkStatus();
  });
}

absl::Status Client::DeleteDataset(const std::string& dataset_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DeleteDatasetRequest request;
  request.set_dataset_id(dataset_id);
  v1::DeleteDatasetResponse response;
  return FromGrpcStatus(datasets_->DeleteDataset(&context, request, &response));
}

// ---------------------------------------------------------------------------
// Jobs

absl::StatusOr<v1::Job> Client::SubmitJob(
    const v1::SubmitJobRequest& request) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::Job job;
  RETURN_IF_ERROR(FromGrpcStatus(jobs_->SubmitJob(&context, request, &job)));
  return job;
}

absl::StatusOr<v1::Job> Client::GetJob(const std::string& job_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  RETURN_IF_ERROR(FromGrpcStatus(jobs_->GetJob(&context, request, &job)));
  return job;
}

absl::StatusOr<std::vector<v1::Job>> Client::ListJobs(
    const JobFilter& filter) const {
  return CollectPages<v1::Job>([this, &filter](const std::string& token,
                                               std::vector<v1::Job>* items,
                                               std::string* next) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListJobsRequest request;
    request.set_page_size(kPageSize);
    request.set_page_token(token);
    request.set_state(filter.state);
    request.set_kind(filter.kind);
    v1::ListJobsResponse response;
    RETURN_IF_ERROR(
        FromGrpcStatus(jobs_->ListJobs(&context, request, &response)));
    for (auto& j : *response.mutable_jobs()) items->push_back(std::move(j));
    *next = response.next_page_token();
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Job> Client::CancelJob(const std::string& job_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  RETURN_IF_ERROR(FromGrpcStatus(jobs_->CancelJob(&context, request, &job)));
  return job;
}

absl::StatusOr<v1::JobState> Client::WatchJob(
    const std::string& job_id, int64_t after_sequence,
    const EventCallback& on_event) const {
  int64_t last = after_sequence;
  int failures = 0;  // reconnects in a row that delivered no event
  while (true) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_after_sequence(last);
    auto reader = jobs_->WatchJob(&context, request);

    bool progressed = false;
    std::optional<v1::JobState> terminal;
    v1::JobEvent event;
    while (reader->Read(&event)) {
      // A server may replay from an older point after a reconnect; every
      // sequence reaches the callback once.
      if (event.sequence() <= last) continue;
      last = event.sequence();
      progressed = true;
      if (on_event) on_event(event);
      if (event.has_state_change() && IsTerminal(event.state_change().to())) {
        terminal = event.state_change().to();
        break;
      }
    }
    if (terminal.has_value()) {
      context.TryCancel();
      reader->Finish();  // CANCELLED (by us) or OK; either way we are done
      return *terminal;
    }

    absl::Status status = FromGrpcStatus(reader->Finish());
    if (!status.ok() && !absl::IsUnavailable(status)) return status;
    if (status.ok()) {
      // The stream ended without a terminal event. Either the job ended at or
      // before `last` (nothing left to stream), or the stream was cut short.
      absl::StatusOr<v1::Job> job = GetJob(job_id);
      if (job.ok()) {
        if (IsTerminal(job->state()) && job->last_sequence() <= last) {
          return job->state();
        }
        status = absl::UnavailableError(
            "watch stream ended before the job finished");
      } else if (absl::IsUnavailable(job.status())) {
        status = job.status();
      } else {
        return job.status();
      }
    }
    if (progressed) failures = 0;
    if (++failures > options_.max_reconnects) {
      return absl::Status(
          status.code(),
          absl::StrCat(status.message(), " (gave up watching job ", job_id,
                       " after ", options_.max_reconnects, " reconnects)"));
    }
    Backoff(failures);
  }
}

// ---------------------------------------------------------------------------
// Artifacts

absl::StatusOr<std::vector<v1::Artifact>> Client::ListArtifacts(
    const std::string& job_id) const {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ListArtifactsRequest request;
  request.set_job_id(job_id);
  v1::ListArtifactsResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(artifacts_->ListArtifacts(&context, request, &response)));
  return std::vector<v1::Artifact>(response.artifacts().begin(),
                                   response.artifacts().end());
}

absl::Status Client::DownloadOnce(const std::string& job_id,
                                  const std::string& name,
                                  const std::string& part_path,
                                  v1::Artifact* artifact,
                                  bool* progressed) const {
  const int64_t offset = FileSizeOrZero(part_path);
  FilePtr file = OpenFile(part_path, "ab");
  if (!file) return ErrnoError("cannot open", part_path);

  grpc::ClientContext context;
  Prepare(&context);
  v1::DownloadArtifactRequest request;
  request.set_job_id(job_id);
  request.set_name(name);
  request.set_offset(offset);
  auto reader = artifacts_->DownloadArtifact(&context, request);

  // Errors found on our side end the call first; the server's status is moot.
  auto abort = [&](absl::Status status) {
    context.TryCancel();
    reader->Finish();
    return status;
  };
  bool have_metadata = false;
  v1::DownloadArtifactResponse message;
  while (reader->Read(&message)) {
    if (!have_metadata) {
      if (!message.has_artifact()) {
        return abort(absl::InternalError(
            "download stream did not start with the artifact metadata"));
      }
      *artifact = message.artifact();
      have_metadata = true;
      if (artifact->size_bytes() < offset) {
        return abort(absl::OutOfRangeError(
            absl::StrCat(part_path, " is larger than the artifact (", offset,
                         " > ", artifact->size_bytes(), " bytes)")));
      }
      continue;
    }
    if (!message.has_chunk()) {
      return abort(
          absl::InternalError("unexpected metadata in download stream"));
    }
    const std::string& chunk = message.chunk();
    if (std::fwrite(chunk.data(), 1, chunk.size(), file.get()) !=
        chunk.size()) {
      return abort(ErrnoError("cannot write", part_path));
    }
    *progressed = true;
  }
  const grpc::Status status = reader->Finish();
  if (std::fflush(file.get()) != 0)
    return ErrnoError("cannot write", part_path);
  RETURN_IF_ERROR(FromGrpcStatus(status));
  if (!have_metadata) {
    return absl::InternalError(
        "download stream ended without artifact metadata");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Artifact> Client::DownloadArtifact(
    const std::string& job_id, const std::string& name,
    const std::string& out_path) const {
  const std::string part_path = out_path + ".part";
  v1::Artifact artifact;
  int failures = 0;
  bool restarted = false;
  while (true) {
    bool progressed = false;
    absl::Status status =
        DownloadOnce(job_id, name, part_path, &artifact, &progressed);
    if (status.ok()) break;
    // A .part longer than the artifact cannot be resumed: start over once.
    if (absl::IsOutOfRange(status) && !restarted &&
        FileSizeOrZero(part_path) > 0) {
      std::remove(part_path.c_str());
      restarted = true;
      continue;
    }
    if (absl::IsUnavailable(status)) {
      if (progressed) failures = 0;
      if (++failures <= options_.max_reconnects) {
        Backoff(failures);
        continue;
      }
    }
    // Keep a .part with bytes in it for a later resume, but no empty one.
    if (FileSizeOrZero(part_path) == 0) std::remove(part_path.c_str());
    return status;
  }

  const int64_t size = FileSizeOrZero(part_path);
  if (size != artifact.size_bytes()) {
    std::remove(part_path.c_str());
    return absl::DataLossError(
        absl::StrCat("downloaded ", name, " has ", size, " bytes, expected ",
                     artifact.size_bytes(), "; removed ", part_path));
  }
  ASSIGN_OR_RETURN(const std::string digest, Sha256File(part_path));
  if (digest != artifact.sha256()) {
    std::remove(part_path.c_str());
    return absl::DataLossError(absl::StrCat(
        "sha256 mismatch for ", name, ": got ", digest, ", expected ",
        artifact.sha256(), "; removed ", part_path));
  }
  std::error_code ec;
  fs::rename(part_path, out_path, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot rename ", part_path, " to ",
                                            out_path, ": ", ec.message()));
  }
  return artifact;
}

}  // namespace compress::client
