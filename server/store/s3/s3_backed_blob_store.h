// S3BackedBlobStore: the BlobStore interface (server/store/blob_store.h) over
// an S3BlobStore, for several replicas that share one bucket.
//
// Bytes live in the bucket; the engine, which opens files, gets them from a
// local cache: LocalPath(sha) answers <cache_dir>/blobs/<sha[0:2]>/<sha>,
// fetched once (S3BlobStore::Fetch: temp file beside it, digest checked,
// renamed into place, so concurrent fetches of one blob cannot corrupt each
// other) and reused while present. Every LocalPath call re-hashes the cached
// file; a copy that no longer matches is fetched again. A Writer stages into
// <cache_dir>/tmp and, once uploaded, keeps the staged file as the cached
// copy, so describing a fresh upload needs no download.
//
// The cache is never trimmed here: blobs leave it through Delete (or an
// operator emptying the directory while the server is stopped).
//
// Thread-safe, like S3BlobStore.
//
//   S3BackedBlobStoreOptions o;
//   ASSIGN_OR_RETURN(o.s3.client.config, S3ConfigFromEnvironment("s3://models/prod"));
//   o.cache_dir = data_dir + "/blob-cache";
//   ASSIGN_OR_RETURN(auto store, S3BackedBlobStore::Create(o));
#ifndef COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_
#define COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/store/blob_store.h"
#include "server/store/s3/s3_blob_store.h"

namespace compress::store {

struct S3BackedBlobStoreOptions {
  // The bucket, prefix, credentials; s3.tmp_dir defaults to <cache_dir>/tmp.
  S3BlobStoreOptions s3;
  // Local cache of fetched and uploaded blobs (created if missing; its tmp/
  // is emptied by Create). Required.
  std::string cache_dir;
};

class S3BackedBlobStore : public BlobStore {
 public:
  // Checks the options and makes the cache directories; talks to no server.
  static absl::StatusOr<std::unique_ptr<S3BackedBlobStore>> Create(
      const S3BackedBlobStoreOptions& options);
  S3BackedBlobStore(const S3BackedBlobStore&) = delete;
  S3BackedBlobStore& operator=(const S3BackedBlobStore&) = delete;

  absl::StatusOr<std::unique_ptr<BlobStore::Writer>> NewWriter() const override;
  bool Contains(absl::string_view sha256) const override;
  absl::StatusOr<int64_t> Size(absl::string_view sha256) const override;
  absl::Status Delete(absl::string_view sha256) const override;
  absl::Status Read(absl::string_view sha256, int64_t offset, int64_t length,
                    const ByteSink& sink) const override;
  absl::StatusOr<std::string> LocalPath(absl::string_view sha256) const override;
  std::string PathFor(absl::string_view sha256) const override;

  S3BlobStore& s3() const { return *s3_; }

 private:
  class Writer;
  S3BackedBlobStore(std::string cache_dir, std::unique_ptr<S3BlobStore> s3)
      : cache_dir_(std::move(cache_dir)), s3_(std::move(s3)) {}

  const std::string cache_dir_;
  const std::unique_ptr<S3BlobStore> s3_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_
