// ProgressSink: how engine code reports progress without knowing who listens.
//
// The job layer implements it (turning calls into persisted JobEvents with
// ETAs); tests use a recording fake. Implementations must be thread-safe.
#ifndef COMPRESS_ENGINE_COMMON_PROGRESS_H_
#define COMPRESS_ENGINE_COMMON_PROGRESS_H_

#include <cstdint>
#include <string>

namespace compress::engine {

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // A named stage begins; `index` is 0-based out of `count` stages.
  virtual void StageStart(const std::string& stage, int index, int count) = 0;
  virtual void StageEnd(const std::string& stage) = 0;
  // `done` of `total` units of the current stage are complete.
  virtual void Progress(const std::string& stage, int64_t done, int64_t total) = 0;
  // level: "INFO", "WARNING" or "ERROR".
  virtual void Log(const std::string& level, const std::string& message) = 0;
  // A piece of the result ready early (e.g. one layer's trace), as JSON.
  virtual void PartialResult(const std::string& key, const std::string& json) = 0;
};

// Discards everything; for callers that do not care.
class NullProgressSink : public ProgressSink {
 public:
  void StageStart(const std::string&, int, int) override {}
  void StageEnd(const std::string&) override {}
  void Progress(const std::string&, int64_t, int64_t) override {}
  void Log(const std::string&, const std::string&) override {}
  void PartialResult(const std::string&, const std::string&) override {}
};

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_PROGRESS_H_
