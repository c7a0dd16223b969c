// Fuzzes the torch-free checks of a submitted job
// (server/pipeline/spec_values.h CheckSpecValues, then the kind's field
// checks in server/pipeline/validate.h, as SubmitJob runs them): the input
// is a binary compress.v1.SubmitJobRequest. Model and dataset ids resolve
// against a fake Resources: ids starting "m" are models (a ViT when they
// contain "vit"), "d" and "builtin:" datasets.
// Not covered: the handlers' conversions to engine options
// (ToAnalyzeOptions, ToQuantizeOptions), which live in torch-linked files.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "compress/v1/compress.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "server/pipeline/pipeline.h"
#include "server/pipeline/spec_values.h"
#include "server/pipeline/validate.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace v1 = compress::v1;
using compress::pipeline::Resources;

class FakeResources : public Resources {
 public:
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    if (!absl::StartsWith(id, "m")) return absl::NotFoundError("no model " + id);
    v1::Model model;
    model.set_id(id);
    model.set_num_parameters(1000);
    const bool vit = absl::StrContains(id, "vit");
    for (const char* name : {"blocks.0.attn.qkv", "blocks.0.mlp.fc1", "head"}) {
      model.add_layers()->set_name(vit ? name : "fc");
    }
    return model;
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    if (!absl::StartsWith(id, "d") && !absl::StartsWith(id, "builtin:")) {
      return absl::NotFoundError("no dataset " + id);
    }
    v1::Dataset dataset;
    dataset.set_id(id);
    dataset.set_num_examples(100);
    return dataset;
  }
  std::string ModelPath(const std::string& id) override { return "/nonexistent/" + id; }
  std::string DatasetPath(const std::string& id) override { return "/nonexistent/" + id; }
  std::string BuiltinDataDir() override { return "/nonexistent"; }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    return absl::NotFoundError("no job " + id);
  }
};

// What each kind's handler validates, minus its torch-linked conversions.
absl::Status ValidateKind(const v1::JobSpec& spec, Resources& resources) {
  namespace pipeline = compress::pipeline;
  switch (spec.spec_case()) {
    case v1::JobSpec::kInspect:
      return pipeline::ValidateInspectSpec(spec.inspect(), resources);
    case v1::JobSpec::kAnalyze:
      return pipeline::ValidateAnalyzeSpec(spec.analyze(), resources);
    case v1::JobSpec::kQuantize: {
      absl::Status s =
          pipeline::CheckModel("quantize.model_id", spec.quantize().model_id(), resources);
      if (!s.ok()) return s;
      return pipeline::ValidateQuantizeSpec("quantize", spec.quantize(), resources);
    }
    case v1::JobSpec::kPrune:
      return pipeline::ValidatePruneSpec("prune", spec.prune(), resources);
    case v1::JobSpec::kCompress: {
      absl::Status s =
          pipeline::ValidatePruneSpec("compress.prune", spec.compress().prune(), resources);
      if (!s.ok() || !spec.compress().quantize().has_data()) return s;
      return pipeline::ValidateQuantizeSpec("compress.quantize", spec.compress().quantize(),
                                            resources);
    }
    default:
      return absl::InvalidArgumentError("spec: no kind");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Invalid UTF-8 in a string field is an expected refusal; protobuf would
  // log every one.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::SubmitJobRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  absl::Status s = compress::pipeline::CheckSpecValues(request.spec());
  compress::fuzz::Explain("CheckSpecValues", s);
  if (!s.ok()) {
    // Every refusal names a field under "spec".
    FUZZ_CHECK(absl::IsInvalidArgument(s) && absl::StartsWith(s.message(), "spec"));
    return 0;
  }
  FakeResources resources;
  s = ValidateKind(request.spec(), resources);
  compress::fuzz::Explain("Validate", s);
  FUZZ_CHECK(s.ok() || !s.message().empty());
  return 0;
}
