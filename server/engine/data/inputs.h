// The arguments of a model's forward over a batch of examples
// (torch-including header).
//
// A dataset holds "inputs", the first forward argument, and optionally
// "inputs.<name>" tensors, passed as the keyword argument <name> (an
// attention mask, token type ids, ...). Every tensor has the examples as its
// first dimension; slicing, moving and casting act on all of them alike, so
// engine code handles one ModelInputs where it handled one tensor.
//
//   ModelInputs batch = data.inputs.Narrow(0, 32).To(device, torch::kFloat);
//   c10::IValue out = batch.Forward(module);
#ifndef COMPRESS_ENGINE_DATA_INPUTS_H_
#define COMPRESS_ENGINE_DATA_INPUTS_H_

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "server/engine/model/model_info.h"

namespace compress::engine {

struct ModelInputs {
  ModelInputs() = default;
  // Only the first argument: a tensor is a one-argument input.
  ModelInputs(torch::Tensor first_argument)  // NOLINT(google-explicit-constructor)
      : first(std::move(first_argument)) {}
  ModelInputs(torch::Tensor first_argument,
              std::vector<std::pair<std::string, torch::Tensor>> named_arguments)
      : first(std::move(first_argument)), named(std::move(named_arguments)) {}

  torch::Tensor first;
  std::vector<std::pair<std::string, torch::Tensor>> named;  // keyword, tensor

  bool defined() const { return first.defined(); }
  // Examples: first.size(0).
  int64_t examples() const { return first.size(0); }

  // Examples [start, start + length) of every tensor (views).
  ModelInputs Narrow(int64_t start, int64_t length) const;
  // The examples at `indices` (int64, on any device) of every tensor.
  ModelInputs Select(const torch::Tensor& indices) const;
  // Every tensor on `device`; floating ones cast to `float_type` when set
  // (integer token ids, masks of bools keep their dtype).
  ModelInputs To(const c10::Device& device,
                 c10::optional<c10::ScalarType> float_type = c10::nullopt) const;
  // Every tensor detached and cloned (owning its memory).
  ModelInputs Clone() const;
  // `module.forward(first, name=tensor, ...)`; throws what forward throws.
  c10::IValue Forward(torch::jit::Module& module) const;
  // "[32, 50] int64" or "[32, 50] int64 with attention_mask [32, 50] int64",
  // for messages.
  std::string Describe() const;

  // The examples of `parts` in order, concatenated; the parts must have
  // the same named arguments.
  static ModelInputs Cat(const std::vector<ModelInputs>& parts);
};

// Sets `options`' probe to one example shaped and typed as `inputs` (every
// argument; INSPECT fills the first with zeros, the named ones with ones).
void SetProbeLike(const ModelInputs& inputs, InspectOptions* options);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_DATA_INPUTS_H_
