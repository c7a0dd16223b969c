#include "server/engine/data/dataset.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tests/zip_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Expected;
using ::compress::engine::testing::FixturePath;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

std::vector<int64_t> Sizes(const torch::Tensor& t) { return t.sizes().vec(); }

TEST(LoadDatasetTest, SafetensorsValuesMatchTheWriter) {
  const nlohmann::json& want = Expected()["datasets"]["tiny.safetensors"];
  absl::StatusOr<LoadedDataset> data =
      LoadDataset(FixturePath("tiny.safetensors"), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->format, DatasetFileFormat::kSafetensors);
  EXPECT_THAT(Sizes(data->inputs.first), ElementsAre(6, 1, 8, 8));
  EXPECT_EQ(data->inputs.first.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(data->inputs.first.to(torch::kFloat64).sum().item<double>(),
              want["inputs_sum"].get<double>(), 1e-9);
  EXPECT_EQ(data->inputs.first.flatten()[0].item<float>(),
            want["inputs_first"].get<float>());
  EXPECT_EQ(data->inputs.first.flatten()[-1].item<float>(),
            want["inputs_last"].get<float>());
  ASSERT_TRUE(data->targets.defined());
  EXPECT_EQ(data->targets.scalar_type(), torch::kInt64);
  std::vector<int64_t> targets(
      data->targets.data_ptr<int64_t>(),
      data->targets.data_ptr<int64_t>() + data->targets.numel());
  EXPECT_EQ(targets, want["targets"].get<std::vector<int64_t>>());
}

TEST(LoadDatasetTest, SafetensorsMaxExamplesKeepsTheFirstRows) {
  absl::StatusOr<LoadedDataset> all =
      LoadDataset(FixturePath("tiny.safetensors"), 0);
  absl::StatusOr<LoadedDataset> some =
      LoadDataset(FixturePath("tiny.safetensors"), 4);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_THAT(Sizes(some->inputs.first), ElementsAre(4, 1, 8, 8));
  EXPECT_THAT(Sizes(some->targets), ElementsAre(4));
  EXPECT_TRUE(torch::equal(some->inputs.first, all->inputs.first.narrow(0, 0, 4)));
  EXPECT_TRUE(torch::equal(some->targets, all->targets.narrow(0, 0, 4)));
  // More than there are: everything.
  absl::StatusOr<LoadedDataset> more =
      LoadDataset(FixturePath("tiny.safetensors"), 100);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(more->inputs.first.size(0), 6);
}

TEST(LoadDatasetTest, TorchSaveValuesMatchTheWriter) {
  const nlohmann::json& want = Expected()["datasets"]["tiny_torchsave.pt"];
  absl::StatusOr<LoadedDataset> data =
      LoadDataset(FixturePath("tiny_torchsave.pt"), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->format, DatasetFileFormat::kTorchSave);
  EXPECT_THAT(Sizes(data->inputs.first), ElementsAre(5, 4));
  EXPECT_THAT(Sizes(data->targets), ElementsAre(5, 3));
  EXPECT_NEAR(data->inputs.first.to(torch::kFloat64).sum().item<double>(),
              want["inputs_sum"].get<double>(), 1e-9);
  EXPECT_NEAR(data->targets.to(torch::kFloat64).sum().item<double>(),
              want["targets_sum"].get<double>(), 1e-9);
  EXPECT_EQ(data->inputs.first.flatten()[0].item<float>(),
            want["inputs_first"].get<float>());

  absl::StatusOr<LoadedDataset> two =
      LoadDataset(FixturePath("tiny_torchsave.pt"), 2);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_TRUE(torch::equal(two->inputs.first, data->inputs.first.narrow(0, 0, 2)));
  EXPECT_TRUE(torch::equal(two->targets, data->targets.narrow(0, 0, 2)));
}

// A one-key torch.save dict is pickled with SETITEM, an opcode LibTorch
// 1.13's unpickler lacks ("Unknown opcode for unpickling at 0x73"); so is
// the last item of a dict of 1001 (Python's SETITEMS batches hold 1000).
// Files written here by stock PyTorch; values are arange's, known by hand.
TEST(LoadDatasetTest, TorchSaveDictsThatEndInSetItemLoad) {
  if (std::system("test -x /usr/bin/python3") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  const std::string dir = testing::MakeTempDir();
  const std::string cmd =
      "/usr/bin/python3 -c \"import torch; x = torch.arange(12).reshape(3, 4); "
      "torch.save({'inputs': x}, '" + dir + "/one.pt'); "
      "d = {'k%d' % i: i for i in range(999)}; d['targets'] = x[:, 0].float(); "
      "d['inputs'] = x.double(); torch.save(d, '" + dir + "/many.pt')\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  absl::StatusOr<LoadedDataset> one = LoadDataset(dir + "/one.pt", 0);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->inputs.first.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(one->inputs.first, torch::arange(12).reshape({3, 4})));
  EXPECT_FALSE(one->targets.defined());
  absl::StatusOr<LoadedDataset> many = LoadDataset(dir + "/many.pt", 0);
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ(many->inputs.first.scalar_type(), torch::kFloat64);
  EXPECT_EQ(many->inputs.first.sum().item<double>(), 66);  // 0 + 1 + ... + 11
  EXPECT_THAT(Sizes(many->targets), ElementsAre(3));
  EXPECT_EQ(many->targets.sum().item<double>(), 0 + 4 + 8);
}

TEST(LoadDatasetTest, BadFilesAreInvalidArgument) {
  for (const char* name :
       {"not_a_model.bin", "not_a_model.zip", "plain_pickle.pkl", "tiny_mlp.pt",
        "missing_inputs.safetensors", "mismatched_targets.safetensors"}) {
    EXPECT_EQ(LoadDataset(FixturePath(name), 0).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_EQ(LoadDataset(FixturePath("no_such_file"), 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadDataset("builtin:imagenet/train", 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(LoadDatasetTest, DescribeTensor) {
  TensorDescription d = DescribeTensor(torch::zeros({3, 2}, torch::kUInt8));
  EXPECT_THAT(d.shape, ElementsAre(3, 2));
  EXPECT_EQ(d.dtype, "uint8");
}

class BuiltinLoadTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BuiltinLoadTest, FashionMnistMatchesPythonReader) {
  const nlohmann::json& want = Expected()["builtin_fashion_mnist"][GetParam()];
  absl::StatusOr<LoadedDataset> data =
      LoadDataset("builtin:fashion-mnist/" + GetParam(), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  const int64_t n = want["num_examples"].get<int64_t>();
  EXPECT_EQ(data->format, DatasetFileFormat::kIdx);
  EXPECT_THAT(Sizes(data->inputs.first), ElementsAre(n, 1, 28, 28));
  EXPECT_EQ(data->inputs.first.scalar_type(), torch::kFloat32);
  EXPECT_GE(data->inputs.first.min().item<float>(), 0.0f);
  EXPECT_LE(data->inputs.first.max().item<float>(), 1.0f);
  EXPECT_NEAR(data->inputs.first[0].to(torch::kFloat64).sum().item<double>(),
              want["first_image_sum"].get<double>(), 1e-4);
  EXPECT_NEAR(data->inputs.first[n - 1].to(torch::kFloat64).sum().item<double>(),
              want["last_image_sum"].get<double>(), 1e-4);

  EXPECT_THAT(Sizes(data->targets), ElementsAre(n));
  EXPECT_EQ(data->targets.scalar_type(), torch::kInt64);
  torch::Tensor counts = torch::bincount(data->targets);
  std::vector<int64_t> got(counts.data_ptr<int64_t>(),
                           counts.data_ptr<int64_t>() + counts.numel());
  EXPECT_THAT(
      got, ElementsAreArray(want["label_counts"].get<std::vector<int64_t>>()));
  torch::Tensor first = data->targets.narrow(0, 0, 10).contiguous();
  std::vector<int64_t> first_labels(first.data_ptr<int64_t>(),
                                    first.data_ptr<int64_t>() + 10);
  EXPECT_EQ(first_labels, want["first_labels"].get<std::vector<int64_t>>());
}

TEST_P(BuiltinLoadTest, MaxExamples) {
  absl::StatusOr<LoadedDataset> all =
      LoadDataset("builtin:fashion-mnist/" + GetParam(), 0);
  absl::StatusOr<LoadedDataset> some =
      LoadDataset("builtin:fashion-mnist/" + GetParam(), 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_THAT(Sizes(some->inputs.first), ElementsAre(100, 1, 28, 28));
  EXPECT_TRUE(torch::equal(some->inputs.first, all->inputs.first.narrow(0, 0, 100)));
  EXPECT_TRUE(torch::equal(some->targets, all->targets.narrow(0, 0, 100)));
}

INSTANTIATE_TEST_SUITE_P(Splits, BuiltinLoadTest,
                         ::testing::Values("train", "test"));


// torch.save files whose pickle was edited after LibTorch wrote it: the
// unpickler takes sizes, strides and storage element counts on trust.
class EditedTorchSaveTest : public ::testing::Test {
 protected:
  // {"inputs": 0..299 as [100, 3] float32}, as torch.save writes it, with
  // `from` replaced by `to` once in data.pkl.
  std::string Write(const std::string& from, const std::string& to) {
    c10::Dict<std::string, torch::Tensor> dict;
    dict.insert("inputs", torch::arange(300, torch::kFloat32).reshape({100, 3}));
    const std::vector<char> saved = torch::jit::pickle_save(dict);
    std::vector<testutil::ZipFile> files =
        testutil::Unzip(std::string(saved.begin(), saved.end()));
    bool edited = from.empty();
    for (testutil::ZipFile& f : files) {
      if (from.empty() || !absl::EndsWith(f.name, "/data.pkl")) continue;
      EXPECT_EQ(CountOf(f.data, from), 1u) << "the edit must be unambiguous";
      const std::string pickle = absl::StrReplaceAll(f.data, {{from, to}});
      f = testutil::Stored(f.name, pickle);
      edited = true;
    }
    EXPECT_TRUE(edited);
    const std::string path = dir_ + "/edited_" + std::to_string(counter_++) + ".pt";
    std::ofstream(path, std::ios::binary) << testutil::Zip(files);
    return path;
  }
  static size_t CountOf(const std::string& haystack, const std::string& needle) {
    size_t n = 0;
    for (size_t at = haystack.find(needle); at != std::string::npos;
         at = haystack.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }

 private:
  std::string dir_ = testing::MakeTempDir();
  int counter_ = 0;
};

TEST_F(EditedTorchSaveTest, UneditedRepackLoads) {
  absl::StatusOr<LoadedDataset> data = LoadDataset(Write("", ""), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(Sizes(data->inputs.first), ElementsAre(100, 3));
  EXPECT_EQ(data->inputs.first[99][2].item<float>(), 299.0f);
}

TEST_F(EditedTorchSaveTest, StorageClaimingMoreThanItsRecordIsRefused) {
  // The storage's element count, 300 (BININT2 0x012c), becomes 600: the
  // record still holds 1200 bytes.
  absl::StatusOr<LoadedDataset> data =
      LoadDataset(Write(std::string("M\x2c\x01", 3), std::string("M\x58\x02", 3)), 0);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument) << data.status();
  EXPECT_THAT(std::string(data.status().message()),
              ::testing::HasSubstr("claims a storage of 2400 bytes but its record holds 1200"));
}

TEST_F(EditedTorchSaveTest, SizesReachingPastTheStorageAreRefused) {
  // Size 100 (BININT1 0x64) becomes 101: one row past the 1200 bytes.
  absl::StatusOr<LoadedDataset> data =
      LoadDataset(Write(std::string("K\x64", 2), std::string("K\x65", 2)), 0);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument) << data.status();
  EXPECT_THAT(std::string(data.status().message()),
              ::testing::HasSubstr("reaches byte 1212 of a storage of 1200 bytes"));
}

TEST_F(EditedTorchSaveTest, StridesReachingPastTheStorageAreRefused) {
  // Strides (3, 1) become (4, 1): the last element sits at byte 1596.
  absl::StatusOr<LoadedDataset> data =
      LoadDataset(Write(std::string("K\x03K\x01", 4), std::string("K\x04K\x01", 4)), 0);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument) << data.status();
  EXPECT_THAT(std::string(data.status().message()), ::testing::HasSubstr("reaches byte 1596 of a storage of 1200"));
}

TEST(LoadDatasetTest, TorchSaveWithAZeroDimensionIsRefused) {
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("inputs", torch::zeros({4, 0}));
  const std::vector<char> saved = torch::jit::pickle_save(dict);
  const std::string path = testing::MakeTempDir() + "/zero.pt";
  std::ofstream(path, std::ios::binary).write(saved.data(), static_cast<std::streamsize>(saved.size()));
  absl::StatusOr<LoadedDataset> data = LoadDataset(path, 0);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument) << data.status();
  EXPECT_THAT(std::string(data.status().message()),
              ::testing::HasSubstr("\"inputs\" has shape [4, 0]: dimension 1 is 0"));
}

}  // namespace
}  // namespace compress::engine
