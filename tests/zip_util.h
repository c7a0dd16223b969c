// Test helper: zip archives built byte by byte, for hostile uploads (bombs,
// members whose declared sizes lie, torch.save files with edited pickles).
// Header-only and dependency-free so that engine tests can use it too.
//
//   std::vector<ZipFile> files = Unzip(torch_save_bytes);
//   files[1] = Deflated(files[1].name, DeflateStored(more), files[1].size, crc);
//   std::string archive = Zip(files);
#ifndef COMPRESS_TESTS_ZIP_UTIL_H_
#define COMPRESS_TESTS_ZIP_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace compress::testutil {

struct ZipFile {
  std::string name;
  std::string data;   // as stored in the archive (compressed when method 8)
  uint16_t method = 0;
  uint64_t size = 0;  // the uncompressed size declared for it
  uint32_t crc = 0;   // of the uncompressed bytes
};

inline uint32_t Crc32(absl::string_view bytes, uint32_t crc = 0) {
  crc = ~crc;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

inline ZipFile Stored(const std::string& name, const std::string& data) {
  return ZipFile{name, data, 0, data.size(), Crc32(data)};
}

inline ZipFile Deflated(const std::string& name, const std::string& stream, uint64_t size,
                        uint32_t crc) {
  return ZipFile{name, stream, 8, size, crc};
}

// A deflate stream (RFC 1951) of stored blocks that inflates to `data`.
inline std::string DeflateStored(absl::string_view data) {
  std::string out;
  size_t at = 0;
  do {
    const size_t n = std::min<size_t>(data.size() - at, 0xFFFF);
    const bool last = at + n == data.size();
    out.push_back(last ? 1 : 0);
    for (uint16_t v : {static_cast<uint16_t>(n), static_cast<uint16_t>(~n)}) {
      out.push_back(static_cast<char>(v & 0xFF));
      out.push_back(static_cast<char>(v >> 8));
    }
    out.append(data.data() + at, n);
    at += n;
  } while (at < data.size());
  return out;
}

namespace zip_internal {
inline void Put(std::string* out, uint64_t v, int width) {
  for (int i = 0; i < width; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
inline uint64_t Get(absl::string_view in, size_t at, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}
}  // namespace zip_internal

// A zip archive of `files` (no ZIP64: sizes must fit 32 bits; a declared
// size of 2^32 or more is written with a ZIP64 extra field).
inline std::string Zip(const std::vector<ZipFile>& files) {
  using zip_internal::Put;
  std::string out, dir;
  for (const ZipFile& f : files) {
    const uint64_t offset = out.size();
    const bool wide = f.size >= 0xFFFFFFFFu;
    const uint32_t size32 = wide ? 0xFFFFFFFFu : static_cast<uint32_t>(f.size);
    Put(&out, 0x04034b50, 4);
    Put(&out, 20, 2);
    Put(&out, 0, 2);
    Put(&out, f.method, 2);
    Put(&out, 0, 4);  // time, date
    Put(&out, f.crc, 4);
    Put(&out, f.data.size(), 4);
    Put(&out, size32, 4);
    Put(&out, f.name.size(), 2);
    Put(&out, wide ? 20 : 0, 2);
    out += f.name;
    if (wide) {
      Put(&out, 1, 2), Put(&out, 16, 2), Put(&out, f.size, 8), Put(&out, f.data.size(), 8);
    }
    out += f.data;
    Put(&dir, 0x02014b50, 4);
    Put(&dir, 45, 2);
    Put(&dir, 20, 2);
    Put(&dir, 0, 2);
    Put(&dir, f.method, 2);
    Put(&dir, 0, 4);
    Put(&dir, f.crc, 4);
    Put(&dir, f.data.size(), 4);
    Put(&dir, size32, 4);
    Put(&dir, f.name.size(), 2);
    Put(&dir, wide ? 12 : 0, 2);
    Put(&dir, 0, 2);  // comment
    Put(&dir, 0, 2);  // disk
    Put(&dir, 0, 2);
    Put(&dir, 0, 4);
    Put(&dir, offset, 4);
    dir += f.name;
    if (wide) Put(&dir, 1, 2), Put(&dir, 8, 2), Put(&dir, f.size, 8);
  }
  const uint64_t dir_offset = out.size();
  out += dir;
  Put(&out, 0x06054b50, 4);
  Put(&out, 0, 4);
  Put(&out, files.size(), 2);
  Put(&out, files.size(), 2);
  Put(&out, dir.size(), 4);
  Put(&out, dir_offset, 4);
  Put(&out, 0, 2);
  return out;
}

// The members of a small archive (each under 4 GiB, as LibTorch and zipfile
// write them), in central directory order. Test inputs only: no checks.
inline std::vector<ZipFile> Unzip(absl::string_view archive) {
  using zip_internal::Get;
  std::vector<ZipFile> files;
  const size_t end = archive.rfind(absl::string_view("PK\x05\x06", 4));
  if (end == absl::string_view::npos) return files;
  uint64_t entries = Get(archive, end + 10, 2), at = Get(archive, end + 16, 4);
  if (at == 0xFFFFFFFFu || entries == 0xFFFF) {  // the ZIP64 end record has them
    const uint64_t record = Get(archive, end - 20 + 8, 8);
    entries = Get(archive, record + 32, 8);
    at = Get(archive, record + 48, 8);
  }
  for (uint64_t i = 0; i < entries; ++i) {
    ZipFile f;
    f.method = static_cast<uint16_t>(Get(archive, at + 10, 2));
    f.crc = static_cast<uint32_t>(Get(archive, at + 16, 4));
    const size_t compressed = Get(archive, at + 20, 4);
    f.size = Get(archive, at + 24, 4);
    const size_t name_len = Get(archive, at + 28, 2);
    const size_t skip = name_len + Get(archive, at + 30, 2) + Get(archive, at + 32, 2);
    f.name = std::string(archive.substr(at + 46, name_len));
    const size_t local = Get(archive, at + 42, 4);
    const size_t data = local + 30 + Get(archive, local + 26, 2) + Get(archive, local + 28, 2);
    f.data = std::string(archive.substr(data, compressed));
    at += 46 + skip;
    files.push_back(std::move(f));
  }
  return files;
}

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_ZIP_UTIL_H_
