// Vision Transformer structure in TorchScript: discovery, prunable units,
// analytic costs and surgery (torch-including header).
//
// Two layouts are recognised:
//  - DeiT/timm style: blocks whose `attn` has a `qkv` Linear (3·heads·head_dim
//    outputs, rows ordered [q | k | v], each [head 0 | head 1 | ...]), a
//    `proj` Linear and an int attribute `num_heads`, and whose `mlp` has
//    `fc1`/`fc2` Linears. Heads and MLP neurons are prunable.
//  - torchvision VisionTransformer: `encoder.layers.encoder_layer_N` with
//    `self_attention` (nn.MultiheadAttention) and `mlp.0`/`mlp.3` Linears.
//    Only MLP neurons are prunable (the fused in_proj is left alone).
//
// Surgery replaces parameter tensors by their kept rows/columns
// (Module::register_parameter) and sets `num_heads`, so the edited module is
// physically smaller and runs in stock PyTorch; the forward code must derive
// head_dim from the qkv width and num_heads, as both layouts do. Linear's
// in_features/out_features are TorchScript class constants shared by every
// instance and stay as they were (forward does not read them).
//
//   ASSIGN_OR_RETURN(VitStructure vit, DiscoverVit(module, {1, 1, 28, 28}));
//   VitPlan plan = FullPlan(vit);
//   plan.blocks[0].heads = {0, 2, 3};
//   RETURN_IF_ERROR(ApplyPlan(module, vit, plan));
#ifndef COMPRESS_ENGINE_PRUNE_VIT_H_
#define COMPRESS_ENGINE_PRUNE_VIT_H_

#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress::engine {

struct VitBlock {
  std::string path;  // "blocks.3", "encoder.layers.encoder_layer_3"
  std::string attn;  // module path of the attention ("" when heads are fixed)
  std::string qkv, proj;
  std::string fc1, fc2;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t hidden = 0;  // MLP width
  bool prunable_heads = false;
};

struct VitStructure {
  std::string style;  // "deit" or "torchvision"
  std::vector<VitBlock> blocks;
  int64_t dim = 0;     // embedding width
  int64_t tokens = 0;  // sequence length including class tokens
};

// Finds the blocks of `module` and checks their shapes agree, without
// running it (`tokens` stays 0, heads count as prunable when the layout
// allows it). FAILED_PRECONDITION with the reason when the model is not a
// ViT of a known layout or its shapes are inconsistent. Uploads run it
// (CheckPrunableModelFile in prune.h) so that PRUNE refuses such a model at
// submit with the same reason the run would give.
absl::StatusOr<VitStructure> FindVitBlocks(const torch::jit::Module& module);

// FindVitBlocks, then measures the sequence length with one
// forward pass on zeros of `input_shape` (batch 1), of `input_dtype` (token
// ids) or, when unset, of fc1's weight dtype. Heads count as prunable
// only if a copy of the block with one head removed still runs (a forward
// that derives head_dim from the embedding width, not from qkv's width,
// fails there; its MLP neurons stay prunable). FAILED_PRECONDITION
// with the reason when the model is not a ViT of a known layout (or its
// shapes are inconsistent); INVALID_ARGUMENT when the input does not fit.
absl::StatusOr<VitStructure> DiscoverVit(
    torch::jit::Module& module, const std::vector<int64_t>& input_shape,
    std::optional<c10::ScalarType> input_dtype = std::nullopt);

// What to keep, per block: head and MLP neuron indices in increasing order.
struct BlockPlan {
  std::vector<int64_t> heads;
  std::vector<int64_t> neurons;
};
struct VitPlan {
  std::vector<BlockPlan> blocks;
};

// The structure of block `block` alone, with paths relative to it (for
// editing a clone of the block's module).
VitStructure BlockAlone(const VitStructure& vit, int block);

// Keeps everything.
VitPlan FullPlan(const VitStructure& vit);

// Slices the module's parameters to `plan` and sets num_heads; `vit` is the
// module's structure before the call. The returned structure describes the
// edited module. INVALID_ARGUMENT for a plan that does not fit `vit` (index
// out of range, unsorted, empty, or heads removed where they are fixed).
absl::StatusOr<VitStructure> ApplyPlan(torch::jit::Module& module, const VitStructure& vit,
                                       const VitPlan& plan);

// Multiply-accumulates per example of one block's prunable part: qkv, the
// two attention matmuls, proj, fc1, fc2 (norms and activations are not
// counted, as InspectModelFile does not count them).
int64_t BlockMacs(const VitStructure& vit, int64_t heads, int64_t hidden);
// Parameters of the same layers (weights and biases).
int64_t BlockParams(const VitStructure& vit, int64_t heads, int64_t hidden);

// The module at `path` ("" = root) of `root`.
torch::jit::Module SubmoduleAt(const torch::jit::Module& root, const std::string& path);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_PRUNE_VIT_H_
