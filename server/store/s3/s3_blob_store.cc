#include "server/store/s3/s3_blob_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "server/store/storage_error.h"
#include "server/util/status_macros.h"

namespace compress::store {
namespace fs = std::filesystem;

namespace {

// `what` (an operation and a path) is logged; the client reads no path.
absl::Status ErrnoError(const std::string& what) {
  return StorageError(errno, "use the local blob cache", what);
}

absl::Status CheckSha(absl::string_view sha256) {
  if (IsSha256Hex(sha256)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("\"", sha256, "\" is not a sha256 digest (64 lower-case hex digits)"));
}

std::string RandomSuffix() {
  thread_local absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

// The digest in "<blobs_prefix><sha[0:2]>/<sha>", or "" for any other key.
absl::string_view ShaFromKey(absl::string_view key, absl::string_view blobs_prefix) {
  if (!absl::ConsumePrefix(&key, blobs_prefix) || key.size() != 67 || key[2] != '/') return {};
  absl::string_view sha = key.substr(3);
  if (!IsSha256Hex(sha) || sha.substr(0, 2) != key.substr(0, 2)) return {};
  return sha;
}

}  // namespace

S3BlobStore::Writer::Writer(S3BlobStore* store, std::string tmp_path, FILE* file)
    : store_(store), tmp_path_(std::move(tmp_path)), file_(file) {}

S3BlobStore::Writer::~Writer() { Discard(); }

void S3BlobStore::Writer::Discard() {
  if (file_ != nullptr) {
    fclose(file_);
    file_ = nullptr;
  }
  if (!tmp_path_.empty()) {
    unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
}

absl::Status S3BlobStore::Writer::Append(absl::string_view bytes) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  if (!bytes.empty() && fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return ErrnoError("write " + tmp_path_);
  }
  hash_.Update(bytes);
  size_ += static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3BlobStore::Writer::Commit(absl::string_view expected_sha256) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is closed");
  std::string sha = hash_.HexDigest();
  if (!expected_sha256.empty() && sha != expected_sha256) {
    Discard();
    return absl::InvalidArgumentError(absl::StrCat("sha256 mismatch: declared ", expected_sha256,
                                                   ", received bytes hash to ", sha));
  }
  // The temp file is only a staging copy: a crash loses the upload anyway, so
  // no fsync, just make sure every byte reached the file.
  int rc = fclose(file_);
  file_ = nullptr;
  if (rc != 0) {
    absl::Status s = ErrnoError("close " + tmp_path_);
    Discard();
    return s;
  }
  absl::Status uploaded = store_->Upload(tmp_path_, sha, size_);
  Discard();
  if (!uploaded.ok()) return uploaded;
  return sha;
}

absl::StatusOr<std::unique_ptr<S3BlobStore>> S3BlobStore::Create(
    const S3BlobStoreOptions& options) {
  if (options.reuse_window < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("reuse_window must not be negative");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<S3Client> client, S3Client::Create(options.client));
  S3BlobStoreOptions opts = options;
  if (opts.tmp_dir.empty()) {
    std::error_code ec;
    opts.tmp_dir = fs::temp_directory_path(ec).string();
    if (ec) opts.tmp_dir = "/tmp";
  }
  std::error_code ec;
  fs::create_directories(opts.tmp_dir, ec);
  if (ec || !fs::is_directory(opts.tmp_dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the staging directory ", opts.tmp_dir, ": ", ec.message()));
  }
  return std::unique_ptr<S3BlobStore>(new S3BlobStore(std::move(opts), std::move(client)));
}

absl::StatusOr<std::unique_ptr<S3BlobStore::Writer>> S3BlobStore::NewWriter() {
  std::string path = absl::StrCat(options_.tmp_dir, "/s3blob-", RandomSuffix(), ".tmp");
  FILE* f = fopen(path.c_str(), "wxbe");  // x: never reuse another writer's file
  if (f == nullptr) return ErrnoError("create " + path);
  return std::unique_ptr<Writer>(new Writer(this, std::move(path), f));
}

absl::StatusOr<std::string> S3BlobStore::Put(absl::string_view bytes) {
  ASSIGN_OR_RETURN(std::unique_ptr<Writer> w, NewWriter());
  RETURN_IF_ERROR(w->Append(bytes));
  return w->Commit();
}

absl::StatusOr<std::string> S3BlobStore::PutFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoError("stat " + path);
  ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
  RETURN_IF_ERROR(Upload(path, sha, st.st_size));
  return sha;
}

absl::Status S3BlobStore::Upload(const std::string& path, const std::string& sha256, int64_t size) {
  const std::string key = KeyFor(sha256);
  absl::StatusOr<S3ObjectInfo> existing = client_->HeadObject(key);
  if (existing.ok()) {
    if (existing->size == size && absl::Now() - existing->last_modified < options_.reuse_window) {
      return absl::OkStatus();
    }
  } else if (!absl::IsNotFound(existing.status())) {
    return existing.status();
  }
  return client_->PutObjectFromFile(key, path, sha256).status();
}

std::string S3BlobStore::KeyFor(absl::string_view sha256) const {
  return absl::StrCat(options_.client.config.prefix, "blobs/", sha256.substr(0, 2), "/", sha256);
}

absl::StatusOr<bool> S3BlobStore::Contains(absl::string_view sha256) {
  RETURN_IF_ERROR(CheckSha(sha256));
  absl::StatusOr<S3ObjectInfo> info = client_->HeadObject(KeyFor(sha256));
  if (info.ok()) return true;
  if (absl::IsNotFound(info.status())) return false;
  return info.status();
}

absl::StatusOr<int64_t> S3BlobStore::Size(absl::string_view sha256) {
  RETURN_IF_ERROR(CheckSha(sha256));
  ASSIGN_OR_RETURN(S3ObjectInfo info, client_->HeadObject(KeyFor(sha256)));
  return info.size;
}

absl::Status S3BlobStore::Delete(absl::string_view sha256) {
  RETURN_IF_ERROR(CheckSha(sha256));
  return client_->DeleteObject(KeyFor(sha256));
}

absl::Status S3BlobStore::Read(absl::string_view sha256, const S3Client::ByteSink& sink,
                               std::optional<S3ByteRange> range) {
  RETURN_IF_ERROR(CheckSha(sha256));
  return client_->GetObject(KeyFor(sha256), sink, range);
}

absl::Status S3BlobStore::Fetch(absl::string_view sha256, const std::string& local_path) {
  RETURN_IF_ERROR(CheckSha(sha256));
  const std::string tmp = absl::StrCat(local_path, ".part-", RandomSuffix());
  FILE* f = fopen(tmp.c_str(), "wxbe");
  if (f == nullptr) return ErrnoError("create " + tmp);
  Sha256 hash;
  S3Client::ByteSink sink = [f, &hash, &tmp](absl::string_view bytes) {
    if (fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
      return ErrnoError("write " + tmp);
    }
    hash.Update(bytes);
    return absl::OkStatus();
  };
  absl::Status s = client_->GetObject(KeyFor(sha256), sink);
  if (s.ok() && (fflush(f) != 0 || fsync(fileno(f)) != 0)) s = ErrnoError("fsync " + tmp);
  if (fclose(f) != 0 && s.ok()) s = ErrnoError("close " + tmp);
  if (s.ok()) {
    std::string got = hash.HexDigest();
    if (got != sha256) {
      s = absl::DataLossError(
          absl::StrCat("blob ", sha256, " fetched from ", KeyFor(sha256), " hashes to ", got));
    }
  }
  if (s.ok() && rename(tmp.c_str(), local_path.c_str()) != 0) {
    s = ErrnoError("rename " + tmp + " to " + local_path);
  }
  if (!s.ok()) unlink(tmp.c_str());
  return s;
}

absl::Status S3BlobStore::ForEach(const std::function<absl::Status(const S3BlobInfo&)>& visit) {
  const std::string prefix = absl::StrCat(options_.client.config.prefix, "blobs/");
  return client_->ListObjects(prefix, [&](const S3ObjectInfo& object) {
    absl::string_view sha = ShaFromKey(object.key, prefix);
    if (sha.empty()) return absl::OkStatus();
    return visit(S3BlobInfo{std::string(sha), object.size, object.last_modified});
  });
}

absl::StatusOr<std::vector<S3BlobInfo>> S3BlobStore::List() {
  std::vector<S3BlobInfo> out;
  RETURN_IF_ERROR(ForEach([&out](const S3BlobInfo& info) {
    out.push_back(info);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<S3GcReport> S3BlobStore::CollectGarbage(const std::set<std::string>& referenced,
                                                       absl::Duration min_age, absl::Time now) {
  if (min_age <= options_.reuse_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "garbage collection min_age (", absl::FormatDuration(min_age),
        ") must exceed the store's reuse_window (", absl::FormatDuration(options_.reuse_window),
        "): a blob that Commit reused could otherwise be swept before it is referenced"));
  }
  const absl::Time cutoff = now - min_age;
  S3GcReport report;
  // Mark: the caller's set. Sweep: list first, delete afterwards, so that the
  // listing's continuation never runs over keys that are going away.
  std::vector<S3BlobInfo> candidates;
  const std::string prefix = absl::StrCat(options_.client.config.prefix, "blobs/");
  RETURN_IF_ERROR(client_->ListObjects(prefix, [&](const S3ObjectInfo& object) {
    absl::string_view sha = ShaFromKey(object.key, prefix);
    if (sha.empty()) {
      ++report.foreign_keys;
    } else if (referenced.count(std::string(sha)) > 0) {
      ++report.kept_referenced;
    } else if (object.last_modified >= cutoff) {
      ++report.kept_young;
    } else {
      candidates.push_back(S3BlobInfo{std::string(sha), object.size, object.last_modified});
    }
    return absl::OkStatus();
  }));

  for (const S3BlobInfo& blob : candidates) {
    // Commit may have re-uploaded it since the listing: look again.
    absl::StatusOr<S3ObjectInfo> now_info = client_->HeadObject(KeyFor(blob.sha256));
    if (absl::IsNotFound(now_info.status())) continue;
    RETURN_IF_ERROR(now_info.status());
    if (now_info->last_modified >= cutoff) {
      ++report.kept_young;
      continue;
    }
    RETURN_IF_ERROR(client_->DeleteObject(KeyFor(blob.sha256)));
    report.bytes_deleted += blob.size;
    report.deleted.push_back(blob);
  }
  return report;
}

}  // namespace compress::store
