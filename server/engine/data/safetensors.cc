#include "server/engine/data/safetensors.h"

#include <cstring>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace compress::engine {
namespace {

// Real headers are a few KB; this only stops a corrupt length from making us
// allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100 << 20;

struct DtypeEntry {
  const char* code;
  const char* name;
  int size;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", "float64", 8},   {"F32", "float32", 4}, {"F16", "float16", 2},
    {"BF16", "bfloat16", 2}, {"I64", "int64", 8},   {"I32", "int32", 4},
    {"I16", "int16", 2},     {"I8", "int8", 1},     {"U8", "uint8", 1},
    {"BOOL", "bool", 1},
};

const DtypeEntry* FindDtype(const std::string& code) {
  for (const DtypeEntry& e : kDtypes) {
    if (code == e.code) return &e;
  }
  return nullptr;
}

uint64_t ReadLittleEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) {
    v = (v << 8) | static_cast<unsigned char>(p[i]);
  }
  return v;
}

absl::Status Invalid(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat("bad safetensors file ", path, ": ", why));
}

}  // namespace

std::string SafetensorsDtypeName(const std::string& code) {
  const DtypeEntry* e = FindDtype(code);
  return e == nullptr ? "" : e->name;
}

int SafetensorsElementSize(const std::string& code) {
  const DtypeEntry* e = FindDtype(code);
  return e == nullptr ? 0 : e->size;
}

bool LooksLikeSafetensors(const std::string& first_bytes, uint64_t file_size) {
  if (first_bytes.size() < 9 || file_size < 10) return false;
  uint64_t n = ReadLittleEndian64(first_bytes.data());
  return n >= 2 && n <= file_size - 8 && first_bytes[8] == '{';
}

absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  std::string head(8, '\0');
  if (file_size < 8 || !in.read(head.data(), 8)) {
    return Invalid(path, "shorter than the 8-byte header length");
  }
  // Only as many bytes as the length asks for, when that length is sane
  // (ParseSafetensorsHeader says what is wrong otherwise).
  const uint64_t header_size = ReadLittleEndian64(head.data());
  if (header_size <= file_size - 8 && header_size <= kMaxHeaderBytes) {
    head.resize(8 + header_size);
    if (!in.read(head.data() + 8, static_cast<std::streamsize>(header_size))) {
      return Invalid(path, "truncated header");
    }
  }
  return ParseSafetensorsHeader(head, file_size, path);
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view head, uint64_t file_size, const std::string& path) {
  if (file_size < 8 || head.size() < 8) {
    return Invalid(path, "shorter than the 8-byte header length");
  }
  const uint64_t header_size = ReadLittleEndian64(head.data());
  if (header_size > file_size - 8 || header_size > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_size,
                                      " exceeds the file size ", file_size));
  }
  if (head.size() - 8 < header_size) return Invalid(path, "truncated header");
  const char* text = head.data() + 8;
  nlohmann::json json =
      nlohmann::json::parse(text, text + header_size, nullptr,
                            /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return Invalid(path, "header is not a JSON object");
  }

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = file_size - data_start;
  SafetensorsHeader header;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        return Invalid(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (value.is_string()) header.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") ||
        !entry.contains("shape") || !entry.contains("data_offsets") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array() ||
        !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return Invalid(path, absl::StrCat("tensor \"", name,
                                        "\" needs dtype, shape, data_offsets"));
    }
    SafetensorsTensor tensor;
    tensor.dtype = entry["dtype"].get<std::string>();
    const int element_size = SafetensorsElementSize(tensor.dtype);
    if (element_size == 0) {
      return Invalid(
          path, absl::StrCat("tensor \"", name, "\" has unsupported dtype ",
                             tensor.dtype));
    }
    // The byte count of the non-zero dimensions must fit in an int64 (so
    // must every product of dimensions anyone computes later), even when a
    // zero dimension makes the tensor empty: [1, 0, 2^63] is refused, not
    // stored as [0, -2^63].
    constexpr uint64_t kMax = std::numeric_limits<int64_t>::max();
    uint64_t nonzero_bytes = static_cast<uint64_t>(element_size);
    bool empty = false;
    for (const auto& dim : entry["shape"]) {
      if (!dim.is_number_unsigned()) {
        return Invalid(path,
                       absl::StrCat("tensor \"", name, "\" has a bad shape"));
      }
      const uint64_t d = dim.get<uint64_t>();
      if (d > kMax || (d != 0 && nonzero_bytes > kMax / d)) {
        return Invalid(path,
                       absl::StrCat("tensor \"", name, "\" dimension ",
                                    tensor.shape.size(), " of ", d,
                                    " makes it larger than 2^63-1 bytes"));
      }
      if (d == 0) empty = true;
      if (d != 0) nonzero_bytes *= d;
      tensor.shape.push_back(static_cast<int64_t>(d));
    }
    const uint64_t bytes = empty ? 0 : nonzero_bytes;
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return Invalid(
          path, absl::StrCat("tensor \"", name, "\" has bad data_offsets"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Invalid(
          path, absl::StrCat("tensor \"", name, "\" data [", begin, ", ", end,
                             ") lies outside the ", data_size, " data bytes"));
    }
    if (end - begin != bytes) {
      return Invalid(path,
                     absl::StrCat("tensor \"", name, "\" has ", end - begin,
                                  " data bytes, its shape "
                                  "and dtype need ",
                                  bytes));
    }
    tensor.begin = data_start + begin;
    tensor.end = data_start + end;
    header.tensors.emplace(name, std::move(tensor));
  }
  return header;
}

}  // namespace compress::engine
