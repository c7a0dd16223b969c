#include "server/engine/data/dataset_info.h"

#include <stdlib.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/idx.h"
#include "server/engine/data/safetensors.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Names the file in messages from checks that do not know it.
absl::StatusOr<DatasetSummary> InFile(const std::string& path,
                                      absl::StatusOr<DatasetSummary> result) {
  if (result.ok() || !absl::IsInvalidArgument(result.status())) return result;
  if (absl::StrContains(result.status().message(), path)) return result;
  return absl::InvalidArgumentError(
      absl::StrCat("dataset ", path, ": ", result.status().message()));
}

absl::StatusOr<DatasetSummary> DescribeSafetensors(const std::string& path) {
  ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(path));
  auto describe = [](const SafetensorsTensor& t) {
    return TensorDescription{t.shape, SafetensorsDtypeName(t.dtype)};
  };
  auto inputs = header.tensors.find("inputs");
  if (inputs == header.tensors.end()) {
    std::vector<std::string> names;
    for (const auto& [name, tensor] : header.tensors) names.push_back(name);
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " has no \"inputs\" tensor (it has: ",
                     names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
  }
  auto targets = header.tensors.find("targets");
  TensorDescription target_description;
  if (targets != header.tensors.end()) {
    target_description = describe(targets->second);
  }
  std::vector<NamedTensorDescription> named;
  for (const auto& [key, tensor] : header.tensors) {
    if (IsNamedInputKey(key)) named.push_back({key, describe(tensor)});
  }
  return InFile(
      path,
      SummarizeDataset(
          DatasetFileFormat::kSafetensors, describe(inputs->second),
          targets == header.tensors.end() ? nullptr : &target_description, named));
}

// Bytes per element of a dtype as DescribeTensor / SafetensorsDtypeName
// name it; 0 when unknown (then only the element count is checked).
int64_t ElementBytes(const std::string& dtype) {
  static const std::map<std::string, int64_t> kBytes = {
      {"float64", 8}, {"float32", 4}, {"float16", 2},   {"bfloat16", 2},
      {"int64", 8},   {"int32", 4},   {"int16", 2},     {"int8", 1},
      {"uint8", 1},   {"bool", 1},    {"complex64", 8}, {"complex128", 16}};
  auto it = kBytes.find(dtype);
  return it == kBytes.end() ? 0 : it->second;
}

// A shape for a message: at most 8 dimensions shown.
std::string ShapeForMessage(const std::vector<int64_t>& shape) {
  constexpr size_t kShown = 8;
  std::vector<int64_t> head(shape.begin(),
                            shape.begin() + std::min(shape.size(), kShown));
  return absl::StrCat("[", absl::StrJoin(head, ", "),
                      shape.size() > kShown ? ", ...]" : "]");
}

// Every dimension of "inputs" and "targets" is at least 1: a zero dimension
// leaves the examples with nothing in them. The one empty thing that makes
// sense is an empty per-example shape (class-label targets of shape [N], or
// one scalar per example as inputs). The element count and the byte count
// fit in an int64.
absl::Status CheckShape(const char* name, const TensorDescription& t) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t numel = 1;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    const int64_t d = t.shape[i];
    if (d < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", name, "\" has shape ", ShapeForMessage(t.shape), ": dimension ",
          i, " is ", d, "; every dimension must be at least 1"));
    }
    if (numel > kMax / d) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", name, "\" has shape ", ShapeForMessage(t.shape),
                       ": more than 2^63-1 elements"));
    }
    numel *= d;
  }
  const int64_t element = ElementBytes(t.dtype);
  if (element > 0 && numel > kMax / element) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", name, "\" has shape ", ShapeForMessage(t.shape), ": ", numel, " ",
        t.dtype, " elements take more than 2^63-1 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* DatasetFileFormatName(DatasetFileFormat format) {
  switch (format) {
    case DatasetFileFormat::kSafetensors:
      return "safetensors";
    case DatasetFileFormat::kTorchSave:
      return "torchsave";
    case DatasetFileFormat::kIdx:
      return "idx";
  }
  return "unknown";
}

bool IsNamedInputKey(const std::string& key, std::string* name) {
  if (!absl::StartsWith(key, "inputs.")) return false;
  if (name != nullptr) *name = key.substr(7);
  return true;
}

namespace {

// The "inputs.<name>" tensors of a dataset of `examples` examples, checked
// and sorted by name.
absl::StatusOr<std::vector<NamedInputSummary>> SummarizeNamedInputs(
    const std::vector<NamedTensorDescription>& named, int64_t examples) {
  if (named.size() > static_cast<size_t>(kMaxNamedInputs)) {
    return absl::InvalidArgumentError(absl::StrCat(
        named.size(), " \"inputs.<name>\" tensors; at most ", kMaxNamedInputs, " are allowed"));
  }
  std::vector<NamedInputSummary> out;
  for (const NamedTensorDescription& n : named) {
    std::string name;
    IsNamedInputKey(n.key, &name);
    const bool identifier =
        !name.empty() && !absl::ascii_isdigit(static_cast<unsigned char>(name[0])) &&
        std::all_of(name.begin(), name.end(), [](char c) {
          return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
        });
    if (!identifier) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", absl::CHexEscape(n.key.substr(0, 64)),
          "\": the part after \"inputs.\" must be a forward argument's name "
          "([A-Za-z_][A-Za-z0-9_]*)"));
    }
    RETURN_IF_ERROR(CheckShape(n.key.c_str(), n.tensor));
    if (n.tensor.shape.empty() || n.tensor.shape[0] != examples) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", n.key, "\" has ",
          n.tensor.shape.empty() ? "no example dimension"
                                 : absl::StrCat(n.tensor.shape[0], " examples"),
          " but \"inputs\" has ", examples));
    }
    out.push_back({name, {n.tensor.shape.begin() + 1, n.tensor.shape.end()}, n.tensor.dtype});
  }
  std::sort(out.begin(), out.end(),
            [](const NamedInputSummary& a, const NamedInputSummary& b) { return a.name < b.name; });
  return out;
}

}  // namespace

absl::StatusOr<DatasetSummary> SummarizeDataset(
    DatasetFileFormat format, const TensorDescription& inputs,
    const TensorDescription* targets, const std::vector<NamedTensorDescription>& named) {
  if (inputs.shape.empty()) {
    return absl::InvalidArgumentError(
        "\"inputs\" is a scalar; it needs an example dimension");
  }
  if (inputs.shape[0] < 1) {
    return absl::InvalidArgumentError("\"inputs\" holds no examples");
  }
  RETURN_IF_ERROR(CheckShape("inputs", inputs));
  if (targets != nullptr) RETURN_IF_ERROR(CheckShape("targets", *targets));
  DatasetSummary summary;
  summary.format = format;
  summary.num_examples = inputs.shape[0];
  summary.input_shape.assign(inputs.shape.begin() + 1, inputs.shape.end());
  summary.input_dtype = inputs.dtype;
  if (targets != nullptr) {
    if (targets->shape.empty() || targets->shape[0] != inputs.shape[0]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"targets\" has ",
          targets->shape.empty() ? "no example dimension"
                                 : absl::StrCat(targets->shape[0], " examples"),
          " but \"inputs\" has ", inputs.shape[0]));
    }
    summary.has_targets = true;
    summary.target_shape.assign(targets->shape.begin() + 1,
                                targets->shape.end());
    summary.target_dtype = targets->dtype;
  }
  ASSIGN_OR_RETURN(summary.named_inputs, SummarizeNamedInputs(named, summary.num_examples));
  return summary;
}

bool IsBuiltinDataset(const std::string& id) {
  return absl::StartsWith(id, "builtin:");
}

absl::StatusOr<DatasetFileFormat> DetectDatasetFileFormat(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  std::string prefix(9, '\0');
  in.read(prefix.data(), 9);
  prefix.resize(static_cast<size_t>(in.gcount()));
  if (absl::StartsWith(prefix, absl::string_view("PK\x03\x04", 4))) {
    return DatasetFileFormat::kTorchSave;
  }
  if (LooksLikeSafetensors(prefix, size))
    return DatasetFileFormat::kSafetensors;
  return absl::InvalidArgumentError(
      absl::StrCat("dataset ", path,
                   " is neither safetensors nor a torch.save zip (.pt) file"));
}

absl::StatusOr<DatasetSummary> DescribeDatasetFile(const std::string& path) {
  ASSIGN_OR_RETURN(DatasetFileFormat format, DetectDatasetFileFormat(path));
  if (format == DatasetFileFormat::kSafetensors) {
    return DescribeSafetensors(path);
  }
  ASSIGN_OR_RETURN(LoadedDataset data, LoadDataset(path, 0));
  TensorDescription targets;
  if (data.targets.defined()) targets = DescribeTensor(data.targets);
  return InFile(path,
                SummarizeDataset(DatasetFileFormat::kTorchSave,
                                 DescribeTensor(data.inputs.first),
                                 data.targets.defined() ? &targets : nullptr,
                                 DescribeNamedInputs(data.inputs)));
}

std::string DefaultFashionMnistDir() {
  const char* dir = getenv("COMPRESS_FASHION_MNIST_DIR");
  return dir != nullptr && *dir != '\0' ? dir : kFashionMnistDir;
}

absl::StatusOr<DatasetSummary> DescribeBuiltinDataset(
    const std::string& id, const std::string& idx_dir) {
  ASSIGN_OR_RETURN(FashionMnistFiles files, FashionMnistPaths(id, idx_dir));
  ASSIGN_OR_RETURN(std::vector<int64_t> images, ReadIdxDims(files.images));
  ASSIGN_OR_RETURN(std::vector<int64_t> labels, ReadIdxDims(files.labels));
  if (images.size() != 3 || labels.size() != 1 || images[0] != labels[0]) {
    return absl::DataLossError(absl::StrCat(
        "IDX files of ", id, " disagree: images [", absl::StrJoin(images, ", "),
        "], labels [", absl::StrJoin(labels, ", "), "]"));
  }
  const TensorDescription targets{{labels[0]}, "int64"};
  return SummarizeDataset(DatasetFileFormat::kIdx,
                          {{images[0], 1, images[1], images[2]}, "float32"},
                          &targets);
}

}  // namespace compress::engine
