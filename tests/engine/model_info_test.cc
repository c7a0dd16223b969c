#include "server/engine/model/model_info.h"

#include <torch/script.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/common/cancel.h"
#include "server/engine/model/model.h"
#include "server/engine/model/unfused_forward.h"
#include "tests/engine/test_util.h"
#include "tests/zip_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Expected;
using ::compress::engine::testing::FixturePath;
using ::testing::HasSubstr;

std::vector<int64_t> Shape(const nlohmann::json& j) {
  return j.get<std::vector<int64_t>>();
}

class ModelFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  const nlohmann::json& expected() const {
    return Expected()["models"][GetParam()];
  }
  std::string path() const { return FixturePath(GetParam()); }
};

TEST_P(ModelFixtureTest, DescribeMatchesPython) {
  absl::StatusOr<ModelSummary> summary = DescribeModelFile(path());
  ASSERT_TRUE(summary.ok()) << summary.status();
  const nlohmann::json& want = expected();
  EXPECT_EQ(summary->num_parameters, want["num_parameters"].get<int64_t>());
  EXPECT_EQ(summary->model_bytes, want["model_bytes"].get<int64_t>());
  ASSERT_EQ(summary->layers.size(), want["layers"].size());
  for (size_t i = 0; i < summary->layers.size(); ++i) {
    const LayerInfo& layer = summary->layers[i];
    const nlohmann::json& w = want["layers"][i];
    SCOPED_TRACE("layer " + w["name"].get<std::string>());
    EXPECT_EQ(layer.name, w["name"].get<std::string>());
    EXPECT_EQ(layer.kind, w["kind"].get<std::string>());
    EXPECT_EQ(layer.numel, w["numel"].get<int64_t>());
    ASSERT_EQ(layer.parameters.size(), w["parameters"].size());
    for (size_t p = 0; p < layer.parameters.size(); ++p) {
      const nlohmann::json& wp = w["parameters"][p];
      EXPECT_EQ(layer.parameters[p].name, wp["name"].get<std::string>());
      EXPECT_EQ(layer.parameters[p].shape, Shape(wp["shape"]));
      EXPECT_EQ(layer.parameters[p].numel, wp["numel"].get<int64_t>());
      EXPECT_EQ(layer.parameters[p].dtype, wp["dtype"].get<std::string>());
    }
  }
}

TEST_P(ModelFixtureTest, InspectMatchesPython) {
  const nlohmann::json& want = expected();
  InspectOptions options;
  options.input_shape = Shape(want["input_shape"]);
  absl::StatusOr<Inspection> ins = InspectModelFile(path(), options);
  ASSERT_TRUE(ins.ok()) << ins.status();
  EXPECT_EQ(ins->input_shape, options.input_shape);
  EXPECT_EQ(ins->output_shape, Shape(want["output_shape"]));
  EXPECT_EQ(ins->summary.num_parameters, want["num_parameters"].get<int64_t>());
  EXPECT_EQ(ins->unattributed_macs, want["unattributed_macs"].get<int64_t>());
  EXPECT_EQ(ins->total_macs, want["total_macs"].get<int64_t>());
  EXPECT_GT(ins->forward_seconds, 0.0);
  ASSERT_EQ(ins->layers.size(), want["layers"].size());
  for (size_t i = 0; i < ins->layers.size(); ++i) {
    const LayerCost& cost = ins->layers[i];
    const nlohmann::json& w = want["layers"][i];
    SCOPED_TRACE("layer " + w["name"].get<std::string>());
    EXPECT_EQ(cost.name, w["name"].get<std::string>());
    EXPECT_EQ(cost.kind, w["kind"].get<std::string>());
    EXPECT_EQ(cost.numel, w["numel"].get<int64_t>());
    EXPECT_EQ(cost.macs, w["macs"].get<int64_t>());
    EXPECT_EQ(cost.calls, w["calls"].get<int>());
    EXPECT_EQ(cost.output_shape, Shape(w["output_shape"]));
  }
}

// Every counted op is linear in the batch size, attention included.
TEST_P(ModelFixtureTest, MacsScaleWithBatch) {
  InspectOptions options;
  options.input_shape = Shape(expected()["input_shape"]);
  options.input_shape[0] = 1;
  absl::StatusOr<Inspection> one = InspectModelFile(path(), options);
  options.input_shape[0] = 5;
  absl::StatusOr<Inspection> five = InspectModelFile(path(), options);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(five.ok()) << five.status();
  EXPECT_GT(one->total_macs, 0);
  EXPECT_EQ(five->total_macs, 5 * one->total_macs);
  EXPECT_EQ(five->unattributed_macs, 5 * one->unattributed_macs);
  EXPECT_EQ(five->output_shape[0], 5);
}

// The MAC counter is a thread-local callback: concurrent inspections on other
// threads must neither see nor disturb each other's operators.
TEST_P(ModelFixtureTest, ConcurrentInspectionsAgree) {
  InspectOptions options;
  options.input_shape = Shape(expected()["input_shape"]);
  std::vector<absl::StatusOr<Inspection>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&] { result = InspectModelFile(path(), options); });
  }
  for (auto& t : threads) t.join();
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->total_macs, expected()["total_macs"].get<int64_t>());
    EXPECT_EQ(result->unattributed_macs,
              expected()["unattributed_macs"].get<int64_t>());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelFixtureTest,
                         ::testing::Values("tiny_mlp.pt", "tiny_cnn.pt",
                                           "tiny_ops.pt", "tiny_vit.pt"),
                         [](const auto& info) {
                           std::string name = info.param;
                           return name.substr(0, name.find('.'));
                         });

TEST(ModelInfoTest, VitRootOwnsTokenParameters) {
  absl::StatusOr<ModelSummary> summary =
      DescribeModelFile(FixturePath("tiny_vit.pt"));
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_FALSE(summary->layers.empty());
  const LayerInfo& root = summary->layers[0];
  EXPECT_EQ(root.name, "");
  EXPECT_EQ(root.kind, "TinyViT");
  ASSERT_EQ(root.parameters.size(), 2u);
  EXPECT_EQ(root.parameters[0].name, "cls_token");
  EXPECT_EQ(root.parameters[1].name, "pos_embed");
}

class BadModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BadModelTest, DescribeIsInvalidArgument) {
  absl::StatusOr<ModelSummary> summary =
      DescribeModelFile(FixturePath(GetParam()));
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument)
      << summary.status();
  EXPECT_THAT(summary.status().message(), HasSubstr("not a TorchScript model"));
}

TEST_P(BadModelTest, InspectIsInvalidArgument) {
  InspectOptions options;
  options.input_shape = {1, 4};
  absl::StatusOr<Inspection> ins =
      InspectModelFile(FixturePath(GetParam()), options);
  EXPECT_EQ(ins.status().code(), absl::StatusCode::kInvalidArgument)
      << ins.status();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BadModelTest,
                         ::testing::Values("not_a_model.bin", "not_a_model.zip",
                                           "plain_pickle.pkl",
                                           "tiny_torchsave.pt",
                                           "tiny.safetensors", "expected.json"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '.') c = '_';
                           }
                           return name;
                         });

TEST(ModelInfoTest, MissingFileIsNotFound) {
  EXPECT_EQ(DescribeModelFile(FixturePath("no_such_model.pt")).status().code(),
            absl::StatusCode::kNotFound);
}

// The loader reads each archive member into a buffer of its declared size
// and stops when it is full: a stream holding 8 MiB more than declared loads
// as the declared bytes (the surplus is never inflated), one holding fewer
// bytes does not load. What the catalog's size bound (server/catalog/
// catalog.cc) relies on.
TEST(ModelInfoTest, MembersInflateToNoMoreThanTheirDeclaredSize) {
  const std::string dir = testing::MakeTempDir();
  std::vector<testutil::ZipFile> files =
      testutil::Unzip(testutil::ReadFile(FixturePath("tiny_mlp.pt")));
  ASSERT_EQ(files.size(), 17u);
  const testutil::ZipFile weights = files[0];  // tiny_mlp/data/0, 128 bytes
  ASSERT_EQ(weights.name, "tiny_mlp/data/0");
  auto describe = [&](const std::string& inflated, const std::string& name) {
    files[0] = testutil::Deflated(weights.name, testutil::DeflateStored(inflated),
                                  weights.size, weights.crc);
    const std::string path = dir + "/" + name + ".pt";
    std::ofstream(path, std::ios::binary) << testutil::Zip(files);
    return DescribeModelFile(path);
  };
  absl::StatusOr<ModelSummary> surplus =
      describe(weights.data + std::string(8 << 20, '\1'), "surplus");
  ASSERT_TRUE(surplus.ok()) << surplus.status();
  EXPECT_EQ(surplus->num_parameters,
            Expected()["models"]["tiny_mlp.pt"]["num_parameters"].get<int64_t>());
  EXPECT_EQ(describe(weights.data.substr(0, 64), "short").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A TorchScript file whose pickle says a parameter is [101, 3] while its
// storage holds [100, 3]: refused at describe, before anything reads past it.
TEST(ModelInfoTest, ParameterReachingPastItsStorageIsRefused) {
  torch::jit::Module m("Edited");
  m.register_parameter("w", torch::arange(300, torch::kFloat32).reshape({100, 3}), false);
  m.define("def forward(self, x):\n    return x + self.w.sum()\n");
  const std::string dir = testing::MakeTempDir();
  m.save(dir + "/saved.pt");
  std::vector<testutil::ZipFile> files =
      testutil::Unzip(testutil::ReadFile(dir + "/saved.pt"));
  bool edited = false;
  for (testutil::ZipFile& f : files) {
    if (f.name.size() < 9 || f.name.substr(f.name.size() - 9) != "/data.pkl") continue;
    const std::string from("K\x64", 2);  // size 100, BININT1
    ASSERT_EQ(f.data.find(from), f.data.rfind(from)) << "the edit must be unambiguous";
    std::string pickle = f.data;
    pickle.replace(pickle.find(from), 2, std::string("K\x65", 2));
    f = testutil::Stored(f.name, pickle);
    edited = true;
  }
  ASSERT_TRUE(edited);
  std::ofstream(dir + "/edited.pt", std::ios::binary) << testutil::Zip(files);
  absl::StatusOr<ModelSummary> summary = DescribeModelFile(dir + "/edited.pt");
  ASSERT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument) << summary.status();
  EXPECT_THAT(std::string(summary.status().message()),
              HasSubstr("parameter w reaches byte 1212 of a storage of 1200 bytes"));
  EXPECT_TRUE(DescribeModelFile(dir + "/saved.pt").ok());
}

TEST(ModelInfoTest, LinearInputMismatchCarriesTorchMessage) {
  InspectOptions options;
  options.input_shape = {2, 5};
  absl::StatusOr<Inspection> ins =
      InspectModelFile(FixturePath("tiny_mlp.pt"), options);
  ASSERT_EQ(ins.status().code(), absl::StatusCode::kInvalidArgument)
      << ins.status();
  EXPECT_THAT(ins.status().message(), HasSubstr("[2, 5]"));
  EXPECT_THAT(ins.status().message(),
              HasSubstr("mat1 and mat2 shapes cannot be multiplied"));
}

TEST(ModelInfoTest, ConvChannelMismatchCarriesTorchMessage) {
  InspectOptions options;
  options.input_shape = {2, 3, 8, 8};
  absl::StatusOr<Inspection> ins =
      InspectModelFile(FixturePath("tiny_cnn.pt"), options);
  ASSERT_EQ(ins.status().code(), absl::StatusCode::kInvalidArgument)
      << ins.status();
  EXPECT_THAT(ins.status().message(), HasSubstr("channels"));
}

TEST(ModelInfoTest, InputShapeMustBeGiven) {
  InspectOptions options;
  EXPECT_EQ(
      InspectModelFile(FixturePath("tiny_mlp.pt"), options).status().code(),
      absl::StatusCode::kInvalidArgument);
  options.input_shape = {0, 4};
  EXPECT_EQ(
      InspectModelFile(FixturePath("tiny_mlp.pt"), options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(ModelInfoTest, UnknownDeviceIsInvalidArgument) {
  InspectOptions options;
  options.input_shape = {2, 4};
  options.device = "tpu:0";
  EXPECT_EQ(
      InspectModelFile(FixturePath("tiny_mlp.pt"), options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(ModelInfoTest, CancelledTokenStopsInspection) {
  CancelToken token;
  token.Cancel();
  InspectOptions options;
  options.input_shape = {2, 4};
  EXPECT_EQ(InspectModelFile(FixturePath("tiny_mlp.pt"), options, &token)
                .status()
                .code(),
            absl::StatusCode::kCancelled);
}

TEST(ModelInfoTest, PastDeadlineStopsInspection) {
  CancelToken token;
  token.SetDeadline(absl::Now() - absl::Seconds(1));
  InspectOptions options;
  options.input_shape = {2, 4};
  EXPECT_EQ(InspectModelFile(FixturePath("tiny_mlp.pt"), options, &token)
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

// nn.TransformerEncoder under no_grad runs each layer as one fused
// aten::_transformer_encoder_layer_fwd (issue 19: INSPECT counted 41x too
// few MACs). The model comes from tests/fixtures/make_transformer.py, which
// checks that PyTorch takes the fused path for it. Expected MACs, from the
// architecture alone, per layer and example of T tokens of width d:
//   in_proj T·d·3d + out_proj T·d·d + linear1 T·d·ff + linear2 T·ff·d
//   + q·kᵀ and attn·v 2·T·T·d (h heads of d/h each: h·T·T·d/h apiece),
// so N·L·(T·(4d² + 2·d·ff) + 2·T²·d) in all, plus the head N·T·d·C.
TEST(InspectTransformerTest, CountsTheUnfusedEncoderLayers) {
  const testing::TransformerFixture fixture = testing::MakeTransformerFixture();
  if (fixture.model.empty()) GTEST_SKIP() << "no /usr/bin/python3";
  const std::string& model = fixture.model;
  // Only models holding a fused kernel pay for the unfused forward.
  absl::StatusOr<torch::jit::Module> loaded = LoadModel(model);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(HasFusedFastPath(*loaded));
  // torchvision's ViT attends with nn.MultiheadAttention, fast path included.
  absl::StatusOr<torch::jit::Module> tv = LoadModel(FixturePath("tiny_tv_vit.pt"));
  ASSERT_TRUE(tv.ok()) << tv.status();
  EXPECT_TRUE(HasFusedFastPath(*tv));
  for (const char* plain : {"tiny_cnn.pt", "tiny_vit.pt"}) {
    absl::StatusOr<torch::jit::Module> m = LoadModel(FixturePath(plain));
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_FALSE(HasFusedFastPath(*m)) << plain;
  }
  const int64_t n = 2, t = 8, d = 32, ff = 64, layers = 2, classes = 10;
  InspectOptions options;
  options.input_shape = {n, t, d};
  absl::StatusOr<Inspection> ins = InspectModelFile(model, options);
  ASSERT_TRUE(ins.ok()) << ins.status();
  EXPECT_EQ(ins->output_shape, (std::vector<int64_t>{n, t, classes}));
  const int64_t attention = 2 * n * t * t * d;
  EXPECT_EQ(ins->unattributed_macs, layers * attention);
  EXPECT_EQ(ins->total_macs,
            n * layers * (t * (4 * d * d + 2 * d * ff) + 2 * t * t * d) + n * t * d * classes);
  EXPECT_EQ(ins->total_macs, 283648);
  std::map<std::string, int64_t> want = {{"encoder.layers.0.self_attn", n * t * d * 3 * d},
                                         {"encoder.layers.0.self_attn.out_proj", n * t * d * d},
                                         {"encoder.layers.0.linear1", n * t * d * ff},
                                         {"encoder.layers.1.linear2", n * t * ff * d},
                                         {"head", n * t * d * classes}};
  for (const LayerCost& cost : ins->layers) {
    auto it = want.find(cost.name);
    if (it == want.end()) continue;
    EXPECT_EQ(cost.macs, it->second) << cost.name;
    EXPECT_EQ(cost.calls, 1) << cost.name;
    want.erase(it);
  }
  EXPECT_TRUE(want.empty()) << want.begin()->first << " not in the layers";

  // The grad-mode forward must not leave the TorchScript executor a plan
  // with autograd in it: the model loaded before INSPECT (as PRUNE and
  // QUANTIZE hold it) still runs under InferenceMode afterwards.
  ASSERT_TRUE(InspectModelFile(model, options).ok());
  c10::InferenceMode inference;
  const torch::Tensor x = torch::randn({n, t, d});
  for (int i = 0; i < 3; ++i) {
    EXPECT_NO_THROW(loaded->forward({x})) << "call " << i;
  }
}

}  // namespace
}  // namespace compress::engine
