#include "server/engine/data/idx.h"

// zlib declares a global function compress(), which collides with our
// namespace of the same name; we never call it, so rename it away.
#define compress zlib_compress
#include <zlib.h>
#undef compress

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Closes the gzFile on every return path.
class GzReader {
 public:
  explicit GzReader(const std::string& path)
      : file_(gzopen(path.c_str(), "rb")) {}
  ~GzReader() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  bool ok() const { return file_ != nullptr; }

  // True when exactly `n` bytes were read.
  bool Read(char* out, uint64_t n) {
    while (n > 0) {
      // gzread takes an unsigned int count.
      const unsigned chunk = static_cast<unsigned>(
          std::min<uint64_t>(n, std::numeric_limits<int>::max()));
      const int got = gzread(file_, out, chunk);
      if (got <= 0) return false;
      out += got;
      n -= static_cast<uint64_t>(got);
    }
    return true;
  }

 private:
  gzFile file_;
};

absl::Status OpenError(const std::string& path) {
  return absl::NotFoundError(
      absl::StrCat("cannot open IDX file ", path, ": ", std::strerror(errno)));
}

absl::StatusOr<std::vector<int64_t>> ReadDims(GzReader& reader,
                                              const std::string& path) {
  unsigned char magic[4];
  if (!reader.Read(reinterpret_cast<char*>(magic), 4) || magic[0] != 0 ||
      magic[1] != 0 || magic[2] != 0x08 || magic[3] == 0) {
    return absl::DataLossError(
        absl::StrCat(path, " is not an unsigned-byte IDX file"));
  }
  std::vector<int64_t> dims;
  for (int i = 0; i < magic[3]; ++i) {
    unsigned char b[4];
    if (!reader.Read(reinterpret_cast<char*>(b), 4)) {
      return absl::DataLossError(absl::StrCat(path, ": truncated IDX header"));
    }
    dims.push_back((int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) |
                   (int64_t{b[2]} << 8) | int64_t{b[3]});
  }
  return dims;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ReadIdxDims(const std::string& path) {
  GzReader reader(path);
  if (!reader.ok()) return OpenError(path);
  return ReadDims(reader, path);
}

absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path,
                                     int64_t max_items) {
  GzReader reader(path);
  if (!reader.ok()) return OpenError(path);
  IdxArray array;
  ASSIGN_OR_RETURN(array.dims, ReadDims(reader, path));
  if (max_items > 0 && max_items < array.dims[0]) array.dims[0] = max_items;
  // IDX dimensions are 32-bit, so a corrupt header could ask for exabytes.
  constexpr uint64_t kMaxBytes = uint64_t{1} << 34;
  uint64_t bytes = 1;
  for (int64_t d : array.dims) {
    if (d != 0 && bytes > kMaxBytes / static_cast<uint64_t>(d)) {
      return absl::DataLossError(absl::StrCat(path, ": IDX data too large"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  // The dimensions are only the header's claim: read in bounded steps, so a
  // short file with a huge header fails after the bytes it has instead of
  // allocating what it claims first (found by tests/fuzz/idx_fuzzer).
  constexpr uint64_t kStep = uint64_t{1} << 20;
  while (array.data.size() < bytes) {
    const size_t at = array.data.size();
    const uint64_t n = std::min<uint64_t>(kStep, bytes - at);
    array.data.resize(at + n);
    if (!reader.Read(array.data.data() + at, n)) {
      return absl::DataLossError(absl::StrCat(path, ": truncated IDX data"));
    }
  }
  return array;
}

absl::StatusOr<FashionMnistFiles> FashionMnistPaths(const std::string& id,
                                                    const std::string& dir) {
  std::string prefix;
  if (id == "builtin:fashion-mnist/train") {
    prefix = "train";
  } else if (id == "builtin:fashion-mnist/test") {
    prefix = "t10k";
  } else {
    return absl::NotFoundError(absl::StrCat(
        "unknown builtin dataset \"", id,
        "\" (known: builtin:fashion-mnist/train, builtin:fashion-mnist/test)"));
  }
  FashionMnistFiles files;
  files.images = absl::StrCat(dir, "/", prefix, "-images-idx3-ubyte.gz");
  files.labels = absl::StrCat(dir, "/", prefix, "-labels-idx1-ubyte.gz");
  return files;
}

}  // namespace compress::engine
