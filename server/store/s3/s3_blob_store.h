// S3BlobStore: content-addressed blobs in an S3-compatible bucket, for
// several replicas that share one store. It offers what BlobStore
// (server/store/blob_store.h) offers where that makes sense remotely, plus
// Fetch (object -> local file, for code that needs a path) and a
// mark-and-sweep garbage collector.
//
// Layout: <prefix>blobs/<sha[0:2]>/<sha>, where sha is the lower-case hex
// SHA-256 of the content. A Writer streams appended bytes to a temp file in
// `tmp_dir` while hashing them; Commit uploads that file under its digest
// (in parts above the client's multipart threshold), so neither direction
// ever holds a blob in memory. S3 makes each object visible whole or not at
// all, so readers never see half a blob.
//
// Garbage collection and deduplication. Commit skips the upload when an
// object with the digest exists and was written less than `reuse_window`
// ago; an older one is uploaded again, which makes it young. CollectGarbage
// deletes blobs that are unreferenced and older than `min_age`, checking
// each one's age again right before deleting it. So a blob that a caller just
// committed, and is about to reference, is never swept provided min_age
// exceeds reuse_window plus the time from Commit to recording the
// reference (CollectGarbage refuses a min_age <= reuse_window). Unfinished
// multipart uploads are invisible to listing; the Writer aborts its own on
// failure, and a bucket lifecycle rule (AbortIncompleteMultipartUpload)
// should catch those of crashed processes.
//
// Thread-safe; a Writer is used by one thread at a time.
//
//   ASSIGN_OR_RETURN(auto store, S3BlobStore::Create(options));
//   ASSIGN_OR_RETURN(auto w, store->NewWriter());
//   RETURN_IF_ERROR(w->Append(chunk));
//   ASSIGN_OR_RETURN(std::string sha, w->Commit());
//   RETURN_IF_ERROR(store->Fetch(sha, "/scratch/model.pt"));
#ifndef COMPRESS_STORE_S3_S3_BLOB_STORE_H_
#define COMPRESS_STORE_S3_S3_BLOB_STORE_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/store/s3/s3_client.h"
#include "server/util/sha256.h"

namespace compress::store {

struct S3BlobStoreOptions {
  // Endpoint, bucket, prefix, credentials, multipart settings.
  S3ClientOptions client;
  // Where Writers stage blobs before upload (created if missing). Default:
  // the system temp directory.
  std::string tmp_dir;
  // Commit reuses an existing object younger than this instead of uploading
  // again. Default 1 hour; zero uploads every time.
  absl::Duration reuse_window = absl::Hours(1);
};

struct S3BlobInfo {
  std::string sha256;
  int64_t size = 0;
  absl::Time last_modified;
};

struct S3GcReport {
  // Blobs deleted, with their size and age at listing time.
  std::vector<S3BlobInfo> deleted;
  int64_t bytes_deleted = 0;
  int64_t kept_referenced = 0;
  // Unreferenced but younger than min_age (an upload that may be about to be
  // referenced).
  int64_t kept_young = 0;
  // Keys under blobs/ that are not <sha[0:2]>/<sha>: never touched.
  int64_t foreign_keys = 0;
};

class S3BlobStore {
 public:
  // Stages bytes in a temp file. Destroying it without Commit() deletes the
  // temp file; nothing reaches the bucket.
  class Writer {
   public:
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    absl::Status Append(absl::string_view bytes);
    int64_t size() const { return size_; }
    // Uploads (or reuses, see above) the blob; returns its digest. When
    // `expected_sha256` is non-empty and differs, nothing is uploaded and the
    // answer is INVALID_ARGUMENT. The writer is closed afterwards either way.
    absl::StatusOr<std::string> Commit(absl::string_view expected_sha256 = "");

   private:
    friend class S3BlobStore;
    Writer(S3BlobStore* store, std::string tmp_path, FILE* file);
    void Discard();

    S3BlobStore* store_;
    std::string tmp_path_;
    FILE* file_;
    int64_t size_ = 0;
    Sha256 hash_;
  };

  // Checks the options and creates tmp_dir; talks to no server.
  static absl::StatusOr<std::unique_ptr<S3BlobStore>> Create(const S3BlobStoreOptions& options);
  S3BlobStore(const S3BlobStore&) = delete;
  S3BlobStore& operator=(const S3BlobStore&) = delete;

  absl::StatusOr<std::unique_ptr<Writer>> NewWriter();
  // Stores `bytes` whole; returns the digest.
  absl::StatusOr<std::string> Put(absl::string_view bytes);
  // Stores a local file (read twice: to hash, to upload); returns the digest.
  absl::StatusOr<std::string> PutFile(const std::string& path);

  // <prefix>blobs/<sha[0:2]>/<sha>
  std::string KeyFor(absl::string_view sha256) const;
  // An error only when the server could not say.
  absl::StatusOr<bool> Contains(absl::string_view sha256);
  // NOT_FOUND when absent.
  absl::StatusOr<int64_t> Size(absl::string_view sha256);
  // OK when absent.
  absl::Status Delete(absl::string_view sha256);

  // Streams the blob into `local_path` through a temp file beside it,
  // checking the digest on the way; renamed into place only when it
  // matches (DATA_LOSS otherwise, and no file is left).
  absl::Status Fetch(absl::string_view sha256, const std::string& local_path);
  // Streams the blob, or a byte range of it, to `sink` (not verified: a
  // range cannot be).
  absl::Status Read(absl::string_view sha256, const S3Client::ByteSink& sink,
                    std::optional<S3ByteRange> range = std::nullopt);

  // Every blob in the store, listing page by page.
  absl::Status ForEach(const std::function<absl::Status(const S3BlobInfo&)>& visit);
  absl::StatusOr<std::vector<S3BlobInfo>> List();

  // Sweeps blobs whose digest is not in `referenced` and whose last
  // modification is more than `min_age` before `now`. `referenced` must be
  // read (from the metadata store) before the call. INVALID_ARGUMENT when
  // min_age <= reuse_window.
  absl::StatusOr<S3GcReport> CollectGarbage(const std::set<std::string>& referenced,
                                            absl::Duration min_age, absl::Time now = absl::Now());

  S3Client& client() { return *client_; }
  const S3BlobStoreOptions& options() const { return options_; }

 private:
  S3BlobStore(S3BlobStoreOptions options, std::unique_ptr<S3Client> client)
      : options_(std::move(options)), client_(std::move(client)) {}
  // Uploads a staged file whose digest is known, unless a young copy exists.
  absl::Status Upload(const std::string& path, const std::string& sha256, int64_t size);

  const S3BlobStoreOptions options_;
  const std::unique_ptr<S3Client> client_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_S3_S3_BLOB_STORE_H_
