// BlobStore: content-addressed bytes, named by their lower-case hex SHA-256.
//
// Two implementations:
//  - LocalBlobStore (here): files in a directory, local or on a shared
//    ReadWriteMany volume. BlobStore::Create(root) makes one.
//  - S3BackedBlobStore (server/store/s3/s3_backed_blob_store.h): objects in
//    an S3-compatible bucket, with a local cache of the blobs the engine
//    opens.
// Both stream in both directions (Writer in, Read out), so a blob never sits
// in memory whole, and both make a blob visible whole or not at all.
//
// The engine opens files: LocalPath(sha) gives a local file holding the blob
// (the blob itself for LocalBlobStore; a verified cached copy for S3).
//
// Thread-safe: distinct writers may run concurrently; the same digest written
// twice ends as one blob. A Writer is used by one thread at a time.
//
//   ASSIGN_OR_RETURN(auto w, store->NewWriter());
//   RETURN_IF_ERROR(w->Append(chunk));
//   ASSIGN_OR_RETURN(std::string sha, w->Commit());
//   ASSIGN_OR_RETURN(std::string path, store->LocalPath(sha));
#ifndef COMPRESS_STORE_BLOB_STORE_H_
#define COMPRESS_STORE_BLOB_STORE_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/util/sha256.h"

namespace compress::store {

class BlobStore {
 public:
  // Stages appended bytes. Destroying it without Commit() stores nothing.
  class Writer {
   public:
    virtual ~Writer() = default;
    virtual absl::Status Append(absl::string_view bytes) = 0;
    virtual int64_t size() const = 0;
    // Stores the bytes; returns the sha256 hex digest. When
    // `expected_sha256` is non-empty and differs, nothing is stored and the
    // answer is INVALID_ARGUMENT. The writer is closed afterwards either way.
    virtual absl::StatusOr<std::string> Commit(absl::string_view expected_sha256 = "") = 0;
  };
  // Receives a read's bytes in order; a non-OK status stops the read.
  using ByteSink = std::function<absl::Status(absl::string_view)>;

  // The local directory store under `root` (LocalBlobStore::Create).
  static absl::StatusOr<std::unique_ptr<BlobStore>> Create(const std::string& root);
  virtual ~BlobStore() = default;

  virtual absl::StatusOr<std::unique_ptr<Writer>> NewWriter() const = 0;
  // Stores `bytes` whole; returns the digest.
  absl::StatusOr<std::string> Put(absl::string_view bytes) const;

  // True when the blob is there; false when absent or when the store cannot
  // say (Size tells those apart).
  virtual bool Contains(absl::string_view sha256) const = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<int64_t> Size(absl::string_view sha256) const = 0;
  // OK when absent. For S3 also drops the local cached copy.
  virtual absl::Status Delete(absl::string_view sha256) const = 0;

  // Streams `length` bytes from `offset` (fewer at the end of the blob; -1:
  // to the end) to `sink`. NOT_FOUND when the blob is absent; an offset past
  // the end sends nothing.
  virtual absl::Status Read(absl::string_view sha256, int64_t offset, int64_t length,
                            const ByteSink& sink) const = 0;

  // A local file holding the blob, for code that needs a path (the engine, a
  // worker child). LocalBlobStore: the blob itself. S3: PathFor(sha) in the
  // cache, fetched on first use and verified by digest on every call.
  // NOT_FOUND when the blob is absent.
  virtual absl::StatusOr<std::string> LocalPath(absl::string_view sha256) const = 0;
  // The file name LocalPath answers for `sha256`, without any I/O: the file
  // may not exist (yet).
  virtual std::string PathFor(absl::string_view sha256) const = 0;
};

// Layout: <root>/blobs/<sha[0:2]>/<sha>, temp files in <root>/tmp. A blob is
// written to a temp file, fsync'ed, then renamed into place, so a reader never
// sees a half-written blob; Create() removes temp files left by a crash.
class LocalBlobStore : public BlobStore {
 public:
  // An open temp file. Destroying it without Commit() deletes the temp file.
  class Writer : public BlobStore::Writer {
   public:
    ~Writer() override;
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    absl::Status Append(absl::string_view bytes) override;
    int64_t size() const override { return size_; }
    // fsyncs and renames into place.
    absl::StatusOr<std::string> Commit(absl::string_view expected_sha256 = "") override;

   private:
    friend class LocalBlobStore;
    Writer(const LocalBlobStore* store, std::string tmp_path, FILE* file);
    void Discard();

    const LocalBlobStore* store_;
    std::string tmp_path_;
    FILE* file_;
    int64_t size_ = 0;
    Sha256 hash_;
  };

  static absl::StatusOr<std::unique_ptr<LocalBlobStore>> Create(const std::string& root);
  LocalBlobStore(const LocalBlobStore&) = delete;
  LocalBlobStore& operator=(const LocalBlobStore&) = delete;

  absl::StatusOr<std::unique_ptr<BlobStore::Writer>> NewWriter() const override;
  bool Contains(absl::string_view sha256) const override;
  absl::StatusOr<int64_t> Size(absl::string_view sha256) const override;
  absl::Status Delete(absl::string_view sha256) const override;
  absl::Status Read(absl::string_view sha256, int64_t offset, int64_t length,
                    const ByteSink& sink) const override;
  absl::StatusOr<std::string> LocalPath(absl::string_view sha256) const override;
  std::string PathFor(absl::string_view sha256) const override;
  const std::string& root() const { return root_; }

 private:
  explicit LocalBlobStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_BLOB_STORE_H_
