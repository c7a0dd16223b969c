#include "server/store/blob_store.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
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

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    root_ = dir_.path() + "/data";
    auto store = BlobStore::Create(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  std::string TmpDir() const { return root_ + "/tmp"; }
  std::string BlobsDir() const { return root_ + "/blobs"; }

  ScopedTempDir dir_;
  std::string root_;
  std::unique_ptr<BlobStore> store_;
};

TEST_F(BlobStoreTest, CreateMakesLayout) {
  EXPECT_TRUE(fs::is_directory(BlobsDir()));
  EXPECT_TRUE(fs::is_directory(TmpDir()));
  EXPECT_EQ(store_->root(), root_);
}

TEST_F(BlobStoreTest, PutStoresBytesUnderTheirDigest) {
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

TEST_F(BlobStoreTest, EmptyBlob) {
  auto sha = store_->Put("");
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, kEmptySha);
  EXPECT_EQ(*store_->Size(*sha), 0);
}

TEST_F(BlobStoreTest, StreamedWriterMatchesWholeDigest) {
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

TEST_F(BlobStoreTest, WriterDroppedWithoutCommitLeavesNothing) {
  {
    auto writer = store_->NewWriter();
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append("half written").ok());
    EXPECT_THAT(FilesUnder(TmpDir()), SizeIs(1));
  }
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  EXPECT_THAT(FilesUnder(BlobsDir()), IsEmpty());
}

TEST_F(BlobStoreTest, DigestMismatchStoresNothing) {
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

TEST_F(BlobStoreTest, SameBytesTwiceIsOneFile) {
  auto a = store_->Put("same bytes");
  auto b = store_->Put("same bytes");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_THAT(FilesUnder(BlobsDir()), SizeIs(1));
  EXPECT_EQ(ReadFile(store_->PathFor(*a)), "same bytes");
}

TEST_F(BlobStoreTest, ConcurrentWriters) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::string>> shas(kThreads);
  std::vector<bool> ok(kThreads, true);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Even i: bytes shared by all threads; odd i: bytes of this thread.
        std::string bytes = i % 2 == 0 ? absl::StrCat("shared-", i, std::string(5000, 's'))
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
        if (!sha.ok() || *sha != Sha256Hex(bytes)) ok[t] = false;
        if (sha.ok()) shas[t].push_back(*sha);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(ok[t]) << "thread " << t;
  // 10 shared contents + 10 own per thread.
  EXPECT_THAT(FilesUnder(BlobsDir()), SizeIs(kPerThread / 2 + kThreads * kPerThread / 2));
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  for (int t = 0; t < kThreads; ++t) {
    for (const std::string& sha : shas[t]) {
      EXPECT_EQ(Sha256Hex(ReadFile(store_->PathFor(sha))), sha);
    }
  }
}

TEST_F(BlobStoreTest, Delete) {
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

TEST_F(BlobStoreTest, CreateRemovesStaleTempFilesAndKeepsBlobs) {
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

  auto reopened = BlobStore::Create(root_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_THAT(FilesUnder(TmpDir()), IsEmpty());
  EXPECT_TRUE(fs::is_directory(TmpDir()));
  EXPECT_TRUE((*reopened)->Contains(kAbcSha));
  EXPECT_EQ(ReadFile((*reopened)->PathFor(kAbcSha)), "abc");
  // And it still works.
  EXPECT_EQ(*(*reopened)->Put("abc"), kAbcSha);
}

TEST_F(BlobStoreTest, CreateFailsWhenRootIsNotADirectory) {
  std::string file = dir_.path() + "/a_file";
  { std::ofstream(file) << "x"; }
  auto store = BlobStore::Create(file + "/root");
  EXPECT_FALSE(store.ok());
}

}  // namespace
}  // namespace compress::store
