#include "server/engine/prune/vit.h"

#include <algorithm>
#include <array>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "server/engine/data/loss.h"
#include "server/engine/quant/calibration.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

std::string Join(const std::string& parent, const std::string& child) {
  return parent.empty() ? child : absl::StrCat(parent, ".", child);
}

std::string TypeName(const torch::jit::Module& m) { return m.type()->name()->name(); }

bool HasLinear(const torch::jit::Module& m, const std::string& child) {
  if (!m.hasattr(child)) return false;
  c10::IValue v = m.attr(child);
  return v.isModule() && TypeName(v.toModule()) == "Linear";
}

torch::Tensor Param(const torch::jit::Module& m, const std::string& name) {
  if (!m.hasattr(name)) return {};
  c10::IValue v = m.attr(name);
  return v.isTensor() ? v.toTensor() : torch::Tensor();
}

absl::Status Inconsistent(const std::string& path, const std::string& why) {
  return absl::FailedPreconditionError(
      absl::StrCat("block ", path, " looks like a transformer block but ", why));
}

// DeiT/timm: `attn` with qkv, proj and num_heads; `mlp` with fc1, fc2.
absl::StatusOr<VitBlock> DeitBlock(const torch::jit::Module& root, const std::string& path) {
  VitBlock b;
  b.path = path;
  b.attn = Join(path, "attn");
  b.qkv = Join(b.attn, "qkv");
  b.proj = Join(b.attn, "proj");
  b.fc1 = Join(path, "mlp.fc1");
  b.fc2 = Join(path, "mlp.fc2");
  b.prunable_heads = true;
  torch::jit::Module attn = SubmoduleAt(root, b.attn);
  c10::IValue heads = attn.attr("num_heads");
  if (!heads.isInt() || heads.toInt() < 1) {
    return Inconsistent(path, "attn.num_heads is not a positive int");
  }
  b.heads = heads.toInt();
  const torch::Tensor qkv = Param(SubmoduleAt(root, b.qkv), "weight");
  const torch::Tensor proj = Param(SubmoduleAt(root, b.proj), "weight");
  const torch::Tensor fc1 = Param(SubmoduleAt(root, b.fc1), "weight");
  const torch::Tensor fc2 = Param(SubmoduleAt(root, b.fc2), "weight");
  if (!qkv.defined() || !proj.defined() || !fc1.defined() || !fc2.defined() || qkv.dim() != 2 ||
      proj.dim() != 2 || fc1.dim() != 2 || fc2.dim() != 2) {
    return Inconsistent(path, "its qkv/proj/fc1/fc2 weights are not 2-D tensors");
  }
  if (qkv.size(0) % (3 * b.heads) != 0) {
    return Inconsistent(path, absl::StrCat("attn.qkv has ", qkv.size(0),
                                           " outputs, not a multiple of 3 x num_heads (",
                                           b.heads, ")"));
  }
  b.head_dim = qkv.size(0) / (3 * b.heads);
  if (proj.size(1) != b.heads * b.head_dim) {
    return Inconsistent(path, absl::StrCat("attn.proj takes ", proj.size(1), " inputs, not ",
                                           b.heads * b.head_dim));
  }
  b.hidden = fc1.size(0);
  if (fc2.size(1) != b.hidden) {
    return Inconsistent(path, absl::StrCat("mlp.fc2 takes ", fc2.size(1), " inputs, not ",
                                           b.hidden));
  }
  return b;
}

// torchvision: self_attention (MultiheadAttention), mlp.0 and mlp.3.
absl::StatusOr<VitBlock> TorchvisionBlock(const torch::jit::Module& root, const std::string& path) {
  VitBlock b;
  b.path = path;
  b.fc1 = Join(path, "mlp.0");
  b.fc2 = Join(path, "mlp.3");
  torch::jit::Module attn = SubmoduleAt(root, Join(path, "self_attention"));
  c10::IValue heads = attn.attr("num_heads");
  const torch::Tensor in_proj = Param(attn, "in_proj_weight");
  if (!heads.isInt() || heads.toInt() < 1 || !in_proj.defined() || in_proj.dim() != 2) {
    return Inconsistent(path, "self_attention has no num_heads or in_proj_weight");
  }
  b.heads = heads.toInt();
  if (in_proj.size(0) % (3 * b.heads) != 0) {
    return Inconsistent(path, "self_attention.in_proj_weight does not split into heads");
  }
  b.head_dim = in_proj.size(0) / (3 * b.heads);
  const torch::Tensor fc1 = Param(SubmoduleAt(root, b.fc1), "weight");
  const torch::Tensor fc2 = Param(SubmoduleAt(root, b.fc2), "weight");
  if (!fc1.defined() || !fc2.defined() || fc2.size(1) != fc1.size(0)) {
    return Inconsistent(path, "mlp.0 and mlp.3 do not chain");
  }
  b.hidden = fc1.size(0);
  b.fixed_heads = "nn.MultiheadAttention's fused in_proj is left alone";
  return b;
}

// Names that nominate the parts of an attention (vit.h); shapes decide.
constexpr std::array<std::array<const char*, 3>, 5> kSeparateQkv = {{{"q", "k", "v"},
                                                                     {"query", "key", "value"},
                                                                     {"q_proj", "k_proj", "v_proj"},
                                                                     {"q_lin", "k_lin", "v_lin"},
                                                                     {"wq", "wk", "wv"}}};
constexpr std::array<const char*, 4> kFusedQkv = {"qkv", "c_attn", "qkv_proj", "Wqkv"};
constexpr std::array<const char*, 6> kHeadCounts = {"num_heads",           "n_head", "n_heads",
                                                    "num_attention_heads", "nhead",  "heads"};
constexpr std::array<const char*, 9> kOutputs = {"o",     "out_proj", "o_proj",  "proj", "c_proj",
                                                 "dense", "out",      "out_lin", "wo"};

std::string Parent(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}

std::string Named(const std::string& path) { return path.empty() ? "the model" : path; }

// An attention's parts, found by name and checked by shape.
struct Attention {
  std::string path, heads_attr, qkv, q, k, v, proj;
  int64_t heads = 0, head_dim = 0, dim = 0;
};

// The output Linear of the attention `m` at `path` taking `inner` features:
// its child, else a child of one of its siblings; "" when there is none.
std::string OutputOf(const torch::jit::Module& root, const std::string& path,
                     const torch::jit::Module& m, int64_t inner) {
  auto takes = [inner](const torch::jit::Module& owner, const std::string& owner_path) {
    for (const char* name : kOutputs) {
      if (!HasLinear(owner, name)) continue;
      const torch::Tensor w = Param(owner.attr(name).toModule(), "weight");
      if (w.defined() && w.dim() == 2 && w.size(1) == inner) return Join(owner_path, name);
    }
    return std::string();
  };
  std::string own = takes(m, path);
  if (!own.empty() || path.empty()) return own;
  const std::string parent = Parent(path);
  for (const auto& child : SubmoduleAt(root, parent).named_children()) {
    const std::string child_path = Join(parent, child.name);
    if (child_path == path) continue;
    std::string found = takes(child.value, child_path);
    if (!found.empty()) return found;
  }
  return "";
}

// The q/k/v (or fused qkv) Linears of `m`, a short description, or nullopt.
std::optional<std::string> Projections(const torch::jit::Module& m, const std::string& path,
                                       Attention* a) {
  for (const auto& names : kSeparateQkv) {
    if (HasLinear(m, names[0]) && HasLinear(m, names[1]) && HasLinear(m, names[2])) {
      a->q = Join(path, names[0]);
      a->k = Join(path, names[1]);
      a->v = Join(path, names[2]);
      return absl::StrCat("Linears ", names[0], "/", names[1], "/", names[2]);
    }
  }
  for (const char* name : kFusedQkv) {
    if (HasLinear(m, name)) {
      a->qkv = Join(path, name);
      return absl::StrCat("a fused Linear ", name);
    }
  }
  return std::nullopt;
}

// The attention at `path` when `m` has q/k/v (or fused qkv) Linear
// children; nullopt when it has none; FAILED_PRECONDITION naming what was
// found and what is missing when the rest does not fit.
absl::StatusOr<std::optional<Attention>> AttentionAt(const torch::jit::Module& root,
                                                     const std::string& path,
                                                     const torch::jit::Module& m) {
  Attention a;
  a.path = path;
  const std::optional<std::string> found = Projections(m, path, &a);
  if (!found.has_value() || path.empty()) return std::optional<Attention>();
  const std::string what = absl::StrCat(path, " has ", *found);
  auto missing = [&what](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat(what, " but ", why));
  };
  for (const char* name : kHeadCounts) {
    if (m.hasattr(name) && m.attr(name).isInt()) {
      a.heads_attr = name;
      a.heads = m.attr(name).toInt();
      break;
    }
  }
  if (a.heads_attr.empty()) {
    return missing(absl::StrCat("no int head count attribute (", absl::StrJoin(kHeadCounts, ", "),
                                ")"));
  }
  const torch::Tensor w = Param(SubmoduleAt(root, a.qkv.empty() ? a.q : a.qkv), "weight");
  if (!w.defined() || w.dim() != 2) return missing("its weight is not a 2-D tensor");
  const int64_t parts = a.qkv.empty() ? 1 : 3;
  for (const std::string& other : {a.k, a.v}) {
    if (other.empty()) continue;
    const torch::Tensor ow = Param(SubmoduleAt(root, other), "weight");
    if (!ow.defined() || !ow.sizes().equals(w.sizes())) {
      return missing(absl::StrCat(other, " differs in shape from ", a.q,
                                  " (grouped-query attention is not supported)"));
    }
  }
  const int64_t inner = w.size(0) / parts;
  if (a.heads < 1 || w.size(0) % parts != 0 || inner % a.heads != 0) {
    return missing(absl::StrCat("its ", w.size(0), " outputs do not split into ", parts, " x ",
                                a.heads_attr, " (", a.heads, ") heads"));
  }
  a.head_dim = inner / a.heads;
  a.dim = w.size(1);
  a.proj = OutputOf(root, path, m, inner);
  if (a.proj.empty()) {
    return missing(absl::StrCat("no output Linear taking its ", inner, " features (",
                                absl::StrJoin(kOutputs, ", "), ") in it or in a sibling module"));
  }
  return std::optional<Attention>(a);
}

struct Mlp {
  std::string fc1, fc2;
  int64_t hidden = 0;
};

// The MLPs inside the module at `path`: a Linear dim -> hidden followed (in
// module order) by a Linear hidden -> dim, both outside attention `a`.
std::vector<Mlp> MlpsIn(const torch::jit::Module& root, const std::string& path,
                        const Attention& a) {
  std::vector<std::pair<std::string, torch::Tensor>> linears;
  for (const auto& item : SubmoduleAt(root, path).named_modules()) {
    const std::string full = item.name.empty() ? path : Join(path, item.name);
    if (TypeName(item.value) != "Linear" || full == a.proj ||
        absl::StartsWith(full, a.path + ".")) {
      continue;
    }
    const torch::Tensor w = Param(item.value, "weight");
    if (w.defined() && w.dim() == 2) linears.emplace_back(full, w);
  }
  std::vector<Mlp> mlps;
  for (size_t i = 0; i < linears.size(); ++i) {
    for (size_t j = i + 1; j < linears.size(); ++j) {
      const torch::Tensor& up = linears[i].second;
      const torch::Tensor& down = linears[j].second;
      if (up.size(1) == a.dim && down.size(0) == a.dim && up.size(0) == down.size(1)) {
        mlps.push_back({linears[i].first, linears[j].first, up.size(0)});
      }
    }
  }
  return mlps;
}

// The block of attention `a`: the nearest enclosing module holding exactly
// one MLP.
absl::StatusOr<VitBlock> BlockOf(const torch::jit::Module& root, const Attention& a) {
  std::string path = a.path;
  do {
    path = Parent(path);
    const std::vector<Mlp> mlps = MlpsIn(root, path, a);
    if (mlps.size() > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "attention ", a.path, " found, but the nearest module around it with an MLP (",
          Named(path), ") holds ", mlps.size(), " candidates: ", mlps[0].fc1, "/", mlps[0].fc2,
          ", ", mlps[1].fc1, "/", mlps[1].fc2));
    }
    if (mlps.size() == 1) {
      VitBlock b;
      b.path = path;
      b.attn = a.path;
      b.heads_attr = a.heads_attr;
      b.qkv = a.qkv;
      b.q = a.q;
      b.k = a.k;
      b.v = a.v;
      b.proj = a.proj;
      b.fc1 = mlps[0].fc1;
      b.fc2 = mlps[0].fc2;
      b.heads = a.heads;
      b.head_dim = a.head_dim;
      b.hidden = mlps[0].hidden;
      b.prunable_heads = true;
      return b;
    }
  } while (!path.empty());
  return absl::FailedPreconditionError(
      absl::StrCat("attention ", a.path, " found but no two-Linear MLP (a Linear ", a.dim,
                   " -> hidden, then a Linear hidden -> ", a.dim, ") in a module around it"));
}

// Blocks of any transformer (vit.h); `misses` gets what came close.
absl::StatusOr<VitStructure> FindTransformerBlocks(const torch::jit::Module& module,
                                                   std::vector<std::string>* misses) {
  VitStructure vit;
  vit.style = "transformer";
  for (const auto& item : module.named_modules()) {
    absl::StatusOr<std::optional<Attention>> a = AttentionAt(module, item.name, item.value);
    if (!a.ok()) {
      misses->push_back(std::string(a.status().message()));
      continue;
    }
    if (!a->has_value()) continue;
    absl::StatusOr<VitBlock> b = BlockOf(module, **a);
    if (!b.ok()) {
      misses->push_back(std::string(b.status().message()));
      continue;
    }
    for (const VitBlock& seen : vit.blocks) {
      if (seen.path == b->path) {
        return Inconsistent(b->path, absl::StrCat("it holds two attentions (", seen.attn, ", ",
                                                  b->attn, "); PRUNE handles one per block"));
      }
    }
    vit.blocks.push_back(*std::move(b));
  }
  return vit;
}

absl::Status NotATransformer(const std::vector<std::string>& misses) {
  std::string message =
      "not a transformer PRUNE can prune: no block with a multi-head attention (Linears q/k/v, "
      "query/key/value, q_proj/k_proj/v_proj, ... or a fused qkv, an int head count attribute "
      "and an output Linear) and a two-Linear MLP, nor torchvision's self_attention with "
      "mlp.0/mlp.3";
  if (!misses.empty()) {
    const std::vector<std::string> first(misses.begin(),
                                         misses.begin() + std::min<size_t>(misses.size(), 3));
    absl::StrAppend(&message, "; found: ", absl::StrJoin(first, "; "));
  }
  return absl::FailedPreconditionError(message);
}

bool IsDeitBlock(const torch::jit::Module& m) {
  if (!m.hasattr("attn") || !m.hasattr("mlp")) return false;
  c10::IValue attn = m.attr("attn");
  c10::IValue mlp = m.attr("mlp");
  if (!attn.isModule() || !mlp.isModule()) return false;
  return HasLinear(attn.toModule(), "qkv") && HasLinear(attn.toModule(), "proj") &&
         attn.toModule().hasattr("num_heads") && HasLinear(mlp.toModule(), "fc1") &&
         HasLinear(mlp.toModule(), "fc2");
}

bool IsTorchvisionBlock(const torch::jit::Module& m) {
  if (!m.hasattr("self_attention") || !m.hasattr("mlp")) return false;
  c10::IValue attn = m.attr("self_attention");
  c10::IValue mlp = m.attr("mlp");
  return attn.isModule() && TypeName(attn.toModule()) == "MultiheadAttention" &&
         mlp.isModule() && HasLinear(mlp.toModule(), "0") && HasLinear(mlp.toModule(), "3");
}

// Keeps `index` along `dim` of the module's parameter `name` (if present).
absl::Status SliceParam(torch::jit::Module& module, const std::string& name, int64_t dim,
                        const torch::Tensor& index) {
  torch::Tensor p = Param(module, name);
  if (!p.defined()) return absl::OkStatus();
  torch::Tensor kept;
  {
    torch::NoGradGuard no_grad;
    kept = p.index_select(dim, index.to(p.device())).contiguous().clone();
  }
  kept.set_requires_grad(p.requires_grad());
  module.register_parameter(name, kept, /*is_buffer=*/false);
  return absl::OkStatus();
}

absl::Status CheckIndices(const std::vector<int64_t>& kept, int64_t count, const std::string& what,
                          const std::string& path) {
  if (kept.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the plan keeps no ", what));
  }
  for (size_t i = 0; i < kept.size(); ++i) {
    if (kept[i] < 0 || kept[i] >= count || (i > 0 && kept[i] <= kept[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", what, " indices must be increasing and in [0, ", count, ")"));
    }
  }
  return absl::OkStatus();
}

torch::Tensor IndexTensor(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kLong));
}

// Keeps the rows or columns `s` names of its Linear's parameters.
absl::Status KeepSlice(torch::jit::Module& root, const LinearSlice& s) {
  torch::jit::Module linear = SubmoduleAt(root, s.linear);
  const torch::Tensor index = IndexTensor(s.index);
  RETURN_IF_ERROR(SliceParam(linear, "weight", s.dim, index));
  if (s.dim == 0) RETURN_IF_ERROR(SliceParam(linear, "bias", 0, index));
  return absl::OkStatus();
}

// "" when zeroing head 0 (or MLP neuron 0) of block `block` in a copy of
// `module`, then removing it, leaves the output on `probe` as it was; else
// what went wrong. The check that proves a guessed layout (vit.h).
std::string RemovalIsExact(const torch::jit::Module& module, const VitStructure& vit, int block,
                           bool head, const ModelInputs& probe) {
  const VitBlock& b = vit.blocks[block];
  const std::string what = head ? "head 0" : "MLP neuron 0";
  torch::jit::Module copy = module.clone();
  torch::Tensor zeroed;
  try {
    torch::NoGradGuard no_grad;
    for (const LinearSlice& s : head ? HeadSlices(b, {0}) : NeuronSlices(b, {0})) {
      torch::jit::Module linear = SubmoduleAt(copy, s.linear);
      for (const char* name : {"weight", "bias"}) {
        torch::Tensor p = Param(linear, name);
        if (!p.defined() || (s.dim == 1 && std::string(name) == "bias")) continue;
        p.index_fill_(s.dim, IndexTensor(s.index).to(p.device()), 0);
      }
    }
  } catch (const std::exception& e) {  // c10::Error
    return absl::StrCat("cannot zero ", what, ": ", e.what());
  }
  absl::StatusOr<torch::Tensor> before = RunForward(copy, probe);
  if (!before.ok()) return absl::StrCat("the model does not run: ", before.status().message());
  VitPlan plan = FullPlan(vit);
  std::vector<int64_t>& kept = head ? plan.blocks[block].heads : plan.blocks[block].neurons;
  kept.erase(kept.begin());
  absl::Status applied = ApplyPlan(copy, vit, plan).status();
  if (!applied.ok()) return std::string(applied.message());
  absl::StatusOr<torch::Tensor> after = RunForward(copy, probe);
  if (!after.ok()) {
    return absl::StrCat("the model does not run with ", what, " removed: ",
                        after.status().message());
  }
  if (!before->sizes().equals(after->sizes())) {
    return absl::StrCat("removing ", what, " changes the output's shape");
  }
  const double scale = before->abs().max().item<double>();
  const double diff = (*before - *after).abs().max().item<double>();
  if (!(diff <= 1e-4 * scale + 1e-6)) {
    return absl::StrCat("removing ", what, " (zeroed) changes the output by ", diff,
                        " (largest output ", scale, ")");
  }
  return "";
}

}  // namespace

torch::jit::Module SubmoduleAt(const torch::jit::Module& root, const std::string& path) {
  torch::jit::Module m = root;
  if (path.empty()) return m;
  size_t start = 0;
  while (start <= path.size()) {
    size_t dot = path.find('.', start);
    if (dot == std::string::npos) dot = path.size();
    m = m.attr(path.substr(start, dot - start)).toModule();
    start = dot + 1;
  }
  return m;
}

absl::StatusOr<VitStructure> FindVitBlocks(const torch::jit::Module& module) {
  VitStructure vit;
  for (const auto& item : module.named_modules()) {
    absl::StatusOr<VitBlock> block;
    if (IsDeitBlock(item.value)) {
      vit.style = "deit";
      block = DeitBlock(module, item.name);
    } else if (IsTorchvisionBlock(item.value)) {
      vit.style = "torchvision";
      block = TorchvisionBlock(module, item.name);
    } else {
      continue;
    }
    if (!block.ok()) return block.status();
    vit.blocks.push_back(*block);
  }
  std::vector<std::string> misses;
  if (vit.blocks.empty()) {
    ASSIGN_OR_RETURN(vit, FindTransformerBlocks(module, &misses));
  }
  if (vit.blocks.empty()) return NotATransformer(misses);
  const torch::Tensor fc1 = Param(SubmoduleAt(module, vit.blocks[0].fc1), "weight");
  vit.dim = fc1.size(1);
  for (const VitBlock& b : vit.blocks) {
    const torch::Tensor w = Param(SubmoduleAt(module, b.fc1), "weight");
    if (w.size(1) != vit.dim || b.head_dim != vit.blocks[0].head_dim) {
      return Inconsistent(
          b.path, absl::StrCat("its width or head size (", w.size(1), ", ", b.head_dim,
                               ") differs from the first block's (", vit.dim, ", ",
                               vit.blocks[0].head_dim, " in ", vit.blocks[0].path,
                               "); PRUNE needs one width and head size across blocks, so "
                               "hierarchical transformers (Swin's stages) are not supported"));
    }
  }
  return vit;
}

absl::StatusOr<VitStructure> DiscoverVit(torch::jit::Module& module,
                                         const std::vector<int64_t>& input_shape,
                                         std::optional<c10::ScalarType> input_dtype) {
  ASSIGN_OR_RETURN(VitStructure vit, FindVitBlocks(module));
  std::vector<int64_t> shape = input_shape;
  if (shape.empty()) return absl::InvalidArgumentError("input_shape: required");
  shape[0] = 1;
  torch::Tensor zeros = torch::zeros(shape, Param(SubmoduleAt(module, vit.blocks[0].fc1), "weight")
                                                .options());
  return DiscoverVit(module, input_dtype.has_value() ? zeros.to(*input_dtype) : zeros);
}

absl::StatusOr<VitStructure> DiscoverVit(torch::jit::Module& module, const ModelInputs& probe) {
  ASSIGN_OR_RETURN(VitStructure vit, FindVitBlocks(module));
  if (!probe.defined() || probe.first.dim() < 1 || probe.examples() != 1) {
    return absl::InvalidArgumentError("DiscoverVit needs a probe of one example");
  }
  // Sequence length: fc1's input rows for one example.
  ASSIGN_OR_RETURN(LayerHessian seen, CollectLayerHessian(module, vit.blocks[0].fc1, {probe}));
  vit.tokens = seen.rows;
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    VitBlock& blk = vit.blocks[b];
    const int block = static_cast<int>(b);
    if (blk.prunable_heads && blk.heads < 2) {
      blk.prunable_heads = false;
      blk.fixed_heads = "it has one head";
    } else if (blk.prunable_heads) {
      blk.fixed_heads = RemovalIsExact(module, vit, block, /*head=*/true, probe);
      blk.prunable_heads = blk.fixed_heads.empty();
    }
    if (blk.hidden < 2) continue;
    const std::string why = RemovalIsExact(module, vit, block, /*head=*/false, probe);
    if (!why.empty()) {
      return Inconsistent(blk.path, absl::StrCat(blk.fc1, " and ", blk.fc2,
                                                 " do not act as a two-Linear MLP: ", why));
    }
  }
  return vit;
}

VitStructure BlockAlone(const VitStructure& vit, int block) {
  VitStructure one = vit;
  one.blocks = {vit.blocks.at(block)};
  VitBlock& b = one.blocks[0];
  const std::string prefix = b.path + ".";
  for (std::string* path : {&b.attn, &b.qkv, &b.q, &b.k, &b.v, &b.proj, &b.fc1, &b.fc2}) {
    *path = std::string(absl::StripPrefix(*path, prefix));
  }
  b.path = "";
  return one;
}

VitPlan FullPlan(const VitStructure& vit) {
  VitPlan plan;
  for (const VitBlock& b : vit.blocks) {
    BlockPlan p;
    for (int64_t h = 0; h < b.heads; ++h) p.heads.push_back(h);
    for (int64_t n = 0; n < b.hidden; ++n) p.neurons.push_back(n);
    plan.blocks.push_back(std::move(p));
  }
  return plan;
}

absl::StatusOr<VitStructure> ApplyPlan(torch::jit::Module& module, const VitStructure& vit,
                                       const VitPlan& plan) {
  if (plan.blocks.size() != vit.blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("plan has ", plan.blocks.size(),
                                                   " blocks, the model ", vit.blocks.size()));
  }
  for (size_t i = 0; i < vit.blocks.size(); ++i) {
    const VitBlock& b = vit.blocks[i];
    const BlockPlan& p = plan.blocks[i];
    RETURN_IF_ERROR(CheckIndices(p.heads, b.heads, "heads", b.path));
    RETURN_IF_ERROR(CheckIndices(p.neurons, b.hidden, "MLP neurons", b.path));
    if (!b.prunable_heads && static_cast<int64_t>(p.heads.size()) != b.heads) {
      return absl::InvalidArgumentError(
          absl::StrCat(b.path, ": its heads cannot be pruned (", b.fixed_heads, ")"));
    }
  }
  VitStructure out = vit;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < vit.blocks.size(); ++i) {
    const VitBlock& b = vit.blocks[i];
    const BlockPlan& p = plan.blocks[i];
    VitBlock& nb = out.blocks[i];
    if (static_cast<int64_t>(p.heads.size()) != b.heads) {
      for (const LinearSlice& s : HeadSlices(b, p.heads)) RETURN_IF_ERROR(KeepSlice(module, s));
      const int64_t kept = static_cast<int64_t>(p.heads.size());
      torch::jit::Module attn = SubmoduleAt(module, b.attn);
      attn.setattr(b.heads_attr, kept);
      // BERT's attention reshapes its output to all_head_size.
      if (attn.hasattr("all_head_size") && attn.attr("all_head_size").isInt() &&
          attn.attr("all_head_size").toInt() == b.heads * b.head_dim) {
        attn.setattr("all_head_size", kept * b.head_dim);
      }
      nb.heads = kept;
    }
    if (static_cast<int64_t>(p.neurons.size()) != b.hidden) {
      for (const LinearSlice& s : NeuronSlices(b, p.neurons)) {
        RETURN_IF_ERROR(KeepSlice(module, s));
      }
      nb.hidden = static_cast<int64_t>(p.neurons.size());
    }
  }
  return out;
}

std::vector<LinearSlice> HeadSlices(const VitBlock& b, const std::vector<int64_t>& heads) {
  // Rows of head h in one projection: h·d ... h·d + d; in a fused qkv, part
  // s (q, k, v) adds s·H·d.
  std::vector<int64_t> inner;
  for (int64_t h : heads) {
    for (int64_t d = 0; d < b.head_dim; ++d) inner.push_back(h * b.head_dim + d);
  }
  std::vector<LinearSlice> slices;
  if (!b.qkv.empty()) {
    std::vector<int64_t> rows;
    for (int64_t s = 0; s < 3; ++s) {
      for (int64_t i : inner) rows.push_back(s * b.heads * b.head_dim + i);
    }
    slices.push_back({b.qkv, 0, rows});
  } else {
    for (const std::string* p : {&b.q, &b.k, &b.v}) slices.push_back({*p, 0, inner});
  }
  slices.push_back({b.proj, 1, inner});
  return slices;
}

std::vector<LinearSlice> NeuronSlices(const VitBlock& b, const std::vector<int64_t>& neurons) {
  return {{b.fc1, 0, neurons}, {b.fc2, 1, neurons}};
}

int64_t BlockMacs(const VitStructure& vit, int64_t heads, int64_t hidden) {
  const int64_t n = vit.tokens;
  const int64_t d = vit.dim;
  const int64_t hd = vit.blocks.empty() ? 0 : vit.blocks[0].head_dim;
  const int64_t inner = heads * hd;
  return n * d * 3 * inner       // qkv
         + 2 * n * n * inner     // q kᵀ and attn v
         + n * inner * d         // proj
         + 2 * n * d * hidden;   // fc1, fc2
}

int64_t BlockParams(const VitStructure& vit, int64_t heads, int64_t hidden) {
  const int64_t d = vit.dim;
  const int64_t hd = vit.blocks.empty() ? 0 : vit.blocks[0].head_dim;
  const int64_t inner = heads * hd;
  return 3 * inner * d + 3 * inner  // qkv
         + inner * d + d            // proj
         + hidden * d + hidden      // fc1
         + d * hidden + d;          // fc2
}

}  // namespace compress::engine
