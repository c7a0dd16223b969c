#include "server/engine/data/dataset_info.h"

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Expected;
using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

void ExpectMatches(const DatasetSummary& summary, const nlohmann::json& want) {
  EXPECT_STREQ(DatasetFileFormatName(summary.format),
               want["format"].get<std::string>().c_str());
  EXPECT_EQ(summary.num_examples, want["num_examples"].get<int64_t>());
  EXPECT_EQ(summary.input_shape,
            want["input_shape"].get<std::vector<int64_t>>());
  EXPECT_EQ(summary.input_dtype, want["input_dtype"].get<std::string>());
  EXPECT_EQ(summary.has_targets, want["has_targets"].get<bool>());
  EXPECT_EQ(summary.target_shape,
            want["target_shape"].get<std::vector<int64_t>>());
  EXPECT_EQ(summary.target_dtype, want["target_dtype"].get<std::string>());
}

TEST(DatasetInfoTest, Safetensors) {
  absl::StatusOr<DatasetSummary> summary =
      DescribeDatasetFile(FixturePath("tiny.safetensors"));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->format, DatasetFileFormat::kSafetensors);
  ExpectMatches(*summary, Expected()["datasets"]["tiny.safetensors"]);
}

TEST(DatasetInfoTest, TorchSave) {
  absl::StatusOr<DatasetSummary> summary =
      DescribeDatasetFile(FixturePath("tiny_torchsave.pt"));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->format, DatasetFileFormat::kTorchSave);
  ExpectMatches(*summary, Expected()["datasets"]["tiny_torchsave.pt"]);
}

TEST(DatasetInfoTest, MissingInputsIsInvalidArgument) {
  absl::StatusOr<DatasetSummary> summary =
      DescribeDatasetFile(FixturePath("missing_inputs.safetensors"));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument)
      << summary.status();
  EXPECT_THAT(summary.status().message(), HasSubstr("\"inputs\""));
  EXPECT_THAT(summary.status().message(), HasSubstr("images"));
}

TEST(DatasetInfoTest, MismatchedTargetsIsInvalidArgument) {
  absl::StatusOr<DatasetSummary> summary =
      DescribeDatasetFile(FixturePath("mismatched_targets.safetensors"));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument)
      << summary.status();
  EXPECT_THAT(summary.status().message(), HasSubstr("\"targets\" has 3"));
  EXPECT_THAT(summary.status().message(), HasSubstr("\"inputs\" has 4"));
}

class BadDatasetTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BadDatasetTest, IsInvalidArgument) {
  absl::StatusOr<DatasetSummary> summary =
      DescribeDatasetFile(FixturePath(GetParam()));
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument)
      << summary.status();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BadDatasetTest,
                         ::testing::Values("not_a_model.bin", "not_a_model.zip",
                                           "plain_pickle.pkl", "tiny_mlp.pt",
                                           "expected.json"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '.') c = '_';
                           }
                           return name;
                         });

TEST(DatasetInfoTest, MissingFileIsNotFound) {
  EXPECT_EQ(
      DescribeDatasetFile(FixturePath("no_such.safetensors")).status().code(),
      absl::StatusCode::kNotFound);
}

// Hand-made safetensors files that break one rule each.
class MalformedSafetensorsTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& header, uint64_t header_size,
                    size_t data_bytes) {
    std::string path =
        dir_ + "/malformed_" + std::to_string(counter_++) + ".safetensors";
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 8; ++i)
      out.put(static_cast<char>(header_size >> (8 * i)));
    out << header << std::string(data_bytes, '\0');
    return path;
  }
  std::string Write(const std::string& header, size_t data_bytes) {
    return Write(header, header.size(), data_bytes);
  }
  absl::StatusCode Code(const std::string& path) {
    return DescribeDatasetFile(path).status().code();
  }

 private:
  std::string dir_ = MakeTempDir();
  int counter_ = 0;
};

TEST_F(MalformedSafetensorsTest, WellFormedBaseline) {
  std::string path = Write(
      R"({"inputs":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", 24);
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(path);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->num_examples, 2);
  EXPECT_THAT(summary->input_shape, ElementsAre(3));
  EXPECT_FALSE(summary->has_targets);
  EXPECT_THAT(summary->target_shape, IsEmpty());
}

TEST_F(MalformedSafetensorsTest, HeaderLongerThanFile) {
  std::string header =
      R"({"inputs":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  EXPECT_EQ(Code(Write(header, header.size() + 100, 24)),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, DataOutsideFile) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
          20)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, ByteCountDisagreesWithShape) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"F32","shape":[2,4],"data_offsets":[0,24]}})",
          24)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, HugeShapeDoesNotOverflow) {
  EXPECT_EQ(
      Code(Write(R"({"inputs":{"dtype":"F32","shape":[4294967296,4294967296,)"
                 R"(4294967296],"data_offsets":[0,0]}})",
                 0)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, UnknownDtype) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"F8","shape":[2,3],"data_offsets":[0,6]}})",
          6)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, NegativeDimension) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"U8","shape":[-2,3],"data_offsets":[0,6]}})",
          6)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, BadJson) {
  EXPECT_EQ(Code(Write(R"({"inputs":{"dtype":)", 6)),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, NoExamples) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})",
          0)),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(MalformedSafetensorsTest, ScalarInputs) {
  EXPECT_EQ(
      Code(Write(
          R"({"inputs":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4)),
      absl::StatusCode::kInvalidArgument);
}

// Shape checks (issue 14): every dimension of "inputs" and "targets" at
// least 1, counts that fit an int64, and an empty per-example shape (class
// labels) still fine.
TEST_F(MalformedSafetensorsTest, ZeroDimensionIsRefusedNamingIt) {
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(Write(
      R"({"inputs":{"dtype":"F32","shape":[4,0],"data_offsets":[0,0]}})", 0));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summary.status().message(),
              HasSubstr("\"inputs\" has shape [4, 0]: dimension 1 is 0"));
}

TEST_F(MalformedSafetensorsTest, DimensionOf2To63BehindAZeroIsRefused) {
  // Once stored as [0, -2^63]: the zero made the byte count 0.
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(
      Write(R"({"inputs":{"dtype":"F32","shape":[1,0,9223372036854775808],)"
            R"("data_offsets":[0,0]}})",
            0));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summary.status().message(),
              HasSubstr("dimension 2 of 9223372036854775808"));
  EXPECT_THAT(summary.status().message(), HasSubstr("2^63-1"));
}

TEST_F(MalformedSafetensorsTest, ByteCountPastInt64IsRefused) {
  // 2^31 * 2^31 * 2 one-byte elements: 2^63 bytes, one past what fits.
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(
      Write(R"({"inputs":{"dtype":"U8","shape":[2147483648,2147483648,2],)"
            R"("data_offsets":[0,0]}})",
            0));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summary.status().message(), HasSubstr("larger than 2^63-1 bytes"));
}

TEST_F(MalformedSafetensorsTest, ZeroDimensionOfTargetsIsRefused) {
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(Write(
      R"({"inputs":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("targets":{"dtype":"F32","shape":[2,0],"data_offsets":[24,24]}})",
      24));
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summary.status().message(),
              HasSubstr("\"targets\" has shape [2, 0]: dimension 1 is 0"));
}

TEST_F(MalformedSafetensorsTest, ClassLabelsAndEmptyUnusedTensorsAreFine) {
  // Targets [N] have an empty per-example shape; a zero-size tensor that is
  // neither "inputs" nor "targets" is none of our business.
  absl::StatusOr<DatasetSummary> summary = DescribeDatasetFile(Write(
      R"({"inputs":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("targets":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},)"
      R"("spare":{"dtype":"F32","shape":[0,5],"data_offsets":[40,40]}})",
      40));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_THAT(summary->target_shape, IsEmpty());
}

TEST(SummarizeDatasetTest, ChecksEveryFormatsShapes) {
  // The same checks apply to torch.save and IDX descriptions.
  EXPECT_THAT(SummarizeDataset(DatasetFileFormat::kTorchSave,
                               {{4, 3, -1}, "float32"}, nullptr)
                  .status()
                  .message(),
              HasSubstr("dimension 2 is -1"));
  EXPECT_THAT(
      SummarizeDataset(DatasetFileFormat::kTorchSave,
                       {{int64_t{1} << 31, int64_t{1} << 31}, "float32"}, nullptr)
          .status()
          .message(),
      HasSubstr("take more than 2^63-1 bytes"));
  EXPECT_THAT(SummarizeDataset(DatasetFileFormat::kTorchSave,
                               {{int64_t{1} << 32, int64_t{1} << 32, 1 << 30},
                                "float32"},
                               nullptr)
                  .status()
                  .message(),
              HasSubstr("more than 2^63-1 elements"));
  EXPECT_TRUE(
      SummarizeDataset(DatasetFileFormat::kIdx, {{5, 1, 2, 2}, "float32"}, nullptr)
          .ok());
}

TEST(BuiltinDatasetTest, IsBuiltin) {
  EXPECT_TRUE(IsBuiltinDataset("builtin:fashion-mnist/train"));
  EXPECT_FALSE(IsBuiltinDataset("/blobs/ab/abcd"));
}

TEST(BuiltinDatasetTest, FashionMnistSplits) {
  const nlohmann::json& want = Expected()["builtin_fashion_mnist"];
  for (const std::string split : {"train", "test"}) {
    SCOPED_TRACE(split);
    absl::StatusOr<DatasetSummary> summary =
        DescribeBuiltinDataset("builtin:fashion-mnist/" + split);
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->format, DatasetFileFormat::kIdx);
    EXPECT_EQ(summary->num_examples,
              want[split]["num_examples"].get<int64_t>());
    EXPECT_THAT(summary->input_shape, ElementsAre(1, 28, 28));
    EXPECT_EQ(summary->input_dtype, "float32");
    EXPECT_TRUE(summary->has_targets);
    EXPECT_THAT(summary->target_shape, IsEmpty());
    EXPECT_EQ(summary->target_dtype, "int64");
  }
  EXPECT_EQ(DescribeBuiltinDataset("builtin:fashion-mnist/train")->num_examples,
            60000);
  EXPECT_EQ(DescribeBuiltinDataset("builtin:fashion-mnist/test")->num_examples,
            10000);
}

TEST(BuiltinDatasetTest, UnknownNameIsNotFound) {
  EXPECT_EQ(DescribeBuiltinDataset("builtin:mnist/train").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(DescribeBuiltinDataset("builtin:fashion-mnist/val").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(BuiltinDatasetTest, MissingDirectoryIsNotFound) {
  EXPECT_EQ(DescribeBuiltinDataset("builtin:fashion-mnist/test",
                                   MakeTempDir() + "/no_such_dir")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

// gzopen reads uncompressed files transparently, so plain IDX files under the
// .gz names stand in for the real ones.
void WriteIdx(const std::string& path, const std::vector<uint32_t>& dims,
              size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  out.put(0).put(0).put(0x08).put(static_cast<char>(dims.size()));
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      out.put(static_cast<char>((d >> shift) & 0xff));
    }
  }
  out << std::string(data_bytes, '\x7f');
}

TEST(BuiltinDatasetTest, SmallIdxDirectory) {
  const std::string dir = MakeTempDir();
  WriteIdx(dir + "/t10k-images-idx3-ubyte.gz", {3, 4, 5}, 60);
  WriteIdx(dir + "/t10k-labels-idx1-ubyte.gz", {3}, 3);
  absl::StatusOr<DatasetSummary> summary =
      DescribeBuiltinDataset("builtin:fashion-mnist/test", dir);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->num_examples, 3);
  EXPECT_THAT(summary->input_shape, ElementsAre(1, 4, 5));

  WriteIdx(dir + "/t10k-labels-idx1-ubyte.gz", {2}, 2);
  EXPECT_EQ(
      DescribeBuiltinDataset("builtin:fashion-mnist/test", dir).status().code(),
      absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace compress::engine
