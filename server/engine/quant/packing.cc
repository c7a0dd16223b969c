#include "server/engine/quant/packing.h"

#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/safetensors.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

constexpr char kFormat[] = "compressd.packed";
constexpr int kFormatVersion = 1;

struct DtypeCode {
  c10::ScalarType type;
  const char* code;
};

constexpr DtypeCode kDtypeCodes[] = {
    {c10::ScalarType::Double, "F64"}, {c10::ScalarType::Float, "F32"},
    {c10::ScalarType::Half, "F16"},   {c10::ScalarType::BFloat16, "BF16"},
    {c10::ScalarType::Long, "I64"},   {c10::ScalarType::Int, "I32"},
    {c10::ScalarType::Short, "I16"},  {c10::ScalarType::Char, "I8"},
    {c10::ScalarType::Byte, "U8"},    {c10::ScalarType::Bool, "BOOL"},
};

const char* CodeOf(c10::ScalarType type) {
  for (const DtypeCode& d : kDtypeCodes) {
    if (d.type == type) return d.code;
  }
  return nullptr;
}

bool TypeOf(const std::string& code, c10::ScalarType* type) {
  for (const DtypeCode& d : kDtypeCodes) {
    if (code == d.code) {
      *type = d.type;
      return true;
    }
  }
  return false;
}

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string TensorBytes(const torch::Tensor& t) {
  torch::Tensor c = t.detach().cpu().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

absl::Status WriteAtomically(const std::string& path, const std::string& data) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  FILE* f = fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot create ", tmp));
  bool ok = fwrite(data.data(), 1, data.size(), f) == data.size();
  ok = fflush(f) == 0 && ok;
  ok = fsync(fileno(f)) == 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> LayerManifest(const std::string& tensor, const QuantizedTensor& q) {
  const QuantParams& p = q.params;
  RETURN_IF_ERROR(ValidateSpec(p.spec));
  int64_t numel = 1;
  for (int64_t d : p.shape) numel *= d;
  nlohmann::json j;
  j["tensor"] = tensor;
  j["bits"] = p.spec.bits;
  j["symmetric"] = p.spec.symmetric;
  j["granularity"] = GranularityName(p.spec.granularity);
  j["group_size"] = p.spec.granularity == QuantGranularity::kGroup ? p.spec.group_size : 0;
  j["channel_axis"] = p.spec.channel_axis;
  j["shape"] = p.shape;
  j["numel"] = numel;
  j["packed_bytes"] = PackedBytes(numel, p.spec.bits);
  j["min_code"] = MinCode(p.spec);
  j["max_code"] = MaxCode(p.spec);
  j["scale_shape"] = std::vector<int64_t>(p.scale.sizes().begin(), p.scale.sizes().end());
  return j;
}

absl::Status Invalid(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("bad packed model ", path, ": ", why));
}

// True, with *out set, when `v` is an integer in [lo, hi] (hi >= 0).
// Checked before converting: nlohmann's get<int>() of a float such as 1e300
// is undefined behaviour, of a string an exception (both found by
// tests/fuzz/packed_model_fuzzer).
bool IntIn(const nlohmann::json& v, int64_t lo, int64_t hi, int64_t* out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) return false;
  *out = v.get<int64_t>();
  return *out >= lo && *out <= hi;
}

// A layer's QuantParams (all but scale and zero point) from its manifest
// entry; returns the number of elements of its shape.
absl::StatusOr<int64_t> ParseLayerManifest(const std::string& layer, const nlohmann::json& j,
                                           QuantParams* params) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  auto field = [&](const char* key, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
    int64_t v = 0;
    if (!j.contains(key) || !IntIn(j[key], lo, hi, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer, ": ", key, " must be an integer in ", lo, "..", hi));
    }
    return v;
  };
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not an object"));
  }
  ASSIGN_OR_RETURN(int64_t bits, field("bits", 0, 64));
  params->spec.bits = static_cast<int>(bits);
  if (!j.contains("symmetric") || !j["symmetric"].is_boolean() || !j.contains("granularity") ||
      !j["granularity"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, ": needs symmetric (bool) and granularity (string)"));
  }
  params->spec.symmetric = j["symmetric"].get<bool>();
  ASSIGN_OR_RETURN(params->spec.granularity,
                   ParseGranularity(j["granularity"].get<std::string>()));
  if (params->spec.granularity == QuantGranularity::kGroup) {
    ASSIGN_OR_RETURN(params->spec.group_size, field("group_size", 0, kMax));
  }
  ASSIGN_OR_RETURN(params->spec.channel_axis, field("channel_axis", -64, 64));
  RETURN_IF_ERROR(ValidateSpec(params->spec));
  if (!j.contains("shape") || !j["shape"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": shape must be an array"));
  }
  // numel · bits must fit in int64 (PackedBytes).
  int64_t numel = 1;
  for (const nlohmann::json& d : j["shape"]) {
    int64_t n = 0;
    if (!IntIn(d, 0, kMax, &n) || __builtin_mul_overflow(numel, n, &numel) || numel > kMax / 8) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": shape ", j["shape"].dump(), " is not a tensor shape that fits"));
    }
    params->shape.push_back(n);
  }
  return numel;
}

}  // namespace

int64_t PackedBytes(int64_t n, int bits) { return (n * bits + 7) / 8; }

absl::StatusOr<std::vector<uint8_t>> PackCodes(absl::Span<const uint8_t> codes, int bits) {
  if (bits < 1 || bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits ", bits, " not in 1..8"));
  }
  const int64_t n = static_cast<int64_t>(codes.size());
  std::vector<uint8_t> packed(PackedBytes(n, bits), 0);
  const uint32_t limit = uint32_t{1} << bits;
  uint64_t bit = 0;
  for (int64_t i = 0; i < n; ++i, bit += bits) {
    const uint32_t code = codes[i];
    if (code >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("code ", code, " at index ", i, " does not fit in ", bits, " bits"));
    }
    // A code spans at most two bytes (bits ≤ 8).
    const uint32_t shifted = code << (bit % 8);
    packed[bit / 8] |= static_cast<uint8_t>(shifted & 0xff);
    if ((bit % 8) + bits > 8) {
      packed[bit / 8 + 1] |= static_cast<uint8_t>(shifted >> 8);
    }
  }
  return packed;
}

absl::StatusOr<std::vector<uint8_t>> UnpackCodes(absl::Span<const uint8_t> packed, int64_t n,
                                                 int bits) {
  if (bits < 1 || bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits ", bits, " not in 1..8"));
  }
  if (n < 0 || static_cast<int64_t>(packed.size()) != PackedBytes(n, bits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        packed.size(), " packed bytes cannot hold exactly ", n, " codes of ", bits, " bits"));
  }
  std::vector<uint8_t> codes(n);
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  uint64_t bit = 0;
  for (int64_t i = 0; i < n; ++i, bit += bits) {
    uint32_t word = packed[bit / 8];
    if ((bit % 8) + bits > 8) word |= uint32_t{packed[bit / 8 + 1]} << 8;
    codes[i] = static_cast<uint8_t>((word >> (bit % 8)) & mask);
  }
  return codes;
}

std::string QuantizedTensorName(const PackedModel& model, const std::string& layer) {
  auto it = model.tensor_names.find(layer);
  return it != model.tensor_names.end() ? it->second : absl::StrCat(layer, ".weight");
}

absl::StatusOr<PackedFileInfo> WritePackedModel(const PackedModel& model,
                                                const std::string& safetensors_path,
                                                const std::string& manifest_path) {
  PackedFileInfo info;
  std::vector<Entry> entries;
  nlohmann::json manifest;
  manifest["format"] = kFormat;
  manifest["format_version"] = kFormatVersion;
  manifest["packing"] = "lsb_first_bitstream";
  manifest["dequantize"] = "scale * (code - zero_point)";
  manifest["layers"] = nlohmann::json::object();
  manifest["float_tensors"] = nlohmann::json::array();
  try {
    std::set<std::string> quantized_tensors;
    for (const auto& [layer, q] : model.layers) {
      const std::string base = QuantizedTensorName(model, layer);
      quantized_tensors.insert(base);
      ASSIGN_OR_RETURN(nlohmann::json j, LayerManifest(base, q));
      // Validates shapes of codes and params together.
      ASSIGN_OR_RETURN(auto expanded, ExpandParams(q.params));
      (void)expanded;
      if (!q.codes.defined() || q.codes.scalar_type() != torch::kUInt8 ||
          std::vector<int64_t>(q.codes.sizes().begin(), q.codes.sizes().end()) != q.params.shape) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", layer, ": codes must be uint8 of the weight's shape"));
      }
      torch::Tensor codes = q.codes.cpu().contiguous();
      absl::Span<const uint8_t> span(codes.data_ptr<uint8_t>(), codes.numel());
      auto packed = PackCodes(span, q.params.spec.bits);
      if (!packed.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", layer, ": ", packed.status().message()));
      }
      entries.push_back({base + ".packed",
                         "U8",
                         {static_cast<int64_t>(packed->size())},
                         std::string(packed->begin(), packed->end())});
      entries.push_back(
          {base + ".scale", "F32",
           std::vector<int64_t>(q.params.scale.sizes().begin(), q.params.scale.sizes().end()),
           TensorBytes(q.params.scale.to(torch::kFloat32))});
      entries.push_back({base + ".zero_point", "U8",
                         std::vector<int64_t>(q.params.zero_point.sizes().begin(),
                                              q.params.zero_point.sizes().end()),
                         TensorBytes(q.params.zero_point.to(torch::kUInt8))});
      info.packed_bytes += static_cast<int64_t>(packed->size());
      info.param_bytes += static_cast<int64_t>(entries[entries.size() - 2].bytes.size() +
                                               entries.back().bytes.size());
      manifest["layers"][layer] = std::move(j);
    }
    for (const auto& [name, t] : model.float_tensors) {
      const char* code = t.defined() ? CodeOf(t.scalar_type()) : nullptr;
      if (code == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", name, " has no safetensors dtype"));
      }
      entries.push_back(
          {name, code, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), TensorBytes(t)});
      info.float_bytes += static_cast<int64_t>(entries.back().bytes.size());
      manifest["float_tensors"].push_back(name);
    }
    for (const auto& [alias, name] : model.aliases) {
      if (quantized_tensors.count(name) == 0 && model.float_tensors.count(name) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tied name ", alias, " points to ", name, ", which is not stored"));
      }
      manifest["tied"][alias] = name;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot serialize the packed model: ", e.what()));
  }

  // Largest elements first keeps every tensor aligned to its element size.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::make_tuple(-SafetensorsElementSize(a.dtype), a.name) <
           std::make_tuple(-SafetensorsElementSize(b.dtype), b.name);
  });
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].name == entries[i - 1].name) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name ", entries[i].name, " is used twice"));
    }
  }
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const Entry& e : entries) {
    header[e.name] = {{"dtype", e.dtype},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  info.manifest = manifest.dump(2);
  header["__metadata__"] = {{"format", kFormat},
                            {"format_version", std::to_string(kFormatVersion)},
                            {"manifest", manifest.dump()}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string file;
  file.reserve(8 + text.size() + offset);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  file += text;
  for (const Entry& e : entries) file += e.bytes;
  RETURN_IF_ERROR(WriteAtomically(safetensors_path, file));
  if (!manifest_path.empty()) {
    RETURN_IF_ERROR(WriteAtomically(manifest_path, info.manifest + "\n"));
  }
  info.file_bytes = static_cast<int64_t>(file.size());
  return info;
}

absl::StatusOr<PackedModel> ReadPackedModel(const std::string& path) {
  ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(path));
  auto meta = header.metadata.find("manifest");
  if (header.metadata["format"] != kFormat || meta == header.metadata.end()) {
    return Invalid(path, "no compressd.packed manifest in __metadata__");
  }
  nlohmann::json manifest =
      nlohmann::json::parse(meta->second, nullptr, /*allow_exceptions=*/false);
  int64_t version = 0;
  if (manifest.is_discarded() || !manifest.is_object() || !manifest.contains("format_version") ||
      !IntIn(manifest["format_version"], 0, kFormatVersion, &version) ||
      version != kFormatVersion || !manifest.contains("layers") ||
      !manifest["layers"].is_object() || !manifest.contains("float_tensors") ||
      !manifest["float_tensors"].is_array()) {
    return Invalid(path, "manifest is not format version 1");
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string data = buffer.str();

  // The bytes of tensor `name`, checked against the expected dtype code.
  auto bytes_of = [&](const std::string& name, const std::string& dtype)
      -> absl::StatusOr<std::pair<const SafetensorsTensor*, std::string>> {
    auto it = header.tensors.find(name);
    if (it == header.tensors.end()) return Invalid(path, "missing tensor " + name);
    if (!dtype.empty() && it->second.dtype != dtype) {
      return Invalid(path, absl::StrCat(name, " is ", it->second.dtype, ", not ", dtype));
    }
    if (it->second.end > data.size()) return Invalid(path, "truncated data");
    return std::make_pair(&it->second,
                          data.substr(it->second.begin, it->second.end - it->second.begin));
  };
  auto to_tensor = [](const SafetensorsTensor& t, const std::string& bytes, c10::ScalarType type) {
    torch::Tensor out = torch::empty(t.shape, torch::TensorOptions().dtype(type));
    if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
    return out;
  };

  PackedModel model;
  try {
    for (const auto& [layer, j] : manifest["layers"].items()) {
      QuantParams params;
      auto numel_or = ParseLayerManifest(layer, j, &params);
      if (!numel_or.ok()) return Invalid(path, std::string(numel_or.status().message()));
      const int64_t numel = *numel_or;
      // Files written before attention projections were quantized name
      // every tensor "<layer>.weight" (also in "tensor").
      std::string base = absl::StrCat(layer, ".weight");
      if (j.contains("tensor")) {
        if (!j["tensor"].is_string()) {
          return Invalid(path, absl::StrCat("layer ", layer, ": tensor is not a string"));
        }
        base = j["tensor"].get<std::string>();
      }
      if (base != absl::StrCat(layer, ".weight")) model.tensor_names[layer] = base;
      ASSIGN_OR_RETURN(auto packed, bytes_of(base + ".packed", "U8"));
      ASSIGN_OR_RETURN(auto scale, bytes_of(base + ".scale", "F32"));
      ASSIGN_OR_RETURN(auto zero, bytes_of(base + ".zero_point", "U8"));
      auto codes = UnpackCodes(
          absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(packed.second.data()),
                                    packed.second.size()),
          numel, params.spec.bits);
      if (!codes.ok()) {
        return Invalid(path, absl::StrCat(base, ": ", codes.status().message()));
      }
      params.scale = to_tensor(*scale.first, scale.second, torch::kFloat32);
      params.zero_point = to_tensor(*zero.first, zero.second, torch::kUInt8);
      QuantizedTensor q;
      q.params = std::move(params);
      q.codes =
          torch::from_blob(codes->data(), {numel}, torch::kUInt8).clone().reshape(q.params.shape);
      auto check = ExpandParams(q.params);
      if (!check.ok()) {
        return Invalid(path, absl::StrCat(base, ": ", check.status().message()));
      }
      model.layers.emplace(layer, std::move(q));
    }
    for (const auto& name_json : manifest["float_tensors"]) {
      const std::string name = name_json.get<std::string>();
      ASSIGN_OR_RETURN(auto t, bytes_of(name, ""));
      c10::ScalarType type;
      if (!TypeOf(t.first->dtype, &type)) {
        return Invalid(path, absl::StrCat(name, " has dtype ", t.first->dtype));
      }
      model.float_tensors.emplace(name, to_tensor(*t.first, t.second, type));
    }
    if (manifest.contains("tied")) {
      if (!manifest["tied"].is_object()) return Invalid(path, "manifest's tied is not an object");
      for (const auto& [alias, name] : manifest["tied"].items()) {
        model.aliases.emplace(alias, name.get<std::string>());
      }
    }
  } catch (const std::exception& e) {
    return Invalid(path, e.what());
  }
  return model;
}

absl::StatusOr<std::map<std::string, torch::Tensor>> DequantizedTensors(const PackedModel& model) {
  std::map<std::string, torch::Tensor> out = model.float_tensors;
  for (const auto& [layer, q] : model.layers) {
    ASSIGN_OR_RETURN(torch::Tensor w, Dequantize(q));
    out[QuantizedTensorName(model, layer)] = w;
  }
  for (const auto& [alias, name] : model.aliases) {
    auto it = out.find(name);
    if (it == out.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tied name ", alias, " points to ", name, ", which is not stored"));
    }
    out[alias] = it->second;
  }
  return out;
}

namespace {

const char* EncodingType(QuantGranularity granularity) {
  switch (granularity) {
    case QuantGranularity::kPerTensor:
      return "PER_TENSOR";
    case QuantGranularity::kPerChannel:
      return "PER_CHANNEL";
    case QuantGranularity::kGroup:
      return "PER_BLOCK";
  }
  return "UNKNOWN";
}

absl::StatusOr<nlohmann::json> ParamEncoding(const std::string& layer, const QuantizedTensor& q) {
  const QuantParams& p = q.params;
  RETURN_IF_ERROR(ValidateSpec(p.spec));
  const torch::Tensor scale = p.scale.detach().cpu().to(torch::kFloat32).contiguous();
  const torch::Tensor zero = p.zero_point.detach().cpu().to(torch::kInt64).contiguous();
  if (scale.numel() != zero.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, ": scales and zero points differ in number"));
  }
  nlohmann::json j;
  j["name"] = absl::StrCat(layer, ".weight");
  j["dtype"] = "INT";
  j["enc_type"] = EncodingType(p.spec.granularity);
  j["bw"] = p.spec.bits;
  j["is_sym"] = p.spec.symmetric;
  j["axis"] = p.spec.channel_axis;
  if (p.spec.granularity == QuantGranularity::kGroup) j["block_size"] = p.spec.group_size;
  j["shape"] = p.shape;
  std::vector<double> scales(static_cast<size_t>(scale.numel()));
  std::vector<int64_t> offsets(scales.size()), zero_points(scales.size());
  for (int64_t i = 0; i < scale.numel(); ++i) {
    scales[i] = static_cast<double>(scale.data_ptr<float>()[i]);
    zero_points[i] = zero.data_ptr<int64_t>()[i];
    offsets[i] = -zero_points[i];
  }
  j["scale"] = scales;
  j["offset"] = offsets;
  j["zero_point"] = zero_points;
  j["min_code"] = MinCode(p.spec);
  j["max_code"] = MaxCode(p.spec);
  return j;
}

}  // namespace

absl::StatusOr<std::string> WriteEncodings(const PackedModel& model, const std::string& path) {
  nlohmann::json encodings;
  encodings["version"] = kEncodingsVersion;
  encodings["producer"] = "compressd";
  encodings["dequantize"] = "x = scale * (q + offset) = scale * (q - zero_point)";
  encodings["activation_encodings"] = nlohmann::json::array();
  encodings["param_encodings"] = nlohmann::json::array();
  encodings["float_tensors"] = nlohmann::json::array();
  encodings["tied"] = nlohmann::json::object();
  try {
    for (const auto& [layer, q] : model.layers) {
      ASSIGN_OR_RETURN(nlohmann::json j, ParamEncoding(layer, q));
      encodings["param_encodings"].push_back(std::move(j));
    }
    for (const auto& [name, t] : model.float_tensors) encodings["float_tensors"].push_back(name);
    for (const auto& [alias, name] : model.aliases) encodings["tied"][alias] = name;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot write the encodings: ", e.what()));
  }
  std::string text = encodings.dump(1);
  RETURN_IF_ERROR(WriteAtomically(path, text));
  return text;
}

}  // namespace compress::engine
