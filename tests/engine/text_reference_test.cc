// The committed reference text models (models/fmnist_bert.pt,
// models/fmnist_gpt.pt) loaded through the engine: their top-1 accuracy and
// perplexity on the first 1,000 test sequences equal the figures that
// models/train_text.py measured in PyTorch (models/text_reference.json),
// and the token files that script writes follow the documented rule, which
// this test recomputes from the engine's own Fashion-MNIST loader.
#include <torch/script.h>

#include <cstdlib>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::MakeTempDir;
using ::compress::engine::testing::SourceDir;

constexpr int64_t kTestSequences = 1000;

class TextReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("test -x /usr/bin/python3") != 0) return;
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = "/usr/bin/python3 " + SourceDir() + "/models/train_text.py --data " +
                            *dir_ + " --train-n 64 --test-n " + std::to_string(kTestSequences) +
                            " >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    reference_ = new nlohmann::json(nlohmann::json::parse(
        testutil::ReadFile(SourceDir() + "/models/text_reference.json")));
  }
  void SetUp() override {
    if (reference_ == nullptr) GTEST_SKIP() << "no /usr/bin/python3";
  }
  static LoadedDataset Load(const std::string& name) {
    absl::StatusOr<LoadedDataset> d = LoadDataset(*dir_ + "/" + name, 0);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : LoadedDataset{};
  }
  static torch::jit::Module Model(const std::string& file) {
    absl::StatusOr<torch::jit::Module> m = LoadModel(SourceDir() + "/models/" + file);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : torch::jit::Module();
  }
  static const nlohmann::json& Reference(const std::string& file) { return reference_->at(file); }

  static std::string* dir_;
  static nlohmann::json* reference_;
};

std::string* TextReferenceTest::dir_ = nullptr;
nlohmann::json* TextReferenceTest::reference_ = nullptr;

// BOS (16), then per 4x4 patch, row-major, (sum of its 16 bytes) // 256,
// computed here from the images the engine's builtin loader gives
// (bytes / 255, rounded back to bytes).
TEST_F(TextReferenceTest, TokenFilesFollowTheRule) {
  absl::StatusOr<LoadedDataset> images = LoadDataset("builtin:fashion-mnist/test", kTestSequences);
  ASSERT_TRUE(images.ok()) << images.status();
  const torch::Tensor bytes = images->inputs.first.mul(255).round().to(torch::kInt64);
  const torch::Tensor levels =
      bytes.reshape({kTestSequences, 7, 4, 7, 4}).sum({2, 4}).div(256, "floor").reshape(
          {kTestSequences, 49});
  const torch::Tensor expected =
      torch::cat({torch::full({kTestSequences, 1}, 16, torch::kInt64), levels}, 1);

  const LoadedDataset cls = Load("fmnist_tokens_test_cls.safetensors");
  ASSERT_TRUE(cls.inputs.defined());
  EXPECT_EQ(cls.inputs.first.scalar_type(), torch::kInt64);
  ASSERT_EQ(cls.inputs.first.sizes(), expected.sizes());
  EXPECT_TRUE(torch::equal(cls.inputs.first, expected));
  EXPECT_TRUE(torch::equal(cls.targets, images->targets));
  // Not a constant sequence: every one of the 16 levels occurs.
  EXPECT_EQ(std::get<0>(at::_unique(levels)).numel(), 16);

  const LoadedDataset lm = Load("fmnist_tokens_test_lm.safetensors");
  EXPECT_TRUE(torch::equal(lm.inputs.first, expected));
  EXPECT_FALSE(lm.targets.defined());
}

TEST_F(TextReferenceTest, ClassifierAccuracyIsTheTrainingScripts) {
  torch::jit::Module bert = Model("fmnist_bert.pt");
  const LoadedDataset data = Load("fmnist_tokens_test_cls.safetensors");
  absl::StatusOr<double> acc = TopOneAccuracy(bert, data.inputs, data.targets);
  ASSERT_TRUE(acc.ok()) << acc.status();
  const double want = 100.0 * Reference("fmnist_bert.pt").at("test_accuracy_first_1000").get<double>();
  // One sequence of 1,000 (0.1 pp) may flip under other float rounding.
  EXPECT_NEAR(*acc, want, 0.1 + 1e-9);
  EXPECT_GT(*acc, 70.0);  // a trained model, not chance (10 %)
}

TEST_F(TextReferenceTest, DecoderPerplexityIsTheTrainingScripts) {
  torch::jit::Module gpt = Model("fmnist_gpt.pt");
  const LoadedDataset data = Load("fmnist_tokens_test_lm.safetensors");
  absl::StatusOr<double> ppl = Perplexity(gpt, data.inputs);
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  const double want = Reference("fmnist_gpt.pt").at("test_perplexity_first_1000").get<double>();
  EXPECT_NEAR(*ppl, want, 1e-4 * want);
  EXPECT_LT(*ppl, 17.0);  // better than uniform over the 17 tokens
}

// Parameter counts as PyTorch's parameters() (a tied tensor once); the
// decoder's head is its token embedding.
TEST_F(TextReferenceTest, ParametersAndTheTiedHead) {
  for (const char* file : {"fmnist_bert.pt", "fmnist_gpt.pt"}) {
    SCOPED_TRACE(file);
    torch::jit::Module m = Model(file);
    std::set<const void*> seen;
    int64_t count = 0;
    for (const torch::Tensor& p : m.parameters()) {
      if (seen.insert(p.data_ptr()).second) count += p.numel();
    }
    EXPECT_EQ(count, Reference(file).at("params").get<int64_t>());
  }
  torch::jit::Module gpt = Model("fmnist_gpt.pt");
  EXPECT_EQ(gpt.attr("head").toModule().attr("weight").toTensor().data_ptr(),
            gpt.attr("embed").toModule().attr("weight").toTensor().data_ptr());
}

}  // namespace
}  // namespace compress::engine
