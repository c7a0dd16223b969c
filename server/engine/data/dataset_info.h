// Calibration/eval dataset validation and description.
//
// Torch-free header. Formats: safetensors (tensors "inputs", optional
// "targets", optional further forward arguments "inputs.<name>"), a
// torch.save'd dict with those keys (zip format), and the built-in
// Fashion-MNIST IDX files ("builtin:fashion-mnist/train|test").
//
// Further forward arguments: a tensor "inputs.attention_mask" is passed to
// the model's forward as the keyword argument attention_mask, sliced with
// the examples like "inputs" (README "Inputs and dtypes").
#ifndef COMPRESS_ENGINE_DATA_DATASET_INFO_H_
#define COMPRESS_ENGINE_DATA_DATASET_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress::engine {

enum class DatasetFileFormat { kSafetensors, kTorchSave, kIdx };

// A further forward argument: "inputs.<name>" in the file.
struct NamedInputSummary {
  std::string name;            // the keyword, e.g. "attention_mask"
  std::vector<int64_t> shape;  // per example
  std::string dtype;
};

// At most this many "inputs.<name>" tensors per dataset.
inline constexpr int kMaxNamedInputs = 8;

struct DatasetSummary {
  DatasetFileFormat format = DatasetFileFormat::kSafetensors;
  int64_t num_examples = 0;
  std::vector<int64_t> input_shape;  // per example (batch dim removed)
  std::string input_dtype;           // "float32", "uint8", ...
  bool has_targets = false;
  std::vector<int64_t> target_shape;  // per example; {} for class labels
  std::string target_dtype;
  std::vector<NamedInputSummary> named_inputs;  // sorted by name
};

// Detects the format from the bytes (safetensors header or zip magic) and
// validates: "inputs" present, at least one example, "targets" (if any) with
// the same first dimension, every dimension of both at least 1 (an empty
// per-example shape is fine: class labels [N]), element and byte counts that
// fit in an int64, and stored bytes that match each tensor's shape and dtype
// (safetensors data_offsets; torch.save storages, which must also hold every
// element the tensor's sizes, strides and offset reach). INVALID_ARGUMENT
// naming the problem otherwise. Messages name `path`; callers that answer
// clients replace it with the resource's id.
absl::StatusOr<DatasetSummary> DescribeDatasetFile(const std::string& path);

// Default directory of the Debian dataset-fashion-mnist package.
inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// The engine's default for builtin datasets: $COMPRESS_FASHION_MNIST_DIR when
// set and not empty (a machine without the package, e.g. bench/gpu-check.sh
// with the package unpacked into a prefix), else kFashionMnistDir.
std::string DefaultFashionMnistDir();

// True for ids of the form "builtin:...".
bool IsBuiltinDataset(const std::string& id);

// Describes "builtin:fashion-mnist/train" or ".../test" from the gzipped IDX
// files in `idx_dir`. NOT_FOUND for other builtin names or missing files.
absl::StatusOr<DatasetSummary> DescribeBuiltinDataset(
    const std::string& id, const std::string& idx_dir = DefaultFashionMnistDir());

// kSafetensors or kTorchSave from the first bytes of `path`. NOT_FOUND when
// it cannot be opened, INVALID_ARGUMENT when it is neither.
absl::StatusOr<DatasetFileFormat> DetectDatasetFileFormat(
    const std::string& path);

// Shape and dtype of one stored tensor, example dimension included.
struct TensorDescription {
  std::vector<int64_t> shape;
  std::string dtype;
};

// A stored tensor with its key.
struct NamedTensorDescription {
  std::string key;  // "inputs.attention_mask"
  TensorDescription tensor;
};

// Builds a summary from the "inputs" and optional "targets" tensors of any
// format and applies the checks above; `named` are the "inputs.<name>"
// tensors (any order), each checked like "inputs" and to hold the same
// number of examples, their names to be identifiers ([A-Za-z_][A-Za-z0-9_]*)
// and at most kMaxNamedInputs. Shared by the format readers.
absl::StatusOr<DatasetSummary> SummarizeDataset(
    DatasetFileFormat format, const TensorDescription& inputs,
    const TensorDescription* targets,
    const std::vector<NamedTensorDescription>& named = {});

// True for a key "inputs.<name>" (a further forward argument); `name` gets
// <name> (not checked: SummarizeDataset does).
bool IsNamedInputKey(const std::string& key, std::string* name = nullptr);

// "safetensors", "torchsave" or "idx".
const char* DatasetFileFormatName(DatasetFileFormat format);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_DATASET_INFO_H_
