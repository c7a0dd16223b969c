// ChildProcess against real children (/bin/sh and friends): frames, exits,
// crashes, the parent's deadline and cancel (also for a child that ignores
// SIGTERM), memory and CPU limits, the environment allow-list, fds, no
// orphans when the parent dies, and the seccomp filter (each denial shown
// against the same child without it, so the filter is what made the
// difference).
#include "server/sandbox/child_process.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/sandbox/seccomp.h"
#include "tests/test_util.h"

namespace compress::sandbox {
namespace {

using ::compress::testutil::ScopedTempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Reason = ChildExit::Reason;

class ChildProcessTest : public ::testing::Test {
 protected:
  ChildOptions Shell(const std::string& script) {
    ChildOptions o;
    o.argv = {"/bin/sh", "-c", script};
    o.workdir = dir_.path();
    o.grace = absl::Milliseconds(500);
    return o;
  }

  // Runs to the end; collects the frames.
  ChildExit RunAll(const ChildOptions& o, const std::string& input = "",
                   std::function<absl::Status()> check = nullptr) {
    auto child = ChildProcess::Spawn(o, input);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return ChildExit();
    return (*child)->Run(
        [this](absl::string_view f) {
          frames_.emplace_back(f);
          return absl::OkStatus();
        },
        std::move(check));
  }

  // Runs argv with stderr (and stdout) to a file in the workdir; returns the
  // exit and sets `output` to what it wrote.
  ChildExit RunCapturing(std::vector<std::string> argv, bool seccomp, std::string* output) {
    ChildOptions o;
    std::string command;
    for (const std::string& a : argv) absl::StrAppend(&command, " '", a, "'");
    o.argv = {"/bin/sh", "-c", absl::StrCat("exec >out.txt 2>&1;", command)};
    o.workdir = dir_.path();
    o.seccomp = seccomp;
    ChildExit exit = RunAll(o);
    std::ifstream in(dir_.path() + "/out.txt");
    output->assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return exit;
  }

  ScopedTempDir dir_;
  std::vector<std::string> frames_;
};

// printf of one frame: 4-byte little-endian length, then the bytes.
std::string FrameScript(const std::string& payload) {
  std::string octal;
  const uint32_t n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) absl::StrAppend(&octal, "\\", absl::StrFormat("%03o", (n >> (8 * i)) & 0xff));
  return absl::StrCat("printf '", octal, "%s' '", payload, "' >&3");
}

TEST_F(ChildProcessTest, FramesAndStdinArriveAndTheExitCodeIsKept) {
  const std::string script =
      absl::StrCat(FrameScript("hello"), "; read line; ", "printf '\\005\\000\\000\\000%s' \"$line\" >&3; exit 7");
  ChildExit exit = RunAll(Shell(script), "world\n");
  EXPECT_EQ(exit.reason, Reason::kExited);
  EXPECT_EQ(exit.exit_code, 7);
  EXPECT_EQ(exit.Describe(), "exited with code 7");
  EXPECT_THAT(frames_, ElementsAre("hello", "world"));
}

TEST_F(ChildProcessTest, ACrashNamesTheSignal) {
  ChildExit exit = RunAll(Shell("kill -SEGV $$"));
  EXPECT_EQ(exit.reason, Reason::kSignaled);
  EXPECT_EQ(exit.signal, SIGSEGV);
  EXPECT_EQ(exit.Describe(), "killed by signal 11 (SIGSEGV)");
}

TEST_F(ChildProcessTest, TheDeadlineEndsAChildThatIgnoresSigterm) {
  ChildOptions o = Shell("trap '' TERM; while :; do :; done");
  o.deadline = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  ChildExit exit = RunAll(o);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(exit.reason, Reason::kDeadline);
  EXPECT_EQ(exit.signal, SIGKILL);  // SIGTERM was ignored: the grace ran out
  EXPECT_GE(took, absl::Milliseconds(300) + o.grace);
  EXPECT_LT(took, absl::Seconds(5));
}

TEST_F(ChildProcessTest, CancelEndsTheChildWithSigtermFirst) {
  std::atomic<bool> cancelled{false};
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(200));
    cancelled = true;
  });
  ChildExit exit = RunAll(Shell("sleep 30"), "", [&]() -> absl::Status {
    return cancelled ? absl::CancelledError("cancel") : absl::OkStatus();
  });
  canceller.join();
  EXPECT_EQ(exit.reason, Reason::kCancelled);
  EXPECT_EQ(exit.signal, SIGTERM);
  EXPECT_LT(exit.wall_seconds, 3);
}

TEST_F(ChildProcessTest, TheMemoryLimitStopsAnAllocation) {
  // python3 without the limit allocates 1 GiB happily; with 256 MiB it gets
  // MemoryError and exits 3.
  ChildOptions o;
  o.argv = {"/usr/bin/python3", "-c",
            "import sys\ntry:\n  b = bytearray(1 << 30)\nexcept MemoryError:\n  sys.exit(3)\n"};
  o.workdir = dir_.path();
  o.memory_bytes = int64_t{256} << 20;
  ChildExit limited = RunAll(o);
  EXPECT_EQ(limited.reason, Reason::kExited);
  EXPECT_EQ(limited.exit_code, 3);
  o.memory_bytes = 0;
  ChildExit unlimited = RunAll(o);
  EXPECT_EQ(unlimited.exit_code, 0);
  EXPECT_GT(unlimited.max_rss_bytes, int64_t{1} << 30);
}

TEST_F(ChildProcessTest, TheCpuLimitEndsASpinningChild) {
  ChildOptions o = Shell("while :; do :; done");
  o.cpu_time = absl::Seconds(1);
  ChildExit exit = RunAll(o);
  EXPECT_EQ(exit.reason, Reason::kCpuLimit);
  EXPECT_EQ(exit.signal, SIGXCPU);
  EXPECT_THAT(exit.Describe(), HasSubstr("CPU time limit"));
}

TEST_F(ChildProcessTest, EnvironmentIsAnAllowListAndTheWorkdirIsHome) {
  setenv("COMPRESSD_TOKEN_FILE", "/secret/tokens", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "hunter2", 1);
  setenv("OMP_NUM_THREADS", "3", 1);
  ChildOptions o = Shell(absl::StrCat("env > env.txt; pwd > pwd.txt; ls /proc/self/fd > fds.txt"));
  o.pass_env = DefaultPassEnv();
  ChildExit exit = RunAll(o);
  ASSERT_EQ(exit.exit_code, 0);
  std::ifstream env_file(dir_.path() + "/env.txt");
  std::string env((std::istreambuf_iterator<char>(env_file)), std::istreambuf_iterator<char>());
  EXPECT_THAT(env, HasSubstr("OMP_NUM_THREADS=3"));
  EXPECT_THAT(env, HasSubstr(absl::StrCat("HOME=", dir_.path())));
  EXPECT_THAT(env, ::testing::Not(HasSubstr("COMPRESSD_TOKEN_FILE")));
  EXPECT_THAT(env, ::testing::Not(HasSubstr("hunter2")));
  std::ifstream pwd_file(dir_.path() + "/pwd.txt");
  std::string pwd;
  std::getline(pwd_file, pwd);
  EXPECT_EQ(pwd, dir_.path());
  // stdin, stdout, stderr, the event fd and ls's own directory fd: nothing
  // of the parent's (this test binary has more open).
  std::ifstream fds_file(dir_.path() + "/fds.txt");
  std::vector<std::string> fds;
  for (std::string l; std::getline(fds_file, l);) fds.push_back(l);
  EXPECT_LE(fds.size(), 5u) << absl::StrJoin(fds, " ");
  unsetenv("COMPRESSD_TOKEN_FILE");
  unsetenv("AWS_SECRET_ACCESS_KEY");
}

TEST_F(ChildProcessTest, AnOversizedFrameKillsTheChild) {
  ChildExit exit = RunAll(Shell("printf '\\377\\377\\377\\377' >&3; sleep 30"));
  EXPECT_EQ(exit.reason, Reason::kProtocol);
  EXPECT_TRUE(frames_.empty());
}

TEST_F(ChildProcessTest, ChildrenDieWithTheirParent) {
  // A middle process spawns a sandboxed `sleep` and is then killed -9: the
  // child must not outlive it (PR_SET_PDEATHSIG).
  const std::string pid_file = dir_.path() + "/child.pid";
  pid_t middle = fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    ChildOptions o;
    o.argv = {"/bin/sh", "-c", absl::StrCat("echo $$ > ", pid_file, "; exec sleep 60")};
    o.workdir = dir_.path();
    auto child = ChildProcess::Spawn(o, "");
    if (!child.ok()) _exit(1);
    pause();
    _exit(0);
  }
  pid_t sleeper = 0;
  for (int i = 0; i < 200 && sleeper == 0; ++i) {
    std::ifstream in(pid_file);
    if (!(in >> sleeper)) sleeper = 0;
    if (sleeper == 0) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GT(sleeper, 0);
  EXPECT_EQ(kill(sleeper, 0), 0);
  kill(middle, SIGKILL);
  waitpid(middle, nullptr, 0);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    // A zombie reparented to init is reaped soon; a live one answers kill 0
    // and is not a zombie.
    std::ifstream stat(absl::StrCat("/proc/", sleeper, "/stat"));
    std::string line;
    gone = !std::getline(stat, line) || absl::StrContains(line, ") Z ");
    if (!gone) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(gone) << "sleep " << sleeper << " outlived its parent";
}

TEST_F(ChildProcessTest, SeccompDeniesTcpConnections) {
  // Port 9 (discard) on loopback refuses: without the filter the connect
  // reaches the kernel's TCP stack, with it socket() already fails.
  const std::vector<std::string> argv = {"/bin/bash", "-c",
                                         "exec 5<>/dev/tcp/127.0.0.1/9 || exit 9; echo connected"};
  std::string output;
  ChildExit open = RunCapturing(argv, /*seccomp=*/false, &output);
  EXPECT_EQ(open.exit_code, 9) << output;
  EXPECT_THAT(output, HasSubstr("Connection refused"));
  ChildExit filtered = RunCapturing(argv, /*seccomp=*/true, &output);
  EXPECT_EQ(filtered.reason, Reason::kExited);
  EXPECT_EQ(filtered.exit_code, 9) << output;
  EXPECT_THAT(output, HasSubstr("Operation not permitted"));
  EXPECT_THAT(output, ::testing::Not(HasSubstr("Connection refused")));
}

TEST_F(ChildProcessTest, SeccompDeniesUserNamespaces) {
  const std::vector<std::string> argv = {"/usr/bin/unshare", "--user", "true"};
  std::string output;
  ChildExit open = RunCapturing(argv, /*seccomp=*/false, &output);
  EXPECT_EQ(open.exit_code, 0) << output;
  ChildExit filtered = RunCapturing(argv, /*seccomp=*/true, &output);
  EXPECT_EQ(filtered.reason, Reason::kExited);
  EXPECT_NE(filtered.exit_code, 0);
  EXPECT_THAT(output, HasSubstr("Operation not permitted"));
}

TEST_F(ChildProcessTest, SeccompDeniesOnlyWhatItNames) {
  // One probe a line, "name=ok" or "name=ERRNO", from python3 with and
  // without the filter. AF_UNIX sockets, socketpair and threads (clone3 ->
  // ENOSYS -> glibc's fallback to clone) keep working.
  const std::string probe = absl::StrFormat(R"(
import ctypes, errno, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
def result(ok):
    return "ok" if ok else errno.errorcode[ctypes.get_errno()]
def sock(name, *args):
    try:
        socket.socket(*args).close()
        print(name + "=ok")
    except OSError as e:
        print(name + "=" + errno.errorcode[e.errno])
sock("unix", socket.AF_UNIX, socket.SOCK_STREAM)
sock("inet", socket.AF_INET, socket.SOCK_STREAM)
sock("inet6", socket.AF_INET6, socket.SOCK_DGRAM)
sock("netlink", socket.AF_NETLINK, socket.SOCK_RAW, 0)
sock("packet", socket.AF_PACKET, socket.SOCK_DGRAM, 0)
a, b = socket.socketpair()
a.sendall(b"x")
print("socketpair=" + ("ok" if b.recv(1) == b"x" else "bad"))
t = threading.Thread(target=lambda: None)
t.start()
t.join()
print("thread=ok")
# Not traced by anyone: ESRCH when the kernel gets to look.
print("ptrace=" + result(libc.ptrace(2, os.getpid(), 0, 0) == 0))
pid = libc.syscall(ctypes.c_long(%d), ctypes.c_long(0x10000000 | 17), 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
print("clone_newuser=" + result(pid > 0))
print("clone3=" + result(libc.syscall(ctypes.c_long(%d), 0, 0) == 0))
)",
                                            SYS_clone, SYS_clone3);
  const std::vector<std::string> argv = {"/usr/bin/python3", "-c", probe};
  std::string output;
  ChildExit open = RunCapturing(argv, /*seccomp=*/false, &output);
  EXPECT_EQ(open.exit_code, 0) << output;
  EXPECT_THAT(output, HasSubstr("unix=ok\ninet=ok\ninet6=ok\n"));
  EXPECT_THAT(output, HasSubstr("ptrace=ESRCH\nclone_newuser=ok\nclone3=EINVAL\n"));
  ChildExit filtered = RunCapturing(argv, /*seccomp=*/true, &output);
  EXPECT_EQ(filtered.exit_code, 0) << output;
  EXPECT_EQ(output,
            "unix=ok\ninet=EPERM\ninet6=EPERM\nnetlink=EPERM\npacket=EPERM\n"
            "socketpair=ok\nthread=ok\nptrace=EPERM\nclone_newuser=EPERM\nclone3=ENOSYS\n");
}

TEST_F(ChildProcessTest, AnOrdinaryChildWorksUnderSeccomp) {
  const std::string script = absl::StrCat(FrameScript("hello"), "; read line; ",
                                          "printf '\\005\\000\\000\\000%s' \"$line\" >&3; exit 7");
  ChildOptions o = Shell(script);
  o.seccomp = true;
  ChildExit exit = RunAll(o, "world\n");
  EXPECT_EQ(exit.reason, Reason::kExited);
  EXPECT_EQ(exit.exit_code, 7);
  EXPECT_THAT(frames_, ElementsAre("hello", "world"));
}

TEST_F(ChildProcessTest, SeccompModeIsOnlyInTheChild) {
  // The filter is installed after fork: the exec'ed child reports mode 2
  // (filter), the test process stays unfiltered.
  ChildOptions o = Shell("grep '^Seccomp:' /proc/self/status > mode.txt");
  o.seccomp = true;
  ASSERT_EQ(RunAll(o).exit_code, 0);
  std::ifstream in(dir_.path() + "/mode.txt");
  std::string mode;
  std::getline(in, mode);
  EXPECT_THAT(mode, HasSubstr("2"));
  std::ifstream self("/proc/self/status");
  std::string status((std::istreambuf_iterator<char>(self)), std::istreambuf_iterator<char>());
  EXPECT_THAT(status, HasSubstr("Seccomp:\t0"));
}

#if defined(__x86_64__) && !defined(__ILP32__)
// Runs `body` in a forked process (with the filter installed first when
// asked) and returns its wait status.
int ForkedStatus(const sock_fprog* filter, void (*body)()) {
  pid_t pid = fork();
  if (pid == 0) {
    if (filter != nullptr && InstallSeccompProgram(*filter) != 0) _exit(100);
    body();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

sock_fprog Fprog(std::vector<sock_filter>& program) {
  return {static_cast<unsigned short>(program.size()), program.data()};
}

TEST(SeccompProgramTest, X32SyscallsKillTheProcess) {
  absl::StatusOr<std::vector<sock_filter>> program = ChildSeccompProgram();
  ASSERT_TRUE(program.ok()) << program.status();
  const sock_fprog fprog = Fprog(*program);
  // getpid with __X32_SYSCALL_BIT: unfiltered it is getpid, or ENOSYS on
  // kernels without x32; filtered, SIGSYS.
  auto x32 = [] { syscall(0x40000000 | SYS_getpid); };
  int status = ForkedStatus(nullptr, x32);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  status = ForkedStatus(&fprog, x32);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) << status;
}

TEST(SeccompProgramTest, I386SyscallsKillTheProcess) {
  absl::StatusOr<std::vector<sock_filter>> program = ChildSeccompProgram();
  ASSERT_TRUE(program.ok()) << program.status();
  const sock_fprog fprog = Fprog(*program);
  // int $0x80 with 20 (getpid on i386; a filter that read nr without the
  // arch would take it for x86_64's number 20, writev).
  auto i386 = [] {
    long ret;
    asm volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    (void)ret;
  };
  int status = ForkedStatus(nullptr, i386);
  if (!WIFEXITED(status)) {
    GTEST_SKIP() << "this kernel runs no i386 syscalls (unfiltered int $0x80 ended with status "
                 << status << ")";
  }
  status = ForkedStatus(&fprog, i386);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) << status;
}
#endif

}  // namespace
}  // namespace compress::sandbox
