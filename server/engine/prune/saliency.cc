#include "server/engine/prune/saliency.h"

#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/param_set.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Batches whose first-order graphs stay cached between the HVPs of one
// saliency pass (one forward+backward graph each).
constexpr int kMaxCachedBatches = 8;

// The part of one parameter tensor a unit owns.
struct Slice {
  int tensor = 0;  // index into the ParamSet
  int64_t dim = 0;
  torch::Tensor index;
};

std::string Qualified(const std::string& module, const char* param) {
  return module.empty() ? param : absl::StrCat(module, ".", param);
}

absl::StatusOr<std::vector<Slice>> SlicesOf(const ParamLayout& layout, const VitStructure& vit,
                                            const PruneUnit& u) {
  const VitBlock& b = vit.blocks.at(u.block);
  std::vector<int64_t> members;
  for (int64_t i = u.first; i < u.first + u.count; ++i) members.push_back(i);
  std::vector<Slice> slices;
  for (const LinearSlice& ls : u.head ? HeadSlices(b, members) : NeuronSlices(b, members)) {
    const torch::Tensor index = torch::tensor(ls.index, torch::kLong);
    for (const char* param : {"weight", "bias"}) {
      const bool bias = std::string(param) == "bias";
      if (bias && ls.dim == 1) continue;  // the input side owns no bias entries
      const std::string name = Qualified(ls.linear, param);
      auto it = std::find(layout.names.begin(), layout.names.end(), name);
      if (it == layout.names.end()) {
        if (bias) continue;  // a Linear without bias
        return absl::FailedPreconditionError(
            absl::StrCat("parameter ", name, " is not a trainable parameter of the model"));
      }
      slices.push_back({static_cast<int>(it - layout.names.begin()), ls.dim, index});
    }
  }
  return slices;
}

double SliceDot(const std::vector<Slice>& slices, const std::vector<torch::Tensor>& a,
                const std::vector<torch::Tensor>& b) {
  double dot = 0;
  for (const Slice& s : slices) {
    const torch::Tensor index = s.index.to(a[s.tensor].device());
    dot += (a[s.tensor].index_select(s.dim, index).to(torch::kDouble) *
            b[s.tensor].index_select(s.dim, index).to(torch::kDouble))
               .sum()
               .item<double>();
  }
  return dot;
}

// w_g embedded in zeros.
ParamSet UnitVector(const std::vector<Slice>& slices, const ParamSet& params) {
  ParamSet v = ZerosLike(params);
  for (const Slice& s : slices) {
    const torch::Tensor index = s.index.to(params.tensors[s.tensor].device());
    v.tensors[s.tensor].index_copy_(s.dim, index,
                                    params.tensors[s.tensor].detach().index_select(s.dim, index));
  }
  return v;
}

int64_t SliceNumel(const std::vector<Slice>& slices, const ParamSet& params) {
  int64_t n = 0;
  for (const Slice& s : slices) {
    n += params.tensors[s.tensor].numel() / params.tensors[s.tensor].size(s.dim) *
         s.index.numel();
  }
  return n;
}

absl::StatusOr<std::vector<torch::Tensor>> BatchGradient(torch::jit::Module& module,
                                                         const ParamSet& params,
                                                         const PreparedBatches& prepared,
                                                         const Batch& batch) {
  ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, batch.inputs));
  ASSIGN_OR_RETURN(torch::Tensor loss, ComputeLoss(prepared.loss, out, batch.targets));
  try {
    std::vector<torch::Tensor> grads =
        torch::autograd::grad({loss}, params.tensors, {}, /*retain_graph=*/false,
                              /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) grads[i] = torch::zeros_like(params.tensors[i]);
    }
    return grads;
  } catch (const c10::Error& e) {
    return AutogradError(e, "gradient for saliency");
  }
}

}  // namespace

const char* SaliencyKindName(SaliencyKind kind) {
  switch (kind) {
    case SaliencyKind::kTaylor:
      return "taylor";
    case SaliencyKind::kMagnitude:
      return "magnitude";
    case SaliencyKind::kHessian:
      break;
  }
  return "hessian";
}

std::vector<PruneUnit> UnitsOf(const VitStructure& vit, int64_t head_group, int64_t mlp_group) {
  std::vector<PruneUnit> units;
  for (size_t i = 0; i < vit.blocks.size(); ++i) {
    const VitBlock& b = vit.blocks[i];
    if (b.prunable_heads) {
      for (int64_t h = 0; h < b.heads; h += head_group) {
        units.push_back({static_cast<int>(i), true, h, std::min(head_group, b.heads - h)});
      }
    }
    for (int64_t n = 0; n < b.hidden; n += mlp_group) {
      units.push_back({static_cast<int>(i), false, n, std::min(mlp_group, b.hidden - n)});
    }
  }
  return units;
}

absl::StatusOr<double> MeanLoss(torch::jit::Module& module, const PreparedBatches& batches) {
  double total = 0;
  torch::NoGradGuard no_grad;
  for (const Batch& b : batches.batches) {
    ASSIGN_OR_RETURN(torch::Tensor out, RunForward(module, b.inputs));
    ASSIGN_OR_RETURN(torch::Tensor loss, ComputeLoss(batches.loss, out, b.targets));
    total += loss.item<double>() * static_cast<double>(b.size);
  }
  return total / static_cast<double>(std::max<int64_t>(batches.num_examples, 1));
}

absl::Status ScaleUnit(torch::jit::Module& module, const VitStructure& vit, const PruneUnit& unit,
                       double factor) {
  ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
  ASSIGN_OR_RETURN(std::vector<Slice> slices, SlicesOf(*params.layout, vit, unit));
  torch::NoGradGuard no_grad;
  for (const Slice& s : slices) {
    torch::Tensor& t = params.tensors[s.tensor];
    const torch::Tensor index = s.index.to(t.device());
    t.index_copy_(s.dim, index, t.index_select(s.dim, index) * factor);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<UnitSaliency>> ComputeSaliency(
    torch::jit::Module& module, const VitStructure& vit, const std::vector<PruneUnit>& units,
    const PreparedBatches& batches, SaliencyKind kind, const CancelToken* cancel,
    int64_t* hvp_count) {
  ASSIGN_OR_RETURN(ParamSet params, CollectParameters(module));
  std::vector<std::vector<Slice>> slices;
  std::vector<UnitSaliency> out(units.size());
  for (size_t u = 0; u < units.size(); ++u) {
    ASSIGN_OR_RETURN(std::vector<Slice> s, SlicesOf(*params.layout, vit, units[u]));
    out[u].numel = SliceNumel(s, params);
    out[u].magnitude =
        std::sqrt(SliceDot(s, params.tensors, params.tensors) / static_cast<double>(out[u].numel));
    slices.push_back(std::move(s));
  }
  // Gradients: E_b[(g_bᵀw)²] and ḡᵀw, weighted by batch size.
  const double n = static_cast<double>(std::max<int64_t>(batches.num_examples, 1));
  for (const Batch& b : batches.batches) {
    if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
    ASSIGN_OR_RETURN(std::vector<torch::Tensor> g, BatchGradient(module, params, batches, b));
    const double weight = static_cast<double>(b.size) / n;
    for (size_t u = 0; u < units.size(); ++u) {
      const double dot = SliceDot(slices[u], g, params.tensors);
      out[u].taylor += weight * dot * dot;
      out[u].first_order += weight * dot;
    }
  }
  if (kind == SaliencyKind::kHessian) {
    HvpOptions options;
    options.max_cached_batches =
        std::min<int>(kMaxCachedBatches, static_cast<int>(batches.batches.size()));
    ASSIGN_OR_RETURN(std::unique_ptr<HvpOperator> op,
                     CreateHvpOperator(module, batches, options, cancel));
    for (size_t u = 0; u < units.size(); ++u) {
      if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
      const ParamSet v = UnitVector(slices[u], params);
      ASSIGN_OR_RETURN(ParamSet hv, op->Apply(v));
      out[u].second_order = 0.5 * SliceDot(slices[u], v.tensors, hv.tensors);
    }
    if (hvp_count != nullptr) *hvp_count += op->num_applications();
  }
  for (UnitSaliency& s : out) {
    switch (kind) {
      case SaliencyKind::kTaylor:
        s.score = s.taylor;
        break;
      case SaliencyKind::kHessian:
        s.score = -s.first_order + s.second_order;
        break;
      case SaliencyKind::kMagnitude:
        s.score = s.magnitude;
        break;
    }
  }
  return out;
}

}  // namespace compress::engine
