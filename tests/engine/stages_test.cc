// StageList: numbering from the stages that run, errors named by stage,
// cancellation between stages. No LibTorch.
#include "server/engine/common/stages.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace compress::engine {
namespace {

using ::testing::ElementsAre;

// Records StageStart as "start name index/count" and StageEnd as "end name".
class RecordingSink : public ProgressSink {
 public:
  void StageStart(const std::string& stage, int index, int count) override {
    events.push_back(absl::StrCat("start ", stage, " ", index, "/", count));
  }
  void StageEnd(const std::string& stage) override { events.push_back("end " + stage); }
  void Progress(const std::string&, int64_t, int64_t) override {}
  void Log(const std::string&, const std::string&) override {}
  void PartialResult(const std::string&, const std::string&) override {}
  std::vector<std::string> events;
};

// A stage that appends its name to `ran` and succeeds.
StageList::StageFn Record(std::vector<std::string>* ran, const std::string& name) {
  return [ran, name] {
    ran->push_back(name);
    return absl::OkStatus();
  };
}

TEST(StageListTest, NumbersTheStagesInOrder) {
  StageList stages;
  std::vector<std::string> ran;
  stages.Add("a", Record(&ran, "a"));
  stages.Add("b", Record(&ran, "b"));
  stages.Add("c", Record(&ran, "c"));
  RecordingSink sink;
  ASSERT_TRUE(stages.Run(&sink, nullptr).ok());
  EXPECT_THAT(ran, ElementsAre("a", "b", "c"));
  EXPECT_THAT(sink.events,
              ElementsAre("start a 0/3", "end a", "start b 1/3", "end b", "start c 2/3", "end c"));
}

// Disabled stages are neither run nor counted, wherever they sit; two
// stages may share a name (QUANTIZE's bisection and final "evaluation").
TEST(StageListTest, SkippedStagesAreNotCounted) {
  StageList stages;
  std::vector<std::string> ran;
  stages.AddIf(false, "first", Record(&ran, "first"));
  stages.Add("search", Record(&ran, "search"));
  stages.AddIf(true, "evaluation", Record(&ran, "evaluation"));
  stages.AddIf(false, "middle", Record(&ran, "middle"));
  stages.Add("rounding", Record(&ran, "rounding"));
  stages.AddIf(true, "evaluation", Record(&ran, "evaluation"));
  stages.AddIf(false, "last", Record(&ran, "last"));
  RecordingSink sink;
  ASSERT_TRUE(stages.Run(&sink, nullptr).ok());
  EXPECT_THAT(ran, ElementsAre("search", "evaluation", "rounding", "evaluation"));
  EXPECT_THAT(sink.events, ElementsAre("start search 0/4", "end search", "start evaluation 1/4",
                                       "end evaluation", "start rounding 2/4", "end rounding",
                                       "start evaluation 3/4", "end evaluation"));
}

// A condition that an earlier stage turns off: the later stages are
// dropped and the count shrinks for the stages after them.
TEST(StageListTest, ConditionsAreAskedAsTheirTurnComes) {
  StageList stages;
  std::vector<std::string> ran;
  bool stopped = false;
  stages.Add("latency", Record(&ran, "latency"));
  for (int round = 1; round <= 3; ++round) {
    const std::string name = absl::StrCat("round ", round);
    stages.AddWhen([&stopped] { return !stopped; }, name,
                   [&, name, round] {
                     ran.push_back(name);
                     stopped = round == 2;  // minimums reached
                     return absl::OkStatus();
                   });
  }
  stages.Add("evaluation", Record(&ran, "evaluation"));
  RecordingSink sink;
  ASSERT_TRUE(stages.Run(&sink, nullptr).ok());
  EXPECT_THAT(ran, ElementsAre("latency", "round 1", "round 2", "evaluation"));
  EXPECT_THAT(sink.events, ElementsAre("start latency 0/5", "end latency", "start round 1 1/5",
                                       "end round 1", "start round 2 2/5", "end round 2",
                                       "start evaluation 3/4", "end evaluation"));
}

// A step runs in order but is neither counted nor reported; its errors are
// named like a stage's.
TEST(StageListTest, StepsAreRunButNotNumbered) {
  StageList stages;
  std::vector<std::string> ran;
  stages.Add("rounding", Record(&ran, "rounding"));
  stages.AddStep("outputs", Record(&ran, "outputs"));
  stages.Add("evaluation", Record(&ran, "evaluation"));
  RecordingSink sink;
  ASSERT_TRUE(stages.Run(&sink, nullptr).ok());
  EXPECT_THAT(ran, ElementsAre("rounding", "outputs", "evaluation"));
  EXPECT_THAT(sink.events, ElementsAre("start rounding 0/2", "end rounding", "start evaluation 1/2",
                                       "end evaluation"));

  StageList failing;
  failing.Add("rounding", Record(&ran, "rounding"));
  failing.AddStep("outputs", [] { return absl::InternalError("disk full"); });
  failing.Add("evaluation", Record(&ran, "evaluation"));
  RecordingSink failing_sink;
  absl::Status s = failing.Run(&failing_sink, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "outputs: disk full");
  EXPECT_THAT(failing_sink.events, ElementsAre("start rounding 0/2", "end rounding"));
}

TEST(StageListTest, AnErrorStopsTheListAndNamesTheStage) {
  StageList stages;
  std::vector<std::string> ran;
  stages.Add("sensitivity", Record(&ran, "sensitivity"));
  stages.Add("search", [&ran] {
    ran.push_back("search");
    absl::Status s = absl::InvalidArgumentError("pins/ties: no layer \"x\"");
    s.SetPayload("type.example/detail", absl::Cord("kept"));
    return s;
  });
  stages.Add("rounding", Record(&ran, "rounding"));
  RecordingSink sink;
  absl::Status s = stages.Run(&sink, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "search: pins/ties: no layer \"x\"");
  ASSERT_TRUE(s.GetPayload("type.example/detail").has_value());
  EXPECT_EQ(*s.GetPayload("type.example/detail"), "kept");
  EXPECT_THAT(ran, ElementsAre("sensitivity", "search"));
  // No StageEnd for the stage that failed.
  EXPECT_THAT(sink.events,
              ElementsAre("start sensitivity 0/3", "end sensitivity", "start search 1/3"));
}

TEST(StageListTest, CancelIsCheckedBetweenStages) {
  StageList stages;
  std::vector<std::string> ran;
  CancelToken cancel;
  stages.Add("sensitivity", Record(&ran, "sensitivity"));
  stages.Add("search", [&] {
    ran.push_back("search");
    cancel.Cancel();  // the stage itself finishes
    return absl::OkStatus();
  });
  stages.Add("rounding", Record(&ran, "rounding"));
  RecordingSink sink;
  absl::Status s = stages.Run(&sink, &cancel);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(s.message(), "job cancelled");  // the token's, not a stage's
  EXPECT_THAT(ran, ElementsAre("sensitivity", "search"));
  EXPECT_THAT(sink.events, ElementsAre("start sensitivity 0/3", "end sensitivity",
                                       "start search 1/3", "end search"));
}

TEST(StageListTest, ACancelledTokenRunsNothing) {
  StageList stages;
  std::vector<std::string> ran;
  stages.Add("a", Record(&ran, "a"));
  CancelToken cancel;
  cancel.SetDeadline(absl::InfinitePast());
  RecordingSink sink;
  EXPECT_EQ(stages.Run(&sink, &cancel).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(ran.empty());
  EXPECT_TRUE(sink.events.empty());
}

TEST(StageListTest, NullSinkAndEmptyList) {
  StageList empty;
  EXPECT_TRUE(empty.Run(nullptr, nullptr).ok());
  StageList stages;
  std::vector<std::string> ran;
  stages.Add("a", Record(&ran, "a"));
  EXPECT_TRUE(stages.Run(nullptr, nullptr).ok());
  EXPECT_THAT(ran, ElementsAre("a"));
}

}  // namespace
}  // namespace compress::engine
