// Fuzzes the safetensors header reader (server/engine/data/safetensors.h):
// the input is a whole file. Besides crashes, checks what a caller relies
// on: every accepted tensor has a known dtype and lies inside the file with
// exactly numel * element size bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "server/engine/data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace engine = compress::engine;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  engine::LooksLikeSafetensors(std::string(bytes.substr(0, 16)), size);
  auto header = engine::ParseSafetensorsHeader(bytes, size, "input");
  compress::fuzz::Explain("ParseSafetensorsHeader", header.status());
  if (!header.ok()) return 0;
  for (const auto& [name, tensor] : header->tensors) {
    const int element_size = engine::SafetensorsElementSize(tensor.dtype);
    FUZZ_CHECK(element_size > 0);
    FUZZ_CHECK(!engine::SafetensorsDtypeName(tensor.dtype).empty());
    FUZZ_CHECK(tensor.begin >= 8 && tensor.begin <= tensor.end && tensor.end <= size);
    unsigned __int128 bytes_needed = static_cast<unsigned>(element_size);
    for (int64_t d : tensor.shape) {
      FUZZ_CHECK(d >= 0);
      bytes_needed *= static_cast<uint64_t>(d);
    }
    FUZZ_CHECK(bytes_needed == tensor.end - tensor.begin);
  }
  return 0;
}
