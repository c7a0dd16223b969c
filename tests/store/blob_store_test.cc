// The BlobStore contract, run against LocalBlobStore and against
// S3BackedBlobStore on s3rver (tests/store/blob_s3rver.h; the S3 cases fail,
// saying what to install, without node). The S3 store's cache directory is
// the test's root, so the layout checks (tmp/ while writing, blobs/<sha> once
// committed) hold for both. Then S3-only: LocalPath's cache.
#include "server/store/blob_store.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/s3/s3_backed_blob_store.h"
#include "server/store/s3/s3_client.h"
#include "server/util/sha256.h"
#include "tests/store/blob_s3rver.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

namespace fs = std::filesystem;
using ::compress::testutil::FilesUnder;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// FIPS 180-2 test vectors, independent of our hashing code.
constexpr char kAbcSha[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kEmptySha[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

constexpr char kBucket[] = "compressd-blob-test";

enum class Kind { kLocal, kS3 };

std::string KindName(const ::testing::TestParamInfo<Kind>& info) {
  return info.param == Kind::kLocal ? "Local" : "S3";
}

class BlobStoreTest : public ::testing::TestWithParam<Kind> {
 protected:
  static void SetUpTestSuite() {
    s3_dir_ = new ScopedTempDir();
    s3rver_ = new s3test::S3rver();
    *s3_error_ = s3rver_->Start(s3_dir_->path() + "/s3rver");
    if (!s3_error_->empty()) return;
    auto client = S3Client::Create(ClientOptions(""));
    absl::Status made = client.ok() ? (*client)->CreateBucket() : client.status();
    if (!made.ok()) *s3_error_ = "creating the bucket: " + made.ToString();
  }
  static void TearDownTestSuite() {
    s3rver_->Stop();
    delete s3rver_;
    delete s3_dir_;
  }
  static S3ClientOptions ClientOptions(const std::string& prefix) {
    S3ClientOptions o;
    o.config.endpoint = absl::StrCat("http://127.0.0.1:", s3rver_->port());
    o.config.bucket = kBucket;
    o.config.prefix = prefix;
    // s3rver knows one account: S3RVER / S3RVER.
    o.config.access_key_id = "S3RVER";
    o.config.secret_access_key = "S3RVER";
    return o;
  }

  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    if (GetParam() == Kind::kS3) {
      ASSERT_TRUE(s3_error_->empty()) << *s3_error_;
      // Each test its own prefix: an empty store.
      static std::atomic<int> n{0};
      prefix_ = absl::StrCat("t", getpid(), "-", n.fetch_add(1), "/");
    }
    root_ = dir_.path() + "/data";
    auto store = Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  // A store of this test's kind whose local files (all of them, or the
  // cache) live under `root`.
  absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& root) {
    if (GetParam() == Kind::kLocal) return BlobStore::Create(root);
    S3BackedBlobStoreOptions o;
    o.s3.client = ClientOptions(prefix_);
    o.cache_dir = root;
    auto s3 = S3BackedBlobStore::Create(o);
    if (!s3.ok()) return s3.status();
    return std::unique_ptr<BlobStore>(std::move(*s3));
  }
  std::string TmpDir() const { return root_ + "/tmp"; }
  std::string BlobsDir() const { return root_ + "/blobs"; }

  static ScopedTempDir* s3_dir_;
  static s3test::S3rver* s3rver_;
  static std::string* const s3_error_;

  ScopedTempDir dir_;
  std::string root_;
  std::string prefix_;
  std::unique_ptr<BlobStore> store_;
};

ScopedTempDir* BlobStoreTest::s3_dir_ = nullptr;
s3test::S3rver* BlobStoreTest::s3rver_ = nullptr;
std::string* const BlobStoreTest::s3_error_ = new std::string();

INSTANTIATE_TEST_SUITE_P(Both, BlobStoreTest, ::testing::Values(Kind::kLocal, Kind::kS3), KindName);

TEST_P(BlobStoreTest, CreateMakesLayout) {
  EXPECT_TRUE(fs::is_directory(BlobsDir()));
  EXPECT_TRUE(fs::is_directory(TmpDir()));
}

TEST_P(BlobStoreTest, PutStoresBytesUnderTheirDigest) {
  auto sha = store_->Put("abc");
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, kAbcSha);
  EXPECT_EQ(store_->PathFor(*sha), absl::StrCat(root_, "/blobs/ba/", kAbcSha));
  EXPECT_TRUE(store_->Contains(*sha));
  EXPECT_EQ(ReadFile(store_->PathFor(*sha)), "abc");
  auto size = store_->Size(*sha);
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(*size, 3);
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
}

TEST_P(BlobStoreTest, EmptyBlob) {
  auto sha = store_->Put("");
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, kEmptySha);
  EXPECT_EQ(*store_->Size(*sha), 0);
}

TEST_P(BlobStoreTest, StreamedWriterMatchesWholeDigest) {
  std::string data;
  for (int i = 0; i < 300000; ++i) data.push_back(static_cast<char>((i * 131 + 7) % 256));
  auto writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok()) << writer.status();
  size_t pos = 0;
  const size_t chunks[] = {1, 0, 4096, 65536, 12345};
  for (int i = 0; pos < data.size(); ++i) {
    size_t n = std::min(chunks[i % 5], data.size() - pos);
    ASSERT_TRUE((*writer)->Append(absl::string_view(data).substr(pos, n)).ok());
    pos += n;
  }
  EXPECT_EQ((*writer)->size(), static_cast<int64_t>(data.size()));
  // The temp file exists while writing; nothing is visible in blobs/ yet.
  EXPECT_THAT(FilesUnder(TmpDir()), SizeIs(1));
  EXPECT_THAT(FilesUnder(BlobsDir()), IsEmpty());

  auto sha = (*writer)->Commit(Sha256Hex(data));
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, Sha256Hex(data));
  EXPECT_EQ(ReadFile(store_->PathFor(*sha)), data);
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  // A committed writer is closed.
  EXPECT_EQ((*writer)->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*writer)->Commit().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(BlobStoreTest, WriterDroppedWithoutCommitLeavesNothing) {
  {
    auto writer = store_->NewWriter();
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append("half written").ok());
    EXPECT_THAT(FilesUnder(TmpDir()), SizeIs(1));
  }
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  EXPECT_THAT(FilesUnder(BlobsDir()), IsEmpty());
}

TEST_P(BlobStoreTest, DigestMismatchStoresNothing) {
  auto writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("abc").ok());
  auto sha = (*writer)->Commit(kEmptySha);
  EXPECT_EQ(sha.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(sha.status().message()), ::testing::HasSubstr(kAbcSha));
  EXPECT_FALSE(store_->Contains(kAbcSha));
  EXPECT_FALSE(store_->Contains(kEmptySha));
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  EXPECT_THAT(FilesUnder(BlobsDir()), IsEmpty());
  EXPECT_EQ((*writer)->Commit().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(BlobStoreTest, SameBytesTwiceIsOneFile) {
  auto a = store_->Put("same bytes");
  auto b = store_->Put("same bytes");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_THAT(FilesUnder(BlobsDir()), SizeIs(1));
  EXPECT_EQ(ReadFile(store_->PathFor(*a)), "same bytes");
}

TEST_P(BlobStoreTest, ConcurrentWriters) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::string>> shas(kThreads);
  std::vector<bool> ok(kThreads, true);
  std::vector<std::string> errors(kThreads);
  // s3rver answers HTTP 500 to a HEAD that races a PUT of the same key (its
  // file-system backend), so on S3 each thread's "shared" bytes are its own.
  const bool race_same_digest = GetParam() == Kind::kLocal;
  auto shared_tag = [race_same_digest](int t) {
    return race_same_digest ? std::string() : absl::StrCat("-", t);
  };
  const int distinct =
      race_same_digest ? kPerThread / 2 + kThreads * kPerThread / 2 : kThreads * kPerThread;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Even i: bytes shared by all threads; odd i: bytes of this thread.
        std::string bytes = i % 2 == 0
                                ? absl::StrCat("shared-", i, shared_tag(t), std::string(5000, 's'))
                                : absl::StrCat("own-", t, "-", i, std::string(3000, 'o'));
        auto w = store_->NewWriter();
        if (!w.ok()) {
          ok[t] = false;
          return;
        }
        for (size_t p = 0; p < bytes.size(); p += 1000) {
          if (!(*w)->Append(absl::string_view(bytes).substr(p, 1000)).ok()) ok[t] = false;
        }
        auto sha = (*w)->Commit();
        if (!sha.ok() || *sha != Sha256Hex(bytes)) {
          ok[t] = false;
          errors[t] = sha.status().ToString();
        }
        if (sha.ok()) shas[t].push_back(*sha);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(ok[t]) << "thread " << t << ": " << errors[t];
  // 10 shared contents + 10 own per thread.
  EXPECT_THAT(FilesUnder(BlobsDir()), SizeIs(distinct));
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  for (int t = 0; t < kThreads; ++t) {
    for (const std::string& sha : shas[t]) {
      EXPECT_EQ(Sha256Hex(ReadFile(store_->PathFor(sha))), sha);
    }
  }
}

TEST_P(BlobStoreTest, Delete) {
  auto sha = store_->Put("to delete");
  ASSERT_TRUE(sha.ok());
  ASSERT_TRUE(store_->Contains(*sha));
  EXPECT_TRUE(store_->Delete(*sha).ok());
  EXPECT_FALSE(store_->Contains(*sha));
  EXPECT_EQ(store_->Size(*sha).status().code(), absl::StatusCode::kNotFound);
  // Absent is fine.
  EXPECT_TRUE(store_->Delete(*sha).ok());
  EXPECT_TRUE(store_->Delete(kAbcSha).ok());
}

TEST_P(BlobStoreTest, CreateRemovesStaleTempFilesAndKeepsBlobs) {
  auto sha = store_->Put("abc");
  ASSERT_TRUE(sha.ok());
  // A crashed upload left a temp file and an open writer's file behind.
  { std::ofstream(TmpDir() + "/12345-0-deadbeef") << "partial upload"; }
  auto writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("in flight").ok());
  EXPECT_THAT(FilesUnder(TmpDir()), SizeIs(2));
  writer->reset();  // the old process is gone
  { std::ofstream(TmpDir() + "/12345-1-deadbeef") << "another"; }

  auto reopened = Open(root_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  EXPECT_TRUE(fs::is_directory(TmpDir()));
  EXPECT_TRUE((*reopened)->Contains(kAbcSha));
  EXPECT_EQ(ReadFile((*reopened)->PathFor(kAbcSha)), "abc");
  // And it still works.
  EXPECT_EQ(*(*reopened)->Put("abc"), kAbcSha);
}

TEST_P(BlobStoreTest, CreateFailsWhenRootIsNotADirectory) {
  std::string file = dir_.path() + "/a_file";
  { std::ofstream(file) << "x"; }
  auto store = Open(file + "/root");
  EXPECT_FALSE(store.ok());
}

// Reads what the sink receives.
absl::StatusOr<std::string> ReadRange(const BlobStore& store, absl::string_view sha, int64_t offset,
                                      int64_t length) {
  std::string got;
  absl::Status s = store.Read(sha, offset, length, [&got](absl::string_view bytes) {
    got.append(bytes.data(), bytes.size());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return got;
}

TEST_P(BlobStoreTest, ReadStreamsWholeBlobAndRanges) {
  std::string data;
  for (int i = 0; i < 3 * 1000 * 1000; ++i)
    data.push_back(static_cast<char>((i * 7 + i / 251) % 256));
  auto sha = store_->Put(data);
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*ReadRange(*store_, *sha, 0, -1), data);
  EXPECT_EQ(*ReadRange(*store_, *sha, 1000, 10), data.substr(1000, 10));
  EXPECT_EQ(*ReadRange(*store_, *sha, 2500000, -1), data.substr(2500000));
  // Past the end: what is there, then nothing.
  EXPECT_EQ(*ReadRange(*store_, *sha, data.size() - 5, 100), data.substr(data.size() - 5));
  EXPECT_EQ(*ReadRange(*store_, *sha, data.size(), 100), "");
  EXPECT_EQ(*ReadRange(*store_, *sha, 17, 0), "");
  EXPECT_EQ(ReadRange(*store_, kAbcSha, 0, -1).status().code(), absl::StatusCode::kNotFound);
  // A sink's error stops the read and is the answer.
  absl::Status stopped = store_->Read(
      *sha, 0, -1, [](absl::string_view) { return absl::CancelledError("client went away"); });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
}

TEST_P(BlobStoreTest, LocalPathHoldsTheBlob) {
  auto sha = store_->Put("abc");
  ASSERT_TRUE(sha.ok());
  auto path = store_->LocalPath(*sha);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, store_->PathFor(*sha));
  EXPECT_EQ(ReadFile(*path), "abc");
  EXPECT_EQ(store_->LocalPath(kEmptySha).status().code(), absl::StatusCode::kNotFound);
}

// ---- S3 only: the local cache behind LocalPath ----

class S3CacheTest : public BlobStoreTest {};
INSTANTIATE_TEST_SUITE_P(S3, S3CacheTest, ::testing::Values(Kind::kS3), KindName);

ino_t InodeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

TEST_P(S3CacheTest, LocalPathFetchesOnceThenReuses) {
  auto sha = store_->Put("cached bytes");
  ASSERT_TRUE(sha.ok());
  // Another replica's cache: empty, so the first call fetches.
  ScopedTempDir other_dir;
  auto other = Open(other_dir.path() + "/cache");
  ASSERT_TRUE(other.ok()) << other.status();
  const std::string cached = (*other)->PathFor(*sha);
  EXPECT_FALSE(fs::exists(cached));
  auto first = (*other)->LocalPath(*sha);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, cached);
  EXPECT_EQ(ReadFile(cached), "cached bytes");
  // A fetch renames a new file into place; the same inode means no fetch.
  const ino_t inode = InodeOf(cached);
  ASSERT_NE(inode, 0u);
  auto second = (*other)->LocalPath(*sha);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, cached);
  EXPECT_EQ(InodeOf(cached), inode);
  // Reused while present even when the bucket lost it: no request needed.
  ASSERT_TRUE(static_cast<S3BackedBlobStore&>(*store_).s3().Delete(*sha).ok());
  EXPECT_EQ(*(*other)->LocalPath(*sha), cached);
  EXPECT_EQ(InodeOf(cached), inode);
}

TEST_P(S3CacheTest, CorruptedCacheFileIsFetchedAgain) {
  auto sha = store_->Put("twelve bytes");
  ASSERT_TRUE(sha.ok());
  const std::string cached = store_->PathFor(*sha);
  ASSERT_EQ(ReadFile(cached), "twelve bytes");                   // kept from the upload
  { std::ofstream(cached, std::ios::trunc) << "twelve BYTES"; }  // same size, wrong bytes
  auto path = store_->LocalPath(*sha);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), "twelve bytes");
  // Truncated, and removed: fetched again too.
  { std::ofstream(cached, std::ios::trunc) << "tw"; }
  EXPECT_EQ(ReadFile(*store_->LocalPath(*sha)), "twelve bytes");
  fs::remove(cached);
  EXPECT_EQ(ReadFile(*store_->LocalPath(*sha)), "twelve bytes");
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
}

TEST_P(S3CacheTest, ConcurrentLocalPathsOfOneBlobAgree) {
  std::string data(2 * 1000 * 1000, 'z');
  for (size_t i = 0; i < data.size(); i += 4099) data[i] = static_cast<char>(i % 251);
  auto sha = store_->Put(data);
  ASSERT_TRUE(sha.ok());
  ScopedTempDir other_dir;
  auto other = Open(other_dir.path() + "/cache");
  ASSERT_TRUE(other.ok()) << other.status();
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<std::string>> got(6, absl::UnknownError("not run"));
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] { got[t] = (*other)->LocalPath(*sha); });
  }
  for (auto& t : threads) t.join();
  for (const auto& path : got) {
    ASSERT_TRUE(path.ok()) << path.status();
    EXPECT_EQ(Sha256Hex(ReadFile(*path)), *sha);
  }
  // No temp file of any fetch is left beside the blob.
  EXPECT_THAT(FilesUnder(other_dir.path() + "/cache/blobs"), SizeIs(1));
}

TEST_P(S3CacheTest, DeleteDropsTheCachedCopy) {
  auto sha = store_->Put("gone soon");
  ASSERT_TRUE(sha.ok());
  ASSERT_TRUE(fs::exists(store_->PathFor(*sha)));
  ASSERT_TRUE(store_->Delete(*sha).ok());
  EXPECT_FALSE(fs::exists(store_->PathFor(*sha)));
  EXPECT_EQ(store_->LocalPath(*sha).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(S3CacheTest, TheCacheKeepsItsBoundDroppingTheLeastRecentlyUsed) {
  // Three 1000-byte blobs in the bucket; a replica whose cache holds 2500
  // bytes and may drop anything not used in the last 0 s.
  std::vector<std::string> shas;
  for (char c : {'a', 'b', 'c'}) {
    auto sha = store_->Put(std::string(1000, c));
    ASSERT_TRUE(sha.ok()) << sha.status();
    shas.push_back(*sha);
  }
  ScopedTempDir other_dir;
  S3BackedBlobStoreOptions o;
  o.s3.client = ClientOptions(prefix_);
  o.cache_dir = other_dir.path() + "/cache";
  o.cache_max_bytes = 2500;
  o.cache_min_age = absl::ZeroDuration();
  auto cache = S3BackedBlobStore::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status();
  auto use = [&](int i) {
    auto path = (*cache)->LocalPath(shas[i]);
    EXPECT_TRUE(path.ok()) << path.status();
    absl::SleepFor(absl::Milliseconds(20));  // distinct mtimes
  };
  auto cached = [&](int i) { return fs::exists((*cache)->PathFor(shas[i])); };
  use(0);
  use(1);
  use(0);  // 0 is now more recent than 1
  use(2);  // 3000 bytes: the least recently used (1) goes
  EXPECT_TRUE(cached(0));
  EXPECT_FALSE(cached(1));
  EXPECT_TRUE(cached(2));
  // It comes back on demand, and pushes out the then least recent (0).
  use(1);
  EXPECT_FALSE(cached(0));
  EXPECT_TRUE(cached(1));
  EXPECT_TRUE(cached(2));
  // Nothing is dropped while it is younger than cache_min_age: the bound
  // waits rather than pull a file from under a child about to open it.
  S3BackedBlobStoreOptions young = o;
  young.cache_min_age = absl::Hours(1);
  auto patient = S3BackedBlobStore::Create(young);
  ASSERT_TRUE(patient.ok());
  CacheTrim t = (*patient)->TrimCache();
  EXPECT_EQ(t.bytes_before, 2000);
  ASSERT_TRUE((*patient)->LocalPath(shas[0]).ok());
  t = (*patient)->TrimCache();
  EXPECT_EQ(t.bytes_before, 3000);
  EXPECT_EQ(t.removed, 0);
  EXPECT_EQ(t.bytes_after, 3000);
}

}  // namespace
}  // namespace compress::store
