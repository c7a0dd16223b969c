// Test datasets written by hand in the safetensors format (torch-free):
// little-endian u64 header length, the JSON header (padded with spaces to a
// multiple of 8), then the raw little-endian tensor bytes.
//
//   std::vector<float> x(6 * 64, 0.5f);
//   x[4 * 64 + 3] = std::nanf("");
//   WriteFile(path, ClassificationSafetensors({6, 1, 8, 8}, x, {0, 1, 2, 3, 4, 5}));
#ifndef COMPRESS_TESTS_SAFETENSORS_UTIL_H_
#define COMPRESS_TESTS_SAFETENSORS_UTIL_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace compress::testutil {

// float32 "inputs" of `input_shape` and int64 "targets" [N] (omitted when
// `targets` is empty).
inline std::string ClassificationSafetensors(const std::vector<int64_t>& input_shape,
                                             const std::vector<float>& inputs,
                                             const std::vector<int64_t>& targets) {
  const size_t input_bytes = inputs.size() * sizeof(float);
  const size_t target_bytes = targets.size() * sizeof(int64_t);
  std::string header =
      absl::StrCat("{\"inputs\":{\"dtype\":\"F32\",\"shape\":[", absl::StrJoin(input_shape, ","),
                   "],\"data_offsets\":[0,", input_bytes, "]}");
  if (!targets.empty()) {
    absl::StrAppend(&header, ",\"targets\":{\"dtype\":\"I64\",\"shape\":[", targets.size(),
                    "],\"data_offsets\":[", input_bytes, ",", input_bytes + target_bytes, "]}");
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out += header;
  const size_t data = out.size();
  out.resize(data + input_bytes + target_bytes);
  // Every host we build for is little-endian, as the format is.
  if (input_bytes > 0) std::memcpy(&out[data], inputs.data(), input_bytes);
  if (target_bytes > 0) std::memcpy(&out[data + input_bytes], targets.data(), target_bytes);
  return out;
}

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_SAFETENSORS_UTIL_H_
