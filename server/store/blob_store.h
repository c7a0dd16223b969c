// BlobStore: content-addressed files on local disk.
//
// Layout: <root>/blobs/<sha[0:2]>/<sha>, temp files in <root>/tmp. A blob is
// written to a temp file, fsync'ed, then renamed into place, so a reader never
// sees a half-written blob; Create() removes temp files left by a crash.
// Thread-safe: distinct writers may run concurrently; the same digest written
// twice ends as one file.
//
//   ASSIGN_OR_RETURN(auto w, store->NewWriter());
//   RETURN_IF_ERROR(w->Append(chunk));
//   ASSIGN_OR_RETURN(std::string sha, w->Commit());
#ifndef COMPRESS_STORE_BLOB_STORE_H_
#define COMPRESS_STORE_BLOB_STORE_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/util/sha256.h"

namespace compress::store {

class BlobStore {
 public:
  // An open temp file. Destroying it without Commit() deletes the temp file.
  class Writer {
   public:
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    absl::Status Append(absl::string_view bytes);
    int64_t size() const { return size_; }
    // fsyncs and renames into place; returns the sha256 hex digest. When
    // `expected_sha256` is non-empty and differs, nothing is stored and the
    // answer is INVALID_ARGUMENT.
    absl::StatusOr<std::string> Commit(absl::string_view expected_sha256 = "");

   private:
    friend class BlobStore;
    Writer(const BlobStore* store, std::string tmp_path, FILE* file);
    void Discard();

    const BlobStore* store_;
    std::string tmp_path_;
    FILE* file_;
    int64_t size_ = 0;
    Sha256 hash_;
  };

  static absl::StatusOr<std::unique_ptr<BlobStore>> Create(const std::string& root);
  BlobStore(const BlobStore&) = delete;
  BlobStore& operator=(const BlobStore&) = delete;

  absl::StatusOr<std::unique_ptr<Writer>> NewWriter() const;
  // Stores `bytes` whole; returns the digest.
  absl::StatusOr<std::string> Put(absl::string_view bytes) const;

  std::string PathFor(absl::string_view sha256) const;
  bool Contains(absl::string_view sha256) const;
  absl::StatusOr<int64_t> Size(absl::string_view sha256) const;
  // OK when absent.
  absl::Status Delete(absl::string_view sha256) const;
  const std::string& root() const { return root_; }

 private:
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace compress::store

#endif  // COMPRESS_STORE_BLOB_STORE_H_
