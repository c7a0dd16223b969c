// StageList: a job's work as an ordered list of named stages (torch-free).
//
// An engine facade (RunQuantization, RunPruning) adds one stage per part of
// its job and runs the list. The list, not the stages, numbers them: it
// sends ProgressSink::StageStart(name, index, count) before and StageEnd(name)
// after each stage, and checks the CancelToken before each one, so the
// numbers a client sees always match the stages that actually run.
//
// Numbering: a stage that is disabled for this job is neither run nor
// counted. `index` is 0-based among the stages that run; `count` is `index`
// plus the stages from this one on that are enabled when it starts. A stage
// added with AddWhen is asked again each time the list counts, so a
// condition that an earlier stage turns off (a pruning round that reaches
// the minimums turns the later rounds off) makes `count` shrink from that
// stage on. Steps (AddStep) are never counted.
//
// Errors: the first stage that fails stops the list; Run returns its status
// with the same code and payloads and the stage's name in front of the
// message ("search: pins/ties: ..."), and sends no StageEnd for it. Cancel
// or deadline between stages returns the token's status unchanged.
//
//   StageList stages;
//   stages.Add("sensitivity", [&] { return ComputeSensitivity(job); });
//   stages.Add("rounding", [&] { return Round(job); });
//   stages.AddStep("outputs", [&] { return WriteOutputs(job); });
//   stages.AddIf(job.has_eval, "evaluation", [&] { return Evaluate(job); });
//   RETURN_IF_ERROR(stages.Run(sink, cancel));
//   // sink: sensitivity 0/3, rounding 1/3, evaluation 2/3 (0/2, 1/2
//   // without eval data).
//
// Not thread-safe (one job's thread builds and runs it). The functions are
// owned by the list; what they capture must outlive Run.
#ifndef COMPRESS_ENGINE_COMMON_STAGES_H_
#define COMPRESS_ENGINE_COMMON_STAGES_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"

namespace compress::engine {

class StageList {
 public:
  using StageFn = std::function<absl::Status()>;
  // Whether a stage runs; called when the list counts, so it must be cheap
  // and have no side effects.
  using Condition = std::function<bool()>;

  StageList() = default;
  StageList(const StageList&) = delete;
  StageList& operator=(const StageList&) = delete;

  // A stage that always runs.
  void Add(std::string name, StageFn run);
  // A stage that runs only when `enabled` (fixed for this job: an option).
  void AddIf(bool enabled, std::string name, StageFn run);
  // A stage that runs when `enabled()` holds as its turn comes (state that
  // earlier stages change).
  void AddWhen(Condition enabled, std::string name, StageFn run);
  // Work between two stages that is not a stage of its own (writing the
  // outputs that the next stage evaluates): it runs in order, with cancel
  // checked before it and its errors named by `name`, but it is neither
  // counted nor reported to the sink.
  void AddStep(std::string name, StageFn run);

  // Runs the enabled stages in order, as described above. `sink` and
  // `cancel` may be null.
  absl::Status Run(ProgressSink* sink, const CancelToken* cancel) const;

 private:
  struct Stage {
    std::string name;
    StageFn run;
    Condition enabled;     // null: always
    bool reported = true;  // false: a step (AddStep)
  };
  bool Enabled(const Stage& s) const { return s.enabled == nullptr || s.enabled(); }

  std::vector<Stage> stages_;
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_STAGES_H_
