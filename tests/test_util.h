// The one test helper shared by the test folders: fixture lookup, a
// self-removing temp directory, whole-file I/O and bounded polling.
#ifndef COMPRESS_TESTS_TEST_UTIL_H_
#define COMPRESS_TESTS_TEST_UTIL_H_

#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace compress::testutil {

// ctest sets COMPRESS_SOURCE_DIR; by hand, fall back to this file's checkout.
inline std::string SourceDir() {
  const char* dir = std::getenv("COMPRESS_SOURCE_DIR");
  if (dir != nullptr && *dir != '\0') return dir;
  std::string file = __FILE__;  // <src>/tests/test_util.h
  for (int i = 0; i < 2; ++i) file = file.substr(0, file.rfind('/'));
  return file;
}

inline std::string FixturePath(const std::string& name) {
  return SourceDir() + "/tests/fixtures/" + name;
}

inline std::string BinaryDir() {
  const char* dir = std::getenv("COMPRESS_BINARY_DIR");
  return dir != nullptr && *dir != '\0' ? dir : ".";
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// One plain HTTP/1.1 GET to 127.0.0.1:port; the whole response (status
// line, headers, body), or "" when nothing listens there.
inline std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  send(fd, request.data(), request.size(), 0);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// Polls `done` every 10 ms for up to `limit`; true once it held.
inline bool WaitFor(const std::function<bool()>& done, absl::Duration limit = absl::Seconds(60)) {
  absl::Time end = absl::Now() + limit;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

// A fresh directory under the gtest temp dir, removed with everything in it
// when the object goes away.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    std::string templ = ::testing::TempDir() + "compress_test_XXXXXX";
    if (mkdtemp(templ.data()) != nullptr) path_ = templ;
  }
  ~ScopedTempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Regular files under `dir`, recursively (empty when `dir` does not exist).
inline std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return files;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (entry.is_regular_file()) files.push_back(entry.path().string());
  }
  return files;
}

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_TEST_UTIL_H_
