// Loading calibration/eval data into tensors (torch-including header).
//
// Engine code (Hessian probes, GPTQ, accuracy) loads data through LoadDataset;
// the service layer only needs dataset_info.h. Tensors are on the CPU in the
// stored dtype, except Fashion-MNIST images, which become float32 in [0, 1]
// with a channel dimension ([N, 1, 28, 28]) and int64 labels.
//
//   ASSIGN_OR_RETURN(LoadedDataset data, LoadDataset(path, 512));
//   ModelInputs batch = data.inputs.Narrow(0, 32);
#ifndef COMPRESS_ENGINE_DATA_DATASET_H_
#define COMPRESS_ENGINE_DATA_DATASET_H_

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/engine/data/dataset_info.h"
#include "server/engine/data/inputs.h"

namespace compress::engine {

struct LoadedDataset {
  DatasetFileFormat format = DatasetFileFormat::kSafetensors;
  ModelInputs inputs;     // "inputs" [N, ...] and "inputs.<name>" [N, ...],
                          // the latter sorted by name
  torch::Tensor targets;  // [N, ...]; undefined when the dataset has none
};

// Shape and dtype name ("float32", ...) of `tensor`.
TensorDescription DescribeTensor(const torch::Tensor& tensor);

// Loads the first `max_examples` examples (all when <= 0) of a dataset file
// (safetensors or torch.save dict; see DescribeDatasetFile for the checks) or
// of a builtin id ("builtin:fashion-mnist/train|test" from DefaultFashionMnistDir()).
// NOT_FOUND for a missing file or unknown builtin, INVALID_ARGUMENT for bad
// contents. Thread-safe.
absl::StatusOr<LoadedDataset> LoadDataset(const std::string& path_or_builtin_id,
                                          int64_t max_examples);

// The "inputs.<name>" descriptions of `inputs`' named arguments.
std::vector<NamedTensorDescription> DescribeNamedInputs(const ModelInputs& inputs);

// OK when the inputs and the targets hold only finite values; else
// FAILED_PRECONDITION "<name>: inputs hold 3 non-finite values (NaN; first
// at example 7)" (or "targets"). Jobs call it on what they loaded, with
// name "dataset <id>". One isfinite pass per tensor.
absl::Status CheckFiniteData(const LoadedDataset& data, absl::string_view name);

// As LoadDataset for a builtin id, reading the IDX files from `idx_dir`.
absl::StatusOr<LoadedDataset> LoadBuiltinDataset(const std::string& id,
                                                 int64_t max_examples,
                                                 const std::string& idx_dir);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_DATASET_H_
