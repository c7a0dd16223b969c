// GPTQ: H accumulation against directly built input matrices, the blocked
// Cholesky implementation against a one-column-at-a-time OBS recursion with
// explicit inverse downdates, GPTQ ≤ RTN, input capture through
// RecordFunction, and the whole Fashion-MNIST CNN at 3 bits.
#include "server/engine/quant/gptq.h"

#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/data/dataset.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/gptq_model.h"
#include "server/engine/quant/quantizer.h"
#include "tests/engine/test_util.h"
#include "tests/test_util.h"

namespace compress::engine {
namespace {

using ::compress::testutil::SourceDir;
using torch::indexing::Slice;

double RelDiff(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor x = a.to(torch::kFloat64);
  torch::Tensor y = b.to(torch::kFloat64);
  return ((x - y).norm() / y.norm()).item<double>();
}

torch::Tensor Direct(const torch::Tensor& rows) {
  torch::Tensor x = rows.to(torch::kFloat64);
  return 2.0 * x.t().matmul(x) / static_cast<double>(x.size(0));
}

// Patches of a conv input built with loops, one row per output position,
// columns in (channel, ky, kx) order.
torch::Tensor ManualPatches(const torch::Tensor& input, const Conv2dGeometry& g) {
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t oh =
      (h + 2 * g.padding[0] - g.dilation[0] * (g.kernel[0] - 1) - 1) / g.stride[0] + 1;
  const int64_t ow =
      (w + 2 * g.padding[1] - g.dilation[1] * (g.kernel[1] - 1) - 1) / g.stride[1] + 1;
  auto in = input.to(torch::kFloat64).contiguous();
  auto a = in.accessor<double, 4>();
  torch::Tensor rows = torch::zeros({n * oh * ow, c * g.kernel[0] * g.kernel[1]}, torch::kFloat64);
  auto r = rows.accessor<double, 2>();
  int64_t row = 0;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oy = 0; oy < oh; ++oy) {
      for (int64_t ox = 0; ox < ow; ++ox, ++row) {
        int64_t col = 0;
        for (int64_t ch = 0; ch < c; ++ch) {
          for (int64_t ky = 0; ky < g.kernel[0]; ++ky) {
            for (int64_t kx = 0; kx < g.kernel[1]; ++kx, ++col) {
              const int64_t iy = oy * g.stride[0] - g.padding[0] + ky * g.dilation[0];
              const int64_t ix = ox * g.stride[1] - g.padding[1] + kx * g.dilation[1];
              if (iy >= 0 && iy < h && ix >= 0 && ix < w) r[row][col] = a[b][ch][iy][ix];
            }
          }
        }
      }
    }
  }
  return rows;
}

TEST(HessianAccumulatorTest, LinearMatchesDirect) {
  torch::manual_seed(1);
  torch::Tensor x1 = torch::randn({4, 5, 12});
  torch::Tensor x2 = torch::randn({3, 12});
  HessianAccumulator acc(12);
  ASSERT_TRUE(acc.AddLinearInputs(x1).ok());
  ASSERT_TRUE(acc.AddLinearInputs(x2).ok());
  EXPECT_EQ(acc.rows(), 23);
  torch::Tensor want = Direct(torch::cat({x1.reshape({-1, 12}), x2}));
  EXPECT_LT(RelDiff(*acc.Hessian(), want), 1e-12);
  EXPECT_EQ(acc.AddLinearInputs(torch::randn({2, 11})).code(), absl::StatusCode::kInvalidArgument);
}

TEST(HessianAccumulatorTest, Conv2dMatchesManualPatches) {
  torch::manual_seed(2);
  Conv2dGeometry g;
  g.kernel = {3, 2};
  g.stride = {2, 1};
  g.padding = {1, 2};
  g.dilation = {1, 2};
  // 17 images: more than one internal chunk.
  torch::Tensor x = torch::randn({17, 3, 7, 6});
  HessianAccumulator acc(3 * 3 * 2);
  ASSERT_TRUE(acc.AddConv2dInputs(x, g).ok());
  torch::Tensor patches = ManualPatches(x, g);
  EXPECT_EQ(acc.rows(), patches.size(0));
  EXPECT_LT(RelDiff(*acc.Hessian(), Direct(patches)), 1e-12);
  g.groups = 3;
  EXPECT_EQ(acc.AddConv2dInputs(x, g).code(), absl::StatusCode::kUnimplemented);
}

// A TorchScript model: features.conv (stride 2, padding 1) -> relu ->
// flatten -> head (addmm with weight.t()) -> side (matmul with weight.t()).
torch::jit::Module MakeModel() {
  torch::manual_seed(3);
  torch::jit::Module conv("Conv");
  conv.register_parameter("weight", torch::randn({4, 3, 3, 3}) * 0.3, false);
  conv.register_parameter("bias", torch::randn({4}), false);
  conv.define(R"(
def forward(self, x):
    return torch.conv2d(x, self.weight, self.bias, [2, 2], [1, 1], [1, 1], 1)
)");
  torch::jit::Module features("Features");
  features.register_module("conv", conv);
  features.define(R"(
def forward(self, x):
    return torch.relu(self.conv.forward(x))
)");
  torch::jit::Module head("Head");
  head.register_parameter("weight", torch::randn({6, 64}) * 0.1, false);
  head.register_parameter("bias", torch::randn({6}), false);
  head.define(R"(
def forward(self, x):
    return torch.addmm(self.bias, x, self.weight.t())
)");
  torch::jit::Module side("Side");
  side.register_parameter("weight", torch::randn({6, 6}), false);
  side.define(R"(
def forward(self, x):
    return torch.matmul(x, self.weight.t())
)");
  torch::jit::Module depthwise("Depthwise");
  depthwise.register_parameter("weight", torch::randn({3, 1, 3, 3}), false);
  depthwise.define(R"(
def forward(self, x):
    return torch.conv2d(x, self.weight, None, [1, 1], [1, 1], [1, 1], 3)
)");
  torch::jit::Module unused("Unused");
  unused.register_parameter("weight", torch::randn({2, 2}), false);
  unused.define(R"(
def forward(self, x):
    return x
)");
  torch::jit::Module m("Model");
  m.register_module("dw", depthwise);
  m.register_module("features", features);
  m.register_module("head", head);
  m.register_module("side", side);
  m.register_module("unused", unused);
  m.define(R"(
def forward(self, x):
    y = self.features.forward(self.dw.forward(x))
    return self.side.forward(self.head.forward(torch.flatten(y, 1)))
)");
  m.eval();
  return m;
}

TEST(CalibrationTest, CapturesConvAndLinearInputsOfNamedLayers) {
  torch::jit::Module m = MakeModel();
  torch::manual_seed(4);
  std::vector<ModelInputs> batches = {torch::randn({5, 3, 8, 8}), torch::randn({2, 3, 8, 8})};
  torch::NoGradGuard no_grad;
  torch::Tensor dw = m.attr("dw").toModule().attr("weight").toTensor();
  torch::Tensor cw =
      m.attr("features").toModule().attr("conv").toModule().attr("weight").toTensor();
  torch::Tensor cb = m.attr("features").toModule().attr("conv").toModule().attr("bias").toTensor();
  torch::Tensor hw = m.attr("head").toModule().attr("weight").toTensor();
  torch::Tensor hb = m.attr("head").toModule().attr("bias").toTensor();
  std::vector<torch::Tensor> conv_rows, head_rows, side_rows;
  Conv2dGeometry g;
  g.kernel = {3, 3};
  g.stride = {2, 2};
  g.padding = {1, 1};
  for (const ModelInputs& b : batches) {
    const torch::Tensor& x = b.first;
    torch::Tensor y = torch::conv2d(x, dw, {}, 1, 1, 1, 3);
    conv_rows.push_back(ManualPatches(y, g));
    torch::Tensor f = torch::relu(torch::conv2d(y, cw, cb, 2, 1)).flatten(1);
    head_rows.push_back(f);
    side_rows.push_back(torch::addmm(hb, f, hw.t()));
  }

  auto conv = CollectLayerHessian(m, "features.conv", batches);
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(conv->kind, "conv2d");
  EXPECT_EQ(conv->calls, 2);
  EXPECT_EQ(conv->rows, 7 * 16);
  EXPECT_LT(RelDiff(conv->hessian, Direct(torch::cat(conv_rows))), 1e-10);

  auto head = CollectLayerHessian(m, "head", batches);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->kind, "linear");
  EXPECT_EQ(head->rows, 7);
  EXPECT_LT(RelDiff(head->hessian, Direct(torch::cat(head_rows))), 1e-10);

  auto side = CollectLayerHessian(m, "side", batches);
  ASSERT_TRUE(side.ok()) << side.status();
  EXPECT_LT(RelDiff(side->hessian, Direct(torch::cat(side_rows))), 1e-10);

  EXPECT_EQ(CollectLayerHessian(m, "dw", batches).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CollectLayerHessian(m, "unused", batches).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CollectLayerHessian(m, "nope", batches).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CollectLayerHessian(m, "head", {torch::randn({1, 2, 8, 8})}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ----------------------------------------------------------------- GPTQ

struct Layer {
  torch::Tensor w;  // float32 [rows, cols]
  torch::Tensor h;  // float64 2XXᵀ/N
};

// Inputs with strongly correlated features: X = Z·A + noise.
Layer RandomLayer(int64_t rows, int64_t cols, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor z = torch::randn({n, cols / 4}, torch::kFloat64);
  torch::Tensor a = torch::randn({cols / 4, cols}, torch::kFloat64);
  torch::Tensor x = z.matmul(a) + 0.1 * torch::randn({n, cols}, torch::kFloat64);
  return {torch::randn({rows, cols}), Direct(x)};
}

QuantizerSpec Spec(int bits, bool symmetric, QuantGranularity g, int64_t group = 32) {
  QuantizerSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.granularity = g;
  s.group_size = group;
  return s;
}

double Error(const Layer& l, const torch::Tensor& q) {
  auto e = OutputError(l.w, q, l.h);
  EXPECT_TRUE(e.ok()) << e.status();
  return e->relative;
}

double RtnError(const Layer& l, const QuantizerSpec& spec) {
  auto q = Quantize(l.w, spec);
  EXPECT_TRUE(q.ok()) << q.status();
  return Error(l, *Dequantize(*q));
}

TEST(GptqTest, EightBitsWithTinyDampingIsAtRtnLevel) {
  Layer l = RandomLayer(16, 32, 256, 11);
  GptqOptions options;
  options.damp_percent = 1e-6;
  QuantizerSpec spec = Spec(8, true, QuantGranularity::kPerChannel);
  auto r = GptqQuantize(l.w, l.h, spec, options);
  ASSERT_TRUE(r.ok()) << r.status();
  const double gptq = Error(l, r->dequantized);
  const double rtn = RtnError(l, spec);
  std::printf("8 bits: GPTQ %.3g RTN %.3g\n", gptq, rtn);
  EXPECT_LE(gptq, rtn);
  EXPECT_GT(gptq, rtn / 100);  // same order: the grid is already fine
  EXPECT_LT(gptq, 1e-4);
  EXPECT_TRUE(torch::equal(r->dequantized, *Dequantize(r->quantized)));
}

TEST(GptqTest, BeatsRoundToNearestOnCorrelatedInputs) {
  Layer l = RandomLayer(16, 96, 512, 12);
  for (int bits : {2, 3, 4}) {
    for (bool symmetric : {true, false}) {
      for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel,
                                 QuantGranularity::kGroup}) {
        for (bool act_order : {false, true}) {
          QuantizerSpec spec = Spec(bits, symmetric, g);
          GptqOptions options;
          options.act_order = act_order;
          auto r = GptqQuantize(l.w, l.h, spec, options);
          ASSERT_TRUE(r.ok()) << r.status();
          const double gptq = Error(l, r->dequantized);
          const double rtn = RtnError(l, spec);
          EXPECT_LT(gptq, rtn) << bits << " bits sym " << symmetric << " " << GranularityName(g)
                               << " act_order " << act_order;
          if (bits == 3 && g == QuantGranularity::kPerChannel) {
            std::printf("3 bits per channel sym=%d act_order=%d: GPTQ/RTN = %.3f\n", symmetric,
                        act_order, gptq / rtn);
          }
        }
      }
    }
  }
}

// Reference parameters of one row range, from the documented definition.
std::pair<double, double> RefParams(const torch::Tensor& v, int bits, bool symmetric) {
  if (symmetric) {
    double scale = static_cast<float>(v.abs().max().item<double>() / ((1 << (bits - 1)) - 1));
    return {scale == 0 ? 1.0 : scale, static_cast<double>(1 << (bits - 1))};
  }
  const double max_code = (1 << bits) - 1;
  const double lo = std::min(v.min().item<double>(), 0.0);
  const double hi = std::max(v.max().item<double>(), 0.0);
  double scale = static_cast<float>((hi - lo) / max_code);
  if (scale == 0) scale = 1.0;
  return {scale, std::clamp(std::nearbyint(-lo / scale), 0.0, max_code)};
}

// GPTQ as sequential optimal-brain-surgeon steps in the original column
// order space: keep the full inverse H⁻¹ of the not-yet-quantized columns,
// quantize column j, move the others by −e_j·H⁻¹[j, k]/H⁻¹[j, j], then
// remove j from the inverse (H⁻¹ −= H⁻¹[:, j] H⁻¹[j, :] / H⁻¹[j, j]).
// No Cholesky, no blocks, no permutation. Returns the quantized weight.
torch::Tensor ReferenceGptq(const torch::Tensor& weight, torch::Tensor h, const QuantizerSpec& spec,
                            double damp, bool act_order) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  torch::Tensor w = weight.to(torch::kFloat64).clone();
  // Per-channel parameters come from the original weight.
  std::vector<std::pair<double, double>> row_params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    row_params[r] = RefParams(w[r], spec.bits, spec.symmetric);
  }
  h = h.clone();
  for (int64_t j = 0; j < cols; ++j) {
    if (h[j][j].item<double>() == 0) {
      h[j][j] = 1.0;
      w.index_put_({Slice(), j}, 0.0);
    }
  }
  std::vector<int64_t> order(cols);
  for (int64_t j = 0; j < cols; ++j) order[j] = j;
  if (act_order) {
    std::vector<double> d(cols);
    for (int64_t j = 0; j < cols; ++j) d[j] = h[j][j].item<double>();
    std::stable_sort(order.begin(), order.end(),
                     [&d](int64_t a, int64_t b) { return d[a] > d[b]; });
  }
  h += torch::eye(cols, torch::kFloat64) * (damp * h.diagonal().mean().item<double>());
  torch::Tensor hinv = torch::linalg_inv(h);
  const int gs = static_cast<int>(spec.group_size);
  std::map<std::pair<int64_t, int64_t>, std::pair<double, double>> group_params;
  torch::Tensor q = torch::zeros_like(w);
  for (int64_t j : order) {
    for (int64_t r = 0; r < rows; ++r) {
      std::pair<double, double> p = row_params[r];
      if (spec.granularity == QuantGranularity::kGroup) {
        const int64_t g = j / gs;
        auto it = group_params.find({r, g});
        if (it == group_params.end()) {
          const int64_t begin = g * gs;
          const int64_t end = std::min<int64_t>(begin + gs, cols);
          it = group_params
                   .emplace(std::make_pair(r, g),
                            RefParams(w[r].slice(0, begin, end), spec.bits, spec.symmetric))
                   .first;
        }
        p = it->second;
      }
      const double lo = spec.symmetric ? 1 : 0;
      const double hi = (1 << spec.bits) - 1;
      const double code =
          std::clamp(std::nearbyint(w[r][j].item<double>() / p.first) + p.second, lo, hi);
      q[r][j] = p.first * (code - p.second);
    }
    torch::Tensor err = (w.select(1, j) - q.select(1, j)) / hinv[j][j];
    w -= err.unsqueeze(1) * hinv[j].unsqueeze(0);
    w.select(1, j).copy_(q.select(1, j));
    hinv = hinv - hinv.select(1, j).unsqueeze(1) * hinv[j].unsqueeze(0) / hinv[j][j];
  }
  return q;
}

TEST(GptqTest, BlockedCholeskyMatchesSequentialObsReference) {
  Layer l = RandomLayer(12, 80, 400, 13);
  // One dead input: H_jj = 0 (and its row/column).
  l.h.index_put_({5}, 0.0);
  l.h.index_put_({Slice(), 5}, 0.0);
  struct Case {
    QuantizerSpec spec;
    bool act_order;
    int64_t block;
  };
  const std::vector<Case> cases = {
      {Spec(3, true, QuantGranularity::kPerChannel), false, 128},
      {Spec(3, true, QuantGranularity::kPerChannel), false, 7},
      {Spec(4, false, QuantGranularity::kPerChannel), true, 16},
      {Spec(3, false, QuantGranularity::kGroup, 32), false, 128},
      {Spec(3, false, QuantGranularity::kGroup, 32), false, 5},
      {Spec(4, true, QuantGranularity::kGroup, 32), true, 9},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << GranularityName(c.spec.granularity) << " bits " << c.spec.bits << " act_order "
                 << c.act_order << " block " << c.block);
    GptqOptions options;
    options.act_order = c.act_order;
    options.block_size = c.block;
    auto r = GptqQuantize(l.w, l.h, c.spec, options);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->dead_columns, 1);
    EXPECT_TRUE(torch::equal(r->dequantized.select(1, 5), torch::zeros({12})));
    torch::Tensor want = ReferenceGptq(l.w, l.h, c.spec, 0.01, c.act_order);
    const double diff = RelDiff(r->dequantized, want);
    std::printf("%s %d bits act_order=%d block %lld: |GPTQ - reference| / |reference| = %.2e\n",
                GranularityName(c.spec.granularity).c_str(), c.spec.bits, c.act_order,
                static_cast<long long>(c.block), diff);
    EXPECT_LT(diff, 1e-6);
  }
}

TEST(GptqTest, RejectsIndefiniteH) {
  Layer l = RandomLayer(4, 32, 64, 14);
  GptqOptions options;
  options.damp_percent = 0;
  auto r = GptqQuantize(l.w, -l.h, Spec(4, true, QuantGranularity::kPerChannel), options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GptqQuantize(l.w, l.h.narrow(0, 0, 31), Spec(4, true, QuantGranularity::kPerChannel),
                         GptqOptions{})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

double Accuracy(torch::jit::Module& m, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  torch::Tensor logits = m.forward({x}).toTensor();
  return logits.argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
}

TEST(GptqModelTest, FmnistCnnAtThreeBitsBeatsRtnEveryLayer) {
  auto model = LoadModel(SourceDir() + "/models/fmnist_cnn.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  auto folded = FoldBatchNorm(*model);
  ASSERT_TRUE(folded.ok()) << folded.status();
  auto train = LoadDataset("builtin:fashion-mnist/train", 512);
  ASSERT_TRUE(train.ok()) << train.status();
  auto test = LoadDataset("builtin:fashion-mnist/test", 2000);
  ASSERT_TRUE(test.ok()) << test.status();
  std::vector<ModelInputs> batches = {train->inputs.first.narrow(0, 0, 256),
                                        train->inputs.first.narrow(0, 256, 256)};
  std::map<std::string, int> bits;
  for (const char* name : {"conv1", "block.conv1", "block.conv2", "conv2", "conv3", "fc"}) {
    bits[name] = 3;
  }
  QuantizerSpec spec;  // symmetric per channel
  auto r = GptqQuantizeModel(*folded, batches, bits, spec, GptqOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), 6u);
  for (const LayerQuantResult& layer : r->layers) {
    std::printf("%-12s %-6s rows %7lld  GPTQ %.4e  RTN %.4e  ratio %.3f\n", layer.name.c_str(),
                layer.kind.c_str(), static_cast<long long>(layer.calibration_rows),
                layer.gptq_error, layer.rtn_error, layer.gptq_error / layer.rtn_error);
    EXPECT_EQ(layer.method, "gptq") << layer.note;
    EXPECT_LT(layer.gptq_error, layer.rtn_error) << layer.name;
  }
  // The clone runs; the folded input model is untouched.
  torch::jit::Module rtn = folded->clone();
  auto rtn_layers = QuantizableLayers(rtn);
  ASSERT_TRUE(rtn_layers.ok());
  {
    torch::NoGradGuard no_grad;
    for (const QuantizableLayer& l : *rtn_layers) {
      l.weight.copy_(*Dequantize(*Quantize(l.weight, [&] {
        QuantizerSpec s = spec;
        s.bits = 3;
        return s;
      }())));
    }
  }
  const double acc_float = Accuracy(*folded, test->inputs.first, test->targets);
  const double acc_gptq = Accuracy(r->module, test->inputs.first, test->targets);
  const double acc_rtn = Accuracy(rtn, test->inputs.first, test->targets);
  std::printf("accuracy on 2000 test images: float %.4f  GPTQ-3bit %.4f  RTN-3bit %.4f\n",
              acc_float, acc_gptq, acc_rtn);
  EXPECT_GT(acc_gptq, 0.5);
}

TEST(GptqModelTest, UnsupportedLayersFallBackToRtn) {
  torch::jit::Module m = MakeModel();
  std::vector<ModelInputs> batches = {torch::randn({4, 3, 8, 8})};
  QuantizerSpec spec;
  auto r =
      GptqQuantizeModel(m, batches, {{"dw", 4}, {"head", 4}, {"unused", 4}}, spec, GptqOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), 3u);
  EXPECT_EQ(r->layers[0].name, "dw");
  EXPECT_EQ(r->layers[0].method, "rtn");
  EXPECT_THAT(r->layers[0].note, ::testing::HasSubstr("groups=3"));
  EXPECT_EQ(r->layers[1].method, "gptq");
  EXPECT_EQ(r->layers[2].method, "rtn");
  // The input model is not modified.
  EXPECT_FALSE(torch::equal(m.attr("head").toModule().attr("weight").toTensor(),
                            r->module.attr("head").toModule().attr("weight").toTensor()));
  EXPECT_EQ(GptqQuantizeModel(m, batches, {{"nope", 4}}, spec, GptqOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// nn.TransformerEncoder from tests/fixtures/make_transformer.py: under
// no_grad PyTorch runs each encoder layer as one fused operator, and GPTQ
// fell back to RTN for every Linear inside (issue 19). The captured H must
// equal the one from the Linear inputs that Python's forward hooks see.
TEST(GptqModelTest, TransformerEncoderLinearsGetGptqWithPythonsInputs) {
  const testing::TransformerFixture f = testing::MakeTransformerFixture();
  if (f.model.empty()) GTEST_SKIP() << "no /usr/bin/python3";
  ASSERT_EQ(f.values.size(), 6497u);
  auto values = [&f](size_t begin, size_t count) {
    return torch::tensor(
        std::vector<double>(f.values.begin() + begin, f.values.begin() + begin + count),
        torch::kFloat64);
  };
  torch::Tensor inputs = values(0, 1024).to(torch::kFloat32).reshape({4, 8, 32});
  torch::Tensor h_linear1 = values(1024, 32 * 32).reshape({32, 32});
  torch::Tensor h_linear2 = values(2048, 64 * 64).reshape({64, 64});
  auto model = LoadModel(f.model);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<ModelInputs> batches = {inputs.narrow(0, 0, 3), inputs.narrow(0, 3, 1)};

  auto h1 = CollectLayerHessian(*model, "encoder.layers.0.linear1", batches);
  ASSERT_TRUE(h1.ok()) << h1.status();
  EXPECT_EQ(h1->kind, "linear");
  EXPECT_EQ(h1->calls, 2);
  EXPECT_EQ(h1->rows, 4 * 8);
  EXPECT_LT(RelDiff(h1->hessian, h_linear1), 1e-5);
  auto h2 = CollectLayerHessian(*model, "encoder.layers.1.linear2", batches);
  ASSERT_TRUE(h2.ok()) << h2.status();
  EXPECT_EQ(h2->rows, 4 * 8);
  EXPECT_LT(RelDiff(h2->hessian, h_linear2), 1e-5);

  // Layer 0's attention reads the model's input itself (post-norm): its
  // in_proj's H is 2/n XᵀX of the 32 input tokens, one aten::linear per
  // forward with the whole [96, 32] in_proj_weight.
  auto h0 = CollectLayerHessian(*model, "encoder.layers.0.self_attn.in_proj_weight", batches);
  ASSERT_TRUE(h0.ok()) << h0.status();
  EXPECT_EQ(h0->kind, "linear");
  EXPECT_EQ(h0->calls, 2);
  EXPECT_EQ(h0->rows, 4 * 8);
  const torch::Tensor x = values(0, 1024).reshape({32, 32});
  EXPECT_LT(RelDiff(h0->hessian, x.t().mm(x) * (2.0 / 32)), 1e-5);

  std::map<std::string, int> bits;
  for (const char* layer : {"self_attn.in_proj_weight", "self_attn.out_proj", "linear1",
                            "linear2"}) {
    for (int i = 0; i < 2; ++i) {
      bits["encoder.layers." + std::to_string(i) + "." + layer] = 4;
    }
  }
  bits["head"] = 4;
  auto r = GptqQuantizeModel(*model, batches, bits, QuantizerSpec{}, GptqOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), bits.size());
  for (const LayerQuantResult& layer : r->layers) {
    std::printf("%-36s %-6s rows %3lld  GPTQ %.4e  RTN %.4e\n", layer.name.c_str(),
                layer.method.c_str(), static_cast<long long>(layer.calibration_rows),
                layer.gptq_error, layer.rtn_error);
    EXPECT_EQ(layer.method, "gptq") << layer.name << ": " << layer.note;
    EXPECT_EQ(layer.calibration_rows, 4 * 8) << layer.name;
    EXPECT_LT(layer.gptq_error, layer.rtn_error) << layer.name;
  }
  // A frozen model (no parameter requires grad) would take the fused path
  // even with grad enabled; the capture sets the flags for the forward and
  // puts them back.
  for (const torch::Tensor& p : model->parameters()) p.requires_grad_(false);
  auto frozen = CollectLayerHessian(*model, "encoder.layers.0.linear1", batches);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_LT(RelDiff(frozen->hessian, h_linear1), 1e-5);
  for (const torch::Tensor& p : model->parameters()) EXPECT_FALSE(p.requires_grad());
}

}  // namespace
}  // namespace compress::engine
