#include "server/engine/common/stages.h"

#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace compress::engine {
namespace {

// `status` with "<stage>: " in front of its message, code and payloads kept.
absl::Status InStage(const std::string& stage, const absl::Status& status) {
  absl::Status named(status.code(), absl::StrCat(stage, ": ", status.message()));
  status.ForEachPayload([&named](absl::string_view url, const absl::Cord& payload) {
    named.SetPayload(url, payload);
  });
  return named;
}

}  // namespace

void StageList::Add(std::string name, StageFn run) {
  stages_.push_back({std::move(name), std::move(run), nullptr, /*reported=*/true});
}

void StageList::AddIf(bool enabled, std::string name, StageFn run) {
  if (enabled) Add(std::move(name), std::move(run));
}

void StageList::AddWhen(Condition enabled, std::string name, StageFn run) {
  stages_.push_back({std::move(name), std::move(run), std::move(enabled), /*reported=*/true});
}

void StageList::AddStep(std::string name, StageFn run) {
  stages_.push_back({std::move(name), std::move(run), nullptr, /*reported=*/false});
}

absl::Status StageList::Run(ProgressSink* sink, const CancelToken* cancel) const {
  NullProgressSink null_sink;
  if (sink == nullptr) sink = &null_sink;
  int index = 0;
  for (size_t i = 0; i < stages_.size(); ++i) {
    const Stage& stage = stages_[i];
    if (!Enabled(stage)) continue;
    if (cancel != nullptr) {
      absl::Status cancelled = cancel->Check();
      if (!cancelled.ok()) return cancelled;
    }
    if (stage.reported) {
      int count = index;
      for (size_t j = i; j < stages_.size(); ++j) {
        count += stages_[j].reported && Enabled(stages_[j]) ? 1 : 0;
      }
      sink->StageStart(stage.name, index, count);
    }
    absl::Status status = stage.run();
    if (!status.ok()) return InStage(stage.name, status);
    if (stage.reported) {
      sink->StageEnd(stage.name);
      ++index;
    }
  }
  return absl::OkStatus();
}

}  // namespace compress::engine
