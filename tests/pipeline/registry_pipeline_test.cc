// The job-kind registry: every kind the API defines has exactly one handler,
// and each handler lists the ids its spec reads and summarises its result.
#include "server/pipeline/registry.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/compress/v1/job_kinds.h"
#include "server/pipeline/inspect.h"
#include "server/pipeline/job_kind.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<JobKindRegistry> Registry() {
  auto registry = NewDefaultRegistry();
  EXPECT_TRUE(registry.ok()) << registry.status();
  return registry.ok() ? std::move(*registry) : std::make_unique<JobKindRegistry>();
}

TEST(RegistryTest, EveryApiKindHasItsHandler) {
  auto registry = Registry();
  EXPECT_EQ(registry->kinds(), v1::AllJobKinds());
  for (v1::JobKind kind : v1::AllJobKinds()) {
    const JobKindHandler* h = registry->Find(kind);
    ASSERT_NE(h, nullptr) << v1::JobKind_Name(kind);
    EXPECT_EQ(h->kind(), kind);
  }
  EXPECT_EQ(registry->Find(v1::JOB_KIND_UNSPECIFIED), nullptr);
}

TEST(RegistryTest, ResolveNamesWhatIsMissing) {
  auto registry = Registry();
  auto empty = registry->Resolve(v1::JobSpec());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(),
            "spec: one of inspect, analyze, quantize, prune, compress is required");
  v1::JobSpec spec;
  spec.mutable_prune();
  auto prune = registry->Resolve(spec);
  ASSERT_TRUE(prune.ok());
  EXPECT_EQ((*prune)->kind(), v1::JOB_KIND_PRUNE);

  JobKindRegistry only_inspect;
  ASSERT_TRUE(only_inspect.Register(NewInspectKind()).ok());
  auto unimplemented = only_inspect.Resolve(spec);
  EXPECT_EQ(unimplemented.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(unimplemented.status().message(), HasSubstr("JOB_KIND_PRUNE"));
  EXPECT_EQ(only_inspect.Resolve(v1::JobSpec()).status().message(),
            "spec: one of inspect is required");
}

class NoKind : public JobKindHandler {
 public:
  explicit NoKind(v1::JobKind kind) : kind_(kind) {}
  v1::JobKind kind() const override { return kind_; }
  absl::Status Validate(const v1::JobSpec&, Resources&) const override {
    return absl::OkStatus();
  }
  std::vector<std::string> ReferencedIds(const v1::JobSpec&) const override { return {}; }
  absl::StatusOr<v1::JobResult> Run(JobContext&) const override { return v1::JobResult(); }
  std::string Summary(const v1::JobResult&) const override { return ""; }

 private:
  v1::JobKind kind_;
};

TEST(RegistryTest, RegisterRefusesDuplicatesAndKindsWithoutASpec) {
  JobKindRegistry registry;
  EXPECT_EQ(registry.Register(nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Register(std::make_unique<NoKind>(v1::JOB_KIND_UNSPECIFIED)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Register(std::make_unique<NoKind>(static_cast<v1::JobKind>(77))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(registry.Register(std::make_unique<NoKind>(v1::JOB_KIND_ANALYZE)).ok());
  EXPECT_EQ(registry.Register(std::make_unique<NoKind>(v1::JOB_KIND_ANALYZE)).code(),
            absl::StatusCode::kAlreadyExists);
}

std::vector<std::string> Ids(const JobKindRegistry& registry, const v1::JobSpec& spec) {
  auto h = registry.Resolve(spec);
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? (*h)->ReferencedIds(spec) : std::vector<std::string>();
}

TEST(RegistryTest, ReferencedIdsOfEveryKind) {
  auto registry = Registry();
  v1::JobSpec spec;
  spec.mutable_inspect()->set_model_id("m1");
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("m1"));
  spec.mutable_inspect()->set_dataset_id("d1");
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("d1", "m1"));

  spec.mutable_analyze()->set_model_id("m2");
  spec.mutable_analyze()->mutable_data()->set_dataset_id("d2");
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("d2", "m2"));

  v1::QuantizeSpec* q = spec.mutable_quantize();
  q->set_model_id("m3");
  q->mutable_data()->set_dataset_id("d3");
  q->set_eval_dataset_id("e3");
  q->set_sensitivity_job_id("job-1");  // the ANALYZE job whose traces it reads
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("d3", "e3", "job-1", "m3"));

  v1::PruneSpec* p = spec.mutable_prune();
  p->set_model_id("m4");
  p->mutable_data()->set_dataset_id("d4");
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("d4", "m4"));

  v1::CompressSpec* c = spec.mutable_compress();
  c->mutable_prune()->set_model_id("m5");
  c->mutable_prune()->mutable_data()->set_dataset_id("d5");
  c->mutable_prune()->set_eval_dataset_id("e5");
  c->mutable_quantize()->mutable_data()->set_dataset_id("d5");  // the same: listed once
  c->mutable_quantize()->set_eval_dataset_id("e6");
  EXPECT_THAT(Ids(*registry, spec), ElementsAre("d5", "e5", "e6", "m5"));
}

TEST(RegistryTest, SummariesComeFromTheResult) {
  auto registry = Registry();
  v1::JobResult inspect;
  inspect.mutable_inspect()->set_num_parameters(1234);
  inspect.mutable_inspect()->set_model_bytes(4936);
  inspect.mutable_inspect()->set_total_macs(56789);
  inspect.mutable_inspect()->add_output_shape(1);
  inspect.mutable_inspect()->add_output_shape(10);
  EXPECT_EQ(registry->Find(v1::JOB_KIND_INSPECT)->Summary(inspect),
            "1234 parameters, 4936 bytes, 56789 MACs per forward pass, output [1, 10]");

  v1::JobResult quantize;
  v1::QuantizeResult* q = quantize.mutable_quantize();
  q->set_average_bits(4.02);
  q->set_bytes_before(139018);
  q->set_bytes_after(34000);
  q->set_accuracy_before(92.23);
  q->set_accuracy_after(92.01);
  q->set_budget_met(true);
  q->set_tolerance_met(true);
  EXPECT_EQ(registry->Find(v1::JOB_KIND_QUANTIZE)->Summary(quantize),
            "4.02 average bits, 139,018 → 34,000 bytes (4.1x), top-1 92.23% → 92.01% "
            "(−0.22 pp)");

  v1::JobResult compress;
  v1::CompressResult* c = compress.mutable_compress();
  c->mutable_prune()->set_achieved_fraction(0.302);
  c->mutable_prune()->set_target("flops");
  c->mutable_quantize()->set_average_bits(4.01);
  c->set_bytes_before(139018);
  c->set_bytes_after(25001);
  c->set_accuracy_before(89.07);
  c->set_accuracy_after(88.10);
  EXPECT_EQ(registry->Find(v1::JOB_KIND_COMPRESS)->Summary(compress),
            "30.2% of flops removed, 4.01 average bits, 139,018 → 25,001 bytes (5.6x), "
            "top-1 89.07% → 88.10% (−0.97 pp)");

  v1::JobResult analyze;
  v1::AnalyzeResult* a = analyze.mutable_analyze();
  a->add_layers()->set_trace_probes(40);
  a->add_layers()->set_trace_probes(40);
  a->set_hvp_count(40);
  a->set_hvp_method(v1::HVP_METHOD_EXACT);
  a->set_wall_seconds(3.14);
  a->set_total_trace(41.2);
  a->set_total_trace_std_error(0.9);
  EXPECT_EQ(registry->Find(v1::JOB_KIND_ANALYZE)->Summary(analyze),
            "2 layers, 40 HVPs (exact), 3.1 s, total trace 41.2 ± 0.9");
}

}  // namespace
}  // namespace compress::pipeline
