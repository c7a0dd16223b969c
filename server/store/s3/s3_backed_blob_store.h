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
// The cache is bounded by `cache_max_bytes` (0 = unbounded): every use of a
// cached blob (LocalPath, an upload kept as the cached copy) marks it used
// (its mtime), and after each fetch or upload the least recently used blobs
// go until the cache fits again, but never one used within `cache_min_age`,
// so a path just handed to a child process stays until the child has opened
// it (an open file lives on after unlink). The bound can be exceeded
// meanwhile. Delete also removes the cached copy.
//
// Thread-safe, like S3BlobStore.
//
//   S3BackedBlobStoreOptions o;
//   ASSIGN_OR_RETURN(o.s3.client.config, S3ConfigFromEnvironment("s3://models/prod"));
//   o.cache_dir = data_dir + "/blob-cache";
//   ASSIGN_OR_RETURN(auto store, S3BackedBlobStore::Create(o));
#ifndef COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_
#define COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  // Size above which least recently used cached blobs are removed; 0 =
  // unbounded (the default).
  int64_t cache_max_bytes = 0;
  // A blob used more recently than this is never removed by trimming.
  absl::Duration cache_min_age = absl::Minutes(10);
};

// What one trim of the cache did.
struct CacheTrim {
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  int removed = 0;
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

  // Removes least recently used blobs older than cache_min_age until the
  // cache holds at most cache_max_bytes (nothing when that is 0). Runs on
  // its own after fetches and uploads; public for tests and operators.
  CacheTrim TrimCache() const ABSL_LOCKS_EXCLUDED(trim_mu_);

 private:
  class Writer;
  S3BackedBlobStore(const S3BackedBlobStoreOptions& options, std::unique_ptr<S3BlobStore> s3)
      : cache_dir_(options.cache_dir),
        max_bytes_(options.cache_max_bytes),
        min_age_(options.cache_min_age),
        s3_(std::move(s3)) {}

  const std::string cache_dir_;
  const int64_t max_bytes_;
  const absl::Duration min_age_;
  const std::unique_ptr<S3BlobStore> s3_;
  mutable absl::Mutex trim_mu_;  // one trim at a time
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_S3_S3_BACKED_BLOB_STORE_H_
