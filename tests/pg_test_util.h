// A throwaway PostgreSQL 15 cluster for the tests of one binary: initdb and
// pg_ctl under a fresh directory in /tmp (as the postgres user when the tests
// run as root: initdb refuses root), listening on 127.0.0.1 at a free port
// and a private Unix socket directory, fsync off. Started on first use,
// stopped (and its directory removed) when the test program ends. Each test
// takes a database of its own, so tests stay independent.
//
//   auto pg = testutil::TestPostgres::Get();
//   ASSERT_TRUE(pg.ok()) << pg.status();        // says why it could not start
//   auto url = (*pg)->NewDatabase();             // postgresql://postgres@127.0.0.1:PORT/test_3
//
// Server binaries: /usr/lib/postgresql/15/bin (Debian's postgresql-15), or
// the directory in COMPRESS_PG_BINDIR.
#ifndef COMPRESS_TESTS_PG_TEST_UTIL_H_
#define COMPRESS_TESTS_PG_TEST_UTIL_H_

#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/store/pg/connection.h"

namespace compress::testutil {

class TestPostgres {
 public:
  // The cluster of this test binary, started on the first call. A failure
  // (with the command and the tail of its log) is remembered: every test
  // that needs PostgreSQL then fails with the same reason.
  static absl::StatusOr<TestPostgres*> Get() {
    static absl::StatusOr<TestPostgres*>* const cluster = [] {
      auto pg = std::unique_ptr<TestPostgres>(new TestPostgres());
      absl::Status s = pg->Start();
      if (!s.ok()) {
        pg->Stop();
        return new absl::StatusOr<TestPostgres*>(s);
      }
      Instance() = pg.release();
      return new absl::StatusOr<TestPostgres*>(Instance());
    }();
    return *cluster;
  }

  // A new, empty database; its URL.
  absl::StatusOr<std::string> NewDatabase() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const std::string name = absl::StrCat("test_", ++databases_);
    if (admin_ == nullptr || !admin_->ok()) {
      auto admin = store::pg::Connection::Open(Url("postgres"));
      if (!admin.ok()) return admin.status();
      admin_ = std::move(*admin);
    }
    absl::StatusOr<store::pg::Result> r = admin_->Exec(absl::StrCat("CREATE DATABASE ", name));
    if (!r.ok()) return r.status();
    return Url(name);
  }

  // The URL of database `name` (the superuser, no password: trust auth).
  std::string Url(const std::string& name) const {
    return absl::StrCat("postgresql://postgres@127.0.0.1:", port_, "/", name);
  }
  int port() const { return port_; }

  // Stops the server (fast: no checkpoint) and removes its directory.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      admin_.reset();
    }
    if (started_) {
      Run({PgBin("pg_ctl"), "-D", data_, "-m", "immediate", "-w", "stop"}).IgnoreError();
      started_ = false;
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }

  // Stops the cluster when the test program ends (registered below).
  class Environment : public ::testing::Environment {
   public:
    void TearDown() override {
      if (Instance() != nullptr) Instance()->Stop();
    }
  };

 private:
  TestPostgres() = default;

  static TestPostgres*& Instance() {
    static TestPostgres* instance = nullptr;
    return instance;
  }

  static std::string PgBin(const std::string& tool) {
    const char* dir = std::getenv("COMPRESS_PG_BINDIR");
    return absl::StrCat(dir != nullptr && *dir != '\0' ? dir : "/usr/lib/postgresql/15/bin", "/",
                        tool);
  }

  // A port on 127.0.0.1 that nothing listens on right now.
  static int FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    int port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    close(fd);
    return port;
  }

  // Runs argv (as postgres when we are root) in the cluster directory,
  // output appended to cmd.log; the error quotes the command and the log.
  absl::Status Run(std::vector<std::string> argv) {
    if (geteuid() == 0) argv.insert(argv.begin(), {"runuser", "-u", "postgres", "--"});
    const std::string log = dir_ + "/cmd.log";
    pid_t pid = fork();
    if (pid < 0) return absl::InternalError("fork failed");
    if (pid == 0) {
      int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      int in = open("/dev/null", O_RDONLY);
      if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
      }
      if (in >= 0) dup2(in, 0);
      // PostgreSQL's tools fail when they cannot read the working directory.
      if (chdir(dir_.c_str()) != 0) _exit(126);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "PostgreSQL for tests: `", absl::StrJoin(argv, " "), "` failed (status ", status,
        "); its output:\n", Tail(log), "\nserver log:\n", Tail(dir_ + "/server.log")));
  }

  static std::string Tail(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
  }

  absl::Status Start() {
    if (access(PgBin("initdb").c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("PostgreSQL for tests: no ", PgBin("initdb"),
                       " (install Debian's postgresql-15: scripts/install-deps.sh, or set "
                       "COMPRESS_PG_BINDIR)"));
    }
    std::string templ = "/tmp/compress_pg_XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) {
      return absl::FailedPreconditionError("PostgreSQL for tests: mkdtemp in /tmp failed");
    }
    dir_ = templ;
    data_ = dir_ + "/data";
    if (geteuid() == 0) {
      passwd* pw = getpwnam("postgres");
      if (pw == nullptr) {
        return absl::FailedPreconditionError(
            "PostgreSQL for tests: running as root and there is no postgres user to run "
            "initdb as (install Debian's postgresql-15)");
      }
      if (chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("PostgreSQL for tests: cannot chown ", dir_, " to postgres"));
      }
    }
    absl::Status s = Run({PgBin("initdb"), "-D", data_, "-U", "postgres", "--auth=trust", "-E",
                          "UTF8", "--no-locale", "--no-sync"});
    if (!s.ok()) return s;
    // A free port can be taken between the probe and the bind: try again.
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = FreePort();
      s = Run({PgBin("pg_ctl"), "-D", data_, "-l", dir_ + "/server.log", "-w", "-t", "120", "-o",
               absl::StrCat("-k ", dir_, " -h 127.0.0.1 -p ", port_,
                            " -F -c max_connections=200 -c synchronous_commit=off "
                            "-c full_page_writes=off"),
               "start"});
      if (s.ok()) {
        started_ = true;
        return absl::OkStatus();
      }
    }
    return s;
  }

  std::string dir_;
  std::string data_;
  int port_ = 0;
  bool started_ = false;
  absl::Mutex mu_;
  int databases_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<store::pg::Connection> admin_ ABSL_GUARDED_BY(mu_);
};

// Registered once per test binary that includes this header.
inline ::testing::Environment* const kTestPostgresEnvironment =
    ::testing::AddGlobalTestEnvironment(new TestPostgres::Environment);

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_PG_TEST_UTIL_H_
