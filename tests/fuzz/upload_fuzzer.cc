// Fuzzes the upload framing of the catalog (server/catalog/catalog.h):
// a stream of compress.v1.UploadRequest messages (header first, then
// chunks) driven through BeginUpload / Upload::Append / Finish*Upload the
// way the UploadReactor (server/service/services.cc) drives them, against a
// real LocalBlobStore and SQLite metadata store in a temp directory and a
// fake ContentDescriber.
//
// Input: one flags byte, then records of a 2-byte little-endian length and
// that many bytes, each parsed as an UploadRequest. A record that does not
// parse ends the stream, as gRPC does (the reactor then sees the end of the
// stream). Flags: bit 0 dataset (else model); bit 1 replace the header's
// sha256 by the digest of all chunks and bit 2 its size_bytes by their total
// (so uploads can succeed); bit 3 the describer refuses the bytes
// (INVALID_ARGUMENT), bit 4 it fails otherwise (UNAVAILABLE).
//
// Checks: no temp file outlives an upload; a successful upload is stored
// with the declared size and can be read back and deleted; nothing else is
// stored.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "compress/v1/compress.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "server/catalog/catalog.h"
#include "server/store/blob_store.h"
#include "server/store/sqlite_metadata_store.h"
#include "server/util/sha256.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace v1 = compress::v1;
using compress::catalog::Catalog;
using compress::catalog::ResourceKind;

constexpr size_t kMaxChunk = 1 << 20;  // as UploadReactor
constexpr char kTenant[] = "tenant";

class FakeDescriber : public compress::catalog::ContentDescriber {
 public:
  absl::Status fail;  // what Describe* answers; OK = the bytes are fine

  absl::StatusOr<v1::Model> DescribeModel(const std::string& path) override {
    if (!fail.ok()) return fail;
    FUZZ_CHECK(std::filesystem::exists(path));
    v1::Model model;
    model.set_num_parameters(static_cast<int64_t>(std::filesystem::file_size(path)));
    return model;
  }
  absl::StatusOr<v1::Dataset> DescribeDataset(const std::string& path) override {
    if (!fail.ok()) return fail;
    FUZZ_CHECK(std::filesystem::exists(path));
    v1::Dataset dataset;
    dataset.set_num_examples(1);
    return dataset;
  }
  absl::StatusOr<v1::Dataset> DescribeBuiltinDataset(const std::string& id,
                                                     const std::string& dir) override {
    return absl::NotFoundError("no builtins here");
  }
};

struct World {
  std::string dir;
  std::unique_ptr<compress::store::BlobStore> blobs;
  std::unique_ptr<compress::store::SqliteMetadataStore> metadata;
  FakeDescriber describer;
  std::unique_ptr<Catalog> catalog;
};

World& TheWorld() {
  static World* world = [] {
    auto* w = new World;
    w->dir = compress::fuzz::NewTempDir("upload-fuzzer");
    w->blobs = *compress::store::BlobStore::Create(w->dir);
    w->metadata = *compress::store::SqliteMetadataStore::Create(w->dir + "/meta.db");
    compress::catalog::CatalogOptions options;
    options.max_model_bytes = 1 << 20;
    options.max_dataset_bytes = 2 << 20;
    options.fashion_mnist_dir = "";
    w->catalog = *Catalog::Create(options, w->blobs.get(), w->metadata.get(), &w->describer);
    return w;
  }();
  return *world;
}

size_t CountFiles(const std::filesystem::path& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file()) ++n;
  }
  return n;
}

// The UploadReactor's OnReadDone, one message at a time; the end of
// `requests` is the client's half-close. Returns the RPC's status and the
// id of what was stored.
absl::Status Drive(Catalog& catalog, ResourceKind kind, const std::vector<v1::UploadRequest>& requests,
                   std::string* id) {
  std::unique_ptr<Catalog::Upload> upload;
  for (const v1::UploadRequest& request : requests) {
    absl::Status s;
    if (upload == nullptr) {
      if (!request.has_header()) return absl::InvalidArgumentError("header: first");
      auto up = catalog.BeginUpload(kTenant, kind, request.header());
      if (!up.ok()) return up.status();
      upload = *std::move(up);
    } else if (request.has_header()) {
      return absl::InvalidArgumentError("header: sent twice");
    } else if (request.chunk().size() > kMaxChunk) {
      return absl::InvalidArgumentError("chunk: too large");
    } else {
      s = upload->Append(request.chunk());
      if (!s.ok()) return s;
    }
  }
  if (upload == nullptr) return absl::InvalidArgumentError("header: stream ended");
  if (kind == ResourceKind::kModel) {
    auto model = catalog.FinishModelUpload(std::move(upload));
    if (model.ok()) *id = model->id();
    return model.status();
  }
  auto dataset = catalog.FinishDatasetUpload(std::move(upload));
  if (dataset.ok()) *id = dataset->id();
  return dataset.status();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Invalid UTF-8 in a string field is an expected refusal; protobuf would
  // log every one.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  World& w = TheWorld();
  const uint8_t flags = data[0];
  std::vector<v1::UploadRequest> requests;
  for (size_t at = 1; at + 2 <= size;) {
    const size_t n = data[at] | (size_t{data[at + 1]} << 8);
    at += 2;
    v1::UploadRequest request;
    if (n > size - at || !request.ParseFromArray(data + at, static_cast<int>(n))) break;
    requests.push_back(std::move(request));
    at += n;
  }
  if (!requests.empty() && requests[0].has_header() && (flags & 6) != 0) {
    compress::Sha256 hash;
    int64_t total = 0;
    for (const v1::UploadRequest& r : requests) {
      if (r.has_header()) continue;
      hash.Update(r.chunk());
      total += static_cast<int64_t>(r.chunk().size());
    }
    v1::UploadHeader* header = requests[0].mutable_header();
    if (flags & 2) header->set_sha256(hash.HexDigest());
    if (flags & 4) header->set_size_bytes(total);
  }
  w.describer.fail = (flags & 8)    ? absl::InvalidArgumentError("not a model")
                     : (flags & 16) ? absl::UnavailableError("no worker")
                                    : absl::OkStatus();
  const ResourceKind kind = (flags & 1) ? ResourceKind::kDataset : ResourceKind::kModel;

  std::string id;
  const size_t blobs_before = CountFiles(w.dir + "/blobs");
  absl::Status s = Drive(*w.catalog, kind, requests, &id);
  compress::fuzz::Explain("upload", s);
  FUZZ_CHECK(CountFiles(w.dir + "/tmp") == 0);
  if (!s.ok()) {
    FUZZ_CHECK(!s.message().empty());
    FUZZ_CHECK(CountFiles(w.dir + "/blobs") == blobs_before);
    return 0;
  }
  const int64_t declared = requests[0].header().size_bytes();
  FUZZ_CHECK(w.blobs->Contains(id));
  FUZZ_CHECK(*w.blobs->Size(id) == declared);
  if (kind == ResourceKind::kModel) {
    auto model = w.catalog->GetModel(kTenant, id);
    FUZZ_CHECK(model.ok() && model->size_bytes() == declared);
    FUZZ_CHECK(w.catalog->DeleteModel(kTenant, id).ok());
  } else {
    auto dataset = w.catalog->GetDataset(kTenant, id);
    FUZZ_CHECK(dataset.ok() && dataset->size_bytes() == declared);
    FUZZ_CHECK(w.catalog->DeleteDataset(kTenant, id).ok());
  }
  FUZZ_CHECK(!w.blobs->Contains(id));
  return 0;
}
