#include "server/engine/model/model_info.h"

#include <ATen/record_function.h>
#include <torch/script.h>

#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/engine/data/inputs.h"
#include "server/engine/model/model.h"
#include "server/engine/model/unfused_forward.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

std::vector<int64_t> ToVector(c10::IntArrayRef sizes) {
  return std::vector<int64_t>(sizes.begin(), sizes.end());
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t Bytes(const at::Tensor& t) {
  return static_cast<int64_t>(t.numel()) *
         static_cast<int64_t>(t.element_size());
}

ModelSummary Summarize(const torch::jit::Module& module) {
  ModelSummary summary;
  const std::map<std::string, std::string> aliases = TiedAliases(module);
  for (const auto& [alias, first] : aliases) summary.tied[first].push_back(alias);
  for (const auto& item : module.named_modules()) {
    LayerInfo layer;
    for (const auto& param : item.value.named_parameters(/*recurse=*/false)) {
      ParameterInfo info;
      info.name = item.name.empty() ? param.name
                                    : absl::StrCat(item.name, ".", param.name);
      info.shape = ToVector(param.value.sizes());
      info.numel = param.value.numel();
      info.dtype = DtypeName(param.value.scalar_type());
      if (auto it = aliases.find(info.name); it != aliases.end()) {
        info.tied_to = it->second;
      } else {
        layer.numel += info.numel;
      }
      layer.parameters.push_back(std::move(info));
    }
    if (layer.parameters.empty()) continue;
    layer.name = item.name;
    // Qualified names look like "__torch__.torch.nn.modules.conv.Conv2d" or
    // carry a "___torch_mangle_N" atom; the last atom is the class name.
    layer.kind = item.value.type()->name()->name();
    summary.layers.push_back(std::move(layer));
  }
  for (const auto& param : module.named_parameters(/*recurse=*/true)) {
    if (aliases.count(param.name) > 0) continue;
    summary.num_parameters += param.value.numel();
    summary.model_bytes += Bytes(param.value);
  }
  for (const auto& buffer : module.named_buffers(/*recurse=*/true)) {
    summary.model_bytes += Bytes(buffer.value);
  }
  return summary;
}

// ---------------------------------------------------------------------------
// MAC counting with RecordFunction.
//
// A thread-local RecordFunction callback sees every operator the forward pass
// dispatches on this thread. Only outermost operators are counted: aten::linear
// calls aten::addmm or aten::matmul, and aten::conv2d calls aten::_convolution,
// so counting nested operators would count the same work twice. An operator
// belongs to a layer when one of its tensor inputs shares its data pointer with
// one of the layer's parameters (views such as weight.t() share it too).
// aten::scaled_dot_product_attention (LibTorch 2.x's attention) counts as
// its two products. Not counted: aten::einsum and fused attention kernels. A model that holds
// those kernels runs in an UnfusedForward scope, so nn.TransformerEncoderLayer and
// nn.MultiheadAttention dispatch their Linear layers and attention products
// one by one instead of PyTorch's fused inference kernels: those are then
// counted and attributed to their layers. (Counting the fused operators
// instead would lump a whole encoder layer into one of its modules.)

// What an outermost operator contributes, from its inputs; completed with the
// output in the end callback.
struct OpContext : public at::ObserverContext {
  int layer = -1;               // index into Recorder::costs, -1 = none
  int64_t macs_per_output = 0;  // contraction length: MACs per output element
  int64_t fixed_macs = 0;       // MACs known from the inputs alone
  size_t num_returns = 0;       // 0 = unknown (take all outputs)
};

struct Recorder {
  std::unordered_map<const void*, int> owner;  // parameter data -> layer
  std::vector<LayerCost> costs;
  int64_t unattributed_macs = 0;
  int depth = 0;
};

// Set only on the thread running the forward pass: intra-op worker threads may
// inherit the thread-local callback with the rest of the thread-local state,
// and must not touch the recorder (their operators are nested anyway).
thread_local Recorder* tls_recorder = nullptr;

int64_t DimSize(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return 1;
  return t.size(dim);
}

// Fills the MAC fields of `ctx` for conv/linear/matmul operators; leaves them
// zero for everything else. `in` are the operator's arguments in schema order.
void SetMacs(absl::string_view op, c10::ArrayRef<const c10::IValue> in,
             OpContext* ctx) {
  auto tensor = [&in](size_t i) -> const at::Tensor* {
    if (i >= in.size() || !in[i].isTensor()) return nullptr;
    return &in[i].toTensor();
  };
  const at::Tensor* a = nullptr;
  const at::Tensor* b = nullptr;
  if (op == "aten::conv1d" || op == "aten::conv2d" || op == "aten::conv3d" ||
      op == "aten::convolution" || op == "aten::_convolution" ||
      op == "aten::conv_transpose1d" || op == "aten::conv_transpose2d" ||
      op == "aten::conv_transpose3d") {
    a = tensor(0);
    b = tensor(1);
    if (a == nullptr || b == nullptr || b->dim() < 1 || b->size(0) == 0) return;
    bool transposed = absl::StartsWith(op, "aten::conv_transpose");
    if ((op == "aten::convolution" || op == "aten::_convolution") &&
        in.size() > 6 && in[6].isBool()) {
      transposed = in[6].toBool();
    }
    // weight: [out, in/groups, k...] (transposed: [in, out/groups, k...]).
    const int64_t per_element = b->numel() / b->size(0);
    if (transposed) {
      ctx->fixed_macs = a->numel() * per_element;
    } else {
      ctx->macs_per_output = per_element;
    }
  } else if (op == "aten::linear") {
    if ((b = tensor(1)) != nullptr) ctx->macs_per_output = DimSize(*b, -1);
  } else if (op == "aten::matmul" || op == "aten::mm" || op == "aten::bmm" ||
             op == "aten::mv") {
    if ((a = tensor(0)) != nullptr) ctx->macs_per_output = DimSize(*a, -1);
  } else if (op == "aten::addmm" || op == "aten::baddbmm" ||
             op == "aten::addmv") {
    if ((a = tensor(1)) != nullptr) ctx->macs_per_output = DimSize(*a, -1);
  } else if (op == "aten::addbmm") {
    // Sums over the batch: the output has no batch dimension.
    a = tensor(1);
    b = tensor(2);
    if (a != nullptr && b != nullptr && b->dim() == 3) {
      ctx->fixed_macs = a->numel() * b->size(2);
    }
  } else if (op == "aten::dot" || op == "aten::vdot") {
    if ((a = tensor(0)) != nullptr) ctx->fixed_macs = a->numel();
  } else if (op == "aten::scaled_dot_product_attention") {
    // LibTorch 2.x: nn.MultiheadAttention's two attention products in one
    // operator. q [..., L, E], k [..., S, E], v [..., S, Ev]: q·kᵀ and
    // softmax·v take (q.numel() / E)·S·(E + Ev) MACs, as the bmm pair of
    // LibTorch 1.13 does.
    a = tensor(0);
    const at::Tensor* k = tensor(1);
    const at::Tensor* v = tensor(2);
    if (a != nullptr && k != nullptr && v != nullptr && a->dim() >= 2 && k->dim() >= 2 &&
        v->dim() >= 1 && DimSize(*a, -1) > 0) {
      ctx->fixed_macs =
          a->numel() / DimSize(*a, -1) * DimSize(*k, -2) * (DimSize(*a, -1) + DimSize(*v, -1));
    }
  }
}

std::unique_ptr<at::ObserverContext> OnOpStart(const at::RecordFunction& fn) {
  Recorder* recorder = tls_recorder;
  if (recorder == nullptr) return nullptr;
  if (recorder->depth++ > 0) return nullptr;

  auto ctx = std::make_unique<OpContext>();
  c10::ArrayRef<const c10::IValue> inputs = fn.inputs();
  // Boxed calls (the TorchScript interpreter's) pass the whole interpreter
  // stack; the operator's own arguments are the last ones.
  c10::optional<c10::FunctionSchema> schema = fn.operator_schema();
  if (schema.has_value()) {
    const size_t num_args = schema->arguments().size();
    if (inputs.size() > num_args) {
      inputs = inputs.slice(inputs.size() - num_args);
    }
    ctx->num_returns = schema->returns().size();
  }
  auto owner_of = [recorder](const at::Tensor& t) {
    if (!t.defined()) return -1;
    auto it = recorder->owner.find(t.data_ptr());
    return it == recorder->owner.end() ? -1 : it->second;
  };
  for (const c10::IValue& value : inputs) {
    if (value.isTensor()) {
      ctx->layer = owner_of(value.toTensor());
    } else if (value.isTensorList()) {
      // e.g. aten::cat, or aten::lstm with its weights as a list.
      for (const at::Tensor& t : value.toTensorVector()) {
        if ((ctx->layer = owner_of(t)) >= 0) break;
      }
    }
    if (ctx->layer >= 0) break;
  }
  SetMacs(fn.name(), inputs, ctx.get());
  if (ctx->layer < 0 && ctx->macs_per_output == 0 && ctx->fixed_macs == 0) {
    return nullptr;
  }
  return ctx;
}

void OnOpEnd(const at::RecordFunction& fn, at::ObserverContext* base) {
  Recorder* recorder = tls_recorder;
  if (recorder == nullptr) return;
  --recorder->depth;
  if (base == nullptr) return;
  const auto* ctx = static_cast<const OpContext*>(base);

  const std::vector<c10::IValue>& outputs = fn.outputs();
  size_t first = 0;
  if (ctx->num_returns > 0 && outputs.size() > ctx->num_returns) {
    first = outputs.size() - ctx->num_returns;
  }
  const at::Tensor* out = nullptr;
  for (size_t i = first; i < outputs.size(); ++i) {
    if (outputs[i].isTensor() && outputs[i].toTensor().defined()) {
      out = &outputs[i].toTensor();
      break;
    }
  }
  int64_t macs = ctx->fixed_macs;
  if (out != nullptr) macs += out->numel() * ctx->macs_per_output;

  if (ctx->layer < 0) {
    recorder->unattributed_macs += macs;
    return;
  }
  LayerCost& cost = recorder->costs[ctx->layer];
  cost.macs += macs;
  ++cost.calls;
  if (out != nullptr) cost.output_shape = ToVector(out->sizes());
}

// Installs the callback for the current thread; removes it when destroyed.
class ScopedRecorder {
 public:
  explicit ScopedRecorder(Recorder* recorder) {
    tls_recorder = recorder;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&OnOpStart, &OnOpEnd)
            .needsInputs(true)
            .needsOutputs(true)
            .scopes({at::RecordScope::FUNCTION}));
  }
  ~ScopedRecorder() {
    at::removeCallback(handle_);
    tls_recorder = nullptr;
  }
  ScopedRecorder(const ScopedRecorder&) = delete;
  ScopedRecorder& operator=(const ScopedRecorder&) = delete;

 private:
  at::CallbackHandle handle_;
};

const at::Tensor* FirstTensor(const c10::IValue& value) {
  if (value.isTensor()) return &value.toTensor();
  if (value.isTuple()) {
    for (const c10::IValue& v : value.toTupleRef().elements()) {
      if (const at::Tensor* t = FirstTensor(v)) return t;
    }
  } else if (value.isList()) {
    for (const c10::IValue& v : value.toListRef()) {
      if (const at::Tensor* t = FirstTensor(v)) return t;
    }
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict()) {
      if (const at::Tensor* t = FirstTensor(entry.value())) return t;
    }
  }
  return nullptr;
}

// The TorchScript interpreter prefixes errors with a serialized-code traceback;
// the operator's own complaint is on the last "RuntimeError: " line.
std::string TorchMessage(const std::string& what) {
  constexpr char kMarker[] = "RuntimeError: ";
  size_t pos = what.rfind(kMarker);
  if (pos == std::string::npos) return what;
  std::string message = what.substr(pos + sizeof(kMarker) - 1);
  while (!message.empty() &&
         (message.back() == '\n' || message.back() == ' ')) {
    message.pop_back();
  }
  return message;
}

// The ScalarType of an InspectOptions::input_dtype name.
absl::StatusOr<c10::ScalarType> InputScalarType(const std::string& name) {
  static constexpr c10::ScalarType kTypes[] = {
      c10::ScalarType::Float, c10::ScalarType::Double, c10::ScalarType::Half,
      c10::ScalarType::BFloat16, c10::ScalarType::Long, c10::ScalarType::Int,
      c10::ScalarType::Short, c10::ScalarType::Char, c10::ScalarType::Byte,
      c10::ScalarType::Bool};
  for (c10::ScalarType type : kTypes) {
    if (DtypeName(type) == name) return type;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "input_dtype \"", name, "\" is not one of ", absl::StrJoin(kInputDtypes, ", ")));
}

}  // namespace

absl::StatusOr<ModelSummary> DescribeModelFile(const std::string& path) {
  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(path, "cpu"));
  try {
    for (const auto& param : module.named_parameters(/*recurse=*/true)) {
      RETURN_IF_ERROR(CheckTensorInStorage(
          absl::StrCat("parameter ", param.name), param.value));
    }
    for (const auto& buffer : module.named_buffers(/*recurse=*/true)) {
      RETURN_IF_ERROR(CheckTensorInStorage(
          absl::StrCat("buffer ", buffer.name), buffer.value));
    }
    return Summarize(module);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot list the layers of ", path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot list the layers of ", path, ": ", e.what()));
  }
}

namespace {

// " (with attention_mask)" when the probe has named inputs, for messages.
std::string NamedProbeNames(const InspectOptions& options) {
  if (options.named_inputs.empty()) return "";
  std::vector<std::string> names;
  for (const NamedProbeInput& n : options.named_inputs) names.push_back(n.name);
  return absl::StrCat(" (with ", absl::StrJoin(names, ", "), ")");
}

}  // namespace

absl::StatusOr<Inspection> InspectModelFile(const std::string& path,
                                            const InspectOptions& options,
                                            const CancelToken* cancel) {
  if (options.input_shape.empty()) {
    return absl::InvalidArgumentError("input_shape is required");
  }
  ASSIGN_OR_RETURN(const c10::ScalarType input_type, InputScalarType(options.input_dtype));
  for (int64_t d : options.input_shape) {
    if (d <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_shape ", ShapeString(options.input_shape),
                       " must have positive dimensions"));
    }
  }
  if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(path, options.device));

  Inspection inspection;
  inspection.input_shape = options.input_shape;
  Recorder recorder;
  try {
    inspection.summary = Summarize(module);
    // named_modules() and Summarize() walk the modules in the same order, so
    // the k-th module with parameters is layer k.
    int index = 0;
    for (const auto& item : module.named_modules()) {
      bool owns = false;
      for (const auto& param : item.value.named_parameters(false)) {
        owns = true;
        if (param.value.numel() > 0) {
          recorder.owner.emplace(param.value.data_ptr(), index);
        }
      }
      if (owns) ++index;
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot list the layers of ", path, ": ", e.what_without_backtrace()));
  }
  for (const LayerInfo& layer : inspection.summary.layers) {
    LayerCost cost;
    cost.name = layer.name;
    cost.kind = layer.kind;
    cost.numel = layer.numel;
    recorder.costs.push_back(std::move(cost));
  }

  if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
  try {
    std::optional<UnfusedForward> unfused;
    std::optional<c10::InferenceMode> inference;
    if (HasFusedFastPath(module)) {
      unfused.emplace(module);
    } else {
      inference.emplace();
    }
    const c10::Device device(options.device);
    ModelInputs input(torch::zeros(options.input_shape,
                                   at::TensorOptions().dtype(input_type).device(device)));
    for (const NamedProbeInput& n : options.named_inputs) {
      ASSIGN_OR_RETURN(const c10::ScalarType type, InputScalarType(n.dtype));
      input.named.emplace_back(n.name,
                               torch::ones(n.shape, at::TensorOptions().dtype(type).device(device)));
    }
    c10::IValue output;
    const absl::Time start = absl::Now();
    {
      ScopedRecorder scoped(&recorder);
      output = input.Forward(module);
    }
    inspection.forward_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    if (const at::Tensor* t = FirstTensor(output)) {
      inspection.output_shape = ToVector(t->sizes());
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.input_dtype, " input of shape ", ShapeString(options.input_shape),
        NamedProbeNames(options), " does not fit the model: ",
        TorchMessage(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.input_dtype, " input of shape ", ShapeString(options.input_shape),
                     " does not fit the model: ", TorchMessage(e.what())));
  }

  inspection.layers = std::move(recorder.costs);
  inspection.unattributed_macs = recorder.unattributed_macs;
  inspection.total_macs = recorder.unattributed_macs;
  for (const LayerCost& cost : inspection.layers) {
    inspection.total_macs += cost.macs;
  }
  return inspection;
}

}  // namespace compress::engine
