#include "tests/e2e/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

extern char** environ;

namespace compress::testutil {

ServerProcess::ServerProcess(const std::string& data_dir,
                             const std::vector<std::string>& extra_args,
                             const std::string& stderr_file) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  if (!stderr_file.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_file.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
  }
  std::string binary = BinaryDir() + "/server/compressd";
  std::vector<std::string> args = {binary, "--listen=127.0.0.1:0", "--metrics_listen=",
                                   "--data_dir=" + data_dir, "--drain_grace=1s"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  EXPECT_EQ(posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ), 0)
      << binary;
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  // The first stdout line says the server is SERVING and on which port.
  FILE* out = fdopen(fds[0], "r");
  char line[512] = {0};
  if (fgets(line, sizeof(line), out) != nullptr) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    if (words.size() > 4) port_ = std::atoi(words[4].c_str());
  }
  fclose(out);
  EXPECT_GT(port_, 0) << "compressd did not start: " << line;
}

ServerProcess::~ServerProcess() { Kill(SIGKILL); }

absl::Duration ServerProcess::Kill(int sig) {
  if (pid_ <= 0) return absl::ZeroDuration();
  const absl::Time start = absl::Now();
  kill(pid_, sig);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return absl::Now() - start;
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::unique_ptr<client::Client> Connect(const ServerProcess& server, const std::string& token) {
  client::Client::Options options;
  options.address = server.address();
  options.token = token;
  options.max_reconnects = 2;
  options.initial_backoff = absl::Milliseconds(50);
  auto c = client::Client::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

}  // namespace compress::testutil
