// model_int8.pt (int8_model.h): LibTorch's graph-mode quantization passes
// on the shipped CNN give a model of quantized kernels only, within 0.3
// points of the float model's top-1 on the 10,000 test images, that stock
// PyTorch (Debian's /usr/bin/python3) loads and runs to the same outputs.
#include <torch/script.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/int8_model.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::MakeTempDir;
using ::compress::engine::testing::SourceDir;
using ::compress::testutil::FixturePath;

constexpr int64_t kImages = 64;

std::vector<ModelInputs> CalibrationBatches() {
  absl::StatusOr<LoadedDataset> train = LoadDataset("builtin:fashion-mnist/train", 256);
  EXPECT_TRUE(train.ok()) << train.status();
  std::vector<ModelInputs> batches;
  for (const torch::Tensor& b : train->inputs.first.split(64)) batches.emplace_back(b);
  return batches;
}

// run_model.py's output for `path` on the first kImages test images.
torch::Tensor PythonOutput(const std::string& path, const std::string& dir) {
  const std::string out = dir + "/python_out.txt";
  const std::string cmd = "/usr/bin/python3 " + FixturePath("run_model.py") + " " + path + " " +
                          std::to_string(kImages) + " " + out;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  FILE* f = std::fopen(out.c_str(), "r");
  EXPECT_NE(f, nullptr);
  if (f == nullptr) return torch::Tensor();
  int64_t rows = 0, cols = 0;
  EXPECT_EQ(std::fscanf(f, "%ld %ld", &rows, &cols), 2);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float& v : values) EXPECT_EQ(std::fscanf(f, "%f", &v), 1);
  std::fclose(f);
  return torch::tensor(values).reshape({rows, cols});
}

TEST(Int8ModelTest, CnnW8A8IsQuantizedKernelsWithinAThirdOfAPoint) {
  if (QuantizedEngineName() == "none") GTEST_SKIP() << "LibTorch without a quantized engine";
  const std::string dir = MakeTempDir();
  absl::StatusOr<torch::jit::Module> model = LoadModel(SourceDir() + "/models/fmnist_cnn.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string path = dir + "/model_int8.pt";
  absl::StatusOr<Int8ModelInfo> info = SaveInt8Model(*model, CalibrationBatches(), path);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->file_bytes, static_cast<int64_t>(std::filesystem::file_size(path)));
  // Five convs, the classifier and the residual add.
  EXPECT_GE(info->quantized_ops, 7);

  absl::StatusOr<torch::jit::Module> int8 = LoadModel(path);
  ASSERT_TRUE(int8.ok()) << int8.status();
  for (const torch::jit::Node* node : int8->get_method("forward").graph()->nodes()) {
    const std::string kind = node->kind().toQualString();
    EXPECT_NE(kind, "aten::conv2d");
    EXPECT_NE(kind, "aten::linear");
    EXPECT_NE(kind, "prim::CallMethod") << "a float submodule is left";
  }
  absl::StatusOr<LoadedDataset> test = LoadDataset("builtin:fashion-mnist/test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  absl::StatusOr<double> float_top1 = TopOneAccuracy(*model, test->inputs, test->targets);
  absl::StatusOr<double> int8_top1 = TopOneAccuracy(*int8, test->inputs, test->targets);
  ASSERT_TRUE(float_top1.ok() && int8_top1.ok());
  std::printf("engine %s: top-1 float %.2f%%, int8 %.2f%% (10,000 test images); %lld bytes\n",
              info->engine.c_str(), *float_top1, *int8_top1,
              static_cast<long long>(info->file_bytes));
  EXPECT_GE(*int8_top1, *float_top1 - 0.3);

  // Stock PyTorch runs the file to the same outputs.
  if (std::system("test -x /usr/bin/python3") == 0) {
    torch::NoGradGuard no_grad;
    const torch::Tensor here = int8->forward({test->inputs.first.narrow(0, 0, kImages)}).toTensor();
    const torch::Tensor python = PythonOutput(path, dir);
    const double diff = (here - python).abs().max().item<double>();
    std::printf("max |LibTorch - PyTorch| %.3g\n", diff);
    EXPECT_LE(diff, 1e-5);
  }
}

TEST(Int8ModelTest, CalibrationDataThatDoNotFitAreInvalidArgument) {
  if (QuantizedEngineName() == "none") GTEST_SKIP() << "LibTorch without a quantized engine";
  absl::StatusOr<torch::jit::Module> model = LoadModel(SourceDir() + "/models/fmnist_cnn.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string path = MakeTempDir() + "/model_int8.pt";
  absl::Status s = SaveInt8Model(*model, {torch::zeros({2, 3, 5})}, path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace compress::engine
