// Model validation, layer discovery and inspection (FLOPs) for TorchScript.
//
// Torch-free header: the server and pipeline include it without paying for
// LibTorch headers. All functions are thread-safe (each loads its own copy).
//
//   ASSIGN_OR_RETURN(ModelSummary s, DescribeModelFile("/blobs/ab/abcd"));
//   InspectOptions opts; opts.input_shape = {1, 1, 28, 28};
//   ASSIGN_OR_RETURN(Inspection ins, InspectModelFile(path, opts, &token));
#ifndef COMPRESS_ENGINE_MODEL_MODEL_INFO_H_
#define COMPRESS_ENGINE_MODEL_MODEL_INFO_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/common/cancel.h"

namespace compress::engine {

struct ParameterInfo {
  std::string name;  // fully qualified, e.g. "features.0.weight"
  std::vector<int64_t> shape;
  int64_t numel = 0;
  std::string dtype;  // "float32", ...
  // The first name of the same tensor when this name is tied to an earlier
  // one (model.h: TiedAliases), e.g. "embed.weight" for "head.weight"; such
  // a parameter counts in neither its layer's numel nor num_parameters.
  std::string tied_to;
};

// A module that owns parameters directly.
struct LayerInfo {
  std::string name;  // module path ("" = root module)
  std::string kind;  // unqualified type name: "Conv2d", "Linear", ...
  std::vector<ParameterInfo> parameters;
  int64_t numel = 0;  // without tied aliases: layers' numels add up
};

struct ModelSummary {
  std::vector<LayerInfo> layers;  // in module order
  int64_t num_parameters = 0;  // each tensor once, as PyTorch's parameters()
  int64_t model_bytes = 0;     // parameters + buffers, in bytes, each once
  // Tied parameters: first name -> the later names of the same tensor.
  std::map<std::string, std::vector<std::string>> tied;
};

// Loads `path` as TorchScript on the CPU and lists its layers.
// INVALID_ARGUMENT (with the loader's message) when the file is not a
// TorchScript model, or when a parameter's or buffer's sizes and strides
// reach past its storage (CheckTensorInStorage in model.h).
absl::StatusOr<ModelSummary> DescribeModelFile(const std::string& path);

// A further forward argument of the probe: a dataset's "inputs.<name>".
struct NamedProbeInput {
  std::string name;            // keyword
  std::vector<int64_t> shape;  // with batch dimension
  std::string dtype;           // one of kInputDtypes
};

struct InspectOptions {
  std::vector<int64_t> input_shape;  // with batch dimension; required
  // dtype of the probe input (zeros); default "float32". "int64"/"int32"
  // for token ids (zeros are token 0). One of kInputDtypes.
  std::string input_dtype = "float32";
  // Passed by keyword as ones (an attention mask that attends everywhere).
  std::vector<NamedProbeInput> named_inputs;
  std::string device = "cpu";        // "cpu" or "cuda:N"
};

// The dtype names InspectOptions::input_dtype accepts, as datasets name them.
inline constexpr const char* kInputDtypes[] = {"float32", "float64", "float16", "bfloat16",
                                                "int64",   "int32",   "int16",   "int8",
                                                "uint8",   "bool"};

// Whether `name` is one of kInputDtypes. Inline: the torch-free pipeline
// validation links without the engine library.
inline bool IsInputDtype(const std::string& name) {
  for (const char* known : kInputDtypes) {
    if (name == known) return true;
  }
  return false;
}

struct LayerCost {
  std::string name;
  std::string kind;
  int64_t numel = 0;
  int64_t macs = 0;  // multiply-accumulates over the whole forward pass
  std::vector<int64_t> output_shape;  // of the last call
  // Operators that read one of the layer's parameters (a Linear: one per
  // module call; a root owning a ViT's cls_token/pos_embed: expand, cat, add).
  int calls = 0;
};

struct Inspection {
  ModelSummary summary;
  std::vector<int64_t> input_shape;
  std::vector<int64_t> output_shape;  // first tensor output
  std::vector<LayerCost> layers;      // every layer of summary, same order
  int64_t total_macs = 0;             // attributed + unattributed
  int64_t unattributed_macs = 0;      // matmuls not owned by a layer
  double forward_seconds = 0;  // instrumented first run: not a benchmark
};

// Runs one forward pass on zeros of `input_shape` (of `input_dtype`) and
// counts conv/linear/matmul multiply-adds per layer. INVALID_ARGUMENT for an
// unknown input_dtype or when the input does not fit the model (message
// from torch), CANCELLED/DEADLINE_EXCEEDED from `cancel`.
absl::StatusOr<Inspection> InspectModelFile(const std::string& path,
                                            const InspectOptions& options,
                                            const CancelToken* cancel = nullptr);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_MODEL_MODEL_INFO_H_
