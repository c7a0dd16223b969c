// ChildProcess: runs untrusted work (a model's code) in a process the server
// can kill, with resource limits, and reads what it reports.
//
// The child is exec'ed with: a fresh working directory, an environment built
// from an allow-list (no token file, TLS keys, database or blob credentials
// reach it), every file descriptor closed except stdin (the task bytes, then
// EOF), stdout/stderr (inherited, for logs) and fd 3 (its event stream to
// the parent), RLIMIT_AS / RLIMIT_CPU / RLIMIT_CORE=0, and PR_SET_PDEATHSIG so
// that it dies with the parent (a kill -9 of the server leaves no orphans),
// and optionally a seccomp filter (ChildOptions::seccomp).
// The parent enforces the wall-clock deadline and cancellation: SIGTERM to the
// child's process group, then SIGKILL after a grace period, so a forward pass
// that never returns ends all the same.
//
// Events on fd 3 are length-prefixed frames (4-byte little-endian length,
// then that many bytes), at most kMaxFrameBytes each.
//
//   ChildOptions o;
//   o.argv = {"/usr/bin/compressd", "--role=child"};
//   o.workdir = dir;
//   ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn(o, task_bytes));
//   ChildExit exit = child->Run([&](absl::string_view frame) { ... },
//                               [&] { return cancel.Check(); });
//
// Thread safety: one thread drives a ChildProcess (Run); Terminate may be
// called from any thread.
#ifndef COMPRESS_SANDBOX_CHILD_PROCESS_H_
#define COMPRESS_SANDBOX_CHILD_PROCESS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace compress::sandbox {

inline constexpr uint32_t kMaxFrameBytes = 64u << 20;  // 64 MiB
inline constexpr int kEventFd = 3;

struct ChildOptions {
  std::vector<std::string> argv;  // argv[0] is the executable's path
  std::string workdir;            // must exist; the child's cwd, HOME and TMPDIR
  // Address-space limit in bytes (RLIMIT_AS); 0 = none. Not for CUDA
  // children: the driver reserves far more address space than it uses.
  int64_t memory_bytes = 0;
  absl::Duration cpu_time = absl::InfiniteDuration();   // RLIMIT_CPU; default none
  absl::Duration deadline = absl::InfiniteDuration();   // wall clock from Spawn; default none
  absl::Duration grace = absl::Seconds(5);  // SIGTERM -> SIGKILL
  // Environment variables passed through when the parent has them (on top
  // of PATH, HOME, TMPDIR and LANG, which are always set); see DefaultEnv().
  std::vector<std::string> pass_env;
  // Installs a seccomp filter (server/sandbox/seccomp.h) in the child right
  // before execve, after PR_SET_NO_NEW_PRIVS; it holds for the exec'ed
  // program and everything it starts. A deny-list, everything else allowed
  // (LibTorch, OpenBLAS, OpenMP and CUDA need a wide set of syscalls). It
  // denies, for code that exploits the model loader:
  //  - network exfiltration and lateral movement: socket() of any family but
  //    AF_UNIX (no TCP/UDP/raw/netlink/packet sockets) fails with EPERM;
  //  - tampering with other processes: ptrace, process_vm_readv/writev;
  //  - kernel attack surface and system state: namespaces (unshare, setns,
  //    clone with CLONE_NEW*; clone3 gets ENOSYS so glibc uses clone), mount
  //    and friends, chroot, pivot_root, kernel modules, kexec, bpf,
  //    perf_event_open, keyrings, userfaultfd, io_uring, open_by_handle_at,
  //    reboot, swap, acct, setting the clock: EPERM;
  //  - syscalls of a foreign ABI (i386, x32), which would bypass the numbers
  //    above: the process is killed with SIGSYS.
  // It does not stop the child from reading (or writing) files its user can,
  // from using AF_UNIX sockets, or from using CPU and memory within the limits
  // above: run it as a dedicated user with volume permissions for that.
  // Spawn fails with FAILED_PRECONDITION on an architecture the filter is not
  // built for (only x86_64 and aarch64), rather than run without it.
  bool seccomp = false;
};

// Names the parent's environment may pass to a child: thread and BLAS
// settings, the library path. Never credentials.
std::vector<std::string> DefaultPassEnv();

// How a child ended.
struct ChildExit {
  enum class Reason {
    kExited,      // exit(code)
    kSignaled,    // killed by a signal nobody here sent (a crash, the OOM killer)
    kCancelled,   // the parent ended it because the caller cancelled
    kDeadline,    // the parent ended it at the wall-clock deadline
    kCpuLimit,    // SIGXCPU/SIGKILL at RLIMIT_CPU
    kProtocol,    // it sent a malformed or oversized frame; the parent killed it
  };
  Reason reason = Reason::kExited;
  int exit_code = 0;  // kExited
  int signal = 0;     // the signal that ended it, when one did
  double wall_seconds = 0;
  int64_t max_rss_bytes = 0;  // peak resident set (rusage of the child)
  // "exited with code 1", "killed by signal 11 (SIGSEGV)", ...
  std::string Describe() const;
};

class ChildProcess {
 public:
  // Starts the child and writes `stdin_bytes` to its stdin (then closes it).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const ChildOptions& options,
                                                              absl::string_view stdin_bytes);
  ~ChildProcess();  // kills and reaps a child still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads frames until the child closes fd 3 and exits, calling `on_frame`
  // for each (a non-OK return kills the child: kProtocol). `check` is polled
  // about every 100 ms; a non-OK status (cancelled, deadline) ends the child
  // with SIGTERM, then SIGKILL after the grace period.
  ChildExit Run(const std::function<absl::Status(absl::string_view)>& on_frame,
                const std::function<absl::Status()>& check);

  // SIGTERM now, SIGKILL after the grace period (from Run's loop).
  void Terminate();

  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int event_fd, const ChildOptions& options);
  void Signal(int sig);

  const pid_t pid_;
  int event_fd_;
  const ChildOptions options_;
  const absl::Time start_;
  std::atomic<bool> terminate_requested_{false};
  bool reaped_ = false;
};

// Frame helpers, for the child side and for tests.
// Writes one frame to `fd`; false when the parent is gone.
bool WriteFrame(int fd, absl::string_view bytes);

}  // namespace compress::sandbox

#endif  // COMPRESS_SANDBOX_CHILD_PROCESS_H_
