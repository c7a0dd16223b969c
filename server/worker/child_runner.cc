#include "server/worker/child_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <system_error>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "compress/internal/worker.pb.h"
#include "server/catalog/engine_describer.h"
#include "server/sandbox/child_process.h"
#include "server/store/storage_error.h"
#include "server/util/status_macros.h"

namespace compress::worker {
namespace {

namespace v1 = compress::v1;
namespace in = compress::internal;
namespace fs = std::filesystem;

// Below this many free bytes, a failed child is taken to have failed for
// lack of disk (a job writes at least a copy of its model).
constexpr int64_t kDiskFullBytes = 1 << 20;

absl::StatusOr<std::string> MakeWorkDir(const std::string& root, const std::string& name) {
  static std::atomic<uint64_t> counter{0};
  std::error_code ec;
  fs::create_directories(root, ec);
  const std::string dir = absl::StrCat(root, "/", name, "-", getpid(), "-", ++counter);
  if (!fs::create_directory(dir, ec) || ec) {
    return store::StorageError(ec ? ec.value() : EEXIST,
                               "create a working directory for a worker process", dir);
  }
  return dir;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InternalError(
        absl::StrCat("worker output ", fs::path(path).filename().string(), " is missing"));
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

sandbox::ChildOptions ChildOptionsFor(const WorkerOptions& o, const std::string& workdir) {
  sandbox::ChildOptions c;
  c.argv = {o.executable, "--role=child"};
  c.workdir = workdir;
  c.memory_bytes = o.memory_bytes;
  c.seccomp = o.seccomp;
  c.cpu_time = o.cpu_time;
  c.grace = o.grace;
  c.pass_env = sandbox::DefaultPassEnv();
  return c;
}

absl::Status FromError(const v1::ErrorStatus& e) {
  return absl::Status(static_cast<absl::StatusCode>(e.code()), e.message());
}

// A status for a child that ended without `done`. Crashes carry the
// payload that makes the job manager count the attempt and retry.
absl::Status FromExit(const sandbox::ChildExit& exit, const WorkerOptions& o) {
  const std::string how = exit.Describe();
  switch (exit.reason) {
    case sandbox::ChildExit::Reason::kCancelled:
      return absl::CancelledError("job cancelled; its worker process was ended");
    case sandbox::ChildExit::Reason::kDeadline:
      return absl::DeadlineExceededError("job deadline exceeded; its worker process was ended");
    case sandbox::ChildExit::Reason::kCpuLimit:
      return absl::ResourceExhaustedError(
          absl::StrFormat("the job's worker process ran out of its CPU time limit of %.0f s",
                          absl::ToDoubleSeconds(o.cpu_time)));
    case sandbox::ChildExit::Reason::kSignaled:
    case sandbox::ChildExit::Reason::kExited:
    case sandbox::ChildExit::Reason::kProtocol:
      break;
  }
  absl::Status s = absl::InternalError(absl::StrCat("the worker process running the model ", how,
                                                    " before it reported a result"));
  s.SetPayload(jobs::kWorkerCrashPayload, absl::Cord(how));
  return s;
}

// Bytes free for unprivileged writes on the filesystem holding `dir`, or -1.
int64_t FreeBytes(const std::string& dir) {
  struct statvfs st;
  if (statvfs(dir.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

// A child's error as the client reads it: never the server path of its
// working directory, and RESOURCE_EXHAUSTED when it failed because the disk
// holding that directory filled up (LibTorch's writers say "file write
// failed", not ENOSPC).
v1::ErrorStatus PublicError(v1::ErrorStatus e, const std::string& workdir,
                            const std::string& work_root) {
  std::string message = absl::StrReplaceAll(e.message(), {{workdir, "<scratch>"}});
  const auto code = static_cast<absl::StatusCode>(e.code());
  if (code != absl::StatusCode::kOk && code != absl::StatusCode::kCancelled &&
      code != absl::StatusCode::kDeadlineExceeded) {
    const int64_t free_bytes = FreeBytes(work_root);
    if (free_bytes >= 0 && free_bytes < kDiskFullBytes) {
      fprintf(stderr, "compressd: storage error: %s has %lld bytes free; a worker process failed: %s\n",
              work_root.c_str(), static_cast<long long>(free_bytes), e.message().c_str());
      e.set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
      message = absl::StrCat("the server's storage is full: the job's worker process could not "
                             "write its scratch files (", message, ")");
    }
  }
  e.set_message(message);
  return e;
}

// Runs one task in a child; `on_event` sees every event but `done`. An
// error from `on_event` (storing an artifact on a full disk, say) ends the
// child and is the result: it is the server's answer, not a crash.
absl::StatusOr<in::ChildEvent::Done> RunChild(
    const WorkerOptions& options, const std::string& name, const in::ChildTask& task,
    absl::Duration deadline, const std::function<absl::Status(const in::ChildEvent&,
                                                              const std::string& workdir)>& on_event,
    const std::function<absl::Status()>& check, sandbox::ChildExit* exit_out) {
  ASSIGN_OR_RETURN(const std::string workdir, MakeWorkDir(options.work_root, name));
  auto remove_workdir = absl::MakeCleanup([&workdir] {
    std::error_code ec;
    fs::remove_all(workdir, ec);
  });
  sandbox::ChildOptions child_options = ChildOptionsFor(options, workdir);
  child_options.deadline = deadline;
  ASSIGN_OR_RETURN(auto child, sandbox::ChildProcess::Spawn(child_options, task.SerializeAsString()));
  std::optional<in::ChildEvent::Done> done;
  absl::Status event_error;
  *exit_out = child->Run(
      [&](absl::string_view frame) -> absl::Status {
        in::ChildEvent event;
        if (!event.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
          return absl::InternalError("unparsable event");
        }
        if (event.has_done()) {
          done = event.done();
          return absl::OkStatus();
        }
        event_error = on_event(event, workdir);
        return event_error;
      },
      check);
  if (!event_error.ok()) return event_error;
  if (!done) return FromExit(*exit_out, options);
  if (done->has_error()) {
    *done->mutable_error() = PublicError(done->error(), workdir, options.work_root);
  }
  return *std::move(done);
}

void LogExit(const std::string& what, const sandbox::ChildExit& exit) {
  if (exit.reason == sandbox::ChildExit::Reason::kExited && exit.exit_code == 0) return;
  fprintf(stderr, "compressd: %s: worker process %s after %.1f s (peak RSS %.0f MiB)\n",
          what.c_str(), exit.Describe().c_str(), exit.wall_seconds,
          static_cast<double>(exit.max_rss_bytes) / (1 << 20));
}

}  // namespace

absl::Status CleanWorkRoot(const std::string& work_root) {
  std::error_code ec;
  if (!fs::exists(work_root, ec)) return absl::OkStatus();
  for (const auto& entry : fs::directory_iterator(work_root, ec)) {
    fs::remove_all(entry.path(), ec);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot clean ", work_root, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<v1::JobResult> ChildJobRunner::Run(const pipeline::JobKindHandler& handler,
                                                  pipeline::JobContext& context) {
  const v1::Job& job = context.job();
  in::ChildTask task;
  task.set_threads(options_.threads);
  in::RunJobTask* run = task.mutable_run_job();
  *run->mutable_job() = job;
  run->set_device(context.device());
  // The snapshot: every id the spec reads, as whatever it is. The child
  // sees nothing else of the store.
  pipeline::Resources& resources = context.resources();
  for (const std::string& id : handler.ReferencedIds(job.spec())) {
    if (auto m = resources.GetModel(id); m.ok()) {
      (*run->mutable_models())[id] = *m;
      (*run->mutable_model_paths())[id] = resources.ModelPath(id);
    }
    if (auto d = resources.GetDataset(id); d.ok()) {
      (*run->mutable_datasets())[id] = *d;
      (*run->mutable_dataset_paths())[id] = resources.DatasetPath(id);
    }
    if (auto j = resources.GetJob(id); j.ok()) (*run->mutable_jobs())[id] = *j;
  }
  run->set_builtin_data_dir(resources.BuiltinDataDir());
  const absl::Time deadline = context.cancel().deadline();
  if (deadline != absl::InfiniteFuture()) {
    run->set_deadline_unix_seconds(absl::ToDoubleSeconds(deadline - absl::UnixEpoch()));
  }
  // The child stops itself at the deadline; the parent's own limit, a grace
  // later, ends one that does not.
  const absl::Duration wall = deadline == absl::InfiniteFuture()
                                  ? absl::InfiniteDuration()
                                  : std::max(absl::ZeroDuration(), deadline - absl::Now()) +
                                        options_.grace;
  engine::ProgressSink& progress = context.progress();
  auto on_event = [&](const in::ChildEvent& e, const std::string& workdir) -> absl::Status {
    switch (e.event_case()) {
      case in::ChildEvent::kStageStart:
        progress.StageStart(e.stage_start().stage(), e.stage_start().index(),
                            e.stage_start().count());
        break;
      case in::ChildEvent::kStageEnd:
        progress.StageEnd(e.stage_end().stage());
        break;
      case in::ChildEvent::kProgress:
        progress.Progress(e.progress().stage(), e.progress().done(), e.progress().total());
        break;
      case in::ChildEvent::kLog:
        progress.Log(e.log().level(), e.log().message());
        break;
      case in::ChildEvent::kPartialResult:
        progress.PartialResult(e.partial_result().key(), e.partial_result().json());
        break;
      case in::ChildEvent::kArtifact: {
        const fs::path file = fs::path(workdir) / e.artifact().file();
        // Only plain files directly in the working directory.
        if (file.parent_path() != fs::path(workdir) || fs::is_symlink(file)) {
          return absl::InternalError("artifact outside the working directory");
        }
        ASSIGN_OR_RETURN(const std::string bytes, ReadFile(file.string()));
        RETURN_IF_ERROR(
            context.AddArtifact(e.artifact().name(), e.artifact().content_type(), bytes).status());
        break;
      }
      case in::ChildEvent::kDone:
      case in::ChildEvent::EVENT_NOT_SET:
        break;
    }
    return absl::OkStatus();
  };
  sandbox::ChildExit exit;
  absl::StatusOr<in::ChildEvent::Done> done =
      RunChild(options_, job.id(), task, wall, on_event,
               [&context] { return context.cancel().Check(); }, &exit);
  LogExit(absl::StrCat("job ", job.id(), " attempt ", job.attempts()), exit);
  if (!done.ok()) return done.status();
  if (done->has_error() && done->error().code() != 0) return FromError(done->error());
  if (!done->has_result()) return absl::InternalError("the worker process reported no result");
  return done->result();
}

namespace {

// Validation failures are the upload's: whatever the loader did to the
// child is reported as INVALID_ARGUMENT naming it.
absl::StatusOr<in::ChildEvent::Done> Describe(const WorkerOptions& options,
                                              const in::ChildTask& task, const char* what) {
  sandbox::ChildExit exit;
  auto ignore = [](const in::ChildEvent&, const std::string&) { return absl::OkStatus(); };
  absl::StatusOr<in::ChildEvent::Done> done =
      RunChild(options, "upload", task, options.describe_deadline, ignore, nullptr, &exit);
  LogExit(absl::StrCat("validating an uploaded ", what), exit);
  if (done.ok()) {
    if (done->has_error() && done->error().code() != 0) {
      absl::Status s = FromError(done->error());
      if (absl::IsResourceExhausted(s)) return absl::InvalidArgumentError(s.message());
      return s;
    }
    return done;
  }
  switch (exit.reason) {
    case sandbox::ChildExit::Reason::kDeadline:
      return absl::InvalidArgumentError(absl::StrFormat(
          "loading the %s did not finish within %.0f s", what,
          absl::ToDoubleSeconds(options.describe_deadline)));
    case sandbox::ChildExit::Reason::kSignaled:
    case sandbox::ChildExit::Reason::kCpuLimit:
    case sandbox::ChildExit::Reason::kExited:
    case sandbox::ChildExit::Reason::kProtocol:
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", std::string(what) == "model" ? "TorchScript loader" : "dataset reader",
          " crashed on this ", std::string(what) == "model" ? "archive" : "file", ": ",
          exit.Describe()));
    case sandbox::ChildExit::Reason::kCancelled:
      break;
  }
  return done.status();
}

}  // namespace

absl::StatusOr<v1::Model> ChildDescriber::DescribeModel(const std::string& path) {
  in::ChildTask task;
  task.set_threads(1);
  task.mutable_describe_model()->set_path(path);
  ASSIGN_OR_RETURN(in::ChildEvent::Done done, Describe(options_, task, "model"));
  if (!done.has_model()) return absl::InternalError("the worker process described no model");
  return done.model();
}

absl::StatusOr<v1::Dataset> ChildDescriber::DescribeDataset(const std::string& path) {
  in::ChildTask task;
  task.set_threads(1);
  task.mutable_describe_dataset()->set_path(path);
  ASSIGN_OR_RETURN(in::ChildEvent::Done done, Describe(options_, task, "dataset"));
  if (!done.has_dataset()) return absl::InternalError("the worker process described no dataset");
  return done.dataset();
}

absl::StatusOr<v1::Dataset> ChildDescriber::DescribeBuiltinDataset(const std::string& id,
                                                                   const std::string& dir) {
  return catalog::EngineDescriber().DescribeBuiltinDataset(id, dir);
}

}  // namespace compress::worker
