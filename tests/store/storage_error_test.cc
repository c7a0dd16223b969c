// Storage errors as a client sees them (storage_error.h): the code says
// whether retrying helps, the message never holds a server path. The blob
// store case is a real write refused by the kernel (RLIMIT_FSIZE: EFBIG,
// the same answer as a full disk); the full-disk end to end is
// tests/e2e/disk_full_test.cc.
#include "server/store/storage_error.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/blob_store.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(StorageError, CodesSayWhetherRetryingHelps) {
  EXPECT_EQ(CodeForErrno(ENOSPC), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeForErrno(EDQUOT), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeForErrno(EFBIG), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeForErrno(EIO), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForErrno(EAGAIN), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForErrno(EACCES), absl::StatusCode::kInternal);
}

TEST(StorageError, MessageNamesTheOperationButNotThePath) {
  absl::Status s = StorageError(ENOSPC, "store an upload", "/srv/compressd/blobs/ab/abcdef");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "the server's storage is full: cannot store an upload; retry after space is freed");
  s = StorageError(EIO, "read a blob", "/srv/compressd/blobs/ab/abcdef");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("Input/output error"));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("/srv")));
}

TEST(StorageError, SqliteCodesIncludingExtendedOnes) {
  EXPECT_EQ(SqliteStorageError(SQLITE_FULL, "write", "database or disk is full").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(SqliteStorageError(SQLITE_IOERR_WRITE, "write", "disk I/O error").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(SqliteStorageError(SQLITE_BUSY, "write", "database is locked").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(SqliteStorageError(SQLITE_CORRUPT, "read", "database disk image is malformed").code(),
            absl::StatusCode::kInternal);
}

// The process may write no file past 64 KiB while it lives.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of a signal
    rlimit limited = saved_;
    limited.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limited);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_;
  sighandler_t old_handler_;
};

TEST(StorageError, BlobStoreWritePastTheLimitIsResourceExhaustedWithoutPath) {
  testutil::ScopedTempDir dir;
  auto blobs = BlobStore::Create(dir.path());
  ASSERT_TRUE(blobs.ok()) << blobs.status();
  const std::string small(1000, 's');
  ASSERT_TRUE((*blobs)->Put(small).ok());
  absl::StatusOr<std::string> sha;
  {
    FileSizeLimit limit(64 << 10);
    sha = (*blobs)->Put(std::string(1 << 20, 'b'));
  }
  ASSERT_FALSE(sha.ok());
  EXPECT_EQ(sha.status().code(), absl::StatusCode::kResourceExhausted) << sha.status();
  EXPECT_THAT(std::string(sha.status().message()), HasSubstr("storage is full"));
  EXPECT_THAT(std::string(sha.status().message()), Not(HasSubstr(dir.path())));
  // The store still works, and the refused write left no temp file.
  EXPECT_TRUE((*blobs)->Put(std::string(2000, 't')).ok());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path() + "/tmp"));
}

}  // namespace
}  // namespace compress::store
