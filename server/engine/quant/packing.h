// Low-bit storage of quantized weights: bit packing and the packed-model file.
//
// Bit packing. Codes of b bits (each < 2^b) form one LSB-first bitstream:
// code i occupies stream bits [i·b, (i+1)·b), its least significant bit
// first, and stream bit k is bit (k mod 8) of byte ⌊k/8⌋. So b = 8 is one
// code per byte, b = 4 two per byte (code 2j in the low nibble of byte j),
// and b = 2, 3, 5, 6, 7 run across byte boundaries. The unused high bits of
// the last byte are 0. n codes take ⌈n·b/8⌉ bytes.
//
// Packed-model file: a safetensors file (8-byte little-endian header length,
// JSON header padded with spaces to a multiple of 8, then the data; tensors
// ordered by element size then name, so every tensor is aligned to its
// element size) holding, for each quantized layer L with weight tensor T
// ("L.weight", or an attention's own parameter "A.in_proj_weight"):
//   T.packed      U8   [⌈numel·b/8⌉]  codes of the row-major weight
//   T.scale       F32  [rows, groups] (QuantParams::scale)
//   T.zero_point  U8   [rows, groups] (QuantParams::zero_point)
// and every tensor kept in float under its own name (e.g. "fc.bias") with
// its own dtype. The manifest (JSON, also stored in the header's
// __metadata__ under "manifest") is
//   {"format": "compressd.packed", "format_version": 1,
//    "packing": "lsb_first_bitstream",
//    "dequantize": "scale * (code - zero_point)",
//    "layers": {L: {"tensor": T, "bits", "symmetric",
//                   "granularity": "per_tensor|per_channel|group",
//                   "group_size" (0 unless group), "channel_axis",
//                   "shape", "numel", "packed_bytes", "min_code",
//                   "max_code", "scale_shape"}},
//    "float_tensors": [names],
//    "tied": {alias: name}}
// where "tied" (absent when empty) maps each further name of a tied tensor
// (a module holding the same parameter as an earlier one) to the name it is
// stored under, T or a float tensor's: the tensor is stored once.
// Little-endian hosts only (as safetensors itself).
//
// Encodings file (JSON, WriteEncodings), modelled on AIMET's encodings
// file (version "1.0.0" layout: lists of named encodings with dtype,
// enc_type, bw, is_sym, scale, offset) so that tools that take
// per-tensor quantization parameters can read it:
//   {"version": "1.0.0", "producer": "compressd",
//    "dequantize": "x = scale * (q + offset) = scale * (q - zero_point)",
//    "activation_encodings": [],     (weights only, so far)
//    "param_encodings": [{"name": "L.weight", "dtype": "INT",
//        "enc_type": "PER_TENSOR|PER_CHANNEL|PER_BLOCK", "bw", "is_sym",
//        "axis" (channel axis), "block_size" (PER_BLOCK only: columns of
//        the matrix view per scale), "shape",
//        "scale": [rows·groups floats, row-major: the float32 scales],
//        "offset": [−zero_point ...], "zero_point": [...],
//        "min_code", "max_code"}],
//    "float_tensors": [names], "tied": {alias: name}}
// with q the unsigned code (min_code..max_code) of the packed file.
//
//   PackedModel packed;
//   packed.layers["fc"] = quantized_fc_weight;
//   packed.float_tensors["fc.bias"] = bias;
//   ASSIGN_OR_RETURN(PackedFileInfo info,
//                    WritePackedModel(packed, "w.safetensors", "w.json"));
//   ASSIGN_OR_RETURN(PackedModel back, ReadPackedModel("w.safetensors"));
//
// Functions are thread-safe; files are written to a temporary name and
// renamed, so readers never see half a file.
#ifndef COMPRESS_ENGINE_QUANT_PACKING_H_
#define COMPRESS_ENGINE_QUANT_PACKING_H_

#include <torch/script.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/engine/quant/quantizer.h"

namespace compress::engine {

// ⌈n·bits/8⌉.
int64_t PackedBytes(int64_t n, int bits);

// Packs `codes` (each < 2^bits, bits in 1..8) as above. INVALID_ARGUMENT
// naming the first code that does not fit.
absl::StatusOr<std::vector<uint8_t>> PackCodes(absl::Span<const uint8_t> codes, int bits);

// The `n` codes packed in `packed`, which must be exactly PackedBytes(n,
// bits) long.
absl::StatusOr<std::vector<uint8_t>> UnpackCodes(absl::Span<const uint8_t> packed, int64_t n,
                                                 int bits);

struct PackedModel {
  // Layer (module path, e.g. "block.conv1") -> its quantized weight.
  std::map<std::string, QuantizedTensor> layers;
  // Layer -> its weight's full name, where that is not "<layer>.weight"
  // (e.g. "enc.attn.in_proj_weight" -> "enc.attn.in_proj_weight").
  std::map<std::string, std::string> tensor_names;
  // Full tensor name -> tensor kept as is (biases, unquantized layers).
  std::map<std::string, torch::Tensor> float_tensors;
  // Tied tensors: further name ("b.weight") -> the stored one ("a.weight").
  std::map<std::string, std::string> aliases;
};

struct PackedFileInfo {
  int64_t file_bytes = 0;    // size of the safetensors file
  int64_t packed_bytes = 0;  // sum of the .packed tensors
  int64_t param_bytes = 0;   // sum of the scales and zero points
  int64_t float_bytes = 0;   // sum of the float tensors
  std::string manifest;      // the manifest JSON, as written
};

// The full name of layer `layer`'s quantized tensor: tensor_names' entry,
// else "<layer>.weight".
std::string QuantizedTensorName(const PackedModel& model, const std::string& layer);

// Writes `model` to `safetensors_path` and its manifest to `manifest_path`
// (skipped when empty). INVALID_ARGUMENT for inconsistent layers, names
// that collide or an alias of a name not stored; INTERNAL on I/O errors.
absl::StatusOr<PackedFileInfo> WritePackedModel(const PackedModel& model,
                                                const std::string& safetensors_path,
                                                const std::string& manifest_path);

// The encodings file's version (AIMET-style "major.minor.patch").
inline constexpr char kEncodingsVersion[] = "1.0.0";

// Writes the encodings of `model` (above) to `path`; returns the JSON.
// INVALID_ARGUMENT for an inconsistent layer; INTERNAL on I/O errors.
absl::StatusOr<std::string> WriteEncodings(const PackedModel& model, const std::string& path);

// Reads a file written by WritePackedModel; Dequantize() of each layer is
// bitwise equal to Dequantize() of what was written.
absl::StatusOr<PackedModel> ReadPackedModel(const std::string& safetensors_path);

// QuantizedTensorName(L) -> Dequantize(layer L) for every layer, plus the float tensors
// and every alias (the same tensor as its stored name): a state dict with
// every tensor in float.
absl::StatusOr<std::map<std::string, torch::Tensor>> DequantizedTensors(const PackedModel& model);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_QUANT_PACKING_H_
