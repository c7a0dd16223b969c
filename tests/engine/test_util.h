// Engine-test additions to tests/test_util.h: expected.json and temp dirs.
#ifndef COMPRESS_TESTS_ENGINE_TEST_UTIL_H_
#define COMPRESS_TESTS_ENGINE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "nlohmann/json.hpp"

namespace compress::engine::testing {

using ::compress::testutil::FixturePath;
using ::compress::testutil::SourceDir;

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
