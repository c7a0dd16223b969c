// Parameter groups and vectors in parameter space (torch-including header).
//
// Hessian work treats the trainable parameters of a TorchScript module as one
// long vector, split into groups: one group per module that owns parameters
// directly (a conv, linear, embedding, norm layer, or the root for a ViT's
// cls_token/pos_embed), named like model_info.h's LayerInfo (module path,
// "" for the root), in module order.
//
// A ParamLayout describes that structure once (names, shapes, groups); a
// ParamSet is one vector in that space: a tensor per parameter plus a shared
// pointer to the layout. The parameters themselves are a ParamSet too (its
// tensors are the module's live parameter tensors), so probes, Hessian-vector
// products and eigenvectors all have the same type.
//
//   ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
//   at::Generator gen = MakeGenerator(seed);
//   ParamSet v = RademacherLike(params, gen);
//   double norm = Norm(v);
//
// The helpers never modify their const arguments and return fresh tensors;
// Axpy and Scale work in place. Dot products and norms accumulate in float64
// whatever the parameter dtype. Not thread-safe (tensors are shared handles).
#ifndef COMPRESS_ENGINE_HESSIAN_PARAM_SET_H_
#define COMPRESS_ENGINE_HESSIAN_PARAM_SET_H_

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress::engine {

// A module that owns trainable parameters directly.
struct ParamGroup {
  std::string name;          // module path, "" = root module
  std::string kind;          // unqualified type name: "Conv2d", "Linear", ...
  std::vector<int> tensors;  // indices into ParamLayout::names/shapes
  int64_t numel = 0;
  // Other names of the group's tensors (tied weights, model.h: TiedAliases),
  // e.g. "head.weight" in group "embed" of a GPT whose head is its
  // embedding. The tensor is one parameter: its gradient, and so its
  // Hessian-vector products, sum over every use, as autograd gives them.
  std::vector<std::string> tied;
};

// The structure of the parameter space. Immutable once built.
struct ParamLayout {
  std::vector<std::string> names;  // fully qualified: "features.0.weight"
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int> group_of;  // per tensor: index into groups
  std::vector<ParamGroup> groups;
  int64_t numel = 0;  // all tensors together
};

// One vector in parameter space: tensors[i] has shapes[i] of the layout.
struct ParamSet {
  std::shared_ptr<const ParamLayout> layout;
  std::vector<torch::Tensor> tensors;

  size_t size() const { return tensors.size(); }
};

// A block: consecutive layers that form one unit of the architecture (a ViT
// block, a residual block, a stage of a CNN's `features`).
struct ParamBlock {
  std::string name;         // module path of the block, "" = root
  std::vector<int> groups;  // indices into ParamLayout::groups, in order
  int64_t numel = 0;
};

// The blocks of a layout, in order of their first layer. A layer belongs to
// the block named by its module path up to and including the first atom that
// is a number or ends in "_<number>" ("blocks.3.attn.qkv" -> "blocks.3",
// "layer1.0.conv1" -> "layer1.0", "encoder.layers.encoder_layer_3.mlp.0" ->
// "encoder.layers.encoder_layer_3", "features.3.conv.0.0" -> "features.3");
// a layer without such an atom is a block of its first atom ("fc",
// "patch_embed", "" for the root's own parameters).
std::vector<ParamBlock> BlocksOf(const ParamLayout& layout);

// The module's trainable parameters (requires_grad), grouped by the module
// owning them, in module order; a tensor registered under two names (tied
// weights) appears once, in the group of its first name, whose `tied` lists
// the other names (a module left with no parameter of its own has no
// group). The returned tensors are the
// module's own (not copies). FAILED_PRECONDITION when there are none.
absl::StatusOr<ParamSet> CollectParameters(const torch::jit::Module& module);

// A deep copy of `module` whose parameters are fresh leaf tensors (tied
// parameters stay tied), so changing them never touches the caller's model.
// Each requires grad when `requires_grad(name, original)` says so (names
// as in named_parameters: "blocks.0.attn.qkv.weight"); the callback must
// only say yes to floating tensors. INTERNAL when LibTorch cannot copy.
absl::StatusOr<torch::jit::Module> CopyWithFreshParameters(
    const torch::jit::Module& module,
    const std::function<bool(const std::string& name, const torch::Tensor& original)>&
        requires_grad);

// A seeded CPU generator: the same seed gives the same probes on any device.
at::Generator MakeGenerator(uint64_t seed);

// Zeros shaped like `like` (same dtype and device).
ParamSet ZerosLike(const ParamSet& like);
// A copy of the values (detached, no autograd history).
ParamSet Clone(const ParamSet& v);
// Entries independently +1 or -1 with probability 1/2 (drawn on the CPU from
// `gen`, then moved to the parameters' device).
ParamSet RademacherLike(const ParamSet& like, at::Generator& gen);
// Entries independently standard normal (as RademacherLike).
ParamSet GaussianLike(const ParamSet& like, at::Generator& gen);

// sum_i <a_i, b_i>, accumulated in float64.
double Dot(const ParamSet& a, const ParamSet& b);
// As Dot, restricted to the tensors of group `group`.
double GroupDot(const ParamSet& a, const ParamSet& b, int group);
// Euclidean norm, accumulated in float64.
double Norm(const ParamSet& v);
// Euclidean norm of every group: result[g] = ||v_g||.
std::vector<double> GroupNorms(const ParamSet& v);
// y += alpha * x.
void Axpy(double alpha, const ParamSet& x, ParamSet* y);
// v *= alpha.
void Scale(double alpha, ParamSet* v);
// Zeroes every tensor outside group `group` (in place).
void RestrictToGroup(int group, ParamSet* v);
// Zeroes every tensor outside the groups listed in `groups` (in place).
void RestrictToGroups(const std::vector<int>& groups, ParamSet* v);

// All entries concatenated into one float64 CPU vector (tests, small models).
torch::Tensor Flatten(const ParamSet& v);
// Inverse of Flatten: `flat` split and reshaped like `like` (its dtype and
// device).
ParamSet Unflatten(const torch::Tensor& flat, const ParamSet& like);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_HESSIAN_PARAM_SET_H_
