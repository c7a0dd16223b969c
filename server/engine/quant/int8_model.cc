#include "server/engine/quant/int8_model.h"

#include <ATen/Context.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/fold_conv_bn.h>
#include <torch/csrc/jit/passes/quantization/finalize.h>
#include <torch/csrc/jit/passes/quantization/insert_observers.h>
#include <torch/csrc/jit/passes/quantization/insert_quant_dequant.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// PyTorch's MinMaxObserver (quint8, per tensor affine, quant range 0..255)
// and PerChannelMinMaxObserver (qint8, per channel symmetric, axis 0): the
// passes read `dtype`, `qscheme`, `ch_axis` and call calculate_qparams().
constexpr char kActivationSource[] = R"(
def forward(self, x: Tensor) -> Tensor:
    if x.numel() > 0:
        d = x.detach()
        self.min_val = torch.minimum(self.min_val, d.min())
        self.max_val = torch.maximum(self.max_val, d.max())
    return x

def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
    lo = torch.clamp(self.min_val, max=0.0)
    hi = torch.clamp(self.max_val, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1.1920928955078125e-07)
    zero_point = torch.clamp(0 - torch.round(lo / scale).long(), 0, 255)
    return scale.reshape([1]), zero_point.reshape([1])
)";

constexpr char kWeightSource[] = R"(
def forward(self, x: Tensor) -> Tensor:
    d = x.detach().flatten(1)
    self.min_val = d.amin(1)
    self.max_val = d.amax(1)
    return x

def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
    m = torch.maximum(-self.min_val, self.max_val)
    scale = torch.clamp(m / 127.5, min=1.1920928955078125e-07)
    return scale, torch.zeros_like(scale).long()
)";

torch::jit::Module Observer(const std::string& name, c10::ScalarType dtype, c10::QScheme qscheme,
                            const char* source) {
  torch::jit::Module m(c10::QualifiedName("__torch__.compressd." + name));
  m.register_attribute("training", c10::BoolType::get(), false);
  m.register_attribute("dtype", c10::IntType::get(), static_cast<int64_t>(dtype));
  m.register_attribute("qscheme", c10::IntType::get(), static_cast<int64_t>(qscheme));
  m.register_attribute("ch_axis", c10::IntType::get(), int64_t{0});
  const bool per_tensor = qscheme == c10::QScheme::PER_TENSOR_AFFINE;
  m.register_buffer("min_val", per_tensor ? torch::tensor(INFINITY) : torch::empty({0}));
  m.register_buffer("max_val", per_tensor ? torch::tensor(-INFINITY) : torch::empty({0}));
  m.define(source);
  return m;
}

// A CPU copy with types of its own (the passes add methods and attributes).
torch::jit::Module CpuCopy(const torch::jit::Module& module) {
  std::stringstream bytes;
  module.save(bytes);
  bytes.seekg(0);
  torch::jit::Module copy = torch::jit::load(bytes, torch::kCPU);
  copy.eval();
  return copy;
}

int64_t QuantizedOps(torch::jit::Module& module) {
  int64_t count = 0;
  for (const torch::jit::Node* node : module.get_method("forward").graph()->nodes()) {
    if (absl::StartsWith(node->kind().toQualString(), "quantized::")) ++count;
  }
  return count;
}

absl::StatusOr<torch::jit::Module> Calibrated(const torch::jit::Module& model,
                                              const std::vector<ModelInputs>& calibration) {
  torch::jit::Module folded = torch::jit::FoldConvBatchNorm(CpuCopy(model));
  torch::jit::QConfigDict qconfig;
  qconfig[""] = std::make_tuple(
      Observer("ActivationObserver", torch::kQUInt8, c10::QScheme::PER_TENSOR_AFFINE,
               kActivationSource),
      Observer("WeightObserver", torch::kQInt8, c10::QScheme::PER_CHANNEL_SYMMETRIC,
               kWeightSource));
  torch::jit::Module observed = torch::jit::InsertObservers(
      folded, "forward", qconfig, /*inplace=*/false, torch::jit::QuantType::STATIC);
  torch::NoGradGuard no_grad;
  for (const ModelInputs& batch : calibration) {
    try {
      batch.To(torch::kCPU).Forward(observed);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("the calibration data do not fit the model: ", e.what()));
    }
  }
  return observed;
}

}  // namespace

std::string QuantizedEngineName() {
  switch (at::globalContext().qEngine()) {
    case at::QEngine::ONEDNN:
      return "onednn";
    case at::QEngine::FBGEMM:
      return "fbgemm";
    case at::QEngine::QNNPACK:
      return "qnnpack";
    case at::QEngine::X86:
      return "x86";
    case at::QEngine::NoQEngine:
      return "none";
  }
  return "none";
}

absl::StatusOr<Int8ModelInfo> SaveInt8Model(const torch::jit::Module& model,
                                            const std::vector<ModelInputs>& calibration,
                                            const std::string& path) {
  Int8ModelInfo info;
  info.engine = QuantizedEngineName();
  if (info.engine == "none") {
    return absl::FailedPreconditionError("this LibTorch has no quantized engine");
  }
  try {
    ASSIGN_OR_RETURN(torch::jit::Module observed, Calibrated(model, calibration));
    torch::jit::Module quantized = torch::jit::InsertQuantDeQuant(
        observed, "forward", /*inplace=*/false, /*debug=*/false, torch::jit::QuantType::STATIC);
    quantized = torch::jit::Finalize(quantized, torch::jit::QuantType::STATIC, {});
    std::shared_ptr<torch::jit::Graph> graph = quantized.get_method("forward").graph();
    torch::jit::ConstantPropagation(graph);
    torch::jit::EliminateDeadCode(graph);
    info.quantized_ops = QuantizedOps(quantized);
    if (info.quantized_ops == 0) {
      return absl::FailedPreconditionError(
          "LibTorch's quantization passes found no layer to quantize in forward");
    }
    quantized.save(path);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot make the int8 model: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot make the int8 model: ", e.what()));
  }
  std::error_code ec;
  info.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ec.message()));
  return info;
}

absl::StatusOr<std::pair<double, double>> AlternateLatencyMs(torch::jit::Module& a,
                                                             torch::jit::Module& b,
                                                             const ModelInputs& inputs,
                                                             int warmup, int rounds) {
  c10::InferenceMode inference;
  const ModelInputs x = inputs.To(torch::kCPU);
  std::vector<double> times[2];
  torch::jit::Module* models[2] = {&a, &b};
  try {
    for (int r = 0; r < warmup + rounds; ++r) {
      for (int i = 0; i < 2; ++i) {
        const auto start = std::chrono::steady_clock::now();
        x.Forward(*models[i]);
        const std::chrono::duration<double, std::milli> ms =
            std::chrono::steady_clock::now() - start;
        if (r >= warmup) times[i].push_back(ms.count());
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot time the models: ", e.what()));
  }
  if (rounds <= 0) return absl::InvalidArgumentError("rounds must be positive");
  double median[2];
  for (int i = 0; i < 2; ++i) {
    std::sort(times[i].begin(), times[i].end());
    median[i] = times[i][times[i].size() / 2];
  }
  return std::make_pair(median[0], median[1]);
}

}  // namespace compress::engine
