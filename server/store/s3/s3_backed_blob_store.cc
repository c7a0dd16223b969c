#include "server/store/s3/s3_backed_blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/store/storage_error.h"
#include "server/util/sha256.h"

namespace compress::store {
namespace fs = std::filesystem;

namespace {

// `what` (an operation and a path) is logged; the client reads no path.
absl::Status ErrnoError(const std::string& what) {
  return StorageError(errno, "use the local blob cache", what);
}

absl::Status CheckSha(absl::string_view sha256) {
  if (IsSha256Hex(sha256)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("not a sha256 hex digest: ", sha256));
}

std::string RandomName() {
  absl::BitGen gen;
  return absl::StrFormat("%d-%016x", getpid(), absl::Uniform<uint64_t>(gen));
}

// The cache's last use of a blob is its mtime (bytes never change: the
// name is their digest).
void MarkUsed(const std::string& path) { utimensat(AT_FDCWD, path.c_str(), nullptr, 0); }

absl::Status MakeParentDir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir for ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

// Stages into the cache's tmp/, uploads the staged file with PutFile, then
// renames it into the cache under its digest.
class S3BackedBlobStore::Writer : public BlobStore::Writer {
 public:
  Writer(const S3BackedBlobStore* store, std::string tmp_path, FILE* file)
      : store_(store), tmp_path_(std::move(tmp_path)), file_(file) {}
  ~Writer() override { Discard(); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  absl::Status Append(absl::string_view bytes) override {
    if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
    if (!bytes.empty() && fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
      return ErrnoError("write " + tmp_path_);
    }
    hash_.Update(bytes);
    size_ += static_cast<int64_t>(bytes.size());
    return absl::OkStatus();
  }
  int64_t size() const override { return size_; }

  absl::StatusOr<std::string> Commit(absl::string_view expected_sha256) override {
    if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
    std::string sha = hash_.HexDigest();
    if (!expected_sha256.empty() && sha != expected_sha256) {
      Discard();
      return absl::InvalidArgumentError(absl::StrCat("sha256 mismatch: declared ", expected_sha256,
                                                     ", received bytes hash to ", sha));
    }
    int rc = fclose(file_);
    file_ = nullptr;
    if (rc != 0) {
      absl::Status s = ErrnoError("close " + tmp_path_);
      Discard();
      return s;
    }
    absl::StatusOr<std::string> uploaded = store_->s3_->PutFile(tmp_path_);
    if (!uploaded.ok() || *uploaded != sha) {
      Discard();
      if (!uploaded.ok()) return uploaded.status();
      return absl::DataLossError(absl::StrCat("staged blob changed on disk: hashed ", sha,
                                              " while written, ", *uploaded, " when uploaded"));
    }
    // The upload succeeded; keeping the staged copy in the cache is a bonus.
    const std::string cached = store_->PathFor(sha);
    if (MakeParentDir(cached).ok() && rename(tmp_path_.c_str(), cached.c_str()) == 0) {
      tmp_path_.clear();
      MarkUsed(cached);
    }
    Discard();
    store_->TrimCache();
    return sha;
  }

 private:
  void Discard() {
    if (file_ != nullptr) {
      fclose(file_);
      file_ = nullptr;
    }
    if (!tmp_path_.empty()) {
      unlink(tmp_path_.c_str());
      tmp_path_.clear();
    }
  }

  const S3BackedBlobStore* store_;
  std::string tmp_path_;
  FILE* file_;
  int64_t size_ = 0;
  Sha256 hash_;
};

absl::StatusOr<std::unique_ptr<S3BackedBlobStore>> S3BackedBlobStore::Create(
    const S3BackedBlobStoreOptions& options) {
  if (options.cache_dir.empty()) return absl::InvalidArgumentError("cache_dir: required");
  std::error_code ec;
  fs::create_directories(fs::path(options.cache_dir) / "blobs", ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", options.cache_dir, ": ", ec.message()));
  }
  const fs::path tmp = fs::path(options.cache_dir) / "tmp";
  // Staged files belong to uploads that died with an earlier process.
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  S3BlobStoreOptions s3_options = options.s3;
  if (s3_options.tmp_dir.empty()) s3_options.tmp_dir = tmp.string();
  auto s3 = S3BlobStore::Create(s3_options);
  if (!s3.ok()) return s3.status();
  return std::unique_ptr<S3BackedBlobStore>(
      new S3BackedBlobStore(options, std::move(*s3)));
}

absl::StatusOr<std::unique_ptr<BlobStore::Writer>> S3BackedBlobStore::NewWriter() const {
  std::string path = absl::StrCat(cache_dir_, "/tmp/", RandomName(), ".upload");
  FILE* f = fopen(path.c_str(), "wbxe");
  if (f == nullptr) return ErrnoError("create " + path);
  return std::unique_ptr<BlobStore::Writer>(new Writer(this, path, f));
}

bool S3BackedBlobStore::Contains(absl::string_view sha256) const {
  absl::StatusOr<bool> found = s3_->Contains(sha256);
  return found.ok() && *found;
}

absl::StatusOr<int64_t> S3BackedBlobStore::Size(absl::string_view sha256) const {
  return s3_->Size(sha256);
}

absl::Status S3BackedBlobStore::Delete(absl::string_view sha256) const {
  if (absl::Status s = s3_->Delete(sha256); !s.ok()) return s;
  if (!IsSha256Hex(sha256)) return absl::OkStatus();
  if (unlink(PathFor(sha256).c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(absl::StrCat("unlink cached blob ", sha256));
  }
  return absl::OkStatus();
}

absl::Status S3BackedBlobStore::Read(absl::string_view sha256, int64_t offset, int64_t length,
                                     const ByteSink& sink) const {
  // S3 answers a range that starts past the end with an error; the
  // interface answers it with nothing.
  absl::StatusOr<int64_t> size = s3_->Size(sha256);
  if (!size.ok()) return size.status();
  if (offset >= *size || length == 0) return absl::OkStatus();
  std::optional<S3ByteRange> range;
  if (offset > 0 || length > 0) range = S3ByteRange{offset, length};
  return s3_->Read(sha256, sink, range);
}

absl::StatusOr<std::string> S3BackedBlobStore::LocalPath(absl::string_view sha256) const {
  if (absl::Status s = CheckSha(sha256); !s.ok()) return s;
  const std::string path = PathFor(sha256);
  if (access(path.c_str(), R_OK) == 0) {
    absl::StatusOr<std::string> cached = Sha256File(path);
    if (cached.ok() && *cached == sha256) {
      MarkUsed(path);
      return path;
    }
    // A damaged copy: fetch a fresh one over it.
    unlink(path.c_str());
  }
  if (absl::Status s = MakeParentDir(path); !s.ok()) return s;
  if (absl::Status s = s3_->Fetch(sha256, path); !s.ok()) return s;
  MarkUsed(path);
  TrimCache();
  return path;
}

CacheTrim S3BackedBlobStore::TrimCache() const {
  CacheTrim trim;
  if (max_bytes_ <= 0) return trim;
  absl::MutexLock lock(&trim_mu_);
  struct Entry {
    fs::file_time_type used;
    int64_t size;
    fs::path path;
  };
  std::vector<Entry> entries;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(fs::path(cache_dir_) / "blobs", ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const auto size = it->file_size(ec);
    const auto used = it->last_write_time(ec);
    if (ec) continue;  // removed meanwhile
    entries.push_back({used, static_cast<int64_t>(size), it->path()});
    trim.bytes_before += static_cast<int64_t>(size);
  }
  trim.bytes_after = trim.bytes_before;
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.used < b.used; });
  const auto now = fs::file_time_type::clock::now();
  const auto min_age = std::chrono::nanoseconds(absl::ToInt64Nanoseconds(min_age_));
  for (const Entry& e : entries) {
    if (trim.bytes_after <= max_bytes_) break;
    if (now - e.used < min_age) break;  // the rest are younger still
    if (fs::remove(e.path, ec) && !ec) {
      trim.bytes_after -= e.size;
      ++trim.removed;
    }
  }
  return trim;
}

std::string S3BackedBlobStore::PathFor(absl::string_view sha256) const {
  return absl::StrCat(cache_dir_, "/blobs/", sha256.substr(0, 2), "/", sha256);
}

}  // namespace compress::store
