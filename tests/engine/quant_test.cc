// Uniform quantizer (against tests/fixtures/quant_expected.json, written by
// an element-by-element Python re-implementation), bit packing, the packed
// safetensors file, and BatchNorm folding on the Fashion-MNIST CNN.
#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/safetensors.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/packing.h"
#include "server/engine/quant/quantizer.h"
#include "tests/test_util.h"

namespace compress::engine {
namespace {

using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::compress::testutil::ScopedTempDir;
using ::compress::testutil::SourceDir;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

QuantizerSpec Spec(int bits, bool symmetric, QuantGranularity g, int64_t group_size = 128) {
  QuantizerSpec spec;
  spec.bits = bits;
  spec.symmetric = symmetric;
  spec.granularity = g;
  spec.group_size = group_size;
  return spec;
}

std::vector<double> Values(const torch::Tensor& t) {
  torch::Tensor d = t.to(torch::kFloat64).contiguous().flatten();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

TEST(QuantizerTest, MatchesPythonReference) {
  std::ifstream in(FixturePath("quant_expected.json"));
  ASSERT_TRUE(in) << "missing quant_expected.json";
  const nlohmann::json expected = nlohmann::json::parse(in);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& [name, w] : expected["weights"].items()) {
    std::vector<float> values = w["values"].get<std::vector<float>>();
    weights[name] = torch::tensor(values).reshape(w["shape"].get<std::vector<int64_t>>());
  }
  int cases = 0;
  for (const auto& c : expected["cases"]) {
    SCOPED_TRACE(c.dump().substr(0, 120));
    absl::StatusOr<QuantGranularity> g = ParseGranularity(c["granularity"]);
    ASSERT_TRUE(g.ok());
    QuantizerSpec spec = Spec(c["bits"], c["symmetric"], *g, c["group_size"]);
    const torch::Tensor& w = weights.at(c["weight"].get<std::string>());
    absl::StatusOr<QuantizedTensor> q = Quantize(w, spec);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(q->codes.sizes(), w.sizes());
    std::vector<double> codes = Values(q->codes);
    EXPECT_THAT(codes, ElementsAreArray(c["codes"].get<std::vector<double>>()));
    std::vector<std::vector<double>> scale = c["scale"];
    std::vector<std::vector<double>> zero = c["zero_point"];
    ASSERT_EQ(q->params.scale.size(0), static_cast<int64_t>(scale.size()));
    ASSERT_EQ(q->params.scale.size(1), static_cast<int64_t>(scale[0].size()));
    for (size_t r = 0; r < scale.size(); ++r) {
      for (size_t k = 0; k < scale[r].size(); ++k) {
        EXPECT_EQ(q->params.scale[r][k].item<float>(), static_cast<float>(scale[r][k]));
        EXPECT_EQ(q->params.zero_point[r][k].item<int64_t>(), zero[r][k]);
      }
    }
    absl::StatusOr<torch::Tensor> deq = Dequantize(*q);
    ASSERT_TRUE(deq.ok()) << deq.status();
    EXPECT_EQ(deq->sizes(), w.sizes());
    std::vector<float> want = c["dequantized"].get<std::vector<float>>();
    std::vector<double> want_d(want.begin(), want.end());
    EXPECT_THAT(Values(*deq), ElementsAreArray(want_d));
    ++cases;
  }
  EXPECT_EQ(cases, 18);
}

TEST(QuantizerTest, HandComputedExamples) {
  // 3-bit symmetric: scale = 1.5 / 3 = 0.5, q = round(w / 0.5) = -3, 1, 0, 3;
  // codes = q + 4.
  torch::Tensor w = torch::tensor({-1.5f, 0.5f, 0.2f, 1.5f}).reshape({1, 4});
  auto q = Quantize(w, Spec(3, true, QuantGranularity::kPerTensor));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(Values(q->codes), ElementsAre(1, 5, 4, 7));
  EXPECT_THAT(Values(q->params.zero_point), ElementsAre(4));
  EXPECT_THAT(Values(*Dequantize(*q)), ElementsAre(-1.5, 0.5, 0.0, 1.5));
  // 2-bit asymmetric on [-1, 2]: scale 1, zero point 1; 0.5 rounds to even.
  w = torch::tensor({-1.0f, 0.0f, 0.5f, 2.0f}).reshape({1, 4});
  q = Quantize(w, Spec(2, false, QuantGranularity::kPerChannel));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(Values(q->params.scale), ElementsAre(1.0));
  EXPECT_THAT(Values(q->codes), ElementsAre(0, 1, 1, 3));
  EXPECT_THAT(Values(*Dequantize(*q)), ElementsAre(-1.0, 0.0, 0.0, 2.0));
}

TEST(QuantizerTest, ErrorAtMostHalfAStep) {
  torch::manual_seed(1);
  // Conv weight [8, 16, 3, 3]: 144 columns, so groups of 64 end with 16.
  torch::Tensor w = torch::randn({8, 16, 3, 3});
  for (int bits = 2; bits <= 8; ++bits) {
    for (bool symmetric : {true, false}) {
      for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel,
                                 QuantGranularity::kGroup}) {
        QuantizerSpec spec = Spec(bits, symmetric, g, 64);
        SCOPED_TRACE(testing::Message()
                     << bits << " bits, symmetric " << symmetric << ", " << GranularityName(g));
        auto q = Quantize(w, spec);
        ASSERT_TRUE(q.ok()) << q.status();
        EXPECT_GE(q->codes.min().item<int64_t>(), MinCode(spec));
        EXPECT_LE(q->codes.max().item<int64_t>(), MaxCode(spec));
        auto scale_zero = ExpandParams(q->params);
        ASSERT_TRUE(scale_zero.ok());
        auto deq = Dequantize(*q);
        ASSERT_TRUE(deq.ok());
        torch::Tensor err = (*deq - w).reshape({8, -1}).abs();
        torch::Tensor bound = scale_zero->first * 0.5 * (1 + 1e-6);
        EXPECT_TRUE((err <= bound).all().item<bool>())
            << "worst err/scale " << (err / scale_zero->first).max().item<double>();
        if (g == QuantGranularity::kGroup) {
          EXPECT_THAT(q->params.scale.sizes(), ElementsAre(8, 3));
        }
      }
    }
  }
}

TEST(QuantizerTest, AllZeroChannelIsExact) {
  torch::Tensor w = torch::randn({3, 40});
  w[1].zero_();
  for (bool symmetric : {true, false}) {
    auto q = Quantize(w, Spec(4, symmetric, QuantGranularity::kGroup, 32));
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_THAT(Values(q->params.scale[1]), ElementsAre(1.0, 1.0));
    torch::Tensor deq = *Dequantize(*q);
    EXPECT_TRUE(torch::equal(deq[1], torch::zeros({40})));
  }
}

TEST(QuantizerTest, ChannelAxisServesOtherTensorKinds) {
  // An activation [batch, tokens, features] quantized per feature.
  torch::Tensor x = torch::randn({2, 5, 7});
  QuantizerSpec spec = Spec(8, false, QuantGranularity::kPerChannel);
  spec.channel_axis = -1;
  auto q = Quantize(x, spec);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(q->params.scale.sizes(), ElementsAre(7, 1));
  QuantizerSpec front = spec;
  front.channel_axis = 0;
  auto moved = Quantize(x.movedim(-1, 0).contiguous(), front);
  ASSERT_TRUE(moved.ok());
  EXPECT_TRUE(torch::equal(q->codes, moved->codes.movedim(0, -1)));
  EXPECT_TRUE(torch::allclose(*Dequantize(*q), x, 0, 0.02));
}

TEST(QuantizerTest, RejectsBadSpecs) {
  torch::Tensor w = torch::randn({4, 4});
  EXPECT_EQ(Quantize(w, Spec(9, true, QuantGranularity::kPerChannel)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(w, Spec(1, true, QuantGranularity::kPerChannel)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(w, Spec(4, true, QuantGranularity::kGroup, 48)).status().code(),
            absl::StatusCode::kInvalidArgument);
  w[0][0] = NAN;
  EXPECT_EQ(Quantize(w, Spec(4, true, QuantGranularity::kPerChannel)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PackingTest, RoundTripEveryWidthAndOddLengths) {
  std::mt19937 rng(7);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t n : {0, 1, 2, 3, 7, 8, 9, 13, 31, 100, 1001}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() % (1u << bits));
      auto packed = PackCodes(codes, bits);
      ASSERT_TRUE(packed.ok()) << packed.status();
      EXPECT_EQ(static_cast<int64_t>(packed->size()), (n * bits + 7) / 8)
          << bits << " bits, n=" << n;
      auto back = UnpackCodes(*packed, n, bits);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(*back, codes) << bits << " bits, n=" << n;
    }
  }
}

TEST(PackingTest, LsbFirstLayout) {
  // 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 = 0x58D1.
  EXPECT_THAT(*PackCodes(std::vector<uint8_t>{1, 2, 3, 4, 5}, 3), ElementsAre(0xD1, 0x58));
  EXPECT_THAT(*PackCodes(std::vector<uint8_t>{1, 2, 3}, 4), ElementsAre(0x21, 0x03));
  EXPECT_THAT(*PackCodes(std::vector<uint8_t>{3, 0, 1, 2, 3}, 2), ElementsAre(0b10010011, 0b11));
  EXPECT_THAT(*PackCodes(std::vector<uint8_t>{200, 7}, 8), ElementsAre(200, 7));
}

TEST(PackingTest, RejectsCodesThatDoNotFit) {
  EXPECT_EQ(PackCodes(std::vector<uint8_t>{0, 8}, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackCodes(std::vector<uint8_t>{0, 0}, 6, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

PackedModel MakePackedModel() {
  torch::manual_seed(3);
  PackedModel model;
  model.layers["features.0"] =
      *Quantize(torch::randn({8, 4, 3, 3}), Spec(3, true, QuantGranularity::kPerChannel));
  model.layers["head"] =
      *Quantize(torch::randn({10, 100}), Spec(4, false, QuantGranularity::kGroup, 64));
  model.layers["blocks.1.mlp.fc1"] =
      *Quantize(torch::randn({5, 7}), Spec(5, true, QuantGranularity::kPerTensor));
  model.layers["odd"] =
      *Quantize(torch::randn({3, 11}), Spec(7, false, QuantGranularity::kPerChannel));
  model.float_tensors["features.0.bias"] = torch::randn({8});
  model.float_tensors["head.bias"] = torch::randn({10}, torch::kFloat64);
  model.float_tensors["bn.num_batches_tracked"] = torch::tensor(int64_t{12});
  return model;
}

TEST(PackedModelTest, WriteReadRestoresDequantizedWeightsBitwise) {
  ScopedTempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.path() + "/weights.safetensors";
  const std::string manifest_path = dir.path() + "/manifest.json";
  PackedModel model = MakePackedModel();
  auto info = WritePackedModel(model, path, manifest_path);
  ASSERT_TRUE(info.ok()) << info.status();
  std::printf(
      "packed file: %lld bytes (packed codes %lld, scales/zero points %lld, "
      "float %lld)\n",
      static_cast<long long>(info->file_bytes), static_cast<long long>(info->packed_bytes),
      static_cast<long long>(info->param_bytes), static_cast<long long>(info->float_bytes));
  const std::string bytes = ReadFile(path);
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), info->file_bytes);
  EXPECT_EQ(info->packed_bytes,
            (288 * 3 + 7) / 8 + (1000 * 4 + 7) / 8 + (35 * 5 + 7) / 8 + (33 * 7 + 7) / 8);

  // The project's own header reader accepts it.
  auto header = ReadSafetensorsHeader(path);
  ASSERT_TRUE(header.ok()) << header.status();
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  EXPECT_EQ(header->tensors.at("features.0.weight.packed").dtype, "U8");
  EXPECT_THAT(header->tensors.at("features.0.weight.packed").shape, ElementsAre(108));
  EXPECT_EQ(header->tensors.at("head.weight.scale").dtype, "F32");
  EXPECT_THAT(header->tensors.at("head.weight.scale").shape, ElementsAre(10, 2));
  EXPECT_EQ(header->tensors.at("head.weight.zero_point").dtype, "U8");
  EXPECT_EQ(header->tensors.at("head.bias").dtype, "F64");
  EXPECT_EQ(header->tensors.at("bn.num_batches_tracked").dtype, "I64");
  EXPECT_EQ(header->metadata.at("format"), "compressd.packed");
  for (const auto& [name, t] : header->tensors) {
    EXPECT_EQ(t.begin % SafetensorsElementSize(t.dtype), 0u) << name;
  }

  const nlohmann::json manifest = nlohmann::json::parse(ReadFile(manifest_path));
  EXPECT_EQ(manifest["format_version"], 1);
  const auto& head = manifest["layers"]["head"];
  EXPECT_EQ(head["bits"], 4);
  EXPECT_EQ(head["symmetric"], false);
  EXPECT_EQ(head["granularity"], "group");
  EXPECT_EQ(head["group_size"], 64);
  EXPECT_EQ(head["packed_bytes"], 500);
  EXPECT_EQ(head["shape"], nlohmann::json({10, 100}));

  auto back = ReadPackedModel(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->layers.size(), model.layers.size());
  for (const auto& [name, q] : model.layers) {
    const QuantizedTensor& r = back->layers.at(name);
    EXPECT_TRUE(torch::equal(r.codes, q.codes)) << name;
    EXPECT_TRUE(torch::equal(*Dequantize(r), *Dequantize(q))) << name;
  }
  for (const auto& [name, t] : model.float_tensors) {
    EXPECT_TRUE(torch::equal(back->float_tensors.at(name), t)) << name;
  }
  auto state = DequantizedTensors(*back);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->count("blocks.1.mlp.fc1.weight"), 1u);
  EXPECT_EQ(state->count("head.bias"), 1u);
}

// An independent reader in plain Python (struct + json, no safetensors or
// torch) unpacks and dequantizes the file; its numbers must match ours.
TEST(PackedModelTest, PlainPythonReaderAgrees) {
  if (std::system("test -x /usr/bin/python3") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  ScopedTempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.path() + "/w.safetensors";
  const std::string out = dir.path() + "/dequantized.json";
  PackedModel model = MakePackedModel();
  ASSERT_TRUE(WritePackedModel(model, path, "").ok());
  const std::string cmd =
      "/usr/bin/python3 " + FixturePath("read_packed.py") + " " + path + " " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json python = nlohmann::json::parse(ReadFile(out));
  for (const auto& [name, q] : model.layers) {
    std::vector<float> values = python.at(name + ".weight").get<std::vector<float>>();
    std::vector<double> got = Values(*Dequantize(q));
    EXPECT_THAT(got, ElementsAreArray(std::vector<double>(values.begin(), values.end()))) << name;
  }
}

TEST(BnFoldTest, FmnistCnnOutputsMatchAndNamesStayModulePaths) {
  auto model = LoadModel(SourceDir() + "/models/fmnist_cnn.pt");
  ASSERT_TRUE(model.ok()) << model.status();
  auto folded = FoldBatchNorm(*model);
  ASSERT_TRUE(folded.ok()) << folded.status();
  torch::manual_seed(5);
  torch::Tensor x = torch::rand({8, 1, 28, 28});
  torch::NoGradGuard no_grad;
  torch::Tensor a = model->forward({x}).toTensor();
  torch::Tensor b = folded->forward({x}).toTensor();
  const double diff = (a - b).abs().max().item<double>();
  std::printf("BN folding: max |folded - original| = %.3g\n", diff);
  EXPECT_LE(diff, 1e-4);

  std::map<std::string, std::vector<int64_t>> params;
  for (const auto& p : folded->named_parameters()) params[p.name] = p.value.sizes().vec();
  EXPECT_THAT(params["conv1.weight"], ElementsAre(16, 1, 3, 3));
  EXPECT_THAT(params["conv1.bias"], ElementsAre(16));
  EXPECT_THAT(params["block.conv2.bias"], ElementsAre(16));
  EXPECT_THAT(params["fc.weight"], ElementsAre(10, 1568));
  auto layers = QuantizableLayers(*folded);
  ASSERT_TRUE(layers.ok());
  std::vector<std::string> names;
  for (const auto& l : *layers) names.push_back(l.name);
  EXPECT_THAT(names, ElementsAre("conv1", "block.conv1", "block.conv2", "conv2", "conv3", "fc"));
  // The original is untouched, and the folded model no longer uses BN:
  // changing its statistics changes nothing.
  bool original_has_bias = false;
  for (const auto& p : model->named_parameters()) {
    original_has_bias |= p.name == "conv1.bias";
  }
  EXPECT_FALSE(original_has_bias);
  folded->attr("bn1").toModule().attr("running_mean").toTensor().add_(100.0);
  EXPECT_TRUE(torch::equal(folded->forward({x}).toTensor(), b));
}

}  // namespace
}  // namespace compress::engine
