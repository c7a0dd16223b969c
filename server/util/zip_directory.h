// Reading the central directory of a zip archive without inflating anything.
//
// TorchScript models and torch.save files are zip archives that LibTorch
// reads with miniz, which allocates for each member the uncompressed size the
// central directory declares. Reading that directory first, with this small
// torch-free reader, lets the catalog bound what an upload may expand to
// before LibTorch touches it.
//
// The reader follows miniz's reading of the format (the end record nearest
// the end of the file, the ZIP64 end record when its locator is present, the
// ZIP64 extra field of a member whose 32-bit sizes are 0xFFFFFFFF) and
// refuses, as INVALID_ARGUMENT, whatever another reader could read
// differently: multi-disk archives, an end record whose comment does not end
// the file, 32-bit fields that disagree with the ZIP64 ones, a directory with
// bytes left over, a stored member whose two sizes differ, data outside the
// archive. Every offset is bounds-checked; it never crashes on garbage.
//
//   ASSIGN_OR_RETURN(ZipDirectory dir, ReadZipDirectoryFile(path));
//   for (const ZipMember& m : dir.members) total += m.uncompressed_size;
//
// Messages never name the file (callers know what it is to their client);
// member names in messages are escaped and cut to a bounded prefix.
// Thread-safe (no shared state).
#ifndef COMPRESS_UTIL_ZIP_DIRECTORY_H_
#define COMPRESS_UTIL_ZIP_DIRECTORY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace compress {

struct ZipMember {
  std::string name;
  uint16_t method = 0;  // 0 = stored, 8 = deflated, ...
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;  // as the central directory declares it
  uint64_t local_header_offset = 0;
};

struct ZipDirectory {
  std::vector<ZipMember> members;  // in directory order
  bool zip64 = false;              // a ZIP64 end record was present
};

// Parses the directory of the archive held in `archive` (all of its bytes).
absl::StatusOr<ZipDirectory> ReadZipDirectory(absl::string_view archive);

// The same for a file, reading only its end records and central directory
// (at most kMaxZipDirectoryBytes). NOT_FOUND when it cannot be opened.
absl::StatusOr<ZipDirectory> ReadZipDirectoryFile(const std::string& path);

// The largest central directory accepted (64 MiB, about 800,000 members):
// it is read into memory.
inline constexpr uint64_t kMaxZipDirectoryBytes = uint64_t{64} << 20;

// `name` for a message: C-escaped, at most 200 bytes of it, quoted.
std::string ZipMemberNameForMessage(absl::string_view name);

}  // namespace compress

#endif  // COMPRESS_UTIL_ZIP_DIRECTORY_H_
