// s3rver (npm, tests/store/s3rver, installed by scripts/install-deps.sh) as a
// child process on 127.0.0.1 with a kernel-chosen port, for the blob store
// tests (s3_blob_store_test, blob_store_test). It dies with the test.
#ifndef COMPRESS_TESTS_STORE_BLOB_S3RVER_H_
#define COMPRESS_TESTS_STORE_BLOB_S3RVER_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/store/s3/s3_blob_store.h"
#include "tests/test_util.h"

namespace compress::s3test {

inline std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

class S3rver {
 public:
  // Starts s3rver on 127.0.0.1:0 and returns once it accepts connections;
  // "" on success, else why not.
  std::string Start(const std::string& data_dir) {
    const std::string node = FindOnPath("node");
    if (node.empty()) {
      return "node (Node.js) not found on PATH: the S3 tests need it to run s3rver; "
             "run scripts/install-deps.sh";
    }
    const std::string script =
        testutil::SourceDir() + "/tests/store/s3rver/node_modules/s3rver/bin/s3rver.js";
    if (access(script.c_str(), R_OK) != 0) {
      return script + " is missing: run scripts/install-deps.sh (npm ci in tests/store/s3rver)";
    }
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return "pipe failed";
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
      // Dies with the test, however the test ends.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(out[1], STDOUT_FILENO);
      // s3rver's continuation tokens are DES-encrypted, which Node >= 17
      // (OpenSSL 3) offers only from the legacy provider.
      const char* argv[] = {node.c_str(),
                            "--openssl-legacy-provider",
                            script.c_str(),
                            "-d",
                            data_dir.c_str(),
                            "-a",
                            "127.0.0.1",
                            "-p",
                            "0",
                            "--silent",
                            nullptr};
      execv(node.c_str(), const_cast<char* const*>(argv));
      _exit(127);
    }
    pid_ = pid;
    close(out[1]);
    stdout_ = out[0];
    // The CLI prints "S3rver listening on 127.0.0.1:<port>" once listening.
    std::string printed;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (port_ == 0 && absl::Now() < deadline) {
      pollfd p{stdout_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[512];
      ssize_t n = read(stdout_, buf, sizeof(buf));
      if (n <= 0) return "s3rver exited before listening; printed: " + printed;
      printed.append(buf, static_cast<size_t>(n));
      size_t at = printed.find("listening on 127.0.0.1:");
      size_t eol = at == std::string::npos ? at : printed.find('\n', at);
      if (eol != std::string::npos) {
        std::string port = printed.substr(at + 23, eol - at - 23);
        if (!absl::SimpleAtoi(port, &port_)) return "cannot parse s3rver's port: " + printed;
      }
    }
    if (port_ == 0) return "s3rver did not report listening within 60 s: " + printed;
    // And it answers: an HTTP request on the port gets a response.
    bool up = testutil::WaitFor([this] { return !testutil::HttpGet(port_, "/").empty(); },
                                absl::Seconds(30));
    return up ? "" : "s3rver does not answer on its port";
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    bool gone = testutil::WaitFor([&] { return waitpid(pid_, &status, WNOHANG) == pid_; },
                                  absl::Seconds(10));
    if (!gone) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    close(stdout_);
  }

  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int stdout_ = -1;
  int port_ = 0;
};

// Makes `bucket` on a started s3rver and sets what a compressd child process
// of the test reads to reach it (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY:
// s3rver's one account; COMPRESSD_S3_ENDPOINT). Returns a store on the
// bucket under `prefix` ("" or ending in '/') for the test's own checks.
inline absl::StatusOr<std::unique_ptr<store::S3BlobStore>> BucketForCompressd(
    const S3rver& s3rver, const std::string& bucket, const std::string& prefix,
    const std::string& tmp_dir) {
  const std::string endpoint = absl::StrCat("http://127.0.0.1:", s3rver.port());
  store::S3BlobStoreOptions o;
  o.client.config.endpoint = endpoint;
  o.client.config.bucket = bucket;
  o.client.config.prefix = prefix;
  o.client.config.access_key_id = "S3RVER";
  o.client.config.secret_access_key = "S3RVER";
  o.tmp_dir = tmp_dir;
  absl::StatusOr<std::unique_ptr<store::S3BlobStore>> store = store::S3BlobStore::Create(o);
  if (!store.ok()) return store.status();
  if (absl::Status s = (*store)->client().CreateBucket(); !s.ok()) return s;
  setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
  setenv("COMPRESSD_S3_ENDPOINT", endpoint.c_str(), 1);
  return store;
}

}  // namespace compress::s3test

#endif  // COMPRESS_TESTS_STORE_BLOB_S3RVER_H_
