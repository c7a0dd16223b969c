// nn.MultiheadAttention's in_proj_weight (issue 18): a parameter of the
// attention module, not a module `weight`, which QUANTIZE left in float32.
// The model (two nn.TransformerEncoderLayer, d_model 128) and the reference
// numbers come from tests/fixtures/make_mha_model.py, run here with
// Debian's /usr/bin/python3: an independent round-to-nearest of the same
// weights in eager PyTorch, the saved model.pt loaded by torch.jit.load,
// and the packed file's sizes read from its safetensors header.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/quant/quantize.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;

std::string Script() { return "/usr/bin/python3 " + FixturePath("make_mha_model.py"); }

constexpr int64_t kDim = 128;     // d_model
constexpr int64_t kTokens = 8;    // per example

class MhaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("test -x /usr/bin/python3") != 0) return;
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = Script() + " make " + *dir_ + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  void SetUp() override {
    if (dir_ == nullptr) GTEST_SKIP() << "no /usr/bin/python3";
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }

  // Every layer at `bits`, nothing pinned, round to nearest.
  static QuantizeOptions Uniform(int bits) {
    QuantizeOptions o;
    o.model_path = Path("mha.pt");
    o.calibration_dataset = Path("calib.pt");
    o.batch_size = 32;
    o.candidate_bits = {bits};
    o.budget = QuantBudget::AverageBits(bits);
    o.pins = std::map<std::string, int>{};
    o.output_dir = MakeTempDir();
    return o;
  }

  static std::string* dir_;
};

std::string* MhaTest::dir_ = nullptr;

const QuantizedLayerReport* Find(const QuantizeReport& r, const std::string& name) {
  for (const QuantizedLayerReport& l : r.layers) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

TEST_F(MhaTest, InProjIsQuantizedAtFourBitsLikeStockPyTorchRounding) {
  const QuantizeOptions o = Uniform(4);
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  // 2 x (in_proj, out_proj, linear1, linear2) + head.
  EXPECT_EQ(r->layers.size(), 9u);
  for (int i = 0; i < 2; ++i) {
    const std::string attn = "encoder.layers." + std::to_string(i) + ".self_attn";
    const QuantizedLayerReport* in_proj = Find(*r, attn + ".in_proj_weight");
    ASSERT_NE(in_proj, nullptr) << attn;
    EXPECT_EQ(in_proj->kind, "MultiheadAttention.in_proj");
    EXPECT_EQ(in_proj->bits, 4);
    EXPECT_EQ(in_proj->rounding, "rtn");
    EXPECT_EQ(in_proj->numel, 3 * kDim * kDim);
    // One token's q, k and v: 3·128 outputs of 128 MACs each, 8 tokens.
    EXPECT_EQ(in_proj->macs, kTokens * 3 * kDim * kDim);
    EXPECT_EQ(in_proj->bytes_before, 4 * 3 * kDim * kDim);
    // 4-bit codes plus a float32 scale and a uint8 zero point per row.
    EXPECT_EQ(in_proj->bytes_after, 3 * kDim * kDim / 2 + 5 * 3 * kDim);
    EXPECT_TRUE(std::isfinite(in_proj->omega.at(4))) << attn;
    EXPECT_GT(in_proj->squared_error.at(4), 0);
    const QuantizedLayerReport* out_proj = Find(*r, attn + ".out_proj");
    ASSERT_NE(out_proj, nullptr) << attn;
    EXPECT_EQ(out_proj->kind, "NonDynamicallyQuantizableLinear");
    EXPECT_EQ(out_proj->bits, 4);
    EXPECT_EQ(out_proj->macs, kTokens * kDim * kDim);
  }

  const std::string out = MakeTempDir() + "/check.json";
  const std::string cmd = Script() + " check " + o.model_path + " " + r->model_path + " " +
                          r->weights_path + " " + Path("calib.pt") + " 4 " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json py = nlohmann::json::parse(testutil::ReadFile(out));
  EXPECT_EQ(py["quantized"].size(), 9u);
  // model.pt holds PyTorch's own rounding of every weight, in_proj included.
  EXPECT_LE(py["max_param_diff"].get<double>(), 1e-6);
  EXPECT_LE(py["max_output_diff"].get<double>(), 1e-4 * py["output_scale"].get<double>());
  // The packed file holds codes and scales of all nine, no float in_proj.
  EXPECT_EQ(py["file_quantized_bytes"].get<int64_t>(), py["expected_quantized_bytes"].get<int64_t>());
  for (const auto& name : py["file_float_tensors"]) {
    EXPECT_EQ(name.get<std::string>().find("in_proj_weight"), std::string::npos) << name;
  }
  const double ratio = py["float32_bytes"].get<double>() /
                       py["file_quantized_bytes"].get<double>();
  std::printf("weights %lld -> %lld bytes (%.2fx); file %lld -> %lld bytes\n",
              static_cast<long long>(py["float32_bytes"].get<int64_t>()),
              static_cast<long long>(py["file_quantized_bytes"].get<int64_t>()), ratio,
              static_cast<long long>(r->bytes_before), static_cast<long long>(r->bytes_after));
  // 8x less the scales: 7.5x at d_model 128.
  EXPECT_GT(ratio, 7.4);
}

}  // namespace
}  // namespace compress::engine
