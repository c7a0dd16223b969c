// Catalog: models and datasets — upload, validation, lookup, deletion.
// Sits above the store (bytes and rows) and uses the engine to validate
// uploads; the store itself never links LibTorch.
//
// Composes the BlobStore (bytes) and MetadataStore (rows) and validates
// uploads with the engine (a model must load as TorchScript, a dataset must
// have "inputs"). An upload is visible only after its bytes, digest and
// content are verified; a failed upload leaves nothing behind.
// Every call names the tenant it acts for (see MetadataStore): a tenant
// sees and deletes only its own models and datasets, plus the builtins.
// Thread-safe. Finish*Upload blocks (it loads the model): call it off
// gRPC reactor threads.
//
//   ASSIGN_OR_RETURN(auto up, catalog->BeginUpload(tenant, ResourceKind::kModel, header));
//   for (chunk : chunks) RETURN_IF_ERROR(up->Append(chunk));
//   ASSIGN_OR_RETURN(v1::Model m, catalog->FinishModelUpload(std::move(up)));
#ifndef COMPRESS_CATALOG_CATALOG_H_
#define COMPRESS_CATALOG_CATALOG_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "compress/v1/compress.pb.h"
#include "server/util/defaults.h"
#include "server/store/blob_store.h"
#include "server/store/metadata_store.h"

namespace compress::catalog {

enum class ResourceKind { kModel, kDataset };

// Reads what an uploaded file holds. Loading a model runs its code, so the
// server's describer runs in a child process (server/worker/); tests may use
// the in-process EngineDescriber (engine_describer.h). INVALID_ARGUMENT means
// the bytes are bad; other codes are the server's trouble.
class ContentDescriber {
 public:
  virtual ~ContentDescriber() = default;
  // A Model with num_parameters and layers filled (id, name, size, times are
  // the catalog's).
  virtual absl::StatusOr<compress::v1::Model> DescribeModel(const std::string& path) = 0;
  // A Dataset with format, examples, shapes and dtypes filled.
  virtual absl::StatusOr<compress::v1::Dataset> DescribeDataset(const std::string& path) = 0;
  // The same for a builtin dataset id ("builtin:fashion-mnist/train") read
  // from `dir`.
  virtual absl::StatusOr<compress::v1::Dataset> DescribeBuiltinDataset(const std::string& id,
                                                                       const std::string& dir) = 0;
};

struct CatalogOptions {
  int64_t max_model_bytes = int64_t{2} << 30;    // default 2 GiB
  int64_t max_dataset_bytes = int64_t{4} << 30;  // default 4 GiB
  // Longest header.name; default 256 bytes (pipeline::ServerLimits's
  // max_name_bytes feeds it). Names are listed with every model and dataset.
  int64_t max_name_bytes = 256;
  // Directory of the Fashion-MNIST IDX files; empty = no builtin datasets.
  std::string fashion_mnist_dir = defaults::kFashionMnistDir;
};

class Catalog {
 public:
  // An upload in progress: bytes go to a temp blob as they arrive.
  class Upload {
   public:
    // INVALID_ARGUMENT once more bytes arrive than the header declared.
    absl::Status Append(absl::string_view chunk);
    int64_t received() const { return writer_->size(); }
    ResourceKind kind() const { return kind_; }

   private:
    friend class Catalog;
    Upload(std::string tenant, ResourceKind kind, compress::v1::UploadHeader header,
           std::unique_ptr<store::BlobStore::Writer> writer)
        : tenant_(std::move(tenant)), kind_(kind), header_(std::move(header)),
          writer_(std::move(writer)) {}
    std::string tenant_;  // the uploader, who will own the resource
    ResourceKind kind_;
    compress::v1::UploadHeader header_;
    std::unique_ptr<store::BlobStore::Writer> writer_;
  };

  // Registers the builtin datasets found under options.fashion_mnist_dir.
  // `blobs`, `metadata` and `describer` must outlive the catalog.
  static absl::StatusOr<std::unique_ptr<Catalog>> Create(const CatalogOptions& options,
                                                         store::BlobStore* blobs,
                                                         store::MetadataStore* metadata,
                                                         ContentDescriber* describer);
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  // Validates the header: INVALID_ARGUMENT for a bad digest or size,
  // RESOURCE_EXHAUSTED when the declared size is over the limit.
  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const std::string& tenant,
                                                       ResourceKind kind,
                                                       const compress::v1::UploadHeader& header);
  // Checks size and digest, then the content; stores the resource. Same bytes
  // uploaded twice by one tenant return the existing resource.
  absl::StatusOr<compress::v1::Model> FinishModelUpload(std::unique_ptr<Upload> upload);
  absl::StatusOr<compress::v1::Dataset> FinishDatasetUpload(std::unique_ptr<Upload> upload);

  absl::StatusOr<compress::v1::Model> GetModel(const std::string& tenant, const std::string& id);
  absl::StatusOr<store::Page<compress::v1::Model>> ListModels(const std::string& tenant, int page_size,
                                                       const std::string& token);
  // FAILED_PRECONDITION while a queued or running job of the tenant uses it.
  // The bytes go when no tenant has the model any more.
  absl::Status DeleteModel(const std::string& tenant, const std::string& id);

  absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& tenant,
                                                   const std::string& id);
  absl::StatusOr<store::Page<compress::v1::Dataset>> ListDatasets(const std::string& tenant,
                                                           int page_size,
                                                           const std::string& token);
  absl::Status DeleteDataset(const std::string& tenant, const std::string& id);

  // Where the engine reads the bytes: a local file (BlobStore::LocalPath,
  // which for S3 may fetch), or for builtin datasets the builtin id (the
  // engine resolves it). When the blob cannot be had, the path where it would
  // be: the engine's open then fails naming it (the reason is logged here).
  std::string ModelPath(const std::string& id) const { return BlobPath(id); }
  std::string DatasetPath(const std::string& id) const;
  const std::string& fashion_mnist_dir() const { return options_.fashion_mnist_dir; }

 private:
  Catalog(const CatalogOptions& options, store::BlobStore* blobs, store::MetadataStore* metadata,
          ContentDescriber* describer)
      : options_(options), blobs_(blobs), metadata_(metadata), describer_(describer) {}
  absl::Status RegisterBuiltins();
  std::string BlobPath(const std::string& sha256) const;
  // Verifies size + digest and commits the bytes; returns the digest.
  absl::StatusOr<std::string> CommitUpload(Upload& upload);
  // Removes a blob that no row references any more.
  void DropBlobIfUnreferenced(const std::string& sha256);

  const CatalogOptions options_;
  store::BlobStore* const blobs_;
  store::MetadataStore* const metadata_;
  ContentDescriber* const describer_;
};

}  // namespace compress::catalog

#endif  // COMPRESS_CATALOG_CATALOG_H_
