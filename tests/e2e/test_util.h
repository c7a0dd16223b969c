// Helpers shared by the end-to-end tests: fixture paths, temp dirs, waiting.
#ifndef COMPRESS_TESTS_E2E_TEST_UTIL_H_
#define COMPRESS_TESTS_E2E_TEST_UTIL_H_

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace compress::testing_util {

inline std::string SourceDir() {
  const char* env = std::getenv("COMPRESS_SOURCE_DIR");
  if (env != nullptr) return env;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().string();
}

inline std::string Fixture(const std::string& name) {
  return SourceDir() + "/tests/fixtures/" + name;
}

inline std::string BinaryDir() {
  const char* env = std::getenv("COMPRESS_BINARY_DIR");
  return env != nullptr ? env : ".";
}

// A fresh directory under the test temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = ::testing::TempDir() + "compress-e2e-" + std::to_string(rd()) + std::to_string(rd());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
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

}  // namespace compress::testing_util

#endif  // COMPRESS_TESTS_E2E_TEST_UTIL_H_
