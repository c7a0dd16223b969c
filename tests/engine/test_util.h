// Engine-test additions to tests/test_util.h: expected.json and temp dirs.
#ifndef COMPRESS_TESTS_ENGINE_TEST_UTIL_H_
#define COMPRESS_TESTS_ENGINE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

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

// The device of the engine tests that run whole jobs or HVPs (ANALYZE,
// QUANTIZE, PRUNE options and the HVP operators): COMPRESS_TEST_DEVICE,
// "cpu" when unset or empty, e.g. "cuda:0" (bench/gpu-check.sh). Results
// compared against CPU-computed tensors are moved to the CPU first.
inline std::string TestDevice() {
  const char* device = std::getenv("COMPRESS_TEST_DEVICE");
  return device == nullptr || *device == '\0' ? "cpu" : device;
}

// A fresh directory under the test temp dir (left for the OS to clean).
inline std::string MakeTempDir() {
  // TempDir() ends with a slash.
  std::string templ = ::testing::TempDir() + "compress_engine_XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return ::testing::TempDir();
  return templ;
}

// What tests/fixtures/make_transformer.py writes: a TorchScript
// nn.TransformerEncoder classifier and its reference numbers (the order is
// in the script's docstring).
struct TransformerFixture {
  std::string model;           // path of the .pt file
  std::vector<double> values;  // CALIB.txt, one number per line
};

// Runs the script with Debian's Python into a fresh temp dir. Empty model
// path when /usr/bin/python3 is missing (tests skip then); a failed run or
// an unreadable file fails the calling test.
inline TransformerFixture MakeTransformerFixture() {
  TransformerFixture f;
  if (std::system("test -x /usr/bin/python3") != 0) return f;
  const std::string dir = MakeTempDir();
  const std::string calib = dir + "/calibration.txt";
  const std::string command = "/usr/bin/python3 " + FixturePath("make_transformer.py") + " " + dir +
                              "/encoder.pt " + calib + " 2>/dev/null";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  f.model = dir + "/encoder.pt";
  std::ifstream in(calib);
  double v;
  while (in >> v) f.values.push_back(v);
  EXPECT_EQ(f.values.size(), 6497u) << calib;
  return f;
}

}  // namespace compress::engine::testing

#endif  // COMPRESS_TESTS_ENGINE_TEST_UTIL_H_
