// Fuzzes the IDX reader (server/engine/data/idx.h): the input is a whole
// file, plain or gzipped (zlib reads both). Checks that what it accepts has
// exactly the bytes its dimensions describe.
#include <cstddef>
#include <cstdint>

#include "server/engine/data/idx.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace engine = compress::engine;
  static auto* file = new compress::fuzz::MemFile();
  const std::string& path = file->Write(data, size);
  auto dims = engine::ReadIdxDims(path);
  for (int64_t max_items : {0, 2}) {
    auto array = engine::ReadIdxFile(path, max_items);
    compress::fuzz::Explain("ReadIdxFile", array.status());
    if (!array.ok()) continue;
    FUZZ_CHECK(dims.ok() && !array->dims.empty() && array->dims.size() == dims->size());
    unsigned __int128 bytes = 1;
    for (int64_t d : array->dims) {
      FUZZ_CHECK(d >= 0);
      bytes *= static_cast<uint64_t>(d);
    }
    FUZZ_CHECK(bytes == array->data.size());
    FUZZ_CHECK(max_items <= 0 || array->dims[0] <= max_items);
  }
  return 0;
}
