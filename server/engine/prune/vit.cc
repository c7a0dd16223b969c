#include "server/engine/prune/vit.h"

#include <algorithm>
#include <exception>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
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
      absl::StrCat("block ", path, " looks like a ViT block but ", why));
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
  return b;
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
  if (vit.blocks.empty()) {
    return absl::FailedPreconditionError(
        "not a Vision Transformer: no block with attn.qkv/attn.proj/attn.num_heads and "
        "mlp.fc1/mlp.fc2 (DeiT/timm) or self_attention and mlp.0/mlp.3 (torchvision)");
  }
  const torch::Tensor fc1 = Param(SubmoduleAt(module, vit.blocks[0].fc1), "weight");
  vit.dim = fc1.size(1);
  for (const VitBlock& b : vit.blocks) {
    const torch::Tensor w = Param(SubmoduleAt(module, b.fc1), "weight");
    if (w.size(1) != vit.dim || b.head_dim != vit.blocks[0].head_dim) {
      return Inconsistent(b.path, "its width or head size differs from the first block's");
    }
  }
  return vit;
}

absl::StatusOr<VitStructure> DiscoverVit(torch::jit::Module& module,
                                         const std::vector<int64_t>& input_shape,
                                         std::optional<c10::ScalarType> input_dtype) {
  ASSIGN_OR_RETURN(VitStructure vit, FindVitBlocks(module));
  // Sequence length: fc1's input rows for one example.
  std::vector<int64_t> shape = input_shape;
  if (shape.empty()) return absl::InvalidArgumentError("input_shape: required");
  shape[0] = 1;
  torch::Tensor zeros = torch::zeros(shape, Param(SubmoduleAt(module, vit.blocks[0].fc1), "weight")
                                                .options());
  torch::Tensor probe = input_dtype.has_value() ? zeros.to(*input_dtype) : zeros;
  ASSIGN_OR_RETURN(LayerHessian seen, CollectLayerHessian(module, vit.blocks[0].fc1, {probe}));
  vit.tokens = seen.rows;
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    VitBlock& blk = vit.blocks[b];
    if (!blk.prunable_heads || blk.heads < 2) continue;
    VitStructure one = BlockAlone(vit, static_cast<int>(b));
    torch::jit::Module copy = SubmoduleAt(module, blk.path).clone();
    VitPlan plan = FullPlan(one);
    plan.blocks[0].heads.pop_back();
    bool runs = ApplyPlan(copy, one, plan).ok();
    if (runs) {
      try {
        torch::NoGradGuard no_grad;
        copy.forward({torch::zeros({1, vit.tokens, vit.dim}, zeros.options())});
      } catch (const std::exception&) {  // c10::Error or torch::jit::JITException
        runs = false;
      }
    }
    blk.prunable_heads = runs;
  }
  return vit;
}

VitStructure BlockAlone(const VitStructure& vit, int block) {
  VitStructure one = vit;
  one.blocks = {vit.blocks.at(block)};
  VitBlock& b = one.blocks[0];
  const std::string prefix = b.path + ".";
  for (std::string* path : {&b.attn, &b.qkv, &b.proj, &b.fc1, &b.fc2}) {
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
          absl::StrCat(b.path, ": heads of nn.MultiheadAttention cannot be pruned"));
    }
  }
  VitStructure out = vit;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < vit.blocks.size(); ++i) {
    const VitBlock& b = vit.blocks[i];
    const BlockPlan& p = plan.blocks[i];
    VitBlock& nb = out.blocks[i];
    if (static_cast<int64_t>(p.heads.size()) != b.heads) {
      // qkv rows of head h in part s (q, k, v): s·H·d + h·d ... + d.
      std::vector<int64_t> rows, cols;
      for (int64_t s = 0; s < 3; ++s) {
        for (int64_t h : p.heads) {
          for (int64_t d = 0; d < b.head_dim; ++d) {
            rows.push_back(s * b.heads * b.head_dim + h * b.head_dim + d);
          }
        }
      }
      for (int64_t h : p.heads) {
        for (int64_t d = 0; d < b.head_dim; ++d) cols.push_back(h * b.head_dim + d);
      }
      torch::jit::Module qkv = SubmoduleAt(module, b.qkv);
      torch::jit::Module proj = SubmoduleAt(module, b.proj);
      RETURN_IF_ERROR(SliceParam(qkv, "weight", 0, IndexTensor(rows)));
      RETURN_IF_ERROR(SliceParam(qkv, "bias", 0, IndexTensor(rows)));
      RETURN_IF_ERROR(SliceParam(proj, "weight", 1, IndexTensor(cols)));
      SubmoduleAt(module, b.attn).setattr("num_heads", static_cast<int64_t>(p.heads.size()));
      nb.heads = static_cast<int64_t>(p.heads.size());
    }
    if (static_cast<int64_t>(p.neurons.size()) != b.hidden) {
      torch::jit::Module fc1 = SubmoduleAt(module, b.fc1);
      torch::jit::Module fc2 = SubmoduleAt(module, b.fc2);
      const torch::Tensor kept = IndexTensor(p.neurons);
      RETURN_IF_ERROR(SliceParam(fc1, "weight", 0, kept));
      RETURN_IF_ERROR(SliceParam(fc1, "bias", 0, kept));
      RETURN_IF_ERROR(SliceParam(fc2, "weight", 1, kept));
      nb.hidden = static_cast<int64_t>(p.neurons.size());
    }
  }
  return out;
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
