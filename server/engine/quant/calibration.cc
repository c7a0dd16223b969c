#include "server/engine/quant/calibration.h"

#include <ATen/record_function.h>

#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "server/engine/common/finite.h"
#include "server/engine/model/model.h"
#include "server/engine/model/unfused_forward.h"
#include "server/engine/quant/gptq.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// State of one collection, reachable from the callback of the thread that
// runs the forward pass.
struct Watch {
  const void* weight_data = nullptr;
  std::vector<int64_t> weight_shape;  // [out, in] or [out, in/g, kh, kw]
  std::unique_ptr<HessianAccumulator> accumulator;
  std::string kind;
  int64_t calls = 0;
  std::set<std::string> other_ops;  // outermost ops that used it otherwise
  absl::Status status;              // first failure inside the callback
  int depth = 0;
};

// Only the forward-pass thread sees the Watch: intra-op worker threads may
// inherit the thread-local callback and must leave it alone.
thread_local Watch* tls_watch = nullptr;

bool SameData(const c10::IValue& v, const void* data) {
  return v.isTensor() && v.toTensor().defined() && v.toTensor().numel() > 0 &&
         v.toTensor().data_ptr() == data;
}

bool IsWeight(const c10::IValue& v, const Watch& w) {
  return SameData(v, w.weight_data) && v.toTensor().sizes().vec() == w.weight_shape;
}

// weight.t() of a 2-D weight [out, in]: a view [in, out] with strides (1, in).
bool IsWeightTransposed(const c10::IValue& v, const Watch& w) {
  if (!SameData(v, w.weight_data) || w.weight_shape.size() != 2) return false;
  const at::Tensor& t = v.toTensor();
  return t.dim() == 2 && t.size(0) == w.weight_shape[1] && t.size(1) == w.weight_shape[0] &&
         t.stride(0) == 1 && t.stride(1) == w.weight_shape[1];
}

std::array<int64_t, 2> Pair(const c10::IValue& v, int64_t fallback) {
  if (v.isInt()) return {v.toInt(), v.toInt()};
  if (v.isIntList()) {
    std::vector<int64_t> l = v.toIntVector();
    if (l.size() == 1) return {l[0], l[0]};
    if (l.size() == 2) return {l[0], l[1]};
  }
  return {fallback, fallback};
}

void Accumulate(Watch* w, absl::string_view op, c10::ArrayRef<const c10::IValue> in) {
  const bool conv = op == "aten::conv2d" || op == "aten::convolution" || op == "aten::_convolution";
  absl::Status status;
  // The accumulation's own operators must not reach the callback.
  at::DisableRecordFunctionGuard no_record;
  if (conv && in.size() >= 7 && IsWeight(in[1], *w) && in[0].isTensor() &&
      w->weight_shape.size() == 4) {
    Conv2dGeometry g;
    g.kernel = {w->weight_shape[2], w->weight_shape[3]};
    g.stride = Pair(in[3], 1);
    g.dilation = Pair(in[5], 1);
    if (op == "aten::conv2d") {
      g.groups = in[6].isInt() ? in[6].toInt() : 1;
      if (in[4].isString()) {
        if (in[4].toStringRef() != "valid") {
          w->other_ops.insert("aten::conv2d(padding='same')");
          return;
        }
        g.padding = {0, 0};
      } else {
        g.padding = Pair(in[4], 0);
      }
    } else {
      if (in.size() < 9 || (in[6].isBool() && in[6].toBool())) {
        w->other_ops.insert(absl::StrCat(op, "(transposed)"));
        return;
      }
      g.padding = Pair(in[4], 0);
      g.groups = in[8].isInt() ? in[8].toInt() : 1;
    }
    w->kind = "conv2d";
    status = w->accumulator->AddConv2dInputs(in[0].toTensor(), g);
  } else if (op == "aten::linear" && in.size() >= 2 && IsWeight(in[1], *w) && in[0].isTensor()) {
    w->kind = "linear";
    status = w->accumulator->AddLinearInputs(in[0].toTensor());
  } else if (op == "aten::addmm" && in.size() >= 3 && IsWeightTransposed(in[2], *w) &&
             in[1].isTensor()) {
    w->kind = "linear";
    status = w->accumulator->AddLinearInputs(in[1].toTensor());
  } else if ((op == "aten::mm" || op == "aten::matmul") && in.size() >= 2 &&
             IsWeightTransposed(in[1], *w) && in[0].isTensor()) {
    w->kind = "linear";
    status = w->accumulator->AddLinearInputs(in[0].toTensor());
  } else {
    for (const c10::IValue& v : in) {
      if (SameData(v, w->weight_data)) w->other_ops.insert(std::string(op));
    }
    return;
  }
  if (status.ok()) {
    ++w->calls;
  } else if (absl::IsUnimplemented(status)) {
    w->other_ops.insert(absl::StrCat(op, " (", status.message(), ")"));
  } else if (w->status.ok()) {
    w->status = status;
  }
}

std::unique_ptr<at::ObserverContext> OnOpStart(const at::RecordFunction& fn) {
  Watch* w = tls_watch;
  if (w == nullptr) return nullptr;
  // Nested operators (linear's addmm, conv2d's _convolution) are the same
  // work again.
  if (w->depth++ > 0) return nullptr;
  c10::ArrayRef<const c10::IValue> inputs = fn.inputs();
  // Boxed calls pass the whole interpreter stack; the operator's own
  // arguments are the last ones.
  c10::optional<c10::FunctionSchema> schema = fn.operator_schema();
  if (schema.has_value() && inputs.size() > schema->arguments().size()) {
    inputs = inputs.slice(inputs.size() - schema->arguments().size());
  }
  try {
    Accumulate(w, fn.name(), inputs);
  } catch (const std::exception& e) {
    if (w->status.ok()) {
      w->status =
          absl::InternalError(absl::StrCat("collecting inputs of ", fn.name(), ": ", e.what()));
    }
  }
  return nullptr;
}

void OnOpEnd(const at::RecordFunction&, at::ObserverContext*) {
  if (Watch* w = tls_watch) --w->depth;
}

class ScopedWatch {
 public:
  explicit ScopedWatch(Watch* watch) {
    tls_watch = watch;
    handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(&OnOpStart, &OnOpEnd)
                                             .needsInputs(true)
                                             .scopes({at::RecordScope::FUNCTION}));
  }
  ~ScopedWatch() {
    at::removeCallback(handle_);
    tls_watch = nullptr;
  }
  ScopedWatch(const ScopedWatch&) = delete;
  ScopedWatch& operator=(const ScopedWatch&) = delete;

 private:
  at::CallbackHandle handle_;
};

// The layer kind of parameter `param` of a module of type `type`, or "" when
// the parameter is not quantized: every module's `weight`, and the packed
// input projection of nn.MultiheadAttention (used by F.linear like a
// Linear's weight, but held by the attention module itself).
std::string QuantizableKind(const std::string& type, const std::string& param) {
  if (param == "weight") return type;
  if (type == "MultiheadAttention" && param == "in_proj_weight") {
    return "MultiheadAttention.in_proj";
  }
  return "";
}

}  // namespace

absl::StatusOr<std::vector<QuantizableLayer>> QuantizableLayers(const torch::jit::Module& module) {
  std::vector<QuantizableLayer> layers;
  try {
    const std::map<std::string, std::string> aliases = TiedAliases(module);
    std::map<std::string, size_t> layer_of;  // "a.weight" -> index into layers
    for (const auto& item : module.named_modules()) {
      const std::string type = item.value.type()->name()->name();
      for (const auto& param : item.value.named_parameters(/*recurse=*/false)) {
        const std::string kind = QuantizableKind(type, param.name);
        if (kind.empty() || !param.value.is_floating_point() || param.value.dim() < 2 ||
            param.value.numel() == 0) {
          continue;
        }
        const std::string full =
            item.name.empty() ? param.name : absl::StrCat(item.name, ".", param.name);
        if (auto alias = aliases.find(full); alias != aliases.end()) {
          if (auto first = layer_of.find(alias->second); first != layer_of.end()) {
            layers[first->second].tied.push_back(param.name == "weight" ? item.name : full);
            continue;
          }
        }
        layer_of.emplace(full, layers.size());
        QuantizableLayer layer;
        layer.name = param.name == "weight" ? item.name : full;
        layer.param = full;
        layer.module = item.name;
        layer.kind = kind;
        layer.weight = param.value;
        layers.push_back(std::move(layer));
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot list the model's layers: ", e.what()));
  }
  return layers;
}

absl::StatusOr<LayerHessian> CollectLayerHessian(torch::jit::Module& module,
                                                 const std::string& layer,
                                                 const std::vector<ModelInputs>& batches,
                                                 const CancelToken* cancel) {
  ASSIGN_OR_RETURN(std::vector<QuantizableLayer> layers, QuantizableLayers(module));
  const QuantizableLayer* target = nullptr;
  for (const QuantizableLayer& l : layers) {
    if (l.name == layer) target = &l;
  }
  if (target == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no layer \"", layer, "\" with a weight of 2 or more dimensions"));
  }
  Watch watch;
  watch.weight_data = target->weight.data_ptr();
  watch.weight_shape = target->weight.sizes().vec();
  watch.accumulator =
      std::make_unique<HessianAccumulator>(target->weight.numel() / target->weight.size(0));
  bool fused = false;
  try {
    fused = HasFusedFastPath(module);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the model's graphs: ", e.what()));
  }
  for (size_t b = 0; b < batches.size(); ++b) {
    if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
    try {
      // Under no_grad an nn.TransformerEncoderLayer runs as one fused
      // operator and its Linear layers never see their inputs.
      std::optional<UnfusedForward> unfused;
      std::optional<torch::NoGradGuard> no_grad;
      if (fused) {
        unfused.emplace(module);
      } else {
        no_grad.emplace();
      }
      ScopedWatch scoped(&watch);
      batches[b].Forward(module);
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration batch ", b, " does not fit the model: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration batch ", b, " does not fit the model: ", e.what()));
    }
    RETURN_IF_ERROR(watch.status);
  }
  if (watch.calls == 0) {
    if (!watch.other_ops.empty()) {
      return absl::UnimplementedError(absl::StrCat(
          "layer ", layer, "'s weight is only used by ", absl::StrJoin(watch.other_ops, ", "),
          "; inputs are collected for linear and conv2d (groups=1) only"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", layer, " did not run in the forward pass"));
  }
  LayerHessian result;
  result.kind = watch.kind;
  result.rows = watch.accumulator->rows();
  result.calls = watch.calls;
  ASSIGN_OR_RETURN(result.hessian, watch.accumulator->Hessian());
  return result;
}

absl::Status CheckFiniteHessian(const LayerHessian& h, const std::string& layer) {
  const std::string bad = DescribeNonFinite(h.hessian);
  if (bad.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("GPTQ Hessian of layer ", layer, "'s inputs has ", bad));
}

}  // namespace compress::engine
