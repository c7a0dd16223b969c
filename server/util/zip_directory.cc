#include "server/util/zip_directory.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress {
namespace {

constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kMax32 = 0xFFFFFFFF;
constexpr uint16_t kMax16 = 0xFFFF;

// The bytes of an archive: its size and a bounds-checked read.
struct Source {
  uint64_t size = 0;
  // Sets *out to bytes [offset, offset + n); callers check the range first.
  std::function<absl::Status(uint64_t offset, uint64_t n, std::string* out)> read;
};

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("not a readable zip archive: ", why));
}

// Little-endian field of `width` bytes at `at`; 0 past the end (callers
// check lengths first: this is a second line of defence).
uint64_t Le(absl::string_view bytes, size_t at, int width) {
  if (at > bytes.size() || bytes.size() - at < static_cast<size_t>(width)) return 0;
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

// What the end records say about the central directory.
struct DirectoryLocation {
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t entries = 0;
  uint64_t end = 0;  // where the directory must end: the first end record
  bool zip64 = false;
};

// The end record nearest the end of the archive, as miniz picks it.
absl::StatusOr<uint64_t> FindEndRecord(const Source& src, std::string* tail) {
  if (src.size < kEndSize) return Bad("shorter than an end-of-central-directory record");
  const uint64_t span = std::min<uint64_t>(src.size, kEndSize + kMaxCommentSize);
  const uint64_t start = src.size - span;
  RETURN_IF_ERROR(src.read(start, span, tail));
  for (uint64_t i = span - kEndSize + 1; i-- > 0;) {
    if (Le(*tail, i, 4) == kEndSignature) return start + i;
  }
  return Bad("no end-of-central-directory record");
}

// Reads the ZIP64 end record that the locator before `end_pos` points to.
absl::Status ReadZip64End(const Source& src, uint64_t end_pos, DirectoryLocation* loc) {
  std::string locator;
  RETURN_IF_ERROR(src.read(end_pos - kZip64LocatorSize, kZip64LocatorSize, &locator));
  if (Le(locator, 0, 4) != kZip64LocatorSignature) return absl::OkStatus();
  const uint64_t record_pos = Le(locator, 8, 8);
  if (Le(locator, 4, 4) != 0 || Le(locator, 16, 4) != 1) return Bad("a multi-disk ZIP64 archive");
  if (record_pos > end_pos - kZip64LocatorSize ||
      end_pos - kZip64LocatorSize - record_pos < kZip64EndSize) {
    return Bad("the ZIP64 end record lies outside the archive");
  }
  std::string rec;
  RETURN_IF_ERROR(src.read(record_pos, kZip64EndSize, &rec));
  if (Le(rec, 0, 4) != kZip64EndSignature) return Bad("the ZIP64 locator points at no ZIP64 end record");
  if (Le(rec, 4, 8) < kZip64EndSize - 12) return Bad("a truncated ZIP64 end record");
  if (Le(rec, 16, 4) != 0 || Le(rec, 20, 4) != 0 || Le(rec, 24, 8) != Le(rec, 32, 8)) {
    return Bad("a multi-disk ZIP64 archive");
  }
  // Readers differ on which record wins when both carry values: insist
  // that the 32-bit record says the same or defers with 0xFFFF...
  auto agrees = [](uint64_t narrow, uint64_t wide, uint64_t sentinel) {
    return narrow == sentinel || narrow == wide;
  };
  if (!agrees(loc->entries, Le(rec, 32, 8), kMax16) || !agrees(loc->size, Le(rec, 40, 8), kMax32) ||
      !agrees(loc->offset, Le(rec, 48, 8), kMax32)) {
    return Bad("the end record and the ZIP64 end record disagree");
  }
  loc->entries = Le(rec, 32, 8);
  loc->size = Le(rec, 40, 8);
  loc->offset = Le(rec, 48, 8);
  loc->end = record_pos;
  loc->zip64 = true;
  return absl::OkStatus();
}

absl::StatusOr<DirectoryLocation> LocateDirectory(const Source& src) {
  std::string tail;
  ASSIGN_OR_RETURN(uint64_t end_pos, FindEndRecord(src, &tail));
  const absl::string_view rec = absl::string_view(tail).substr(tail.size() - (src.size - end_pos));
  if (end_pos + kEndSize + Le(rec, 20, 2) != src.size) {
    return Bad("the end record's comment does not end the archive");
  }
  if (Le(rec, 4, 2) != 0 || Le(rec, 6, 2) != 0 || Le(rec, 8, 2) != Le(rec, 10, 2)) {
    return Bad("a multi-disk archive");
  }
  DirectoryLocation loc;
  loc.entries = Le(rec, 10, 2);
  loc.size = Le(rec, 12, 4);
  loc.offset = Le(rec, 16, 4);
  loc.end = end_pos;
  if (end_pos >= kZip64LocatorSize) RETURN_IF_ERROR(ReadZip64End(src, end_pos, &loc));
  if (loc.offset > loc.end || loc.size > loc.end - loc.offset) {
    return Bad(absl::StrCat("the central directory [", loc.offset, ", +", loc.size,
                            ") lies outside the archive"));
  }
  if (loc.size > kMaxZipDirectoryBytes) {
    return Bad(absl::StrCat("a central directory of ", loc.size, " bytes (at most ",
                            kMaxZipDirectoryBytes, " are read)"));
  }
  if (loc.entries > loc.size / kCentralSize) {
    return Bad(absl::StrCat(loc.entries, " members do not fit a central directory of ", loc.size,
                            " bytes"));
  }
  return loc;
}

// Replaces the 0xFFFFFFFF sizes and offset of `m` from its ZIP64 extra
// field, in the order the format fixes: uncompressed, compressed, offset.
absl::Status ApplyZip64Extra(absl::string_view extra, ZipMember* m) {
  const bool need[3] = {m->uncompressed_size == kMax32, m->compressed_size == kMax32,
                        m->local_header_offset == kMax32};
  if (!need[0] && !need[1] && !need[2]) return absl::OkStatus();
  for (size_t at = 0; at + 4 <= extra.size();) {
    const uint64_t id = Le(extra, at, 2);
    const uint64_t len = Le(extra, at + 2, 2);
    if (len > extra.size() - at - 4) break;
    if (id == kZip64ExtraId) {
      absl::string_view field = extra.substr(at + 4, len);
      uint64_t* targets[3] = {&m->uncompressed_size, &m->compressed_size, &m->local_header_offset};
      size_t pos = 0;
      for (int i = 0; i < 3; ++i) {
        if (!need[i]) continue;
        if (pos + 8 > field.size()) return Bad("a member's ZIP64 extra field is too short");
        *targets[i] = Le(field, pos, 8);
        pos += 8;
      }
      return absl::OkStatus();
    }
    at += 4 + len;
  }
  return Bad(absl::StrCat("member ", ZipMemberNameForMessage(m->name),
                          " has 32-bit sizes of 0xFFFFFFFF but no ZIP64 extra field"));
}

// Parses one central directory entry at `at`, advancing it.
absl::StatusOr<ZipMember> ParseEntry(absl::string_view dir, uint64_t archive_end, size_t* at) {
  if (dir.size() - *at < kCentralSize || Le(dir, *at, 4) != kCentralSignature) {
    return Bad("a damaged central directory entry");
  }
  const absl::string_view h = dir.substr(*at, kCentralSize);
  const uint64_t name_len = Le(h, 28, 2), extra_len = Le(h, 30, 2), comment_len = Le(h, 32, 2);
  if (dir.size() - *at - kCentralSize < name_len + extra_len + comment_len) {
    return Bad("a central directory entry runs past the directory");
  }
  ZipMember m;
  m.name = std::string(dir.substr(*at + kCentralSize, name_len));
  m.method = static_cast<uint16_t>(Le(h, 10, 2));
  m.compressed_size = Le(h, 20, 4);
  m.uncompressed_size = Le(h, 24, 4);
  m.local_header_offset = Le(h, 42, 4);
  if (Le(h, 34, 2) != 0 && Le(h, 34, 2) != kMax16) return Bad("a multi-disk archive");
  RETURN_IF_ERROR(ApplyZip64Extra(dir.substr(*at + kCentralSize + name_len, extra_len), &m));
  *at += kCentralSize + name_len + extra_len + comment_len;
  const std::string name = ZipMemberNameForMessage(m.name);
  if (m.method == 0 && m.compressed_size != m.uncompressed_size) {
    return Bad(absl::StrCat("member ", name, " is stored but declares ", m.compressed_size,
                            " compressed and ", m.uncompressed_size, " uncompressed bytes"));
  }
  if (m.local_header_offset > archive_end ||
      archive_end - m.local_header_offset < kLocalHeaderSize ||
      archive_end - m.local_header_offset - kLocalHeaderSize < m.compressed_size) {
    return Bad(absl::StrCat("member ", name, " lies outside the archive"));
  }
  return m;
}

absl::StatusOr<ZipDirectory> ReadFrom(const Source& src) {
  ASSIGN_OR_RETURN(DirectoryLocation loc, LocateDirectory(src));
  std::string dir;
  RETURN_IF_ERROR(src.read(loc.offset, loc.size, &dir));
  ZipDirectory out;
  out.zip64 = loc.zip64;
  out.members.reserve(loc.entries);
  size_t at = 0;
  for (uint64_t i = 0; i < loc.entries; ++i) {
    ASSIGN_OR_RETURN(ZipMember m, ParseEntry(dir, loc.offset, &at));
    out.members.push_back(std::move(m));
  }
  if (at != dir.size()) {
    return Bad(absl::StrCat("the central directory holds ", dir.size() - at,
                            " bytes after its ", loc.entries, " members"));
  }
  return out;
}

}  // namespace

std::string ZipMemberNameForMessage(absl::string_view name) {
  constexpr size_t kMaxShown = 200;
  std::string shown = absl::CHexEscape(name.substr(0, kMaxShown));
  return absl::StrCat("\"", shown, name.size() > kMaxShown ? "...\"" : "\"");
}

absl::StatusOr<ZipDirectory> ReadZipDirectory(absl::string_view archive) {
  Source src;
  src.size = archive.size();
  src.read = [archive](uint64_t offset, uint64_t n, std::string* out) {
    *out = std::string(archive.substr(offset, n));
    return absl::OkStatus();
  };
  return ReadFrom(src);
}

absl::StatusOr<ZipDirectory> ReadZipDirectoryFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError("cannot open the archive");
  Source src;
  src.size = static_cast<uint64_t>(in.tellg());
  src.read = [&in](uint64_t offset, uint64_t n, std::string* out) {
    out->assign(n, '\0');
    in.clear();
    in.seekg(static_cast<std::streamoff>(offset));
    if (!in.read(out->data(), static_cast<std::streamsize>(n))) {
      return absl::DataLossError("the archive could not be read");
    }
    return absl::OkStatus();
  };
  return ReadFrom(src);
}

}  // namespace compress
