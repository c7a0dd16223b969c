// S3BlobStore and S3Client against a real S3-compatible server: s3rver 3.7.1
// (Node.js; tests/store/s3rver, installed by scripts/install-deps.sh),
// started here on 127.0.0.1 with a kernel-chosen port and stopped at the end.
// s3rver does not check SigV4 signatures (s3_sigv4_test and s3_client_test
// do); it does check the access key id, which gives the 403 case.
//
// Without node or the npm packages every test fails and says what to run.
#include "server/store/s3/s3_blob_store.h"

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
#include "tests/store/blob_s3rver.h"
#include "tests/store/s3_test_util.h"
#include "tests/test_util.h"

namespace compress::store {
namespace {

namespace fs = std::filesystem;
using ::compress::testutil::ScopedTempDir;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kBucket[] = "compressd-test";
constexpr int64_t kMiB = 1 << 20;

using ::compress::s3test::S3rver;

// ---- helpers ----

// Peak resident set (VmHWM) of this process, in bytes.
int64_t PeakRss() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmHWM:")) {
      int64_t kb = 0;
      std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (words.size() >= 2 && absl::SimpleAtoi(words[1], &kb)) return kb * 1024;
    }
  }
  return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false when not allowed.
bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// Returns once the wall clock has passed the next whole second.
void WaitForNextSecond() {
  const absl::Time next = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) + 1);
  ASSERT_TRUE(testutil::WaitFor([next] { return absl::Now() >= next; }, absl::Seconds(5)));
}

// Deterministic bytes, chunk by chunk.
class ByteStream {
 public:
  explicit ByteStream(uint64_t seed) : rng_(seed) {}
  void Fill(std::string* chunk) {
    for (size_t i = 0; i + 8 <= chunk->size(); i += 8) {
      uint64_t v = rng_();
      memcpy(chunk->data() + i, &v, 8);
    }
  }
  std::string Take(size_t n) {
    std::string s(n, '\0');
    Fill(&s);
    return s;
  }

 private:
  std::mt19937_64 rng_;
};

// ---- fixture ----

class S3BlobStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new ScopedTempDir();
    server_ = new S3rver();
    *start_error_ = server_->Start(data_dir_->path() + "/s3rver");
    if (!start_error_->empty()) return;
    auto client = S3Client::Create(ClientOptions());
    absl::Status made = client.ok() ? (*client)->CreateBucket() : client.status();
    if (!made.ok()) *start_error_ = "creating the bucket: " + made.ToString();
  }
  static void TearDownTestSuite() {
    server_->Stop();  // the test kills s3rver at the end, always
    delete server_;
    delete data_dir_;
  }

  static S3ClientOptions ClientOptions(const std::string& prefix = "") {
    S3ClientOptions o;
    o.config.endpoint = absl::StrCat("http://127.0.0.1:", server_->port());
    o.config.bucket = kBucket;
    o.config.prefix = prefix;
    // s3rver knows one account: S3RVER / S3RVER.
    o.config.access_key_id = "S3RVER";
    o.config.secret_access_key = "S3RVER";
    return o;
  }

  void SetUp() override {
    ASSERT_TRUE(start_error_->empty()) << *start_error_;
    ASSERT_TRUE(tmp_.ok());
    // One prefix per test keeps their blobs apart.
    prefix_ = absl::StrCat(
        absl::AsciiStrToLower(::testing::UnitTest::GetInstance()->current_test_info()->name()),
        "/");
    store_ = MakeStore();
  }

  std::unique_ptr<S3BlobStore> MakeStore(absl::Duration reuse_window = absl::Hours(1),
                                         int64_t threshold = int64_t{5} << 30,
                                         int64_t part = 64 * kMiB) {
    S3BlobStoreOptions o;
    o.client = ClientOptions(prefix_);
    o.client.multipart_threshold = threshold;
    o.client.part_size = part;
    o.tmp_dir = tmp_.path() + "/staging";
    o.reuse_window = reuse_window;
    auto store = S3BlobStore::Create(o);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  absl::StatusOr<std::string> PutByWriter(S3BlobStore& store, const std::string& data,
                                          size_t chunk = 64 << 10) {
    auto w = store.NewWriter();
    if (!w.ok()) return w.status();
    for (size_t at = 0; at < data.size(); at += chunk) {
      absl::Status s = (*w)->Append(absl::string_view(data).substr(at, chunk));
      if (!s.ok()) return s;
    }
    return (*w)->Commit();
  }

  static ScopedTempDir* data_dir_;
  static S3rver* server_;
  static std::string* start_error_;

  ScopedTempDir tmp_;
  std::string prefix_;
  std::unique_ptr<S3BlobStore> store_;
};

ScopedTempDir* S3BlobStoreTest::data_dir_ = nullptr;
S3rver* S3BlobStoreTest::server_ = nullptr;
std::string* S3BlobStoreTest::start_error_ = new std::string();

// First in the file, so that no earlier test's buffers linger in the heap.
TEST_F(S3BlobStoreTest, StreamingTwoHundredMegabytesKeepsMemoryFlat) {
  constexpr int64_t kSize = 200 * kMiB;
  malloc_trim(0);
  const bool reset = ResetPeakRss();
  const int64_t before = PeakRss();

  // Made by streaming: one 1 MiB buffer, refilled.
  ByteStream bytes(5);
  std::string chunk(kMiB, '\0');
  s3test::Sha256Stream independent;
  auto w = store_->NewWriter();
  ASSERT_TRUE(w.ok()) << w.status();
  for (int64_t done = 0; done < kSize; done += kMiB) {
    bytes.Fill(&chunk);
    independent.Update(chunk);
    ASSERT_TRUE((*w)->Append(chunk).ok());
  }
  absl::StatusOr<std::string> sha = (*w)->Commit();
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, independent.HexDigest());
  EXPECT_EQ(store_->Size(*sha).value_or(-1), kSize);

  const std::string local = tmp_.path() + "/big";
  ASSERT_TRUE(store_->Fetch(*sha, local).ok());
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(local)), kSize);
  EXPECT_EQ(Sha256File(local).value_or(""), *sha);

  const int64_t peak = PeakRss();
  std::cout << "200 MiB upload + download: peak RSS " << peak / kMiB << " MiB (VmHWM "
            << (reset ? "reset to " : "without reset, from ") << before / kMiB
            << " MiB before the transfer)\n";
  RecordProperty("peak_rss_mib", static_cast<int>(peak / kMiB));
  EXPECT_LT(peak, 64 * kMiB);
  EXPECT_LT(peak - before, 32 * kMiB);
}

TEST_F(S3BlobStoreTest, PutFetchRoundTripKeepsBytesAndDigest) {
  const std::string data = ByteStream(1).Take(3 * kMiB + 123);
  absl::StatusOr<std::string> sha = PutByWriter(*store_, data);
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, s3test::Sha256HexOf(data));  // OpenSSL directly, not our Sha256
  EXPECT_EQ(store_->KeyFor(*sha), absl::StrCat(prefix_, "blobs/", sha->substr(0, 2), "/", *sha));

  EXPECT_EQ(store_->Contains(*sha).value_or(false), true);
  EXPECT_EQ(store_->Size(*sha).value_or(-1), static_cast<int64_t>(data.size()));
  const std::string local = tmp_.path() + "/fetched";
  ASSERT_TRUE(store_->Fetch(*sha, local).ok());
  EXPECT_TRUE(testutil::ReadFile(local) == data);
  EXPECT_THAT(testutil::FilesUnder(tmp_.path() + "/staging"), ::testing::IsEmpty());

  std::string streamed;
  ASSERT_TRUE(store_
                  ->Read(*sha,
                         [&streamed](absl::string_view b) {
                           streamed.append(b.data(), b.size());
                           return absl::OkStatus();
                         })
                  .ok());
  EXPECT_TRUE(streamed == data);

  // Put of bytes and of a file land on the same key.
  EXPECT_EQ(store_->Put(data).value_or(""), *sha);
  EXPECT_EQ(store_->PutFile(local).value_or(""), *sha);
  auto listed = store_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].sha256, *sha);
  EXPECT_EQ((*listed)[0].size, static_cast<int64_t>(data.size()));

  // A declared digest that does not match stores nothing.
  auto w = store_->NewWriter();
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("abc").ok());
  EXPECT_EQ((*w)->Commit(std::string(64, '0')).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Contains(Sha256Hex("abc")).value_or(true), false);
}

TEST_F(S3BlobStoreTest, RangeReadsReturnExactlyTheRange) {
  const std::string data = ByteStream(2).Take(2 * kMiB);
  auto sha = store_->Put(data);
  ASSERT_TRUE(sha.ok()) << sha.status();
  auto read = [&](S3ByteRange range) -> absl::StatusOr<std::string> {
    std::string got;
    absl::Status s = store_->Read(
        *sha,
        [&got](absl::string_view b) {
          got.append(b.data(), b.size());
          return absl::OkStatus();
        },
        range);
    if (!s.ok()) return s;
    return got;
  };
  EXPECT_EQ(read({1000, 5000}).value_or("?"), data.substr(1000, 5000));
  // (Not {0, 1}: s3rver 3.7.1 reads "bytes=0-0" as "bytes=0-"; the exact
  // Range header is checked in s3_client_test.)
  EXPECT_EQ(read({0, 2}).value_or("?"), data.substr(0, 2));
  EXPECT_EQ(read({static_cast<int64_t>(data.size()) - 10, -1}).value_or("?"),
            data.substr(data.size() - 10));
  EXPECT_EQ(read({static_cast<int64_t>(data.size()) + 5, 10}).status().code(),
            absl::StatusCode::kOutOfRange);
  const std::string part_file = tmp_.path() + "/range";
  ASSERT_TRUE(
      store_->client().GetObjectToFile(store_->KeyFor(*sha), part_file, S3ByteRange{7, 9}).ok());
  EXPECT_EQ(testutil::ReadFile(part_file), data.substr(7, 9));
}

TEST_F(S3BlobStoreTest, HeadSizeMissingAndDelete) {
  auto sha = store_->Put("some bytes");
  ASSERT_TRUE(sha.ok()) << sha.status();
  auto head = store_->client().HeadObject(store_->KeyFor(*sha));
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->size, 10);

  const std::string missing = Sha256Hex("never stored");
  EXPECT_EQ(store_->Size(missing).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Contains(missing).value_or(true), false);
  const std::string local = tmp_.path() + "/missing";
  absl::Status fetched = store_->Fetch(missing, local);
  EXPECT_EQ(fetched.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(fetched.message(), HasSubstr("NoSuchKey"));
  EXPECT_THAT(testutil::FilesUnder(tmp_.path()), ::testing::IsEmpty());
  EXPECT_EQ(store_->Size("not-a-digest").status().code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(store_->Delete(*sha).ok());
  EXPECT_EQ(store_->Contains(*sha).value_or(true), false);
  EXPECT_TRUE(store_->Delete(*sha).ok());  // absent: still OK
}

TEST_F(S3BlobStoreTest, UnknownAccessKeyIsPermissionDenied) {
  S3ClientOptions o = ClientOptions();
  o.config.access_key_id = "NOT-S3RVER";
  auto client = S3Client::Create(o);
  ASSERT_TRUE(client.ok());
  absl::Status s = (*client)->PutObject("x", "y").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("InvalidAccessKeyId"));
}

TEST_F(S3BlobStoreTest, MultipartAboveTheThresholdComesBackIdentical) {
  // 12 MiB, threshold 8 MiB, 5 MiB parts: 5 + 5 + 2.
  const std::string data = ByteStream(3).Take(12 * kMiB);
  const std::string path = tmp_.path() + "/twelve";
  testutil::WriteFile(path, data);
  std::unique_ptr<S3BlobStore> store = MakeStore(absl::Hours(1), 8 * kMiB, 5 * kMiB);
  ASSERT_NE(store, nullptr);

  auto put = store->client().PutObjectFromFile(prefix_ + "direct", path);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->parts, 3);
  const std::string back = tmp_.path() + "/back";
  ASSERT_TRUE(store->client().GetObjectToFile(prefix_ + "direct", back).ok());
  EXPECT_EQ(Sha256File(back).value_or(""), s3test::Sha256HexOf(data));

  // Through the store's Writer: also in parts, and verified on Fetch.
  auto sha = PutByWriter(*store, data, kMiB);
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(store->Size(*sha).value_or(-1), 12 * kMiB);
  ASSERT_TRUE(store->Fetch(*sha, back).ok());
  EXPECT_TRUE(testutil::ReadFile(back) == data);
}

TEST_F(S3BlobStoreTest, CommitReusesAYoungCopyInsteadOfUploadingAgain) {
  const std::string data = ByteStream(4).Take(100000);
  auto modified = [&](S3BlobStore& store) {
    auto listed = store.List();
    EXPECT_TRUE(listed.ok() && listed->size() == 1u);
    return listed.ok() && !listed->empty() ? (*listed)[0].last_modified : absl::InfinitePast();
  };
  ASSERT_TRUE(store_->Put(data).ok());
  const absl::Time first = modified(*store_);
  // s3rver keeps whole seconds: cross into the next one so that an upload
  // would show.
  WaitForNextSecond();
  ASSERT_TRUE(store_->Put(data).ok());
  EXPECT_EQ(modified(*store_), first);  // reused, not uploaded

  // Control: with reuse_window zero the same Put uploads, and the time moves.
  std::unique_ptr<S3BlobStore> always = MakeStore(absl::ZeroDuration());
  ASSERT_NE(always, nullptr);
  ASSERT_TRUE(always->Put(data).ok());
  EXPECT_GT(modified(*always), first);
}

TEST_F(S3BlobStoreTest, ListingPagesThroughContinuationTokens) {
  std::set<std::string> keys;
  for (int i = 0; i < 7; ++i) {
    std::string key = absl::StrCat(prefix_, "k", i);
    ASSERT_TRUE(store_->client().PutObject(key, "x").ok());
    keys.insert(key);
  }
  std::set<std::string> seen;
  int pages = 0;
  std::string token;
  do {
    auto page = store_->client().ListObjectsPage(prefix_, token, 3);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const S3ObjectInfo& o : page->objects) seen.insert(o.key);
    token = page->next_continuation_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, keys);
  seen.clear();
  ASSERT_TRUE(store_->client()
                  .ListObjects(
                      prefix_,
                      [&seen](const S3ObjectInfo& o) {
                        seen.insert(o.key);
                        return absl::OkStatus();
                      },
                      2)
                  .ok());
  EXPECT_EQ(seen, keys);
}

TEST_F(S3BlobStoreTest, GarbageCollectionDeletesExactlyTheUnreferencedOldBlobs) {
  // Every Commit uploads (reuse_window 0), so each blob's age is its own.
  std::unique_ptr<S3BlobStore> store = MakeStore(absl::ZeroDuration());
  ASSERT_NE(store, nullptr);
  auto put = [&](const std::string& s) { return store->Put(s).value_or(""); };
  const std::string old_kept = put("old, referenced");
  const std::string old_gone1 = put("old, unreferenced 1");
  const std::string old_gone2 = put("old, unreferenced 2");
  const std::string foreign = prefix_ + "blobs/not-a-blob";
  ASSERT_TRUE(store->client().PutObject(foreign, "x").ok());
  // Everything above was written before `split`, a whole second (S3's HEAD
  // reports whole seconds); everything below after it.
  WaitForNextSecond();
  const absl::Time split = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  const std::string young_kept = put("young, unreferenced");
  const std::string young_ref = put("young, referenced");
  for (const std::string& sha : {old_kept, old_gone1, old_gone2, young_kept, young_ref}) {
    ASSERT_FALSE(sha.empty());
  }
  // An upload in flight is invisible until committed, whatever the sweep.
  auto in_flight = store->NewWriter();
  ASSERT_TRUE(in_flight.ok());
  ASSERT_TRUE((*in_flight)->Append("in flight").ok());

  EXPECT_EQ(store->CollectGarbage({}, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);  // min_age must exceed reuse_window
  const absl::Time now = absl::Now();
  auto report = store->CollectGarbage({old_kept, young_ref}, now - split, now);
  ASSERT_TRUE(report.ok()) << report.status();

  std::vector<std::string> deleted;
  for (const S3BlobInfo& b : report->deleted) deleted.push_back(b.sha256);
  EXPECT_THAT(deleted, UnorderedElementsAre(old_gone1, old_gone2));
  EXPECT_EQ(report->bytes_deleted, 38);
  EXPECT_EQ(report->kept_referenced, 2);
  EXPECT_EQ(report->kept_young, 1);
  EXPECT_EQ(report->foreign_keys, 1);
  for (const std::string& sha : {old_kept, young_kept, young_ref}) {
    EXPECT_EQ(store->Contains(sha).value_or(false), true) << sha;
  }
  for (const std::string& sha : {old_gone1, old_gone2}) {
    EXPECT_EQ(store->Contains(sha).value_or(true), false) << sha;
  }
  EXPECT_TRUE(store->client().HeadObject(foreign).ok());
  auto committed = (*in_flight)->Commit();
  ASSERT_TRUE(committed.ok());
  EXPECT_EQ(store->Contains(*committed).value_or(false), true);

  // A second sweep with nothing old left unreferenced deletes nothing.
  report = store->CollectGarbage({old_kept, young_ref}, now - split, now);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->deleted.empty());
}

}  // namespace
}  // namespace compress::store
