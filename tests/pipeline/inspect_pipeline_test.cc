// INSPECT outside the job layer: RunInspect on the committed fixture models
// with fake resources, checked against the layer lists, parameter counts and
// MACs that PyTorch computed (tests/fixtures/expected.json, written by
// make_fixtures.py with forward hooks), and the inspection.json artifact.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/pipeline/inspect.h"
#include "server/pipeline/validate.h"
#include "tests/pipeline/fake_job_context.h"
#include "tests/test_util.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::compress::pipeline::testing::FakeJobContext;
using ::compress::pipeline::testing::FixtureResources;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

const nlohmann::json& Expected() {
  static const nlohmann::json* json =
      new nlohmann::json(nlohmann::json::parse(ReadFile(FixturePath("expected.json"))));
  return *json;
}

std::vector<int64_t> Ints(const nlohmann::json& array) { return array.get<std::vector<int64_t>>(); }

// proto3 JSON writes int64 as a string.
int64_t JsonInt64(const nlohmann::json& value) { return std::stoll(value.get<std::string>()); }

v1::Job InspectJob(const std::string& model, const std::vector<int64_t>& shape,
                   const std::string& dataset = "") {
  v1::Job job;
  job.set_id("job-inspect");
  job.set_kind(v1::JOB_KIND_INSPECT);
  v1::InspectSpec* spec = job.mutable_spec()->mutable_inspect();
  spec->set_model_id(model);
  for (int64_t d : shape) spec->add_input_shape(d);
  spec->set_dataset_id(dataset);
  return job;
}

class InspectPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* m : {"tiny_cnn.pt", "tiny_mlp.pt", "tiny_ops.pt", "tiny_vit.pt"}) {
      resources_.AddModel(m);
    }
    resources_.AddDataset("tiny.safetensors", {1, 8, 8});
  }

  FixtureResources resources_;
};

// Every fixture model at the input shape make_fixtures.py used: the layer
// list, each layer's parameter count, MACs, output shape and calls, and the
// totals, in the result and in inspection.json.
TEST_F(InspectPipelineTest, EveryFixtureMatchesPyTorch) {
  for (const char* model : {"tiny_cnn.pt", "tiny_mlp.pt", "tiny_ops.pt", "tiny_vit.pt"}) {
    SCOPED_TRACE(model);
    const nlohmann::json& want = Expected()["models"][model];
    FakeJobContext context(InspectJob(model, Ints(want["input_shape"])), &resources_);
    absl::StatusOr<v1::JobResult> result = RunInspect(context.job().spec().inspect(), context);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->has_inspect());
    const v1::InspectResult& r = result->inspect();

    EXPECT_EQ(std::vector<int64_t>(r.input_shape().begin(), r.input_shape().end()),
              Ints(want["input_shape"]));
    EXPECT_EQ(std::vector<int64_t>(r.output_shape().begin(), r.output_shape().end()),
              Ints(want["output_shape"]));
    EXPECT_EQ(r.num_parameters(), want["num_parameters"].get<int64_t>());
    EXPECT_EQ(r.model_bytes(), want["model_bytes"].get<int64_t>());
    EXPECT_EQ(r.total_macs(), want["total_macs"].get<int64_t>());
    EXPECT_EQ(r.unattributed_macs(), want["unattributed_macs"].get<int64_t>());
    EXPECT_GT(r.forward_seconds(), 0);
    ASSERT_EQ(r.layers_size(), static_cast<int>(want["layers"].size()));
    for (int i = 0; i < r.layers_size(); ++i) {
      const nlohmann::json& l = want["layers"][i];
      SCOPED_TRACE(l["name"].get<std::string>());
      EXPECT_EQ(r.layers(i).name(), l["name"].get<std::string>());
      EXPECT_EQ(r.layers(i).kind(), l["kind"].get<std::string>());
      EXPECT_EQ(r.layers(i).numel(), l["numel"].get<int64_t>());
      EXPECT_EQ(r.layers(i).macs(), l["macs"].get<int64_t>());
      EXPECT_EQ(std::vector<int64_t>(r.layers(i).output_shape().begin(),
                                     r.layers(i).output_shape().end()),
                Ints(l["output_shape"]));
      EXPECT_EQ(r.layers(i).calls(), l["calls"].get<int>());
    }
    EXPECT_THAT(result->summary(),
                HasSubstr(absl::StrCat(want["num_parameters"].get<int64_t>(), " parameters, ",
                                       want["model_bytes"].get<int64_t>(), " bytes, ",
                                       want["total_macs"].get<int64_t>(), " MACs")));

    auto artifacts = context.artifacts();
    ASSERT_EQ(artifacts.size(), 1u);
    ASSERT_EQ(artifacts.count("inspection.json"), 1u);
    EXPECT_EQ(artifacts["inspection.json"].content_type, "application/json");
    const nlohmann::json json = nlohmann::json::parse(artifacts["inspection.json"].bytes, nullptr,
                                                      /*allow_exceptions=*/false);
    ASSERT_FALSE(json.is_discarded()) << artifacts["inspection.json"].bytes;
    EXPECT_EQ(JsonInt64(json["num_parameters"]), want["num_parameters"].get<int64_t>());
    EXPECT_EQ(JsonInt64(json["model_bytes"]), want["model_bytes"].get<int64_t>());
    EXPECT_EQ(JsonInt64(json["total_macs"]), want["total_macs"].get<int64_t>());
    ASSERT_EQ(json["layers"].size(), want["layers"].size());
    for (size_t i = 0; i < json["layers"].size(); ++i) {
      // proto3 JSON leaves out empty strings: the root layer has no "name".
      EXPECT_EQ(json["layers"][i].value("name", ""), want["layers"][i]["name"].get<std::string>());
      EXPECT_EQ(JsonInt64(json["layers"][i]["numel"]), want["layers"][i]["numel"].get<int64_t>());
    }
  }
}

TEST_F(InspectPipelineTest, ReportsOneStageWithProgressAndALogLine) {
  FakeJobContext context(InspectJob("tiny_cnn.pt", {2, 1, 8, 8}), &resources_);
  ASSERT_TRUE(RunInspect(context.job().spec().inspect(), context).ok());
  EXPECT_THAT(context.sink().stages(), ElementsAre("inspect"));
  EXPECT_THAT(context.sink().ended(), ElementsAre("inspect"));
  EXPECT_THAT(context.sink().progress(),
              ElementsAre(Pair("inspect", Pair(0, 1)), Pair("inspect", Pair(1, 1))));
  EXPECT_THAT(context.sink().logs(),
              ElementsAre("INFO forward pass on cpu with float32 input of shape [2, 1, 8, 8]"));
}

// Without input_shape the dataset's per-example shape is used with batch 1.
// MACs are linear in the batch, so every count is half the batch-2 one.
TEST_F(InspectPipelineTest, ShapeFromTheDatasetHasBatchOne) {
  const nlohmann::json& want = Expected()["models"]["tiny_cnn.pt"];
  ASSERT_EQ(want["input_shape"][0].get<int64_t>(), 2);
  FakeJobContext context(InspectJob("tiny_cnn.pt", {}, "tiny.safetensors"), &resources_);
  absl::StatusOr<v1::JobResult> result = RunInspect(context.job().spec().inspect(), context);
  ASSERT_TRUE(result.ok()) << result.status();
  const v1::InspectResult& r = result->inspect();
  EXPECT_THAT(r.input_shape(), ElementsAre(1, 1, 8, 8));
  EXPECT_THAT(r.output_shape(), ElementsAre(1, 10));
  EXPECT_EQ(r.total_macs() * 2, want["total_macs"].get<int64_t>());
  ASSERT_EQ(r.layers_size(), static_cast<int>(want["layers"].size()));
  for (int i = 0; i < r.layers_size(); ++i) {
    EXPECT_EQ(r.layers(i).macs() * 2, want["layers"][i]["macs"].get<int64_t>())
        << r.layers(i).name();
  }
  EXPECT_EQ(r.num_parameters(), want["num_parameters"].get<int64_t>());
}

TEST_F(InspectPipelineTest, UnknownDatasetIsNotFoundAndStoresNothing) {
  FakeJobContext context(InspectJob("tiny_cnn.pt", {}, "nope.safetensors"), &resources_);
  absl::Status s = RunInspect(context.job().spec().inspect(), context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("nope.safetensors"));
  EXPECT_TRUE(context.artifacts().empty());
  EXPECT_TRUE(context.sink().stages().empty()) << "failed before the forward pass";
}

// tiny_cnn's first conv takes 1 channel: 3 do not fit, and torch says why.
TEST_F(InspectPipelineTest, InputThatDoesNotFitIsInvalidArgument) {
  FakeJobContext context(InspectJob("tiny_cnn.pt", {2, 3, 8, 8}), &resources_);
  absl::Status s = RunInspect(context.job().spec().inspect(), context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(context.artifacts().empty());
}

// The probe's dtype reaches the model: int64 zeros do not fit tiny_cnn's
// conv, and the message says which dtype was tried; a name that is no dtype
// is refused by field before anything runs.
TEST_F(InspectPipelineTest, InputDtypeReachesTheModelAndIsValidated) {
  v1::Job job = InspectJob("tiny_cnn.pt", {2, 1, 8, 8});
  job.mutable_spec()->mutable_inspect()->set_input_dtype("int64");
  EXPECT_TRUE(ValidateInspectSpec(job.spec().inspect(), resources_).ok());
  FakeJobContext context(job, &resources_);
  absl::Status s = RunInspect(context.job().spec().inspect(), context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("int64 input of shape [2, 1, 8, 8]"));

  job.mutable_spec()->mutable_inspect()->set_input_dtype("int65");
  absl::Status bad = ValidateInspectSpec(job.spec().inspect(), resources_);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_THAT(bad.message(), HasSubstr("inspect.input_dtype: must be one of float32"));
}

// With a dataset, the probe takes the dataset's dtype (token ids) unless
// the spec names one.
TEST_F(InspectPipelineTest, InputDtypeDefaultsToTheDatasets) {
  resources_.AddDataset("tokens.safetensors", {1, 8, 8}, "int64");
  FakeJobContext from_data(InspectJob("tiny_cnn.pt", {}, "tokens.safetensors"), &resources_);
  absl::Status s = RunInspect(from_data.job().spec().inspect(), from_data).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("int64 input of shape [1, 1, 8, 8]"));

  v1::Job job = InspectJob("tiny_cnn.pt", {}, "tokens.safetensors");
  job.mutable_spec()->mutable_inspect()->set_input_dtype("float32");
  FakeJobContext named(job, &resources_);
  absl::StatusOr<v1::JobResult> result = RunInspect(named.job().spec().inspect(), named);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->inspect().output_shape(), ElementsAre(1, 10));
  EXPECT_THAT(named.sink().logs(),
              ElementsAre("INFO forward pass on cpu with float32 input of shape [1, 1, 8, 8]"));
}

TEST_F(InspectPipelineTest, ACancelledJobEndsCancelled) {
  FakeJobContext context(InspectJob("tiny_cnn.pt", {2, 1, 8, 8}), &resources_);
  context.token().Cancel();
  absl::Status s = RunInspect(context.job().spec().inspect(), context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(context.artifacts().empty());
}

}  // namespace
}  // namespace compress::pipeline
