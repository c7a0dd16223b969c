#include "server/engine/data/dataset.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/storage_context.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/common/finite.h"
#include "server/engine/data/idx.h"
#include "server/engine/data/safetensors.h"
#include "server/engine/model/model.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

absl::Status InFile(const std::string& path, const absl::Status& status) {
  if (status.ok() || absl::StrContains(status.message(), path)) return status;
  return absl::Status(status.code(),
                      absl::StrCat("dataset ", path, ": ", status.message()));
}

int64_t Take(int64_t available, int64_t max_examples) {
  return max_examples > 0 && max_examples < available ? max_examples
                                                      : available;
}

absl::StatusOr<c10::ScalarType> ScalarTypeOf(const std::string& code) {
  if (code == "F64") return c10::ScalarType::Double;
  if (code == "F32") return c10::ScalarType::Float;
  if (code == "F16") return c10::ScalarType::Half;
  if (code == "BF16") return c10::ScalarType::BFloat16;
  if (code == "I64") return c10::ScalarType::Long;
  if (code == "I32") return c10::ScalarType::Int;
  if (code == "I16") return c10::ScalarType::Short;
  if (code == "I8") return c10::ScalarType::Char;
  if (code == "U8") return c10::ScalarType::Byte;
  if (code == "BOOL") return c10::ScalarType::Bool;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype ", code));
}

// Reads the first `rows` rows of a tensor whose header ReadSafetensorsHeader
// has already checked against the file size.
absl::StatusOr<torch::Tensor> ReadRows(std::ifstream& in,
                                       const SafetensorsTensor& entry,
                                       int64_t rows) {
  ASSIGN_OR_RETURN(c10::ScalarType type, ScalarTypeOf(entry.dtype));
  std::vector<int64_t> shape = entry.shape;
  const uint64_t total = entry.end - entry.begin;
  const uint64_t bytes =
      shape[0] == 0 ? 0 : total / static_cast<uint64_t>(shape[0]) * rows;
  shape[0] = rows;
  // Safetensors data is little-endian, as is every host we build for.
  torch::Tensor tensor =
      torch::empty(shape, torch::TensorOptions().dtype(type));
  in.seekg(static_cast<std::streamoff>(entry.begin));
  if (!in.read(static_cast<char*>(tensor.data_ptr()),
               static_cast<std::streamsize>(bytes))) {
    return absl::InvalidArgumentError("truncated tensor data");
  }
  return tensor;
}

absl::StatusOr<LoadedDataset> LoadSafetensors(const std::string& path,
                                              int64_t max_examples) {
  ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(path));
  auto inputs = header.tensors.find("inputs");
  if (inputs == header.tensors.end()) {
    return absl::InvalidArgumentError("no \"inputs\" tensor");
  }
  auto targets = header.tensors.find("targets");
  auto describe = [](const SafetensorsTensor& t) {
    return TensorDescription{t.shape, SafetensorsDtypeName(t.dtype)};
  };
  TensorDescription target_description;
  if (targets != header.tensors.end()) target_description = describe(targets->second);
  std::vector<NamedTensorDescription> named;
  for (const auto& [key, tensor] : header.tensors) {
    if (IsNamedInputKey(key)) named.push_back({key, describe(tensor)});
  }
  ASSIGN_OR_RETURN(
      DatasetSummary summary,
      SummarizeDataset(DatasetFileFormat::kSafetensors, describe(inputs->second),
                       targets == header.tensors.end() ? nullptr : &target_description, named));

  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open");
  const int64_t rows = Take(inputs->second.shape[0], max_examples);
  LoadedDataset data;
  data.format = DatasetFileFormat::kSafetensors;
  try {
    ASSIGN_OR_RETURN(data.inputs.first, ReadRows(in, inputs->second, rows));
    for (const NamedInputSummary& n : summary.named_inputs) {
      ASSIGN_OR_RETURN(torch::Tensor t,
                       ReadRows(in, header.tensors.at("inputs." + n.name), rows));
      data.inputs.named.emplace_back(n.name, std::move(t));
    }
    if (targets != header.tensors.end()) {
      ASSIGN_OR_RETURN(data.targets, ReadRows(in, targets->second, rows));
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(e.what_without_backtrace());
  }
  return data;
}

// LibTorch's Unpickler allocates (and zero-fills) a string or bytes
// argument as long as its length prefix says before reading it, so a 1 KB
// file claiming a 4 GB string costs 4 GB (found by tests/fuzz/
// dataset_fuzzer). Walks the opcodes of the pickle in `data` (those the
// Unpickler knows) and refuses any argument that runs past its end.
// Unknown opcodes end the walk: the Unpickler refuses them itself. Sets
// *before_stop to the offset of the opcode before STOP when the walk gets
// there (else leaves it).
absl::Status CheckPickleLengths(const char* data, size_t size, size_t* before_stop) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data);
  size_t at = 0;
  auto little_endian = [&](size_t bytes) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i) v |= uint64_t{p[at + i]} << (8 * i);
    return v;
  };
  auto too_long = [&](uint64_t n, size_t opcode_at) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.pkl: an argument of ", n, " bytes at offset ", opcode_at,
        " runs past the end of the record (", size, " bytes)"));
  };
  size_t previous = size;
  while (at < size) {
    const size_t opcode_at = at;
    const unsigned char op = p[at++];
    size_t fixed = 0;       // bytes of a fixed-size argument
    size_t length_of = 0;   // bytes of a length prefix, then that many bytes
    int lines = 0;          // newline-terminated arguments
    switch (op) {
      case '.':  // STOP
        *before_stop = previous;
        return absl::OkStatus();
      case '(': case '0': case '1': case '2': case 'N': case 'Q': case 'R': case 'a':
      case 'b': case 'd': case '}': case 'e': case 'l': case ']': case 'o': case 's':
      case 't': case ')': case 'u': case 0x81: case 0x85: case 0x86: case 0x87:
      case 0x88: case 0x89: case 0x8f: case 0x90: case 0x91: case 0x92: case 0x93:
      case 0x94:
        break;
      case 'K': case 'h': case 'q': case 0x80: case 0x82: fixed = 1; break;
      case 'M': case 0x83: fixed = 2; break;
      case 'J': case 'j': case 'r': case 0x84: fixed = 4; break;
      case 'G': case 0x95: fixed = 8; break;
      case 0x8a: case 'U': case 'C': case 0x8c: length_of = 1; break;
      case 0x8b: case 'T': case 'B': case 'X': length_of = 4; break;
      case 0x8d: case 0x8e: length_of = 8; break;
      case 'F': case 'I': case 'L': case 'S': case 'V': case 'P': case 'g': case 'p':
        lines = 1;
        break;
      case 'c': case 'i': lines = 2; break;
      default:
        return absl::OkStatus();
    }
    if (length_of > 0) {
      if (size - at < length_of) return too_long(length_of, opcode_at);
      fixed = length_of;
      const uint64_t n = little_endian(length_of);
      if (n > size - at - length_of) return too_long(n, opcode_at);
      fixed += static_cast<size_t>(n);
    }
    if (size - at < fixed) return too_long(fixed, opcode_at);
    at += fixed;
    for (int i = 0; i < lines; ++i) {
      const void* nl = std::memchr(p + at, '\n', size - at);
      if (nl == nullptr) return too_long(size - at + 1, opcode_at);
      at = static_cast<size_t>(static_cast<const unsigned char*>(nl) - p) + 1;
    }
    previous = opcode_at;
  }
  return absl::OkStatus();
}

// Python pickles a dict of one item with SETITEM, which LibTorch 1.13's
// Unpickler lacks ("Unknown opcode for unpickling at 0x73"): torch.save of
// {"inputs": x} alone. The same pickle with a MARK after the top-level
// dict's BINPUT and SETITEMS for its final SETITEM builds the same dict (a
// dict of 1001+ items too: its batches of SETITEMS come before that last
// SETITEM, and the Unpickler's marks are stack positions, so both marks
// point just past the dict). Empty when the pickle is not a protocol-2
// dict (PROTO 2, EMPTY_DICT, BINPUT 0) whose last opcode before STOP at
// `before_stop` is SETITEM.
std::string OneItemDictAsSetItems(const char* data, size_t size, size_t before_stop) {
  constexpr char kDictStart[] = "\x80\x02}q";  // then memo index 0
  if (size < 7 || std::memcmp(data, kDictStart, 4) != 0 || data[4] != 0 ||
      before_stop != size - 2 || data[before_stop] != 's') {
    return "";
  }
  std::string patched(data, 5);
  patched.push_back('(');                         // MARK
  patched.append(data + 5, before_stop - 5);
  patched += "u.";                                // SETITEMS, STOP
  return patched;
}

// Bytes of every storage record read while unpickling, by data pointer.
using RecordSizes = std::map<const void*, size_t>;

// Unpickles "data.pkl" of a torch.save archive as torch::pickle_load does,
// but keeps the size of each storage record it reads (the unpickler sizes a
// storage by the element count the pickle claims, not by its record) and
// reads each record once however many tensors share it.
absl::StatusOr<c10::IValue> UnpickleTorchSave(const std::string& path,
                                              RecordSizes* records) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  std::tuple<at::DataPtr, size_t> pickle = reader.getRecord("data.pkl");
  const char* pickle_bytes = static_cast<const char*>(std::get<0>(pickle).get());
  size_t pickle_size = std::get<1>(pickle);
  size_t before_stop = pickle_size;
  RETURN_IF_ERROR(CheckPickleLengths(pickle_bytes, pickle_size, &before_stop));
  const std::string patched = OneItemDictAsSetItems(pickle_bytes, pickle_size, before_stop);
  if (!patched.empty()) {
    pickle_bytes = patched.data();
    pickle_size = patched.size();
  }
  size_t pos = 0;
  auto read = [&](char* out, size_t n) {
    const size_t k = std::min(n, pickle_size - pos);
    std::memcpy(out, pickle_bytes + pos, k);
    pos += k;
    return k;
  };
  auto read_record = [&](const std::string& key) {
    auto [data, size] = reader.getRecord("data/" + key);
    (*records)[data.get()] = size;
    return std::move(data);
  };
  torch::jit::Unpickler unpickler(
      read, nullptr, nullptr, read_record, c10::nullopt, false,
      torch::jit::Unpickler::defaultTypeParser,
      std::make_shared<torch::jit::DeserializationStorageContext>());
  unpickler.set_version(reader.version());
  return unpickler.parse_ivalue();
}

// A tensor of a torch.save file reads only bytes its storage record holds:
// sizes, strides and offset come from the pickle and nothing else checks
// them before the data is read.
absl::Status CheckStorage(const char* name, const torch::Tensor& t,
                          const RecordSizes& records) {
  const c10::Storage& storage = t.storage();
  auto record = records.find(storage.data());
  const uint64_t held = record == records.end() ? 0 : record->second;
  if (storage.nbytes() > held) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", name, "\" claims a storage of ", storage.nbytes(),
        " bytes but its record holds ", held));
  }
  return CheckTensorInStorage(absl::StrCat("\"", name, "\""), t);
}

// The "inputs", "inputs.<name>" and "targets" tensors of an unpickled
// torch.save dict.
absl::Status TakeTensors(const c10::IValue& value, LoadedDataset* data) {
  if (!value.isGenericDict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("torch.save file holds a ", value.tagKind(),
                     ", not a dict with \"inputs\" (and \"targets\")"));
  }
  std::vector<std::string> keys;
  for (const auto& entry : value.toGenericDict()) {
    if (!entry.key().isString()) continue;
    const std::string& key = entry.key().toStringRef();
    keys.push_back(key);
    std::string name;
    const bool named = IsNamedInputKey(key, &name);
    if (key != "inputs" && key != "targets" && !named) continue;
    if (!entry.value().isTensor()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", absl::CHexEscape(key.substr(0, 64)), "\" is a ", entry.value().tagKind(),
          ", not a tensor"));
    }
    if (named) {
      data->inputs.named.emplace_back(name, entry.value().toTensor());
    } else {
      (key == "inputs" ? data->inputs.first : data->targets) = entry.value().toTensor();
    }
  }
  if (!data->inputs.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no \"inputs\" tensor (keys: ",
                     keys.empty() ? "none" : absl::StrJoin(keys, ", "), ")"));
  }
  std::sort(data->inputs.named.begin(), data->inputs.named.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return absl::OkStatus();
}

absl::StatusOr<LoadedDataset> LoadTorchSave(const std::string& path,
                                            int64_t max_examples) {
  LoadedDataset data;
  data.format = DatasetFileFormat::kTorchSave;
  try {
    RecordSizes records;
    ASSIGN_OR_RETURN(c10::IValue value, UnpickleTorchSave(path, &records));
    RETURN_IF_ERROR(TakeTensors(value, &data));
    RETURN_IF_ERROR(CheckStorage("inputs", data.inputs.first, records));
    for (const auto& [name, tensor] : data.inputs.named) {
      RETURN_IF_ERROR(CheckStorage(("inputs." + name).c_str(), tensor, records));
    }
    if (data.targets.defined()) {
      RETURN_IF_ERROR(CheckStorage("targets", data.targets, records));
    }
    TensorDescription targets;
    if (data.targets.defined()) targets = DescribeTensor(data.targets);
    RETURN_IF_ERROR(SummarizeDataset(DatasetFileFormat::kTorchSave,
                                     DescribeTensor(data.inputs.first),
                                     data.targets.defined() ? &targets : nullptr,
                                     DescribeNamedInputs(data.inputs))
                        .status());
    const int64_t rows = Take(data.inputs.examples(), max_examples);
    if (rows < data.inputs.examples()) {
      // Copy so the rest of the file's storage can be freed.
      data.inputs = data.inputs.Narrow(0, rows).Clone();
      if (data.targets.defined()) {
        data.targets = data.targets.narrow(0, 0, rows).clone();
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a readable torch.save file: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a readable torch.save file: ", e.what()));
  }
  return data;
}

}  // namespace

TensorDescription DescribeTensor(const torch::Tensor& tensor) {
  TensorDescription description;
  description.shape = tensor.sizes().vec();
  description.dtype = DtypeName(tensor.scalar_type());
  return description;
}

std::vector<NamedTensorDescription> DescribeNamedInputs(const ModelInputs& inputs) {
  std::vector<NamedTensorDescription> out;
  for (const auto& [name, tensor] : inputs.named) {
    out.push_back({"inputs." + name, DescribeTensor(tensor)});
  }
  return out;
}

absl::Status CheckFiniteData(const LoadedDataset& data, absl::string_view name) {
  RETURN_IF_ERROR(CheckFiniteExamples(data.inputs.first, absl::StrCat(name, ": inputs")));
  for (const auto& [key, tensor] : data.inputs.named) {
    RETURN_IF_ERROR(CheckFiniteExamples(tensor, absl::StrCat(name, ": inputs.", key)));
  }
  return CheckFiniteExamples(data.targets, absl::StrCat(name, ": targets"));
}

absl::StatusOr<LoadedDataset> LoadBuiltinDataset(const std::string& id,
                                                 int64_t max_examples,
                                                 const std::string& idx_dir) {
  ASSIGN_OR_RETURN(FashionMnistFiles files, FashionMnistPaths(id, idx_dir));
  ASSIGN_OR_RETURN(IdxArray images, ReadIdxFile(files.images, max_examples));
  ASSIGN_OR_RETURN(IdxArray labels, ReadIdxFile(files.labels, max_examples));
  if (images.dims.size() != 3 || labels.dims.size() != 1 ||
      images.dims[0] != labels.dims[0]) {
    return absl::DataLossError(
        absl::StrCat("IDX files of ", id, " disagree: images [",
                     absl::StrJoin(images.dims, ", "), "], labels [",
                     absl::StrJoin(labels.dims, ", "), "]"));
  }
  const int64_t n = images.dims[0];
  LoadedDataset data;
  data.format = DatasetFileFormat::kIdx;
  try {
    torch::Tensor bytes =
        torch::empty({n, 1, images.dims[1], images.dims[2]}, torch::kUInt8);
    std::memcpy(bytes.data_ptr(), images.data.data(), images.data.size());
    data.inputs = bytes.to(torch::kFloat32).div_(255.0);
    torch::Tensor label_bytes = torch::empty({n}, torch::kUInt8);
    std::memcpy(label_bytes.data_ptr(), labels.data.data(), labels.data.size());
    data.targets = label_bytes.to(torch::kInt64);
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return data;
}

absl::StatusOr<LoadedDataset> LoadDataset(const std::string& path_or_builtin_id,
                                          int64_t max_examples) {
  const std::string& path = path_or_builtin_id;
  if (IsBuiltinDataset(path)) {
    return LoadBuiltinDataset(path, max_examples, DefaultFashionMnistDir());
  }
  ASSIGN_OR_RETURN(DatasetFileFormat format, DetectDatasetFileFormat(path));
  absl::StatusOr<LoadedDataset> data =
      format == DatasetFileFormat::kTorchSave
          ? LoadTorchSave(path, max_examples)
          : LoadSafetensors(path, max_examples);
  if (!data.ok()) return InFile(path, data.status());
  return data;
}

}  // namespace compress::engine
