#include "server/sandbox/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/sandbox/seccomp.h"

namespace compress::sandbox {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(100);

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev) : absl::StrCat("signal ", sig);
}

// Runs in the forked child before exec: only async-signal-safe calls.
[[noreturn]] void ExecChild(int stdin_fd, int event_fd, const char* workdir,
                            const struct rlimit* as, const struct rlimit* cpu, char* const* argv,
                            char* const* envp, const struct sock_fprog* seccomp, pid_t parent) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(126);  // the parent died before prctl
  // The server blocks SIGTERM/SIGINT in every thread and may ignore SIGPIPE;
  // the child starts with default dispositions and nothing blocked.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  if (dup2(stdin_fd, 0) < 0 || dup2(event_fd, kEventFd) < 0) _exit(126);
  if (syscall(SYS_close_range, kEventFd + 1, ~0U, 0) != 0) {
    for (int fd = kEventFd + 1; fd < 65536; ++fd) close(fd);
  }
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  if (as != nullptr && setrlimit(RLIMIT_AS, as) != 0) _exit(126);
  if (cpu != nullptr && setrlimit(RLIMIT_CPU, cpu) != 0) _exit(126);
  if (chdir(workdir) != 0) _exit(126);
  // Last, so that nothing above runs under it; execve itself is allowed.
  if (seccomp != nullptr && InstallSeccompProgram(*seccomp) != 0) {
    static const char kMessage[] = "compress sandbox: could not install the seccomp filter\n";
    ssize_t ignored = write(2, kMessage, sizeof(kMessage) - 1);
    (void)ignored;
    _exit(126);
  }
  execve(argv[0], argv, envp);
  _exit(127);
}

}  // namespace

std::vector<std::string> DefaultPassEnv() {
  return {"LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
          "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "COMPRESS_OPENBLAS_CORETYPE_CHOSEN",
          "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TZ"};
}

std::string ChildExit::Describe() const {
  switch (reason) {
    case Reason::kExited:
      return absl::StrCat("exited with code ", exit_code);
    case Reason::kSignaled:
      return absl::StrCat("killed by signal ", signal, " (", SignalName(signal), ")");
    case Reason::kCancelled:
      return "ended by the server: cancelled";
    case Reason::kDeadline:
      return "ended by the server: deadline exceeded";
    case Reason::kCpuLimit:
      return absl::StrCat("ran out of its CPU time limit (", SignalName(signal), ")");
    case Reason::kProtocol:
      return "sent a malformed event and was killed";
  }
  return "ended";
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const ChildOptions& options,
                                                                   absl::string_view stdin_bytes) {
  if (options.argv.empty()) return absl::InvalidArgumentError("child argv is empty");
  // A child that dies before reading its stdin must not kill the server.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { signal(SIGPIPE, SIG_IGN); });

  // Everything the child needs is built before fork (no allocation after).
  std::vector<std::string> env = {"PATH=/usr/local/bin:/usr/bin:/bin",
                                  absl::StrCat("HOME=", options.workdir),
                                  absl::StrCat("TMPDIR=", options.workdir), "LANG=C.UTF-8"};
  for (const std::string& name : options.pass_env) {
    const char* value = std::getenv(name.c_str());
    if (value != nullptr) env.push_back(absl::StrCat(name, "=", value));
  }
  std::vector<char*> argv, envp;
  for (const std::string& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  struct rlimit as_limit, cpu_limit;
  const struct rlimit* as = nullptr;
  const struct rlimit* cpu = nullptr;
  if (options.memory_bytes > 0) {
    as_limit.rlim_cur = as_limit.rlim_max = static_cast<rlim_t>(options.memory_bytes);
    as = &as_limit;
  }
  if (options.cpu_time != absl::InfiniteDuration()) {
    // SIGXCPU at the soft limit, SIGKILL 5 s of CPU later.
    const double seconds = std::ceil(absl::ToDoubleSeconds(options.cpu_time));
    cpu_limit.rlim_cur = static_cast<rlim_t>(std::max(1.0, seconds));
    cpu_limit.rlim_max = cpu_limit.rlim_cur + 5;
    cpu = &cpu_limit;
  }
  std::vector<sock_filter> seccomp_program;
  struct sock_fprog seccomp_fprog = {};
  if (options.seccomp) {
    absl::StatusOr<std::vector<sock_filter>> program = ChildSeccompProgram();
    if (!program.ok()) return program.status();
    seccomp_program = *std::move(program);
    seccomp_fprog.len = static_cast<unsigned short>(seccomp_program.size());
    seccomp_fprog.filter = seccomp_program.data();
  }

  int in_pipe[2], event_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  if (pipe2(event_pipe, O_CLOEXEC) != 0) {
    close(in_pipe[0]);
    close(in_pipe[1]);
    return Errno("pipe");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {in_pipe[0], in_pipe[1], event_pipe[0], event_pipe[1]}) close(fd);
    return Errno("fork");
  }
  if (pid == 0) {
    ExecChild(in_pipe[0], event_pipe[1], options.workdir.c_str(), as, cpu, argv.data(), envp.data(),
              options.seccomp ? &seccomp_fprog : nullptr, parent);
  }
  // Also from here, in case the child has not run setpgid yet when we signal.
  setpgid(pid, pid);
  close(in_pipe[0]);
  close(event_pipe[1]);
  std::unique_ptr<ChildProcess> child(new ChildProcess(pid, event_pipe[0], options));
  // The task is small (a spec and resource rows); a child that exits early
  // makes write fail with EPIPE, which Run then reports as its exit.
  size_t written = 0;
  while (written < stdin_bytes.size()) {
    ssize_t n = write(in_pipe[1], stdin_bytes.data() + written, stdin_bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  close(in_pipe[1]);
  return child;
}

ChildProcess::ChildProcess(pid_t pid, int event_fd, const ChildOptions& options)
    : pid_(pid), event_fd_(event_fd), options_(options), start_(absl::Now()) {}

ChildProcess::~ChildProcess() {
  if (!reaped_) {
    Signal(SIGKILL);
    int status;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  CloseFd(event_fd_);
}

void ChildProcess::Signal(int sig) {
  // The process group: whatever the model's code forked goes too.
  if (kill(-pid_, sig) != 0) kill(pid_, sig);
}

void ChildProcess::Terminate() { terminate_requested_.store(true); }

ChildExit ChildProcess::Run(const std::function<absl::Status(absl::string_view)>& on_frame,
                            const std::function<absl::Status()>& check) {
  std::string buffer;
  bool eof = false;
  bool killed_by_us = false;
  ChildExit::Reason our_reason = ChildExit::Reason::kCancelled;
  absl::Time kill_at = absl::InfiniteFuture();
  const absl::Time deadline = options_.deadline == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : start_ + options_.deadline;
  auto end_child = [&](ChildExit::Reason reason) {
    if (killed_by_us) return;
    killed_by_us = true;
    our_reason = reason;
    Signal(SIGTERM);
    kill_at = absl::Now() + options_.grace;
  };
  char chunk[65536];
  while (true) {
    if (!eof) {
      struct pollfd p = {event_fd_, POLLIN, 0};
      int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kPollInterval)));
      if (ready > 0) {
        ssize_t n = read(event_fd_, chunk, sizeof(chunk));
        if (n > 0) {
          buffer.append(chunk, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          eof = true;
        }
      }
      // Complete frames in the buffer.
      size_t offset = 0;
      while (buffer.size() - offset >= 4) {
        const unsigned char* b = reinterpret_cast<const unsigned char*>(buffer.data() + offset);
        const uint32_t len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
        if (len > kMaxFrameBytes) {
          end_child(ChildExit::Reason::kProtocol);
          kill_at = absl::Now();
          offset = buffer.size();
          break;
        }
        if (buffer.size() - offset - 4 < len) break;
        if (!killed_by_us || our_reason != ChildExit::Reason::kProtocol) {
          absl::Status s = on_frame(absl::string_view(buffer.data() + offset + 4, len));
          if (!s.ok()) {
            end_child(ChildExit::Reason::kProtocol);
            kill_at = absl::Now();
          }
        }
        offset += 4 + len;
      }
      buffer.erase(0, offset);
    } else {
      int status;
      struct rusage usage;
      pid_t r = wait4(pid_, &status, WNOHANG, &usage);
      if (r == pid_) {
        reaped_ = true;
        ChildExit exit;
        exit.wall_seconds = absl::ToDoubleSeconds(absl::Now() - start_);
        exit.max_rss_bytes = int64_t{usage.ru_maxrss} * 1024;
        if (WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
        if (killed_by_us) {
          exit.reason = our_reason;
        } else if (WIFSIGNALED(status)) {
          exit.reason = exit.signal == SIGXCPU ? ChildExit::Reason::kCpuLimit
                                               : ChildExit::Reason::kSignaled;
        } else {
          exit.reason = ChildExit::Reason::kExited;
          exit.exit_code = WEXITSTATUS(status);
        }
        return exit;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    const absl::Time now = absl::Now();
    if (!killed_by_us) {
      if (terminate_requested_.load()) {
        end_child(ChildExit::Reason::kCancelled);
      } else if (now >= deadline) {
        end_child(ChildExit::Reason::kDeadline);
      } else if (check) {
        absl::Status s = check();
        if (!s.ok()) {
          end_child(absl::IsDeadlineExceeded(s) ? ChildExit::Reason::kDeadline
                                                : ChildExit::Reason::kCancelled);
        }
      }
    }
    if (killed_by_us && now >= kill_at) {
      Signal(SIGKILL);
      kill_at = absl::InfiniteFuture();
      eof = true;  // a killed child's fd closes; stop reading and reap
    }
  }
}

bool WriteFrame(int fd, absl::string_view bytes) {
  const uint32_t len = static_cast<uint32_t>(bytes.size());
  unsigned char header[4] = {static_cast<unsigned char>(len & 0xff),
                             static_cast<unsigned char>((len >> 8) & 0xff),
                             static_cast<unsigned char>((len >> 16) & 0xff),
                             static_cast<unsigned char>((len >> 24) & 0xff)};
  std::string frame(reinterpret_cast<const char*>(header), 4);
  frame.append(bytes.data(), bytes.size());
  size_t written = 0;
  while (written < frame.size()) {
    ssize_t n = write(fd, frame.data() + written, frame.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    written += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace compress::sandbox
