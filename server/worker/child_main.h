// The child side of a worker process: `compressd --role=child` reads one
// ChildTask (proto/compress/internal/worker.proto) from stdin, runs it with
// the engine (a job kind's handler, or the catalog's EngineDescriber) and
// writes ChildEvents to fd 3, ending with `done`. SIGTERM cancels the job
// cooperatively; the parent kills the process if that is not enough.
#ifndef COMPRESS_WORKER_CHILD_MAIN_H_
#define COMPRESS_WORKER_CHILD_MAIN_H_

namespace compress::worker {

// The process's exit code: 0 after `done` was written (even for a failed
// job: the failure is in the event), 2 when the task could not be read or
// the parent is gone.
int RunChildMain();

}  // namespace compress::worker

#endif  // COMPRESS_WORKER_CHILD_MAIN_H_
