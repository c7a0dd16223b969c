// The real compressd binary as a child process of a test: started on
// 127.0.0.1 port 0 (its first stdout line names the port), killed at the end.
#ifndef COMPRESS_TESTS_E2E_SERVER_PROCESS_H_
#define COMPRESS_TESTS_E2E_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/client.h"

namespace compress::testutil {

class ServerProcess {
 public:
  // `extra_args` follow the defaults (--listen, --metrics_listen=,
  // --data_dir, --drain_grace=1s) and so override them.
  // `stderr_file`: where its stderr goes (appended); "" = the test's.
  explicit ServerProcess(const std::string& data_dir,
                         const std::vector<std::string>& extra_args = {},
                         const std::string& stderr_file = "");
  ~ServerProcess();  // SIGKILL
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Sends `sig` and waits for the process to end; returns how long that took.
  absl::Duration Kill(int sig);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string address() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// A client of `server`, with a bearer token when one is given.
std::unique_ptr<client::Client> Connect(const ServerProcess& server,
                                        const std::string& token = "");

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_E2E_SERVER_PROCESS_H_
