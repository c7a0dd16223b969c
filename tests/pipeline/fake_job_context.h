// Fakes for running a pipeline outside the job layer: Resources that map ids
// to fixture files, and a JobContext that records progress and keeps
// artifacts in memory. Shared by the tests that run a job kind end to end
// on a fixture model (inspect, analyze).
#ifndef COMPRESS_TESTS_PIPELINE_FAKE_JOB_CONTEXT_H_
#define COMPRESS_TESTS_PIPELINE_FAKE_JOB_CONTEXT_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/pipeline/pipeline.h"
#include "tests/test_util.h"

namespace compress::pipeline::testing {

// Model and dataset ids are fixture file names (tests/fixtures/<id>) once
// added; anything else is NOT_FOUND. Builtin datasets resolve to the Debian
// package's IDX directory.
class FixtureResources : public Resources {
 public:
  void AddModel(const std::string& fixture) {
    compress::v1::Model m;
    m.set_id(fixture);
    models_[fixture] = m;
  }
  void AddDataset(const std::string& fixture, std::vector<int64_t> input_shape,
                  const std::string& input_dtype = "") {
    compress::v1::Dataset d;
    d.set_id(fixture);
    for (int64_t s : input_shape) d.add_input_shape(s);
    d.set_input_dtype(input_dtype);
    datasets_[fixture] = d;
  }

  absl::StatusOr<compress::v1::Model> GetModel(const std::string& id) override {
    auto it = models_.find(id);
    if (it == models_.end()) return absl::NotFoundError("model " + id + " not found");
    return it->second;
  }
  absl::StatusOr<compress::v1::Dataset> GetDataset(const std::string& id) override {
    auto it = datasets_.find(id);
    if (it == datasets_.end()) return absl::NotFoundError("dataset " + id + " not found");
    return it->second;
  }
  std::string ModelPath(const std::string& id) override {
    return ::compress::testutil::FixturePath(id);
  }
  std::string DatasetPath(const std::string& id) override {
    return id.rfind("builtin:", 0) == 0 ? id : ::compress::testutil::FixturePath(id);
  }
  std::string BuiltinDataDir() override { return "/usr/share/datasets/fashion-mnist"; }
  absl::StatusOr<compress::v1::Job> GetJob(const std::string& id) override {
    return absl::NotFoundError("job " + id + " not found");
  }

 private:
  std::map<std::string, compress::v1::Model> models_;
  std::map<std::string, compress::v1::Dataset> datasets_;
};

// Everything the pipeline reported, in order.
class RecordingSink : public engine::ProgressSink {
 public:
  void StageStart(const std::string& stage, int, int) override {
    absl::MutexLock lock(&mu_);
    stages_.push_back(stage);
  }
  void StageEnd(const std::string& stage) override {
    absl::MutexLock lock(&mu_);
    ended_.push_back(stage);
  }
  void Progress(const std::string& stage, int64_t done, int64_t total) override {
    absl::MutexLock lock(&mu_);
    progress_.push_back({stage, {done, total}});
  }
  void Log(const std::string& level, const std::string& message) override {
    absl::MutexLock lock(&mu_);
    logs_.push_back(level + " " + message);
  }
  void PartialResult(const std::string& key, const std::string&) override {
    absl::MutexLock lock(&mu_);
    partial_.push_back(key);
  }

  std::vector<std::string> stages() {
    absl::MutexLock lock(&mu_);
    return stages_;
  }
  std::vector<std::string> ended() {
    absl::MutexLock lock(&mu_);
    return ended_;
  }
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> progress() {
    absl::MutexLock lock(&mu_);
    return progress_;
  }
  std::vector<std::string> logs() {
    absl::MutexLock lock(&mu_);
    return logs_;
  }
  std::vector<std::string> partial() {
    absl::MutexLock lock(&mu_);
    return partial_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> stages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> ended_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> progress_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> logs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> partial_ ABSL_GUARDED_BY(mu_);
};

// A stored artifact: what AddArtifact was given.
struct StoredArtifact {
  std::string content_type;
  std::string bytes;
};

class FakeJobContext : public JobContext {
 public:
  FakeJobContext(compress::v1::Job job, Resources* resources)
      : job_(std::move(job)), resources_(resources) {}

  const compress::v1::Job& job() const override { return job_; }
  const std::string& device() const override { return device_; }
  engine::ProgressSink& progress() override { return sink_; }
  const engine::CancelToken& cancel() const override { return cancel_; }
  Resources& resources() override { return *resources_; }
  absl::StatusOr<compress::v1::Artifact> AddArtifact(const std::string& name,
                                                     const std::string& content_type,
                                                     absl::string_view bytes) override {
    absl::MutexLock lock(&mu_);
    artifacts_[name] = {content_type, std::string(bytes)};
    compress::v1::Artifact a;
    a.set_name(name);
    a.set_content_type(content_type);
    a.set_size_bytes(static_cast<int64_t>(bytes.size()));
    return a;
  }

  RecordingSink& sink() { return sink_; }
  engine::CancelToken& token() { return cancel_; }
  std::map<std::string, StoredArtifact> artifacts() {
    absl::MutexLock lock(&mu_);
    return artifacts_;
  }

 private:
  const compress::v1::Job job_;
  const std::string device_ = "cpu";
  Resources* resources_;
  RecordingSink sink_;
  engine::CancelToken cancel_;
  absl::Mutex mu_;
  std::map<std::string, StoredArtifact> artifacts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace compress::pipeline::testing

#endif  // COMPRESS_TESTS_PIPELINE_FAKE_JOB_CONTEXT_H_
