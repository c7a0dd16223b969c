// Loading TorchScript models inside the engine (torch-including header).
//
// Engine code that needs the module itself (inspection, Hessian work,
// quantization) goes through LoadModel so that every caller gets the same
// status codes and messages for bad files. The service layer includes
// model_info.h instead, which keeps LibTorch out of its build.
//
//   ASSIGN_OR_RETURN(torch::jit::Module m, LoadModel(path, "cuda:0"));
#ifndef COMPRESS_ENGINE_MODEL_MODEL_H_
#define COMPRESS_ENGINE_MODEL_MODEL_H_

#include <torch/script.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace compress::engine {

// Loads `path` as TorchScript with its tensors on `device` ("cpu" or
// "cuda:N") and puts it in eval mode. NOT_FOUND when the file does not
// exist; INVALID_ARGUMENT (with the loader's message) when it is not a
// TorchScript model or the device is not valid. A QUANTIZE model.pt
// (quant/compact_model.h) comes back as a plain float model: saving it
// again stores its float weights. Thread-safe.
absl::StatusOr<torch::jit::Module> LoadModel(const std::string& path,
                                             const std::string& device = "cpu");

// OK when every element `t`'s sizes, strides and storage offset reach lies
// inside its storage (sizes and strides non-negative, at most 2^56), and
// for tensors without a plain storage (sparse, MKL-DNN, undefined).
// Loaders take these from a file's pickle without checking them, so a
// doctored file could make LibTorch read past the data it holds.
// INVALID_ARGUMENT naming `name` otherwise.
absl::Status CheckTensorInStorage(const std::string& name, const torch::Tensor& t);

// Tied parameters: one tensor registered under several names (a GPT whose
// output head is its token embedding, `self.head.weight = self.embed.weight`).
// Two names are tied when their tensors are the same view of the same memory:
// equal data pointer, sizes, strides and dtype (empty tensors never are).
// TorchScript saves such a tensor once and loads it back shared, but
// named_parameters() lists it under every name, so code that walks the
// parameters must skip the aliases to count, analyze or quantize it once.
//
// Every later name -> the first name of its tensor, in named_parameters
// order (names like "head.weight"). Empty when nothing is tied.
// Throws what LibTorch throws (call it inside a try).
std::map<std::string, std::string> TiedAliases(const torch::jit::Module& module);

// module.clone() with the tied parameters of `module` tied again in the
// copy (clone() deep-copies each submodule's attributes on its own, which
// can give each name its own tensor). INTERNAL when LibTorch cannot copy.
absl::StatusOr<torch::jit::Module> CloneKeepingTies(const torch::jit::Module& module);

// The dtype's name as NumPy/PyTorch print it: "float32", "int64", "uint8".
std::string DtypeName(c10::ScalarType type);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_MODEL_MODEL_H_
