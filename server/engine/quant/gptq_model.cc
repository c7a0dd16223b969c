#include "server/engine/quant/gptq_model.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/calibration.h"
#include "server/util/status_macros.h"

namespace compress::engine {

absl::StatusOr<GptqModelResult> GptqQuantizeModel(
    const torch::jit::Module& module, const std::vector<ModelInputs>& batches,
    const std::map<std::string, int>& bits, const QuantizerSpec& spec, const GptqOptions& options,
    ProgressSink* progress, const CancelToken* cancel) {
  for (const auto& [name, b] : bits) {
    QuantizerSpec s = spec;
    s.bits = b;
    absl::Status valid = ValidateSpec(s);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", name, ": ", valid.message()));
    }
  }
  if (spec.channel_axis != 0) {
    return absl::InvalidArgumentError("weights are quantized per channel_axis 0");
  }
  GptqModelResult result;
  ASSIGN_OR_RETURN(result.module, CloneKeepingTies(module));
  try {
    result.module.eval();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot clone the model: ", e.what()));
  }
  ASSIGN_OR_RETURN(std::vector<QuantizableLayer> all, QuantizableLayers(result.module));
  std::vector<QuantizableLayer> todo;
  for (const QuantizableLayer& l : all) {
    if (bits.count(l.name) > 0) todo.push_back(l);
  }
  if (todo.size() != bits.size()) {
    for (const auto& [name, b] : bits) {
      bool found = false;
      for (const QuantizableLayer& l : todo) found = found || l.name == name;
      if (!found) {
        return absl::InvalidArgumentError(
            absl::StrCat("bits names layer \"", name,
                         "\", which is not a module with a weight of 2+ dimensions"));
      }
    }
  }

  const int64_t total = static_cast<int64_t>(todo.size());
  if (progress != nullptr) progress->Progress("gptq", 0, total);
  for (int64_t i = 0; i < total; ++i) {
    const QuantizableLayer& layer = todo[i];
    if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
    LayerQuantResult r;
    r.name = layer.name;
    r.bits = bits.at(layer.name);
    QuantizerSpec s = spec;
    s.bits = r.bits;
    absl::StatusOr<LayerHessian> h =
        CollectLayerHessian(result.module, layer.name, batches, cancel);
    if (h.ok()) {
      RETURN_IF_ERROR(CheckFiniteHessian(*h, layer.name));
      r.kind = h->kind;
      r.method = "gptq";
      r.calibration_rows = h->rows;
      ASSIGN_OR_RETURN(GptqResult g, GptqQuantize(layer.weight, h->hessian, s, options));
      ASSIGN_OR_RETURN(QuantizedTensor rtn, Quantize(layer.weight, s));
      ASSIGN_OR_RETURN(torch::Tensor rtn_weight, Dequantize(rtn));
      ASSIGN_OR_RETURN(ReconstructionError ge,
                       OutputError(layer.weight, g.dequantized, h->hessian));
      ASSIGN_OR_RETURN(ReconstructionError re, OutputError(layer.weight, rtn_weight, h->hessian));
      r.gptq_error = ge.relative;
      r.rtn_error = re.relative;
      r.dead_columns = g.dead_columns;
      r.quantized = std::move(g.quantized);
      try {
        torch::NoGradGuard no_grad;
        layer.weight.copy_(g.dequantized);
      } catch (const std::exception& e) {
        return absl::InternalError(
            absl::StrCat("cannot write the quantized weight of ", layer.name, ": ", e.what()));
      }
    } else if (absl::IsUnimplemented(h.status()) || absl::IsFailedPrecondition(h.status())) {
      r.method = "rtn";
      r.note = std::string(h.status().message());
      ASSIGN_OR_RETURN(r.quantized, Quantize(layer.weight, s));
      ASSIGN_OR_RETURN(torch::Tensor w, Dequantize(r.quantized));
      try {
        torch::NoGradGuard no_grad;
        layer.weight.copy_(w);
      } catch (const std::exception& e) {
        return absl::InternalError(
            absl::StrCat("cannot write the quantized weight of ", layer.name, ": ", e.what()));
      }
    } else {
      return h.status();
    }
    if (progress != nullptr) {
      progress->Log(r.method == "gptq" ? "INFO" : "WARNING",
                    r.method == "gptq"
                        ? absl::StrFormat("%s: %d bits, GPTQ error %.4g vs RTN %.4g", r.name,
                                          r.bits, r.gptq_error, r.rtn_error)
                        : absl::StrCat(r.name, ": ", r.bits, " bits round-to-nearest: ", r.note));
      progress->Progress("gptq", i + 1, total);
    }
    result.layers.push_back(std::move(r));
  }
  return result;
}

}  // namespace compress::engine
