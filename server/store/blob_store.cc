#include "server/store/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace compress::store {
namespace fs = std::filesystem;

namespace {

absl::Status ErrnoError(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("open " + dir);
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) return ErrnoError("fsync " + dir);
  return absl::OkStatus();
}

}  // namespace

BlobStore::Writer::Writer(const BlobStore* store, std::string tmp_path, FILE* file)
    : store_(store), tmp_path_(std::move(tmp_path)), file_(file) {}

BlobStore::Writer::~Writer() { Discard(); }

void BlobStore::Writer::Discard() {
  if (file_ != nullptr) {
    fclose(file_);
    file_ = nullptr;
  }
  if (!tmp_path_.empty()) {
    unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
}

absl::Status BlobStore::Writer::Append(absl::string_view bytes) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  if (!bytes.empty() && fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return ErrnoError("write " + tmp_path_);
  }
  hash_.Update(bytes);
  size_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> BlobStore::Writer::Commit(absl::string_view expected_sha256) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  std::string sha = hash_.HexDigest();
  if (!expected_sha256.empty() && sha != expected_sha256) {
    Discard();
    return absl::InvalidArgumentError(absl::StrCat(
        "sha256 mismatch: declared ", expected_sha256, ", received bytes hash to ", sha));
  }
  if (fflush(file_) != 0 || fsync(fileno(file_)) != 0) {
    absl::Status s = ErrnoError("fsync " + tmp_path_);
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
    return absl::InternalError(absl::StrCat("mkdir: ", ec.message()));
  }
  if (rename(tmp_path_.c_str(), final_path.c_str()) != 0) {
    absl::Status s = ErrnoError("rename " + tmp_path_);
    Discard();
    return s;
  }
  tmp_path_.clear();
  absl::Status s = FsyncDir(fs::path(final_path).parent_path().string());
  if (!s.ok()) return s;
  return sha;
}

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Create(const std::string& root) {
  std::error_code ec;
  fs::create_directories(fs::path(root) / "blobs", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", root, ": ", ec.message()));
  fs::path tmp = fs::path(root) / "tmp";
  // Temp files belong to uploads that died with an earlier process.
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

absl::StatusOr<std::unique_ptr<BlobStore::Writer>> BlobStore::NewWriter() const {
  static std::atomic<uint64_t> counter{0};
  absl::BitGen gen;
  std::string path = absl::StrFormat("%s/tmp/%d-%d-%016x", root_, getpid(),
                                     counter.fetch_add(1), absl::Uniform<uint64_t>(gen));
  FILE* f = fopen(path.c_str(), "wbx");
  if (f == nullptr) return ErrnoError("create " + path);
  return std::unique_ptr<Writer>(new Writer(this, path, f));
}

absl::StatusOr<std::string> BlobStore::Put(absl::string_view bytes) const {
  auto writer = NewWriter();
  if (!writer.ok()) return writer.status();
  absl::Status s = (*writer)->Append(bytes);
  if (!s.ok()) return s;
  return (*writer)->Commit();
}

std::string BlobStore::PathFor(absl::string_view sha256) const {
  return absl::StrCat(root_, "/blobs/", sha256.substr(0, 2), "/", sha256);
}

bool BlobStore::Contains(absl::string_view sha256) const {
  struct stat st;
  return stat(PathFor(sha256).c_str(), &st) == 0;
}

absl::StatusOr<int64_t> BlobStore::Size(absl::string_view sha256) const {
  struct stat st;
  if (stat(PathFor(sha256).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " not found"));
  }
  return static_cast<int64_t>(st.st_size);
}

absl::Status BlobStore::Delete(absl::string_view sha256) const {
  if (unlink(PathFor(sha256).c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(absl::StrCat("unlink blob ", sha256));
  }
  return absl::OkStatus();
}

}  // namespace compress::store
