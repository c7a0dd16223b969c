#include "server/worker/child_main.h"

#include <signal.h>
#include <unistd.h>

#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <new>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "compress/internal/worker.pb.h"
#include "server/catalog/engine_describer.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/common/runtime.h"
#include "server/pipeline/pipeline.h"
#include "server/pipeline/registry.h"
#include "server/sandbox/child_process.h"

namespace compress::worker {
namespace {

namespace v1 = compress::v1;
namespace in = compress::internal;

// Cancelled from the SIGTERM handler: Cancel() is one relaxed atomic store.
engine::CancelToken* g_cancel = nullptr;

void OnTerm(int) {
  if (g_cancel != nullptr) g_cancel->Cancel();
}

class EventWriter {
 public:
  // False once the parent has gone (the write failed).
  bool Write(const in::ChildEvent& event) {
    absl::MutexLock lock(&mu_);
    return sandbox::WriteFrame(sandbox::kEventFd, event.SerializeAsString());
  }

 private:
  absl::Mutex mu_;
};

v1::ErrorStatus ToError(const absl::Status& s) {
  v1::ErrorStatus e;
  e.set_code(static_cast<int>(s.code()));
  e.set_message(std::string(s.message()));
  return e;
}

// An allocation that failed under the address-space limit surfaces as
// std::bad_alloc or LibTorch's "can't allocate memory": a resource limit,
// not a bug.
absl::Status MemoryAware(const absl::Status& s) {
  if (s.ok()) return s;
  if (absl::StrContains(s.message(), "can't allocate memory") ||
      absl::StrContains(s.message(), "bad_alloc") ||
      absl::StrContains(s.message(), "out of memory")) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job's process exceeded its memory limit (--worker_memory_limit): ", s.message()));
  }
  return s;
}

// What the handler sees: the task's snapshot, events to the parent,
// artifacts as files the parent stores.
class ChildContext : public pipeline::JobContext,
                     public pipeline::Resources,
                     public engine::ProgressSink {
 public:
  ChildContext(const in::RunJobTask& task, EventWriter* events, engine::CancelToken* cancel)
      : task_(task), events_(events), cancel_(cancel) {}

  const v1::Job& job() const override { return task_.job(); }
  const std::string& device() const override { return task_.device(); }
  engine::ProgressSink& progress() override { return *this; }
  const engine::CancelToken& cancel() const override { return *cancel_; }
  pipeline::Resources& resources() override { return *this; }

  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& name, const std::string& content_type,
                                           absl::string_view bytes) override {
    const std::string file = absl::StrCat("artifact-", ++artifacts_);
    {
      std::ofstream out(file, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      out.close();
      if (!out) return absl::ResourceExhaustedError(absl::StrCat("cannot write artifact ", name));
    }
    in::ChildEvent e;
    e.mutable_artifact()->set_name(name);
    e.mutable_artifact()->set_content_type(content_type);
    e.mutable_artifact()->set_file(file);
    if (!events_->Write(e)) return absl::CancelledError("the server went away");
    v1::Artifact a;
    a.set_job_id(task_.job().id());
    a.set_name(name);
    a.set_content_type(content_type);
    a.set_size_bytes(static_cast<int64_t>(bytes.size()));
    return a;
  }

  // Resources: the snapshot only.
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    auto it = task_.models().find(id);
    if (it == task_.models().end()) return absl::NotFoundError(absl::StrCat("model ", id, " not found"));
    return it->second;
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    auto it = task_.datasets().find(id);
    if (it == task_.datasets().end()) {
      return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
    }
    return it->second;
  }
  std::string ModelPath(const std::string& id) override { return Lookup(task_.model_paths(), id); }
  std::string DatasetPath(const std::string& id) override {
    return Lookup(task_.dataset_paths(), id);
  }
  std::string BuiltinDataDir() override { return task_.builtin_data_dir(); }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    auto it = task_.jobs().find(id);
    if (it == task_.jobs().end()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    return it->second;
  }

  // ProgressSink: straight to the parent, which throttles and persists.
  void StageStart(const std::string& stage, int index, int count) override {
    in::ChildEvent e;
    e.mutable_stage_start()->set_stage(stage);
    e.mutable_stage_start()->set_index(index);
    e.mutable_stage_start()->set_count(count);
    Send(e);
  }
  void StageEnd(const std::string& stage) override {
    in::ChildEvent e;
    e.mutable_stage_end()->set_stage(stage);
    Send(e);
  }
  void Progress(const std::string& stage, int64_t done, int64_t total) override {
    in::ChildEvent e;
    e.mutable_progress()->set_stage(stage);
    e.mutable_progress()->set_done(done);
    e.mutable_progress()->set_total(total);
    Send(e);
  }
  void Log(const std::string& level, const std::string& message) override {
    in::ChildEvent e;
    e.mutable_log()->set_level(level);
    e.mutable_log()->set_message(message);
    Send(e);
  }
  void PartialResult(const std::string& key, const std::string& json) override {
    in::ChildEvent e;
    e.mutable_partial_result()->set_key(key);
    e.mutable_partial_result()->set_json(json);
    Send(e);
  }

 private:
  static std::string Lookup(const google::protobuf::Map<std::string, std::string>& map,
                            const std::string& id) {
    auto it = map.find(id);
    return it == map.end() ? std::string() : it->second;
  }
  // A parent that is gone cannot be told; cancel so the job stops soon.
  void Send(const in::ChildEvent& e) {
    if (!events_->Write(e)) cancel_->Cancel();
  }

  const in::RunJobTask& task_;
  EventWriter* const events_;
  engine::CancelToken* const cancel_;
  int artifacts_ = 0;
};

in::ChildEvent::Done RunJob(const in::RunJobTask& task, EventWriter* events,
                            engine::CancelToken* cancel) {
  in::ChildEvent::Done done;
  auto registry = pipeline::NewDefaultRegistry();
  if (!registry.ok()) {
    *done.mutable_error() = ToError(registry.status());
    return done;
  }
  auto handler = (*registry)->Resolve(task.job().spec());
  if (!handler.ok()) {
    *done.mutable_error() = ToError(handler.status());
    return done;
  }
  if (task.deadline_unix_seconds() > 0) {
    cancel->SetDeadline(absl::FromUnixSeconds(static_cast<int64_t>(task.deadline_unix_seconds())));
  }
  ChildContext context(task, events, cancel);
  absl::StatusOr<v1::JobResult> result = (*handler)->Run(context);
  if (!result.ok()) {
    *done.mutable_error() = ToError(MemoryAware(result.status()));
  } else {
    *done.mutable_result() = *std::move(result);
  }
  return done;
}

in::ChildEvent::Done Describe(const in::ChildTask& task) {
  in::ChildEvent::Done done;
  catalog::EngineDescriber describer;
  if (task.has_describe_model()) {
    auto model = describer.DescribeModel(task.describe_model().path());
    if (model.ok()) {
      *done.mutable_model() = *std::move(model);
    } else {
      *done.mutable_error() = ToError(MemoryAware(model.status()));
    }
  } else {
    auto dataset = describer.DescribeDataset(task.describe_dataset().path());
    if (dataset.ok()) {
      *done.mutable_dataset() = *std::move(dataset);
    } else {
      *done.mutable_error() = ToError(MemoryAware(dataset.status()));
    }
  }
  return done;
}

}  // namespace

int RunChildMain() {
  static engine::CancelToken cancel;
  g_cancel = &cancel;
  struct sigaction term = {};
  term.sa_handler = OnTerm;
  sigaction(SIGTERM, &term, nullptr);

  const std::string bytes((std::istreambuf_iterator<char>(std::cin)),
                          std::istreambuf_iterator<char>());
  in::ChildTask task;
  if (!task.ParseFromString(bytes) || task.task_case() == in::ChildTask::TASK_NOT_SET) {
    fprintf(stderr, "compressd child: no task on stdin (%zu bytes)\n", bytes.size());
    return 2;
  }
  engine::ConfigureThreads(task.threads());
  EventWriter events;
  in::ChildEvent event;
  try {
    if (task.has_run_job()) {
      *event.mutable_done() = RunJob(task.run_job(), &events, &cancel);
    } else {
      *event.mutable_done() = Describe(task);
    }
  } catch (const std::bad_alloc& e) {
    *event.mutable_done()->mutable_error() =
        ToError(MemoryAware(absl::ResourceExhaustedError("std::bad_alloc")));
  } catch (const std::exception& e) {
    *event.mutable_done()->mutable_error() =
        ToError(MemoryAware(absl::InternalError(absl::StrCat("unexpected exception: ", e.what()))));
  }
  return events.Write(event) ? 0 : 2;
}

}  // namespace compress::worker
