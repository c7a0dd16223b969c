// CheckSpecValues: every set enum declared, every float finite, anywhere in
// a JobSpec (nested messages, repeated fields), with the field's path.
#include "server/pipeline/spec_values.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();

v1::JobSpec Analyze() {
  v1::JobSpec spec;
  v1::AnalyzeSpec* a = spec.mutable_analyze();
  a->set_model_id("m");
  a->set_hvp_method(v1::HVP_METHOD_EXACT);
  a->mutable_density()->set_sigma(1e-5);
  return spec;
}

TEST(SpecValuesTest, DeclaredValuesAndFiniteNumbersPass) {
  EXPECT_TRUE(CheckSpecValues(Analyze()).ok());
  EXPECT_TRUE(CheckSpecValues(v1::JobSpec()).ok());
  v1::JobSpec prune;
  prune.mutable_prune()->set_latency_weight(-0.5);  // finite: the handler judges the range
  prune.mutable_prune()->set_saliency(v1::SALIENCY_TAYLOR);
  EXPECT_TRUE(CheckSpecValues(prune).ok());
}

TEST(SpecValuesTest, AnUndeclaredEnumValueIsRefusedNamingTheFieldAndTheKnownValues) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->set_hvp_method(static_cast<v1::HvpMethod>(99));
  absl::Status s = CheckSpecValues(spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("spec.analyze.hvp_method: 99 is not a HvpMethod (known: "
                        "HVP_METHOD_UNSPECIFIED, HVP_METHOD_EXACT"));

  v1::JobSpec prune;
  prune.mutable_prune()->set_saliency(static_cast<v1::Saliency>(17));
  EXPECT_THAT(std::string(CheckSpecValues(prune).message()),
              HasSubstr("spec.prune.saliency: 17 is not a Saliency"));
}

TEST(SpecValuesTest, NonFiniteNumbersAreRefusedWhereverTheyAre) {
  v1::JobSpec spec = Analyze();
  spec.mutable_analyze()->mutable_density()->set_sigma(kInf);
  EXPECT_EQ(CheckSpecValues(spec).message(),
            "spec.analyze.density.sigma: must be a finite number, got Infinity");

  v1::JobSpec prune;
  prune.mutable_prune()->set_latency_weight(std::nan(""));
  EXPECT_EQ(CheckSpecValues(prune).message(),
            "spec.prune.latency_weight: must be a finite number, got NaN");
  prune.mutable_prune()->set_latency_weight(1);
  prune.mutable_prune()->mutable_recovery()->set_learning_rate(-kInf);
  EXPECT_EQ(CheckSpecValues(prune).message(),
            "spec.prune.recovery.learning_rate: must be a finite number, got -Infinity");
}

TEST(SpecValuesTest, RepeatedMessagesAndLaterFieldsAreChecked) {
  v1::JobSpec spec;
  v1::QuantizeSpec* q = spec.mutable_quantize();
  q->add_pins()->set_bits(8);
  q->add_pins()->set_bits(4);
  EXPECT_TRUE(CheckSpecValues(spec).ok());
  q->set_loss(static_cast<v1::LossKind>(77));
  EXPECT_THAT(std::string(CheckSpecValues(spec).message()),
              HasSubstr("spec.quantize.loss: 77 is not a LossKind"));
}

}  // namespace
}  // namespace compress::pipeline
