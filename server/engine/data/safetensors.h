// Reading the header of a safetensors file (torch-free).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON mapping
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the end of the header), optional "__metadata__", then the data.
//
//   ASSIGN_OR_RETURN(SafetensorsHeader h, ReadSafetensorsHeader(path));
//   auto it = h.tensors.find("inputs");
#ifndef COMPRESS_ENGINE_DATA_SAFETENSORS_H_
#define COMPRESS_ENGINE_DATA_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace compress::engine {

struct SafetensorsTensor {
  std::string dtype;  // safetensors code: "F32", "I64", "U8", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // absolute byte offsets in the file, end exclusive
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__", if any
};

// True when the first bytes of a file look like a safetensors header
// (a length that fits in `file_size`, then '{').
bool LooksLikeSafetensors(const std::string& first_bytes, uint64_t file_size);

// Parses and validates the header of `path`: known dtypes, non-negative
// shapes, offsets inside the file and matching numel * element size.
// NOT_FOUND when the file cannot be opened; INVALID_ARGUMENT otherwise.
absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(
    const std::string& path);

// The same checks on bytes in memory: `head` starts with the 8-byte length
// and holds at least the whole header (the data after it may be cut off);
// `file_size` is the size of the whole file, against which the data offsets
// are checked. `name` names the file in errors.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view head, uint64_t file_size, const std::string& name);

// "float32", "int64", ... for a safetensors dtype code; "" if unknown.
std::string SafetensorsDtypeName(const std::string& code);

// Bytes per element of a safetensors dtype code; 0 if unknown.
int SafetensorsElementSize(const std::string& code);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_SAFETENSORS_H_
