// Locating the committed fixtures (tests/fixtures/) and their expected.json.
#ifndef COMPRESS_TESTS_ENGINE_TEST_UTIL_H_
#define COMPRESS_TESTS_ENGINE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace compress::engine::testing {

// ctest sets COMPRESS_SOURCE_DIR; by hand, fall back to this file's checkout.
inline std::string SourceDir() {
  const char* dir = std::getenv("COMPRESS_SOURCE_DIR");
  if (dir != nullptr && *dir != '\0') return dir;
  std::string file = __FILE__;  // <src>/tests/engine/test_util.h
  for (int i = 0; i < 3; ++i) file = file.substr(0, file.rfind('/'));
  return file;
}

inline std::string FixturePath(const std::string& name) {
  return SourceDir() + "/tests/fixtures/" + name;
}

// Numbers written by tests/fixtures/make_fixtures.py (computed in Python).
inline const nlohmann::json& Expected() {
  static const nlohmann::json* expected = [] {
    std::ifstream in(FixturePath("expected.json"));
    return new nlohmann::json(nlohmann::json::parse(in));
  }();
  return *expected;
}

// A fresh directory under the test temp dir (left for the OS to clean).
inline std::string MakeTempDir() {
  // TempDir() ends with a slash.
  std::string templ = ::testing::TempDir() + "compress_engine_XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return ::testing::TempDir();
  return templ;
}

}  // namespace compress::engine::testing

#endif  // COMPRESS_TESTS_ENGINE_TEST_UTIL_H_
