#include "server/catalog/catalog.h"

#include <cstdio>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/util/client_text.h"
#include "server/util/status_macros.h"

namespace compress::catalog {
namespace v1 = compress::v1;
using store::BlobStore;
using store::MetadataStore;
using store::Page;
using store::kPublicTenant;

namespace {

bool IsBuiltinDataset(const std::string& id) { return absl::StartsWith(id, "builtin:"); }

// A name is a printable label, e.g. "resnet18.pt": bounded (lists carry
// every name), UTF-8 and free of control characters, which would reach
// terminals and logs of whoever lists it.
absl::Status CheckName(const std::string& name, int64_t max_bytes) {
  if (static_cast<int64_t>(name.size()) > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("header.name: ", name.size(),
                                                   " bytes is over the server limit of ", max_bytes,
                                                   " (--max_name_bytes)"));
  }
  const size_t valid = ValidUtf8Prefix(name);
  if (valid != name.size()) {
    return absl::InvalidArgumentError(absl::StrCat("header.name: not valid UTF-8 (byte ", valid,
                                                   " of \"", QuoteClientText(name), "\")"));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    const bool c1 =
        c == 0xC2 && i + 1 < name.size() && static_cast<unsigned char>(name[i + 1]) <= 0x9F;
    if (c < 0x20 || c == 0x7F || c1) {
      return absl::InvalidArgumentError(absl::StrCat("header.name: control character at byte ", i,
                                                     " of \"", QuoteClientText(name),
                                                     "\"; names are printable text"));
    }
  }
  return absl::OkStatus();
}

google::protobuf::Timestamp Now() {
  absl::Time now = absl::Now();
  google::protobuf::Timestamp t;
  t.set_seconds(absl::ToUnixSeconds(now));
  t.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(now - absl::FromUnixSeconds(t.seconds()))));
  return t;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Catalog>> Catalog::Create(const CatalogOptions& options,
                                                         BlobStore* blobs, MetadataStore* metadata,
                                                         ContentDescriber* describer) {
  if (describer == nullptr) return absl::InvalidArgumentError("catalog: a describer is required");
  std::unique_ptr<Catalog> catalog(new Catalog(options, blobs, metadata, describer));
  RETURN_IF_ERROR(catalog->RegisterBuiltins());
  return catalog;
}

absl::Status Catalog::RegisterBuiltins() {
  if (options_.fashion_mnist_dir.empty() ||
      !std::filesystem::exists(options_.fashion_mnist_dir)) {
    return absl::OkStatus();
  }
  for (const char* split : {"train", "test"}) {
    std::string id = absl::StrCat("builtin:fashion-mnist/", split);
    if (metadata_->GetDataset(kPublicTenant, id).ok()) continue;
    ASSIGN_OR_RETURN(v1::Dataset d,
                     describer_->DescribeBuiltinDataset(id, options_.fashion_mnist_dir));
    d.set_id(id);
    d.set_name(absl::StrCat("Fashion-MNIST ", split));
    d.set_builtin(true);
    *d.mutable_create_time() = Now();
    RETURN_IF_ERROR(metadata_->PutDataset(kPublicTenant, d).status());
  }
  return absl::OkStatus();
}

absl::Status Catalog::Upload::Append(absl::string_view chunk) {
  if (received() + static_cast<int64_t>(chunk.size()) > header_.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.size_bytes: declared ", header_.size_bytes(), " bytes but received at least ",
        received() + static_cast<int64_t>(chunk.size())));
  }
  return writer_->Append(chunk);
}

absl::StatusOr<std::unique_ptr<Catalog::Upload>> Catalog::BeginUpload(
    const std::string& tenant, ResourceKind kind, const v1::UploadHeader& header) {
  if (header.size_bytes() <= 0) {
    return absl::InvalidArgumentError("header.size_bytes: must be positive");
  }
  if (!IsSha256Hex(header.sha256())) {
    return absl::InvalidArgumentError("header.sha256: must be 64 lowercase hex characters");
  }
  RETURN_IF_ERROR(CheckName(header.name(), options_.max_name_bytes));
  int64_t limit = kind == ResourceKind::kModel ? options_.max_model_bytes
                                               : options_.max_dataset_bytes;
  if (header.size_bytes() > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("header.size_bytes: ", header.size_bytes(), " bytes is over the server's ",
                     kind == ResourceKind::kModel ? "--max_model_bytes" : "--max_dataset_bytes",
                     " limit of ", limit));
  }
  ASSIGN_OR_RETURN(auto writer, blobs_->NewWriter());
  return std::unique_ptr<Upload>(new Upload(tenant, kind, header, std::move(writer)));
}

absl::StatusOr<std::string> Catalog::CommitUpload(Upload& upload) {
  if (upload.received() != upload.header_.size_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream ended early: received ", upload.received(), " of ",
                     upload.header_.size_bytes(), " declared bytes"));
  }
  return upload.writer_->Commit(upload.header_.sha256());
}

void Catalog::DropBlobIfUnreferenced(const std::string& sha256) {
  auto referenced = metadata_->IsBlobReferenced(sha256);
  if (referenced.ok() && !*referenced) blobs_->Delete(sha256).IgnoreError();
}

absl::StatusOr<v1::Model> Catalog::FinishModelUpload(std::unique_ptr<Upload> upload) {
  if (upload->kind() != ResourceKind::kModel) return absl::InternalError("not a model upload");
  ASSIGN_OR_RETURN(std::string sha, CommitUpload(*upload));
  const std::string& tenant = upload->tenant_;
  if (auto existing = metadata_->GetModel(tenant, sha); existing.ok()) return existing;
  ASSIGN_OR_RETURN(std::string path, blobs_->LocalPath(sha));
  absl::StatusOr<v1::Model> described = describer_->DescribeModel(path);
  if (!described.ok()) {
    DropBlobIfUnreferenced(sha);
    // The describer's INVALID_ARGUMENT says what is wrong with the bytes;
    // anything else (no worker could start, say) is not the uploader's fault.
    if (!absl::IsInvalidArgument(described.status())) return described.status();
    return absl::InvalidArgumentError(absl::StrCat(
        "model bytes: not a loadable TorchScript model: ", described.status().message()));
  }
  v1::Model m = *std::move(described);
  m.set_id(sha);
  m.set_name(upload->header_.name());
  m.set_size_bytes(upload->header_.size_bytes());
  m.set_format(v1::MODEL_FORMAT_TORCHSCRIPT);
  *m.mutable_create_time() = Now();
  return metadata_->PutModel(tenant, m);
}

absl::StatusOr<v1::Dataset> Catalog::FinishDatasetUpload(std::unique_ptr<Upload> upload) {
  if (upload->kind() != ResourceKind::kDataset) return absl::InternalError("not a dataset upload");
  ASSIGN_OR_RETURN(std::string sha, CommitUpload(*upload));
  const std::string& tenant = upload->tenant_;
  if (auto existing = metadata_->GetDataset(tenant, sha); existing.ok()) return existing;
  ASSIGN_OR_RETURN(std::string path, blobs_->LocalPath(sha));
  absl::StatusOr<v1::Dataset> described = describer_->DescribeDataset(path);
  if (!described.ok()) {
    DropBlobIfUnreferenced(sha);
    if (!absl::IsInvalidArgument(described.status())) return described.status();
    return absl::InvalidArgumentError(
        absl::StrCat("dataset bytes: ", described.status().message()));
  }
  v1::Dataset d = *std::move(described);
  d.set_id(sha);
  d.set_name(upload->header_.name());
  d.set_size_bytes(upload->header_.size_bytes());
  *d.mutable_create_time() = Now();
  return metadata_->PutDataset(tenant, d);
}

absl::StatusOr<v1::Model> Catalog::GetModel(const std::string& tenant, const std::string& id) {
  return metadata_->GetModel(tenant, id);
}

absl::StatusOr<Page<v1::Model>> Catalog::ListModels(const std::string& tenant, int page_size,
                                                    const std::string& token) {
  return metadata_->ListModels(tenant, page_size, token);
}

absl::Status Catalog::DeleteModel(const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(metadata_->GetModel(tenant, id).status());
  ASSIGN_OR_RETURN(bool in_use, metadata_->IsReferencedByActiveJob(tenant, id));
  if (in_use) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", id, " is used by a queued or running job"));
  }
  RETURN_IF_ERROR(metadata_->DeleteModel(tenant, id));
  DropBlobIfUnreferenced(id);
  return absl::OkStatus();
}

absl::StatusOr<v1::Dataset> Catalog::GetDataset(const std::string& tenant,
                                                const std::string& id) {
  return metadata_->GetDataset(tenant, id);
}

absl::StatusOr<Page<v1::Dataset>> Catalog::ListDatasets(const std::string& tenant, int page_size,
                                                        const std::string& token) {
  return metadata_->ListDatasets(tenant, page_size, token);
}

absl::Status Catalog::DeleteDataset(const std::string& tenant, const std::string& id) {
  if (IsBuiltinDataset(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", QuoteClientText(id), " is builtin"));
  }
  RETURN_IF_ERROR(metadata_->GetDataset(tenant, id).status());
  ASSIGN_OR_RETURN(bool in_use, metadata_->IsReferencedByActiveJob(tenant, id));
  if (in_use) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", id, " is used by a queued or running job"));
  }
  RETURN_IF_ERROR(metadata_->DeleteDataset(tenant, id));
  DropBlobIfUnreferenced(id);
  return absl::OkStatus();
}

std::string Catalog::DatasetPath(const std::string& id) const {
  if (IsBuiltinDataset(id)) return id;
  return BlobPath(id);
}

std::string Catalog::BlobPath(const std::string& sha256) const {
  absl::StatusOr<std::string> path = blobs_->LocalPath(sha256);
  if (path.ok()) return *path;
  // The callers (pipeline::Resources) take a plain path; keep the reason.
  std::fprintf(stderr, "compressd: blob %s: %s\n", sha256.c_str(),
               path.status().ToString().c_str());
  return blobs_->PathFor(sha256);
}

}  // namespace compress::catalog
