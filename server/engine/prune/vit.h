// Transformer block structure in TorchScript: discovery, prunable units,
// analytic costs and surgery (torch-including header). The names say "Vit"
// for history; BERT-style encoders and GPT-style decoders are found too.
//
// Layouts, tried in this order (the first that finds any block wins):
//  - DeiT/timm style: blocks whose `attn` has a `qkv` Linear (3·heads·head_dim
//    outputs, rows ordered [q | k | v], each [head 0 | head 1 | ...]), a
//    `proj` Linear and an int attribute `num_heads`, and whose `mlp` has
//    `fc1`/`fc2` Linears. Heads and MLP neurons are prunable.
//  - torchvision VisionTransformer: `encoder.layers.encoder_layer_N` with
//    `self_attention` (nn.MultiheadAttention) and `mlp.0`/`mlp.3` Linears.
//    Only MLP neurons are prunable (the fused in_proj is left alone).
//  - Any other transformer ("transformer"): an attention is a module with
//    Linear children q/k/v, query/key/value, q_proj/k_proj/v_proj,
//    q_lin/k_lin/v_lin or wq/wk/wv of equal width (or one fused Linear qkv,
//    c_attn, qkv_proj or Wqkv laid out as DeiT's), an int head count
//    attribute (num_heads, n_head, n_heads, num_attention_heads, nhead or
//    heads) dividing that width, and an output Linear (o, out_proj, o_proj,
//    proj, c_proj, dense, out, out_lin or wo) taking it, either its child or
//    a child of a sibling (BERT's attention.output.dense). Its block is the
//    nearest enclosing module holding exactly one MLP outside the attention:
//    a Linear dim -> hidden followed (in module order) by a Linear
//    hidden -> dim. Names only nominate; the shapes must agree, and
//    DiscoverVit then proves each guess by running the model.
//
// Surgery replaces parameter tensors by their kept rows/columns
// (Module::register_parameter) and sets the head count attribute (and an
// int `all_head_size`, when the attention has one), so the edited module is
// physically smaller and runs in stock PyTorch; the forward code must derive
// head_dim from the projections' width and the head count (not from the
// embedding width), or heads stay fixed. Linear's in_features/out_features
// are TorchScript class constants shared by every instance and stay as they
// were (forward does not read them).
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
#include "server/engine/data/inputs.h"

namespace compress::engine {

struct VitBlock {
  std::string path;  // "blocks.3", "encoder.layers.encoder_layer_3", "h.0"
  std::string attn;  // module path of the attention ("" when heads are fixed)
  std::string heads_attr = "num_heads";  // attn's int head count attribute
  std::string qkv;      // fused [q | k | v] Linear; "" when q, k, v are separate
  std::string q, k, v;  // separate Linears; "" when fused
  std::string proj;     // output Linear of the attention
  std::string fc1, fc2;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t hidden = 0;  // MLP width
  bool prunable_heads = false;
  std::string fixed_heads;  // why heads are not prunable ("" when they are)
};

struct VitStructure {
  std::string style;  // "deit", "torchvision" or "transformer"
  std::vector<VitBlock> blocks;
  int64_t dim = 0;     // embedding width
  int64_t tokens = 0;  // sequence length including class tokens
};

// Finds the blocks of `module` and checks their shapes agree, without
// running it (`tokens` stays 0, heads count as prunable when the layout
// allows it). FAILED_PRECONDITION when no block is found (the message names
// the near misses: what was found and what is missing) or shapes are
// inconsistent. Uploads run it
// (CheckPrunableModelFile in prune.h) so that PRUNE refuses such a model at
// submit with the same reason the run would give.
absl::StatusOr<VitStructure> FindVitBlocks(const torch::jit::Module& module);

// FindVitBlocks, then measures the sequence length with one
// forward pass on zeros of `input_shape` (batch 1), of `input_dtype` (token
// ids) or, when unset, of fc1's weight dtype, and proves each block's
// layout on that input: in a copy of the whole model, head 0's slices (and
// then MLP neuron 0's) are zeroed, the model run, the unit removed by
// ApplyPlan, and the model run again; the two outputs must agree (to 1e-4
// of their largest magnitude), as removing a unit that contributes nothing
// is exact. Heads that fail (the copy does not run, e.g. a forward that
// derives head_dim from the embedding width, or its output changes) are
// fixed, with the reason in `fixed_heads`; an MLP that fails is
// FAILED_PRECONDITION naming the block, as is a model that is not a
// transformer of a known layout; INVALID_ARGUMENT when the input does not
// fit.
absl::StatusOr<VitStructure> DiscoverVit(
    torch::jit::Module& module, const std::vector<int64_t>& input_shape,
    std::optional<c10::ScalarType> input_dtype = std::nullopt);

// As above on `probe`, one example of every forward argument (a model that
// takes an attention mask).
absl::StatusOr<VitStructure> DiscoverVit(torch::jit::Module& module, const ModelInputs& probe);

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

// Where units live: per Linear, the rows (dim 0: weight rows and bias
// entries) or columns (dim 1: weight columns) that heads `heads` (current
// indices, increasing) or MLP neurons `neurons` of `b` own.
struct LinearSlice {
  std::string linear;  // module path
  int64_t dim = 0;
  std::vector<int64_t> index;
};
std::vector<LinearSlice> HeadSlices(const VitBlock& b, const std::vector<int64_t>& heads);
std::vector<LinearSlice> NeuronSlices(const VitBlock& b, const std::vector<int64_t>& neurons);

// Slices the module's parameters to `plan` and sets the head count; `vit` is the
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
