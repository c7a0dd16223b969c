#include "server/engine/hessian/param_set.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/engine/model/model.h"

namespace compress::engine {
namespace {

// <a, b> in float64, left on the tensors' device: summing there and reading
// the total once avoids a device sync per tensor.
torch::Tensor TensorDot(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::dot(a.reshape(-1).to(torch::kFloat64), b.reshape(-1).to(torch::kFloat64));
}

double SumOfDots(const ParamSet& a, const ParamSet& b, const std::vector<int>* only) {
  torch::Tensor sum;
  auto add = [&](size_t i) {
    torch::Tensor d = TensorDot(a.tensors[i], b.tensors[i]);
    sum = sum.defined() ? sum + d : d;
  };
  if (only == nullptr) {
    for (size_t i = 0; i < a.size(); ++i) add(i);
  } else {
    for (int i : *only) add(static_cast<size_t>(i));
  }
  return sum.defined() ? sum.item<double>() : 0.0;
}

}  // namespace

absl::StatusOr<ParamSet> CollectParameters(const torch::jit::Module& module) {
  auto layout = std::make_shared<ParamLayout>();
  ParamSet params;
  std::unordered_set<const void*> seen;
  std::unordered_map<std::string, int> index_of;  // name -> tensor index
  std::vector<std::pair<std::string, std::string>> tied;  // alias, first name
  try {
    const std::map<std::string, std::string> aliases = TiedAliases(module);
    for (const auto& item : module.named_modules()) {
      ParamGroup group;
      for (const auto& param : item.value.named_parameters(/*recurse=*/false)) {
        const torch::Tensor& t = param.value;
        if (!t.requires_grad()) continue;
        std::string name =
            item.name.empty() ? param.name : absl::StrCat(item.name, ".", param.name);
        if (auto it = aliases.find(name); it != aliases.end()) {
          tied.emplace_back(std::move(name), it->second);
          continue;
        }
        if (!seen.insert(t.unsafeGetTensorImpl()).second) continue;
        const int index = static_cast<int>(params.tensors.size());
        index_of.emplace(name, index);
        layout->names.push_back(std::move(name));
        layout->shapes.push_back(t.sizes().vec());
        layout->group_of.push_back(static_cast<int>(layout->groups.size()));
        group.tensors.push_back(index);
        group.numel += t.numel();
        params.tensors.push_back(t);
      }
      if (group.tensors.empty()) continue;
      group.name = item.name;
      group.kind = item.value.type()->name()->name();
      layout->numel += group.numel;
      layout->groups.push_back(std::move(group));
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot list the model's parameters: ", e.what_without_backtrace()));
  }
  for (const auto& [alias, first] : tied) {
    auto it = index_of.find(first);
    if (it != index_of.end()) layout->groups[layout->group_of[it->second]].tied.push_back(alias);
  }
  if (params.tensors.empty()) {
    return absl::FailedPreconditionError(
        "the model has no trainable parameters (none requires grad)");
  }
  params.layout = std::move(layout);
  return params;
}

absl::StatusOr<torch::jit::Module> CopyWithFreshParameters(
    const torch::jit::Module& module,
    const std::function<bool(const std::string& name, const torch::Tensor& original)>&
        requires_grad) {
  absl::StatusOr<torch::jit::Module> cloned = CloneKeepingTies(module);
  if (!cloned.ok()) return cloned.status();
  try {
    torch::jit::Module copy = *std::move(cloned);
    std::unordered_map<const void*, torch::Tensor> replaced;
    for (const auto& item : copy.named_modules()) {
      torch::jit::Module sub = item.value;
      for (const auto& param : sub.named_parameters(/*recurse=*/false)) {
        const std::string name =
            item.name.empty() ? param.name : absl::StrCat(item.name, ".", param.name);
        const void* key = param.value.unsafeGetTensorImpl();
        auto it = replaced.find(key);
        if (it == replaced.end()) {
          it = replaced.emplace(key, param.value.detach().clone()).first;
        }
        if (requires_grad(name, param.value)) it->second.requires_grad_(true);
        sub.register_parameter(param.name, it->second, /*is_buffer=*/false);
      }
    }
    return copy;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot copy the model: ", e.what_without_backtrace()));
  }
}

at::Generator MakeGenerator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

ParamSet ZerosLike(const ParamSet& like) {
  ParamSet out{like.layout, {}};
  out.tensors.reserve(like.size());
  for (const torch::Tensor& t : like.tensors) {
    out.tensors.push_back(torch::zeros_like(t, at::MemoryFormat::Contiguous));
  }
  return out;
}

ParamSet Clone(const ParamSet& v) {
  ParamSet out{v.layout, {}};
  out.tensors.reserve(v.size());
  for (const torch::Tensor& t : v.tensors) {
    out.tensors.push_back(t.detach().clone(at::MemoryFormat::Contiguous));
  }
  return out;
}

ParamSet RademacherLike(const ParamSet& like, at::Generator& gen) {
  ParamSet out{like.layout, {}};
  out.tensors.reserve(like.size());
  for (const torch::Tensor& t : like.tensors) {
    torch::Tensor bits = at::randint(0, 2, t.sizes(), gen, at::TensorOptions().dtype(t.dtype()));
    out.tensors.push_back((bits * 2 - 1).to(t.device()));
  }
  return out;
}

ParamSet GaussianLike(const ParamSet& like, at::Generator& gen) {
  ParamSet out{like.layout, {}};
  out.tensors.reserve(like.size());
  for (const torch::Tensor& t : like.tensors) {
    out.tensors.push_back(
        at::randn(t.sizes(), gen, at::TensorOptions().dtype(t.dtype())).to(t.device()));
  }
  return out;
}

double Dot(const ParamSet& a, const ParamSet& b) {
  torch::NoGradGuard no_grad;
  return SumOfDots(a, b, nullptr);
}

double GroupDot(const ParamSet& a, const ParamSet& b, int group) {
  torch::NoGradGuard no_grad;
  return SumOfDots(a, b, &a.layout->groups[group].tensors);
}

double Norm(const ParamSet& v) { return std::sqrt(Dot(v, v)); }

std::vector<double> GroupNorms(const ParamSet& v) {
  std::vector<double> norms(v.layout->groups.size());
  for (size_t g = 0; g < norms.size(); ++g) {
    norms[g] = std::sqrt(GroupDot(v, v, static_cast<int>(g)));
  }
  return norms;
}

void Axpy(double alpha, const ParamSet& x, ParamSet* y) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < x.size(); ++i) y->tensors[i].add_(x.tensors[i], alpha);
}

void Scale(double alpha, ParamSet* v) {
  torch::NoGradGuard no_grad;
  for (torch::Tensor& t : v->tensors) t.mul_(alpha);
}

void RestrictToGroup(int group, ParamSet* v) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < v->size(); ++i) {
    if (v->layout->group_of[i] != group) v->tensors[i].zero_();
  }
}

void RestrictToGroups(const std::vector<int>& groups, ParamSet* v) {
  std::vector<bool> keep(v->layout->groups.size(), false);
  for (int g : groups) keep[g] = true;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < v->size(); ++i) {
    if (!keep[v->layout->group_of[i]]) v->tensors[i].zero_();
  }
}

namespace {

// "3" or "encoder_layer_3".
bool IsIndexAtom(absl::string_view atom) {
  size_t start = atom.rfind('_');
  absl::string_view digits = start == absl::string_view::npos ? atom : atom.substr(start + 1);
  if (digits.empty()) return false;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::string BlockName(const std::string& layer) {
  if (layer.empty()) return "";
  std::vector<absl::string_view> atoms = absl::StrSplit(layer, '.');
  for (size_t i = 0; i < atoms.size(); ++i) {
    if (IsIndexAtom(atoms[i])) {
      return absl::StrJoin(atoms.begin(), atoms.begin() + i + 1, ".");
    }
  }
  return std::string(atoms[0]);
}

}  // namespace

std::vector<ParamBlock> BlocksOf(const ParamLayout& layout) {
  std::vector<ParamBlock> blocks;
  std::map<std::string, size_t> index;
  for (size_t g = 0; g < layout.groups.size(); ++g) {
    const std::string name = BlockName(layout.groups[g].name);
    auto [it, inserted] = index.emplace(name, blocks.size());
    if (inserted) blocks.push_back(ParamBlock{name, {}, 0});
    ParamBlock& block = blocks[it->second];
    block.groups.push_back(static_cast<int>(g));
    block.numel += layout.groups[g].numel;
  }
  return blocks;
}

torch::Tensor Flatten(const ParamSet& v) {
  std::vector<torch::Tensor> parts;
  parts.reserve(v.size());
  for (const torch::Tensor& t : v.tensors) {
    parts.push_back(t.detach().reshape(-1).to(torch::kCPU, torch::kFloat64));
  }
  return torch::cat(parts);
}

ParamSet Unflatten(const torch::Tensor& flat, const ParamSet& like) {
  ParamSet out{like.layout, {}};
  out.tensors.reserve(like.size());
  int64_t offset = 0;
  for (const torch::Tensor& t : like.tensors) {
    out.tensors.push_back(flat.narrow(0, offset, t.numel())
                              .reshape(t.sizes())
                              .to(t.device(), t.scalar_type())
                              .clone());
    offset += t.numel();
  }
  return out;
}

}  // namespace compress::engine
