// Helpers shared by the store and jobs tests: a self-removing temp directory,
// fixture lookup and whole-file reads.
#ifndef COMPRESS_TESTS_STORE_TEST_UTIL_H_
#define COMPRESS_TESTS_STORE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace compress::testutil {

// ctest sets COMPRESS_SOURCE_DIR; by hand, fall back to this file's checkout.
inline std::string SourceDir() {
  const char* dir = std::getenv("COMPRESS_SOURCE_DIR");
  if (dir != nullptr && *dir != '\0') return dir;
  std::string file = __FILE__;  // <src>/tests/store/test_util.h
  for (int i = 0; i < 3; ++i) file = file.substr(0, file.rfind('/'));
  return file;
}

inline std::string FixturePath(const std::string& name) {
  return SourceDir() + "/tests/fixtures/" + name;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// A fresh directory under the gtest temp dir, removed with everything in it
// when the object goes away.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    std::string templ = ::testing::TempDir() + "compress_store_XXXXXX";
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

#endif  // COMPRESS_TESTS_STORE_TEST_UTIL_H_
