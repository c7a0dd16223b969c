#include "server/engine/data/inputs.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/model/model.h"

namespace compress::engine {
namespace {

// Applies `f` to every tensor of `in`.
template <typename F>
ModelInputs Map(const ModelInputs& in, F f) {
  ModelInputs out(f(in.first));
  out.named.reserve(in.named.size());
  for (const auto& [name, tensor] : in.named) out.named.emplace_back(name, f(tensor));
  return out;
}

std::string TensorString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "] ", DtypeName(t.scalar_type()));
}

}  // namespace

ModelInputs ModelInputs::Narrow(int64_t start, int64_t length) const {
  return Map(*this, [&](const torch::Tensor& t) { return t.narrow(0, start, length); });
}

ModelInputs ModelInputs::Select(const torch::Tensor& indices) const {
  return Map(*this, [&](const torch::Tensor& t) {
    return t.index_select(0, indices.to(t.device()));
  });
}

ModelInputs ModelInputs::To(const c10::Device& device,
                            c10::optional<c10::ScalarType> float_type) const {
  return Map(*this, [&](const torch::Tensor& t) {
    if (float_type.has_value() && at::isFloatingType(t.scalar_type())) {
      return t.to(device, *float_type);
    }
    return t.to(device);
  });
}

ModelInputs ModelInputs::Clone() const {
  return Map(*this, [](const torch::Tensor& t) { return t.detach().clone(); });
}

c10::IValue ModelInputs::Forward(torch::jit::Module& module) const {
  if (named.empty()) return module.forward({first});
  torch::jit::Kwargs kwargs;
  for (const auto& [name, tensor] : named) kwargs.emplace(name, tensor);
  return module.forward({first}, kwargs);
}

std::string ModelInputs::Describe() const {
  if (!first.defined()) return "(none)";
  std::string out = TensorString(first);
  for (size_t i = 0; i < named.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? " with " : ", ", named[i].first, " ",
                    TensorString(named[i].second));
  }
  return out;
}

void SetProbeLike(const ModelInputs& inputs, InspectOptions* options) {
  auto one = [](const torch::Tensor& t) {
    std::vector<int64_t> shape = t.sizes().vec();
    shape[0] = 1;
    return shape;
  };
  options->input_shape = one(inputs.first);
  options->input_dtype = DtypeName(inputs.first.scalar_type());
  options->named_inputs.clear();
  for (const auto& [name, tensor] : inputs.named) {
    options->named_inputs.push_back({name, one(tensor), DtypeName(tensor.scalar_type())});
  }
}

ModelInputs ModelInputs::Cat(const std::vector<ModelInputs>& parts) {
  if (parts.empty()) return {};
  std::vector<torch::Tensor> firsts;
  for (const ModelInputs& p : parts) firsts.push_back(p.first);
  ModelInputs out(torch::cat(firsts, 0));
  for (size_t k = 0; k < parts[0].named.size(); ++k) {
    std::vector<torch::Tensor> column;
    for (const ModelInputs& p : parts) column.push_back(p.named.at(k).second);
    out.named.emplace_back(parts[0].named[k].first, torch::cat(column, 0));
  }
  return out;
}

}  // namespace compress::engine
