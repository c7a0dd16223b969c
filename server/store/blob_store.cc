#include "server/store/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/store/storage_error.h"
#include "server/util/client_text.h"

namespace compress::store {
namespace fs = std::filesystem;

namespace {

// `op` is what a client may read; `path` goes to the log only.
absl::Status ErrnoError(absl::string_view op, absl::string_view path) {
  return StorageError(errno, op, path);
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("open a blob directory", dir);
  int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) return StorageError(err, "sync a blob directory", dir);
  return absl::OkStatus();
}

}  // namespace

LocalBlobStore::Writer::Writer(const LocalBlobStore* store, std::string tmp_path, FILE* file)
    : store_(store), tmp_path_(std::move(tmp_path)), file_(file) {}

LocalBlobStore::Writer::~Writer() { Discard(); }

void LocalBlobStore::Writer::Discard() {
  if (file_ != nullptr) {
    fclose(file_);
    file_ = nullptr;
  }
  if (!tmp_path_.empty()) {
    unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
}

absl::Status LocalBlobStore::Writer::Append(absl::string_view bytes) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  if (!bytes.empty() && fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return ErrnoError("write a blob", tmp_path_);
  }
  hash_.Update(bytes);
  size_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> LocalBlobStore::Writer::Commit(absl::string_view expected_sha256) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  std::string sha = hash_.HexDigest();
  if (!expected_sha256.empty() && sha != expected_sha256) {
    Discard();
    return absl::InvalidArgumentError(absl::StrCat(
        "sha256 mismatch: declared ", expected_sha256, ", received bytes hash to ", sha));
  }
  if (fflush(file_) != 0 || fsync(fileno(file_)) != 0) {
    absl::Status s = ErrnoError("write a blob", tmp_path_);
    Discard();
    return s;
  }
  fclose(file_);
  file_ = nullptr;
  std::string final_path = store_->PathFor(sha);
  std::error_code ec;
  fs::create_directories(fs::path(final_path).parent_path(), ec);
  if (ec) {
    Discard();
    return StorageError(ec.value(), "create a blob directory",
                        fs::path(final_path).parent_path().string());
  }
  if (rename(tmp_path_.c_str(), final_path.c_str()) != 0) {
    absl::Status s = ErrnoError("store a blob", tmp_path_);
    Discard();
    return s;
  }
  tmp_path_.clear();
  absl::Status s = FsyncDir(fs::path(final_path).parent_path().string());
  if (!s.ok()) return s;
  return sha;
}

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Create(const std::string& root) {
  auto local = LocalBlobStore::Create(root);
  if (!local.ok()) return local.status();
  return std::unique_ptr<BlobStore>(std::move(*local));
}

absl::StatusOr<std::string> BlobStore::Put(absl::string_view bytes) const {
  auto writer = NewWriter();
  if (!writer.ok()) return writer.status();
  absl::Status s = (*writer)->Append(bytes);
  if (!s.ok()) return s;
  return (*writer)->Commit();
}

absl::StatusOr<std::unique_ptr<LocalBlobStore>> LocalBlobStore::Create(const std::string& root) {
  std::error_code ec;
  fs::create_directories(fs::path(root) / "blobs", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", root, ": ", ec.message()));
  fs::path tmp = fs::path(root) / "tmp";
  // Temp files belong to uploads that died with an earlier process.
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  return std::unique_ptr<LocalBlobStore>(new LocalBlobStore(root));
}

absl::StatusOr<std::unique_ptr<BlobStore::Writer>> LocalBlobStore::NewWriter() const {
  static std::atomic<uint64_t> counter{0};
  absl::BitGen gen;
  std::string path = absl::StrFormat("%s/tmp/%d-%d-%016x", root_, getpid(),
                                     counter.fetch_add(1), absl::Uniform<uint64_t>(gen));
  FILE* f = fopen(path.c_str(), "wbx");
  if (f == nullptr) return ErrnoError("create a blob", path);
  return std::unique_ptr<BlobStore::Writer>(new Writer(this, path, f));
}

std::string LocalBlobStore::PathFor(absl::string_view sha256) const {
  return absl::StrCat(root_, "/blobs/", sha256.substr(0, 2), "/", sha256);
}

bool LocalBlobStore::Contains(absl::string_view sha256) const {
  struct stat st;
  return stat(PathFor(sha256).c_str(), &st) == 0;
}

absl::StatusOr<int64_t> LocalBlobStore::Size(absl::string_view sha256) const {
  struct stat st;
  if (stat(PathFor(sha256).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("blob ", QuoteClientText(sha256), " not found"));
  }
  return static_cast<int64_t>(st.st_size);
}

absl::Status LocalBlobStore::Delete(absl::string_view sha256) const {
  if (unlink(PathFor(sha256).c_str()) != 0 && errno != ENOENT) {
    return ErrnoError("delete a blob", sha256);
  }
  return absl::OkStatus();
}

absl::Status LocalBlobStore::Read(absl::string_view sha256, int64_t offset, int64_t length,
                                  const ByteSink& sink) const {
  const std::string path = PathFor(sha256);
  FILE* f = fopen(path.c_str(), "rbe");
  if (f == nullptr) {
    if (errno == ENOENT)
      return absl::NotFoundError(absl::StrCat("blob ", QuoteClientText(sha256), " not found"));
    return ErrnoError("read a blob", path);
  }
  absl::Status s;
  if (fseeko(f, offset, SEEK_SET) != 0) s = ErrnoError("read a blob", path);
  std::string buf(1 << 20, '\0');
  int64_t left = length < 0 ? INT64_MAX : length;
  while (s.ok() && left > 0) {
    size_t want = static_cast<size_t>(std::min<int64_t>(left, static_cast<int64_t>(buf.size())));
    size_t n = fread(buf.data(), 1, want, f);
    if (n == 0) {
      if (ferror(f)) s = ErrnoError("read a blob", path);
      break;
    }
    left -= static_cast<int64_t>(n);
    s = sink(absl::string_view(buf.data(), n));
  }
  fclose(f);
  return s;
}

absl::StatusOr<std::string> LocalBlobStore::LocalPath(absl::string_view sha256) const {
  if (!Contains(sha256))
    return absl::NotFoundError(absl::StrCat("blob ", QuoteClientText(sha256), " not found"));
  return PathFor(sha256);
}

}  // namespace compress::store
