// Fuzzes the zip central-directory reader (server/util/zip_directory.h),
// which bounds what an uploaded archive may inflate to before LibTorch reads
// it. Checks that what it accepts is consistent: the bytes and the file
// entry points agree, and every member's stored data lies inside the input.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/util/zip_directory.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* file = new compress::fuzz::MemFile();
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto dir = compress::ReadZipDirectory(bytes);
  compress::fuzz::Explain("ReadZipDirectory", dir.status());
  auto from_file = compress::ReadZipDirectoryFile(file->Write(data, size));
  FUZZ_CHECK(dir.ok() == from_file.ok());
  if (!dir.ok()) return 0;
  FUZZ_CHECK(dir->members.size() == from_file->members.size());
  for (size_t i = 0; i < dir->members.size(); ++i) {
    const compress::ZipMember& m = dir->members[i];
    FUZZ_CHECK(m.name == from_file->members[i].name);
    FUZZ_CHECK(m.uncompressed_size == from_file->members[i].uncompressed_size);
    FUZZ_CHECK(m.local_header_offset < size);
    FUZZ_CHECK(m.compressed_size <= size);
    if (m.method == 0) FUZZ_CHECK(m.compressed_size == m.uncompressed_size);
  }
  return 0;
}
