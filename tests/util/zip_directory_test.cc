#include "server/util/zip_directory.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tests/zip_util.h"

namespace compress {
namespace {

using ::compress::testutil::Deflated;
using ::compress::testutil::DeflateStored;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::Stored;
using ::compress::testutil::WriteFile;
using ::compress::testutil::Zip;
using ::compress::testutil::ZipFile;
using ::testing::HasSubstr;

void Put(std::string* bytes, size_t at, uint64_t v, int width) {
  for (int i = 0; i < width; ++i) (*bytes)[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

// Offset of the (last) end-of-central-directory record.
size_t EndRecord(const std::string& archive) { return archive.rfind("PK\x05\x06"); }

TEST(ZipDirectoryTest, ReadsWhatPyTorchWrites) {
  // Sizes as Python's zipfile lists them (both files carry ZIP64 end records).
  const std::string mlp = ReadFile(FixturePath("tiny_mlp.pt"));
  absl::StatusOr<ZipDirectory> dir = ReadZipDirectory(mlp);
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(dir->zip64);
  ASSERT_EQ(dir->members.size(), 17u);
  EXPECT_EQ(dir->members[0].name, "tiny_mlp/data/0");
  EXPECT_EQ(dir->members[0].method, 0);
  EXPECT_EQ(dir->members[0].uncompressed_size, 128u);
  EXPECT_EQ(dir->members[1].local_header_offset, 208u);
  EXPECT_EQ(dir->members[5].name, "tiny_mlp/code/__torch__/torch/nn/modules/container.py");
  EXPECT_EQ(dir->members[5].method, 8);
  EXPECT_EQ(dir->members[5].uncompressed_size, 717u);
  EXPECT_EQ(dir->members[5].compressed_size, 298u);

  absl::StatusOr<ZipDirectory> from_file = ReadZipDirectoryFile(FixturePath("tiny_torchsave.pt"));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_EQ(from_file->members.size(), 4u);
  EXPECT_EQ(from_file->members[1].name, "tiny_torchsave/data/0");
  EXPECT_EQ(from_file->members[1].uncompressed_size, 80u);
  EXPECT_EQ(from_file->members[2].uncompressed_size, 60u);
}

TEST(ZipDirectoryTest, FileAndBytesAgree) {
  for (const char* f : {"tiny_cnn.pt", "tiny_vit.pt", "tiny_torchsave.pt"}) {
    absl::StatusOr<ZipDirectory> a = ReadZipDirectory(ReadFile(FixturePath(f)));
    absl::StatusOr<ZipDirectory> b = ReadZipDirectoryFile(FixturePath(f));
    ASSERT_TRUE(a.ok() && b.ok()) << f << ": " << a.status() << " " << b.status();
    ASSERT_EQ(a->members.size(), b->members.size()) << f;
    for (size_t i = 0; i < a->members.size(); ++i) {
      EXPECT_EQ(a->members[i].name, b->members[i].name);
      EXPECT_EQ(a->members[i].uncompressed_size, b->members[i].uncompressed_size);
    }
  }
}

TEST(ZipDirectoryTest, ReadsCraftedArchiveWithZip64Sizes) {
  // A deflated member that declares 5 GiB: its 32-bit sizes are 0xFFFFFFFF
  // and the real one sits in the ZIP64 extra field.
  const std::string archive = Zip({Stored("a/data.pkl", "hello"),
                                   Deflated("a/data/0", DeflateStored("x"), uint64_t{5} << 30, 0)});
  absl::StatusOr<ZipDirectory> dir = ReadZipDirectory(archive);
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_FALSE(dir->zip64);
  ASSERT_EQ(dir->members.size(), 2u);
  EXPECT_EQ(dir->members[0].uncompressed_size, 5u);
  EXPECT_EQ(dir->members[1].uncompressed_size, uint64_t{5} << 30);
  EXPECT_EQ(dir->members[1].compressed_size, DeflateStored("x").size());
}

TEST(ZipDirectoryTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadZipDirectoryFile("/nonexistent/x.zip").status().code(),
            absl::StatusCode::kNotFound);
}

// The refusal's message ("" when the archive is read).
std::string Why(const std::string& bytes) {
  return std::string(ReadZipDirectory(bytes).status().message());
}

TEST(ZipDirectoryTest, RefusesWhatAnotherReaderCouldReadDifferently) {
  const std::string good = Zip({Stored("a/x", "0123456789"), Stored("a/y", "abc")});
  ASSERT_EQ(Why(good), "");
  const size_t end = EndRecord(good);

  EXPECT_THAT(Why(""), HasSubstr("shorter than"));
  EXPECT_THAT(Why(std::string(100, 'x')), HasSubstr("no end-of-central-directory"));

  std::string trailing = good + "junk";
  EXPECT_THAT(Why(trailing), HasSubstr("comment does not end"));

  std::string multi_disk = good;
  Put(&multi_disk, end + 4, 1, 2);
  EXPECT_THAT(Why(multi_disk), HasSubstr("multi-disk"));

  std::string outside = good;
  Put(&outside, end + 16, end + 1, 4);  // directory offset past the end record
  EXPECT_THAT(Why(outside), HasSubstr("outside the archive"));

  std::string too_many = good;
  Put(&too_many, end + 8, 200, 2);
  Put(&too_many, end + 10, 200, 2);
  EXPECT_THAT(Why(too_many), HasSubstr("do not fit"));

  std::string left_over = good;
  Put(&left_over, end + 8, 1, 2);
  Put(&left_over, end + 10, 1, 2);
  EXPECT_THAT(Why(left_over), HasSubstr("after its 1 members"));

  ZipFile lying = Stored("a/z", "abc");
  lying.size = 1000;  // stored, yet declares more than it holds
  EXPECT_THAT(Why(Zip({lying})), HasSubstr("is stored but declares"));

  ZipFile past_end = Deflated("a/z", std::string(10, 'q'), 10, 0);
  std::string cut = Zip({past_end});
  const size_t cd = cut.find("PK\x01\x02");
  Put(&cut, cd + 20, 1000, 4);  // compressed size beyond the archive
  EXPECT_THAT(Why(cut), HasSubstr("lies outside the archive"));

  std::string no_extra = good;
  Put(&no_extra, no_extra.find("PK\x01\x02") + 24, 0xFFFFFFFF, 4);
  Put(&no_extra, no_extra.find("PK\x01\x02") + 20, 0xFFFFFFFF, 4);
  EXPECT_THAT(Why(no_extra), HasSubstr("no ZIP64 extra field"));
}

TEST(ZipDirectoryTest, Zip64EndRecordMustAgree) {
  std::string mlp = ReadFile(FixturePath("tiny_mlp.pt"));
  const size_t end = EndRecord(mlp);
  std::string disagree = mlp;
  Put(&disagree, end + 10, 3, 2);  // 3 members, while the ZIP64 record says 17
  Put(&disagree, end + 8, 3, 2);
  EXPECT_THAT(Why(disagree), HasSubstr("disagree"));

  std::string bad_locator = mlp;
  Put(&bad_locator, end - 20 + 8, mlp.size() + 100, 8);  // locator points past the end
  EXPECT_THAT(Why(bad_locator), HasSubstr("ZIP64 end record lies outside"));
}

TEST(ZipDirectoryTest, NeverCrashesOnTruncationsOrFlippedBytes) {
  for (const char* f : {"tiny_torchsave.pt", "tiny_mlp.pt"}) {
    const std::string archive = ReadFile(FixturePath(f));
    for (size_t n = 0; n < archive.size(); ++n) {
      EXPECT_FALSE(ReadZipDirectory(archive.substr(0, n)).ok()) << f << " cut at " << n;
    }
    for (size_t at = 0; at < archive.size(); ++at) {
      for (unsigned char v : {0x00, 0xFF, 0x7F}) {
        std::string flipped = archive;
        flipped[at] = static_cast<char>(v);
        absl::StatusOr<ZipDirectory> dir = ReadZipDirectory(flipped);
        if (!dir.ok()) {
          EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
          continue;
        }
        for (const ZipMember& m : dir->members) {
          EXPECT_LE(m.local_header_offset + m.compressed_size, flipped.size());
        }
      }
    }
  }
}

TEST(ZipDirectoryTest, FileReaderHandlesGarbage) {
  ScopedTempDir dir;
  for (const std::string& bytes : {std::string(), std::string("PK\x05\x06", 4),
                                   std::string(70000, '\xff'), std::string(30, '\0')}) {
    WriteFile(dir.path() + "/g.zip", bytes);
    EXPECT_EQ(ReadZipDirectoryFile(dir.path() + "/g.zip").status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(ZipDirectoryTest, MemberNamesInMessagesAreEscapedAndBounded) {
  EXPECT_EQ(ZipMemberNameForMessage("a/data/0"), "\"a/data/0\"");
  EXPECT_EQ(ZipMemberNameForMessage("a\nb\x1b"), "\"a\\nb\\x1b\"");
  const std::string shown = ZipMemberNameForMessage(std::string(100000, 'n'));
  EXPECT_LT(shown.size(), 210u);
  EXPECT_THAT(shown, HasSubstr("...\""));
}

}  // namespace
}  // namespace compress
