#include "proto/compress/v1/job_kinds.h"

#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"

namespace compress::v1 {
namespace {

namespace pb = google::protobuf;
using ::testing::ElementsAre;

// The convention job_kinds.cc relies on, checked on the descriptors: every
// JobKind but UNSPECIFIED has a JobSpec field and a JobResult field of the
// same lower-case name, and no field lacks a kind. A new kind that breaks
// it fails here, not as a job that runs as UNSPECIFIED.
TEST(JobKindsTest, EveryKindHasASpecAndAResultField) {
  const pb::OneofDescriptor* spec = JobSpec::descriptor()->FindOneofByName("spec");
  const pb::OneofDescriptor* result = JobResult::descriptor()->FindOneofByName("result");
  ASSERT_NE(spec, nullptr);
  ASSERT_NE(result, nullptr);
  std::set<std::string> spec_fields, result_fields;
  for (int i = 0; i < spec->field_count(); ++i) spec_fields.insert(spec->field(i)->name());
  for (int i = 0; i < result->field_count(); ++i) result_fields.insert(result->field(i)->name());
  const pb::EnumDescriptor* kinds = JobKind_descriptor();
  std::set<std::string> kind_names;
  for (int i = 0; i < kinds->value_count(); ++i) {
    if (kinds->value(i)->number() == JOB_KIND_UNSPECIFIED) continue;
    std::string name = absl::AsciiStrToLower(kinds->value(i)->name().substr(9));
    kind_names.insert(name);
    EXPECT_TRUE(spec_fields.count(name)) << name << " has no JobSpec field";
    EXPECT_TRUE(result_fields.count(name)) << name << " has no JobResult field";
  }
  for (const std::string& f : spec_fields) EXPECT_TRUE(kind_names.count(f)) << f;
  for (const std::string& f : result_fields) EXPECT_TRUE(kind_names.count(f)) << f;
}

TEST(JobKindsTest, KindOfSpecsAndResults) {
  JobSpec spec;
  EXPECT_EQ(KindOf(spec), JOB_KIND_UNSPECIFIED);
  spec.mutable_inspect()->set_model_id("m");
  EXPECT_EQ(KindOf(spec), JOB_KIND_INSPECT);
  spec.mutable_analyze();
  EXPECT_EQ(KindOf(spec), JOB_KIND_ANALYZE);
  spec.mutable_quantize();
  EXPECT_EQ(KindOf(spec), JOB_KIND_QUANTIZE);
  spec.mutable_prune();
  EXPECT_EQ(KindOf(spec), JOB_KIND_PRUNE);
  spec.mutable_compress();
  EXPECT_EQ(KindOf(spec), JOB_KIND_COMPRESS);

  JobResult result;
  EXPECT_EQ(KindOf(result), JOB_KIND_UNSPECIFIED);
  result.set_summary("only a summary");
  EXPECT_EQ(KindOf(result), JOB_KIND_UNSPECIFIED);
  result.mutable_quantize();
  EXPECT_EQ(KindOf(result), JOB_KIND_QUANTIZE);
}

TEST(JobKindsTest, FieldNamesAndTheListOfKinds) {
  EXPECT_EQ(KindFieldName(JOB_KIND_COMPRESS), "compress");
  EXPECT_EQ(KindFieldName(JOB_KIND_INSPECT), "inspect");
  EXPECT_EQ(KindFieldName(JOB_KIND_UNSPECIFIED), "");
  EXPECT_EQ(KindFieldName(static_cast<JobKind>(999)), "");
  EXPECT_THAT(AllJobKinds(), ElementsAre(JOB_KIND_INSPECT, JOB_KIND_ANALYZE, JOB_KIND_QUANTIZE,
                                         JOB_KIND_PRUNE, JOB_KIND_COMPRESS));
}

}  // namespace
}  // namespace compress::v1
