// ChildProcess against real children (/bin/sh and friends): frames, exits,
// crashes, the parent's deadline and cancel (also for a child that ignores
// SIGTERM), memory and CPU limits, the environment allow-list, fds, and no
// orphans when the parent dies.
#include "server/sandbox/child_process.h"

#include <signal.h>
#include <stdlib.h>
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

}  // namespace
}  // namespace compress::sandbox
