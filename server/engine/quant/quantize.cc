#include "server/engine/quant/quantize.h"

#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/engine/common/runtime.h"
#include "server/engine/common/stats.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/perturbation.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/gptq.h"
#include "server/engine/quant/gptq_model.h"
#include "server/engine/quant/packing.h"
#include "server/engine/quant/quantizer.h"
#include "server/engine/search/bisection.h"
#include "server/engine/search/bit_allocation.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Frontier points kept in the report (evenly spaced in size, plus the
// chosen one): a 60-layer model has ~20,000.
constexpr size_t kMaxReportedFrontier = 200;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status CheckCancel(const CancelToken* cancel) {
  return cancel == nullptr ? absl::OkStatus() : cancel->Check();
}

absl::Status Validate(const QuantizeOptions& o) {
  if (o.model_path.empty()) return Invalid("model_path", "required");
  if (o.calibration_dataset.empty()) return Invalid("calibration_dataset", "required");
  if (o.output_dir.empty()) return Invalid("output_dir", "required");
  if (o.num_samples < 0) return Invalid("num_samples", "must be >= 0");
  if (o.batch_size < 1) return Invalid("batch_size", "must be >= 1");
  if (o.eval_samples < 0) return Invalid("eval_samples", "must be >= 0");
  if (!(o.trace_tolerance > 0)) return Invalid("trace_tolerance", "must be > 0");
  if (o.trace_max_probes < 2) return Invalid("trace_max_probes", "must be >= 2");
  if (o.candidate_bits.empty()) return Invalid("candidate_bits", "must not be empty");
  for (int b : o.candidate_bits) {
    if (b < 2 || b > 8) return Invalid("candidate_bits", absl::StrCat(b, " is not in 2..8"));
  }
  if (o.pins.has_value()) {
    for (const auto& [layer, bits] : *o.pins) {
      if (!((bits >= 2 && bits <= 8) || bits == 16 || bits == kFloatBits)) {
        return Invalid("pins", absl::StrCat(layer, ": ", bits, " bits is not 2..8, 16 or 32"));
      }
    }
  }
  if (o.omega.has_value() && *o.omega != QuantOmega::kTrace && !o.trace_per_param.empty()) {
    return Invalid("omega", absl::StrCat(QuantOmegaName(*o.omega),
                                         " sensitivity is computed in the job; a sensitivity "
                                         "report gives traces only"));
  }
  if (!(o.gptq_damping > 0)) return Invalid("gptq_damping", "must be > 0");
  if (o.gptq_block_size < 1) return Invalid("gptq_block_size", "must be >= 1");
  if (o.search == QuantSearch::kBisection) {
    if (o.eval_dataset.empty()) return Invalid("eval_dataset", "bisection needs eval data");
    if (o.tolerance.kind == QuantTolerance::Kind::kNone) {
      return Invalid("tolerance", "bisection needs an accuracy tolerance");
    }
  } else if (o.budget.kind == QuantBudget::Kind::kNone) {
    return Invalid("budget", "required unless the search is bisection");
  }
  if (o.budget.kind != QuantBudget::Kind::kNone && !(o.budget.value > 0)) {
    return Invalid("budget", "must be > 0");
  }
  if (o.tolerance.kind != QuantTolerance::Kind::kNone && !(o.tolerance.value >= 0)) {
    return Invalid("tolerance", "must be >= 0");
  }
  return absl::OkStatus();
}

// Renames the analysis' stages so that a QUANTIZE job shows "sensitivity".
class SensitivitySink : public ProgressSink {
 public:
  explicit SensitivitySink(ProgressSink* inner) : inner_(inner) {}
  void StageStart(const std::string&, int, int) override {}
  void StageEnd(const std::string&) override {}
  void Progress(const std::string&, int64_t done, int64_t total) override {
    inner_->Progress("sensitivity", done, total);
  }
  void Log(const std::string& level, const std::string& message) override {
    inner_->Log(level, message);
  }
  void PartialResult(const std::string& key, const std::string& json) override {
    inner_->PartialResult(key, json);
  }

 private:
  ProgressSink* inner_;
};

struct Layer {
  std::string name;
  std::string kind;
  std::string param_name;  // "<name>.weight"
  torch::Tensor weight;    // folded float weight (the module's own tensor)
  int64_t numel = 0;
  int64_t scale_count = 0;  // scales (= zero points) per quantized tensor
  int64_t macs = 0;
  double trace_per_param = 0;   // kTrace
  std::map<int, double> error;  // ‖δ(b)‖² per width the search may pick
  std::map<int, double> omega;  // Ω(b) per width the search may pick
};

// Calibration examples that compute or price a perturbation.
struct CalibrationFold {
  torch::Tensor inputs, targets;
  std::vector<torch::Tensor> batches;  // inputs in batches of batch_size
  double weight = 1;                   // examples / all calibration examples
  std::unique_ptr<PerturbationModel> model;  // kQuadratic
};

std::string KindOf(const torch::jit::Module& root, const std::string& path) {
  for (const auto& item : root.named_modules()) {
    if (item.name == path) return item.value.type()->name()->name();
  }
  return "";
}

// Bits of storage of one layer at `bits`: packed codes plus a float32 scale
// and a uint8 zero point per channel or group (as WritePackedModel stores).
int64_t SizeBits(const Layer& l, int bits) {
  if (bits >= 16) return l.numel * 32;  // kept in float32
  return 8 * (PackedBytes(l.numel, bits) + l.scale_count * 5);
}

// Everything needed to turn a bit assignment into a quantized model.
struct Context {
  const QuantizeOptions* options;
  torch::jit::Module folded;  // float, BatchNorm folded
  std::vector<Layer> layers;
  std::vector<torch::Tensor> calibration;  // input batches
  QuantizerSpec spec;                      // bits set per layer
  ProgressSink* sink;
  const CancelToken* cancel;
};

struct Quantized {
  torch::jit::Module module;
  std::map<std::string, QuantizedTensor> tensors;  // by layer name
  std::map<std::string, LayerQuantResult> gptq;    // GPTQ only
};

absl::StatusOr<Quantized> QuantizeModel(const Context& c, const std::map<std::string, int>& bits) {
  std::map<std::string, int> low;
  for (const auto& [name, b] : bits) {
    if (b < 16) low[name] = b;
  }
  Quantized q;
  if (c.options->gptq) {
    GptqOptions g;
    g.damp_percent = c.options->gptq_damping;
    g.block_size = c.options->gptq_block_size;
    g.act_order = c.options->gptq_act_order;
    ASSIGN_OR_RETURN(GptqModelResult r, GptqQuantizeModel(c.folded, c.calibration, low, c.spec, g,
                                                          c.sink, c.cancel));
    q.module = r.module;
    for (LayerQuantResult& l : r.layers) {
      q.tensors[l.name] = l.quantized;
      q.gptq[l.name] = std::move(l);
    }
    return q;
  }
  try {
    q.module = c.folded.clone();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot copy the model: ", e.what_without_backtrace()));
  }
  ASSIGN_OR_RETURN(std::vector<QuantizableLayer> targets, QuantizableLayers(q.module));
  for (const QuantizableLayer& t : targets) {
    auto it = low.find(t.name);
    if (it == low.end()) continue;
    RETURN_IF_ERROR(CheckCancel(c.cancel));
    QuantizerSpec spec = c.spec;
    spec.bits = it->second;
    ASSIGN_OR_RETURN(QuantizedTensor qt, Quantize(t.weight.detach(), spec));
    ASSIGN_OR_RETURN(torch::Tensor w, Dequantize(qt));
    {
      torch::NoGradGuard no_grad;
      t.weight.copy_(w.to(t.weight.device(), t.weight.scalar_type()));
    }
    q.tensors[t.name] = std::move(qt);
  }
  return q;
}

// The bits of `solution` by layer name.
std::map<std::string, int> ByName(const std::vector<Layer>& layers, const Solution& s) {
  std::map<std::string, int> bits;
  for (size_t i = 0; i < layers.size(); ++i) bits[layers[i].name] = s.bits[i];
  return bits;
}

int64_t PredictedBytes(const Solution& s, int64_t fixed_bytes) {
  return s.size_bits / 8 + fixed_bytes;
}

double AverageBits(const std::vector<Layer>& layers, const Solution& s) {
  double weighted = 0, numel = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    weighted += static_cast<double>(layers[i].numel) * std::min(s.bits[i], kFloatBits);
    numel += static_cast<double>(layers[i].numel);
  }
  return numel > 0 ? weighted / numel : 0;
}

}  // namespace

const char* QuantOmegaName(QuantOmega omega) {
  switch (omega) {
    case QuantOmega::kTrace:
      return "trace";
    case QuantOmega::kQuadratic:
      return "quadratic";
  }
  return "unknown";
}

const char* QuantSearchName(QuantSearch search) {
  switch (search) {
    case QuantSearch::kExact:
      return "exact";
    case QuantSearch::kPareto:
      return "pareto";
    case QuantSearch::kBisection:
      return "bisection";
    case QuantSearch::kUniform:
      return "uniform";
  }
  return "unknown";
}

absl::StatusOr<QuantizeReport> RunQuantization(const QuantizeOptions& o, ProgressSink* sink,
                                               const CancelToken* cancel) {
  const absl::Time start = absl::Now();
  NullProgressSink null_sink;
  if (sink == nullptr) sink = &null_sink;
  RETURN_IF_ERROR(Validate(o));
  RETURN_IF_ERROR(CheckCancel(cancel));
  std::error_code ec;
  if (!std::filesystem::is_directory(o.output_dir, ec)) {
    return Invalid("output_dir", absl::StrCat(o.output_dir, " is not a directory"));
  }

  QuantizeReport report;
  report.search = QuantSearchName(o.search);
  report.runtime = RuntimeDescription();

  // ------------------------------------------------------------ model, data
  ASSIGN_OR_RETURN(torch::jit::Module original, LoadModel(o.model_path, o.device));
  ASSIGN_OR_RETURN(torch::jit::Module folded, FoldBatchNorm(original));
  try {
    for (const auto& p : original.named_parameters(true)) {
      report.bytes_before += p.value.numel() * static_cast<int64_t>(p.value.element_size());
    }
    for (const auto& b : original.named_buffers(true)) {
      report.bytes_before += b.value.numel() * static_cast<int64_t>(b.value.element_size());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  auto load = [&o](const std::string& id, int64_t n) {
    return IsBuiltinDataset(id) ? LoadBuiltinDataset(id, n, o.idx_dir) : LoadDataset(id, n);
  };
  ASSIGN_OR_RETURN(LoadedDataset calibration, load(o.calibration_dataset, o.num_samples));
  torch::Device device(o.device);
  calibration.inputs = calibration.inputs.to(device);
  if (calibration.targets.defined()) calibration.targets = calibration.targets.to(device);
  std::optional<LoadedDataset> eval;
  if (!o.eval_dataset.empty()) {
    ASSIGN_OR_RETURN(LoadedDataset e, load(o.eval_dataset, o.eval_samples));
    e.inputs = e.inputs.to(device);
    eval = std::move(e);
    report.eval_examples = eval->inputs.size(0);
  }

  Context c;
  c.options = &o;
  c.folded = folded;
  c.sink = sink;
  c.cancel = cancel;
  for (int64_t s = 0; s < calibration.inputs.size(0); s += o.batch_size) {
    c.calibration.push_back(
        calibration.inputs.narrow(0, s, std::min(o.batch_size, calibration.inputs.size(0) - s)));
  }
  ASSIGN_OR_RETURN(QuantGranularity granularity, ParseGranularity(o.granularity));
  c.spec.symmetric = o.symmetric;
  c.spec.granularity = granularity;
  c.spec.group_size = o.group_size;
  RETURN_IF_ERROR(ValidateSpec(c.spec));

  {
    ASSIGN_OR_RETURN(std::vector<QuantizableLayer> found, QuantizableLayers(folded));
    if (found.empty()) {
      return absl::FailedPreconditionError("the model has no layer with a weight to quantize");
    }
    InspectOptions inspect;
    std::vector<int64_t> shape = calibration.inputs.sizes().vec();
    shape[0] = 1;
    inspect.input_shape = shape;
    std::map<std::string, int64_t> macs;
    absl::StatusOr<Inspection> inspection = InspectModelFile(o.model_path, inspect, cancel);
    if (!inspection.ok()) return inspection.status();
    for (const LayerCost& l : inspection->layers) macs[l.name] = l.macs;
    for (const QuantizableLayer& f : found) {
      Layer l;
      l.name = f.name;
      l.kind = KindOf(folded, f.name);
      l.param_name = f.name.empty() ? "weight" : absl::StrCat(f.name, ".weight");
      l.weight = f.weight;
      l.numel = f.weight.numel();
      l.macs = macs[f.name];
      ASSIGN_OR_RETURN(auto matrix, MatrixShape(f.weight.sizes().vec(), c.spec));
      const int64_t groups = granularity == QuantGranularity::kGroup
                                 ? (matrix.second + o.group_size - 1) / o.group_size
                                 : 1;
      l.scale_count = granularity == QuantGranularity::kPerTensor ? 1 : matrix.first * groups;
      c.layers.push_back(std::move(l));
    }
  }
  std::vector<Layer>& layers = c.layers;

  // Widths the search may pick: the candidates and any pinned width.
  std::map<std::string, int> pins;
  if (o.pins.has_value()) {
    pins = *o.pins;
  } else {
    pins[layers.front().name] = 8;
    pins[layers.back().name] = 8;
  }
  std::set<int> widths(o.candidate_bits.begin(), o.candidate_bits.end());
  for (auto& [layer, bits] : pins) {
    if (bits == 16) bits = kFloatBits;
    if (bits < 16) widths.insert(bits);  // a pin may ask for any width
  }

  // ------------------------------------------------------------ sensitivity
  sink->StageStart("sensitivity", 0, 4);
  const QuantOmega omega =
      o.omega.value_or(o.trace_per_param.empty() ? kDefaultQuantOmega : QuantOmega::kTrace);
  const QuantPerturbation perturbation = o.perturbation.value_or(
      omega == QuantOmega::kTrace ? QuantPerturbation::kNearest : QuantPerturbation::kRounding);
  const bool gptq_delta = o.gptq && perturbation == QuantPerturbation::kRounding;
  report.omega = QuantOmegaName(omega);
  report.perturbation = gptq_delta ? "gptq" : "rtn";
  report.sensitivity_source = o.trace_per_param.empty() ? "computed" : "report";
  if (!o.trace_per_param.empty()) {
    for (Layer& l : layers) {
      auto it = o.trace_per_param.find(l.name);
      if (it == o.trace_per_param.end()) {
        return Invalid("trace_per_param",
                       absl::StrCat("the sensitivity report has no layer \"", l.name, "\""));
      }
      l.trace_per_param = it->second;
    }
  } else if (omega == QuantOmega::kTrace) {
    // Traces of the folded model: its weights are the ones quantized.
    const std::string folded_path = o.output_dir + "/.folded.pt";
    try {
      folded.save(folded_path);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("cannot save the folded model: ", e.what_without_backtrace()));
    }
    AnalyzeOptions a;
    a.model_path = folded_path;
    a.dataset = o.calibration_dataset;
    a.idx_dir = o.idx_dir;
    a.num_samples = o.num_samples;
    a.batch_size = o.batch_size;
    a.loss = o.loss;
    a.traces.tolerance = o.trace_tolerance;
    a.traces.max_probes = o.trace_max_probes;
    a.traces.min_probes = std::min(a.traces.min_probes, o.trace_max_probes);
    a.seed = o.seed;
    a.device = o.device;
    // Every batch's first-order graph stays cached: each probe is then one
    // double backward per batch instead of a forward, backward and double
    // backward (memory: the graphs of num_samples examples).
    a.max_cached_batches = static_cast<int>(c.calibration.size());
    SensitivitySink renamed(sink);
    absl::StatusOr<AnalyzeReport> analysis = RunAnalysis(a, &renamed, cancel);
    std::filesystem::remove(folded_path, ec);
    if (!analysis.ok()) return analysis.status();
    report.hvp_count = analysis->hvp_count;
    std::map<std::string, double> tpp;
    for (const LayerSensitivity& s : analysis->layers) tpp[s.name] = s.trace_per_param;
    for (Layer& l : layers) l.trace_per_param = tpp[l.name];
  }

  // δ_i(b) for every layer and width, priced as Ω says, one layer at a time
  // (only one layer's perturbations are alive). Round-to-nearest's δ does
  // not depend on the data: one fold, all of it. GPTQ fits its δ to the
  // inputs it sees, so on those same inputs ½δᵀHδ is biased low (the CNN's
  // classifier has 1,568 inputs and 256 calibration rows: GPTQ's 2-bit δ
  // changes the calibration loss by −0.0005 and the test loss by +0.073):
  // two folds, each half's δ priced on the other half.
  const int64_t examples = calibration.inputs.size(0);
  const int folds = gptq_delta && examples >= 2 ? 2 : 1;
  std::vector<CalibrationFold> fold(folds);
  for (int f = 0; f < folds; ++f) {
    const int64_t begin = examples * f / folds, end_ = examples * (f + 1) / folds;
    fold[f].inputs = calibration.inputs.narrow(0, begin, end_ - begin);
    if (calibration.targets.defined()) {
      fold[f].targets = calibration.targets.narrow(0, begin, end_ - begin);
    }
    fold[f].weight = static_cast<double>(end_ - begin) / static_cast<double>(examples);
    for (int64_t s = 0; s < fold[f].inputs.size(0); s += o.batch_size) {
      fold[f].batches.push_back(
          fold[f].inputs.narrow(0, s, std::min(o.batch_size, fold[f].inputs.size(0) - s)));
    }
    if (omega == QuantOmega::kTrace) continue;
    PerturbationModelOptions pm;
    // Every batch's first-order graph stays cached (as for the traces).
    pm.hvp.max_cached_batches = static_cast<int>(fold[f].batches.size());
    pm.seed = o.seed;
    std::vector<std::string> weights;
    for (const Layer& l : layers) weights.push_back(l.param_name);
    ASSIGN_OR_RETURN(PreparedBatches prepared, PrepareBatches(folded, fold[f].inputs,
                                                              fold[f].targets, o.batch_size,
                                                              o.loss));
    ASSIGN_OR_RETURN(fold[f].model,
                     PerturbationModel::Create(folded, std::move(prepared), weights, pm, cancel));
  }
  GptqOptions gptq_options;
  gptq_options.damp_percent = o.gptq_damping;
  gptq_options.block_size = o.gptq_block_size;
  gptq_options.act_order = o.gptq_act_order;
  const int64_t units = static_cast<int64_t>(layers.size() * widths.size());
  int64_t done = 0;
  for (Layer& l : layers) {
    // H of each fold's inputs to the float model (Ω must not depend on the
    // other layers' bits). Layers GPTQ cannot handle are rounded to nearest
    // there too (gptq_model.h).
    std::vector<LayerHessian> inputs;
    if (gptq_delta) {
      for (int f = 0; f < folds; ++f) {
        absl::StatusOr<LayerHessian> h = CollectLayerHessian(folded, l.name, fold[f].batches, cancel);
        if (h.ok()) {
          inputs.push_back(std::move(*h));
        } else if (absl::IsUnimplemented(h.status()) || absl::IsFailedPrecondition(h.status())) {
          inputs.clear();
          break;
        } else {
          return h.status();
        }
      }
    }
    const torch::Tensor weight = l.weight.detach();
    for (int b : widths) {
      RETURN_IF_ERROR(CheckCancel(cancel));
      QuantizerSpec spec = c.spec;
      spec.bits = b;
      // (δ, the folds that price it, with their weights).
      std::vector<std::pair<torch::Tensor, std::vector<std::pair<int, double>>>> deltas;
      if (!inputs.empty()) {
        for (int f = 0; f < folds; ++f) {
          ASSIGN_OR_RETURN(GptqResult g, GptqQuantize(weight, inputs[f].hessian, spec, gptq_options));
          const int other = folds == 1 ? f : 1 - f;
          deltas.push_back({g.dequantized, {{other, fold[other].weight}}});
        }
      } else {
        ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(weight, spec));
        ASSIGN_OR_RETURN(torch::Tensor rounded, Dequantize(q));
        std::vector<std::pair<int, double>> all;
        for (int f = 0; f < folds; ++f) all.push_back({f, fold[f].weight});
        deltas.push_back({rounded, all});
      }
      l.error[b] = 0;
      l.omega[b] = 0;
      for (auto& [rounded, pricing] : deltas) {
        const torch::Tensor delta =
            rounded.to(weight.device(), torch::kFloat64) - weight.to(torch::kFloat64);
        const double norm2 = delta.pow(2).sum().item<double>();
        for (const auto& [f, w] : pricing) {
          l.error[b] += w * norm2;
          if (fold[f].model == nullptr) {
            l.omega[b] += w * l.trace_per_param * norm2;
          } else {
            ASSIGN_OR_RETURN(PerturbationTerms t, fold[f].model->Terms(l.param_name, delta));
            l.omega[b] += w * t.quadratic;
          }
        }
      }
      sink->Progress("sensitivity", ++done, units);
    }
  }
  for (CalibrationFold& f : fold) {
    if (f.model == nullptr) continue;
    report.hvp_count += f.model->hvp_count();
    report.hvp_method = HvpMethodName(f.model->method());
    if (!f.model->fallback_reason().empty() && report.warnings.empty()) {
      const std::string why =
          absl::StrCat("exact Hessian-vector products are not available for this model (",
                       f.model->fallback_reason(), ")");
      report.warnings.push_back(why);
      sink->Log("WARNING", why);
    }
    f.model.reset();  // frees the cached graphs
  }
  sink->StageEnd("sensitivity");

  // ------------------------------------------------------------ search
  RETURN_IF_ERROR(CheckCancel(cancel));
  sink->StageStart("search", 1, 4);
  auto make_problem = [&](bool hessian) {
    SearchProblem p;
    for (const Layer& l : layers) {
      LayerChoices lc;
      lc.name = l.name;
      lc.numel = l.numel;
      for (int b : widths) {
        const double cost = hessian ? l.omega.at(b) : l.error.at(b);
        lc.choices.push_back({b, cost, SizeBits(l, b), l.macs * b * 32});
      }
      lc.choices.push_back({kFloatBits, 0.0, SizeBits(l, kFloatBits), l.macs * 32 * 32});
      p.layers.push_back(std::move(lc));
    }
    p.pins = pins;
    p.ties = o.ties;
    return p;
  };
  SearchProblem problem = make_problem(true);
  {
    absl::Status valid = ValidateProblem(problem);
    if (!valid.ok()) return Invalid("pins/ties", std::string(valid.message()));
  }

  // Bytes of the packed file besides the quantizable layers' weights: every
  // other parameter and buffer in float, and the header (measured by
  // writing the file once with every layer at 8 bits).
  int64_t fixed_bytes = 0;
  PackedModel skeleton;
  {
    std::set<std::string> weights;
    for (const Layer& l : layers) weights.insert(l.param_name);
    for (const auto& p : folded.named_parameters(true)) {
      if (weights.count(p.name) == 0) skeleton.float_tensors[p.name] = p.value.detach().cpu();
    }
    for (const auto& b : folded.named_buffers(true)) {
      skeleton.float_tensors[b.name] = b.value.detach().cpu();
    }
    PackedModel probe = skeleton;
    int64_t data_bytes = 0;
    for (const auto& [name, t] : skeleton.float_tensors) {
      data_bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
    for (const Layer& l : layers) {
      QuantizerSpec spec = c.spec;
      spec.bits = 8;
      ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(l.weight.detach().cpu(), spec));
      probe.layers[l.name] = std::move(q);
      data_bytes += SizeBits(l, 8) / 8;
    }
    const std::string path = o.output_dir + "/.probe.safetensors";
    ASSIGN_OR_RETURN(PackedFileInfo info,
                     WritePackedModel(probe, path, o.output_dir + "/.probe.json"));
    std::filesystem::remove(path, ec);
    std::filesystem::remove(o.output_dir + "/.probe.json", ec);
    fixed_bytes = info.file_bytes - data_bytes;  // header
    for (const auto& [name, t] : skeleton.float_tensors) {
      fixed_bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }

  Budget budget;
  switch (o.budget.kind) {
    case QuantBudget::Kind::kAverageBits:
      budget = Budget::AverageBits(o.budget.value);
      break;
    case QuantBudget::Kind::kModelBytes:
      budget = Budget::SizeBits(
          std::max<int64_t>(0, 8 * (static_cast<int64_t>(o.budget.value) - fixed_bytes)));
      break;
    case QuantBudget::Kind::kBops:
      budget = Budget::Bops(static_cast<int64_t>(o.budget.value));
      break;
    case QuantBudget::Kind::kNone:
      break;
  }

  // The default pins (first and last layer at 8 bits, as HAWQ does) are for
  // small layers; when they alone break the budget (the CNN's classifier
  // holds 46% of its weights) they are dropped, and the report says so.
  if (!o.pins.has_value() && o.budget.kind != QuantBudget::Kind::kNone &&
      o.search != QuantSearch::kBisection) {
    SearchOptions so;
    ASSIGN_OR_RETURN(Solution pinned, SolveExact(problem, budget, so));
    if (!pinned.budget_met) {
      const std::string why = absl::StrCat(
          "the default pins (", layers.front().name, " and ", layers.back().name,
          " at 8 bits) do not fit the budget; searching without them");
      report.warnings.push_back(why);
      sink->Log("WARNING", why);
      pins.clear();
      problem = make_problem(true);
    }
  }
  report.pins = pins;

  auto evaluate = [&](const std::map<std::string, int>& bits) -> absl::StatusOr<double> {
    ASSIGN_OR_RETURN(Quantized q, QuantizeModel(c, bits));
    return TopOneAccuracy(q.module, eval->inputs, eval->targets);
  };
  auto point = [&](const Solution& s) {
    QuantPoint p;
    p.weight_bytes = PredictedBytes(s, fixed_bytes);
    p.average_bits = AverageBits(layers, s);
    p.cost = s.cost;
    return p;
  };

  Solution chosen;
  if (o.search == QuantSearch::kBisection) {
    // The chain from every layer at the lowest candidate to every layer at
    // the highest, raising layers in decreasing order of Ω(low).
    const int low = *std::min_element(o.candidate_bits.begin(), o.candidate_bits.end());
    const int high = *std::max_element(o.candidate_bits.begin(), o.candidate_bits.end());
    std::vector<double> sensitivity;
    for (const Layer& l : layers) sensitivity.push_back(l.omega.at(low));
    ASSIGN_OR_RETURN(std::vector<Solution> chain,
                     SensitivityOrderedConfigs(problem, sensitivity, low, high));
    ASSIGN_OR_RETURN(double base, TopOneAccuracy(original, eval->inputs, eval->targets));
    report.accuracy_before = base;
    const double min_accuracy = o.tolerance.kind == QuantTolerance::Kind::kMaxDropPoints
                                    ? base - o.tolerance.value
                                    : base * (1 - o.tolerance.value);
    sink->StageEnd("search");
    sink->StageStart("evaluation", 2, 4);
    int64_t measured = 0;
    const int64_t expected =
        2 + static_cast<int64_t>(std::ceil(std::log2(static_cast<double>(chain.size()))));
    AccuracyFn fn = [&](const Assignment& a) -> absl::StatusOr<double> {
      RETURN_IF_ERROR(CheckCancel(cancel));
      Solution s;
      s.bits = a;
      ASSIGN_OR_RETURN(double acc, evaluate(ByName(layers, s)));
      sink->Progress("evaluation", ++measured, std::max(expected, measured));
      sink->Log("INFO", absl::StrFormat("measured %.2f%% top-1 at %.2f average bits", acc,
                                        AverageBits(layers, s)));
      return acc;
    };
    ASSIGN_OR_RETURN(BisectionResult r, AccuracyBisection(chain, fn, min_accuracy));
    chosen = r.config;
    report.tolerance_met = r.met;
    for (const BisectionPoint& m : r.measured) {
      QuantPoint p = point(chain[m.index]);
      p.accuracy = m.accuracy;
      p.chosen = m.index == r.index;
      report.measured.push_back(p);
    }
    sink->StageEnd("evaluation");
  } else if (o.search == QuantSearch::kUniform) {
    ASSIGN_OR_RETURN(chosen, UniformForBudget(problem, budget));
  } else {
    SearchOptions so;
    ASSIGN_OR_RETURN(Frontier frontier, ParetoFrontier(problem, budget.resource, so));
    ASSIGN_OR_RETURN(int64_t limit, ResourceLimit(problem, budget));
    std::optional<size_t> at = frontier.PickAtBudget(limit);
    if (o.search == QuantSearch::kExact) {
      ASSIGN_OR_RETURN(chosen, SolveExact(problem, budget, so));
    } else if (at.has_value()) {
      chosen = frontier.SolutionAt(*at);
    } else {
      ASSIGN_OR_RETURN(chosen, SolveExact(problem, budget, so));  // least resource
    }
    report.search_exact = frontier.exact() && chosen.exact;
    const std::vector<FrontierPoint>& points = frontier.points();
    const size_t step = std::max<size_t>(1, points.size() / kMaxReportedFrontier);
    for (size_t i = 0; i < points.size(); ++i) {
      const bool is_chosen = at.has_value() && i == *at;
      if (i % step != 0 && !is_chosen && i + 1 != points.size()) continue;
      QuantPoint p = point(frontier.SolutionAt(i));
      p.chosen = is_chosen;
      report.frontier.push_back(p);
    }
    sink->Log("INFO", absl::StrFormat("%d-point Pareto frontier of (%s, sensitivity)",
                                      points.size(), ResourceName(budget.resource)));
  }
  report.budget_met = chosen.budget_met;
  report.average_bits = AverageBits(layers, chosen);
  report.bops = chosen.bops;
  report.predicted_bytes = PredictedBytes(chosen, fixed_bytes);
  if (o.search != QuantSearch::kBisection) sink->StageEnd("search");

  // ------------------------------------------------------------ rounding
  RETURN_IF_ERROR(CheckCancel(cancel));
  sink->StageStart("rounding", 2, 4);
  const std::map<std::string, int> bits = ByName(layers, chosen);
  ASSIGN_OR_RETURN(Quantized result, QuantizeModel(c, bits));
  sink->StageEnd("rounding");

  // ------------------------------------------------------------ outputs
  report.model_path = o.output_dir + "/model.pt";
  report.weights_path = o.output_dir + "/weights.safetensors";
  report.manifest_path = o.output_dir + "/manifest.json";
  try {
    result.module.save(report.model_path);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot save the quantized model: ", e.what_without_backtrace()));
  }
  PackedModel packed = skeleton;
  for (const Layer& l : layers) {
    auto it = result.tensors.find(l.name);
    if (it != result.tensors.end()) {
      QuantizedTensor q = it->second;
      q.codes = q.codes.cpu();
      q.params.scale = q.params.scale.cpu();
      q.params.zero_point = q.params.zero_point.cpu();
      packed.layers[l.name] = std::move(q);
    } else {
      packed.float_tensors[l.param_name] = l.weight.detach().cpu();
    }
  }
  ASSIGN_OR_RETURN(PackedFileInfo info,
                   WritePackedModel(packed, report.weights_path, report.manifest_path));
  report.bytes_after = info.file_bytes;

  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    QuantizedLayerReport lr;
    lr.name = l.name;
    lr.kind = l.kind;
    lr.numel = l.numel;
    lr.macs = l.macs;
    lr.bits = chosen.bits[i];
    lr.pinned = pins.count(l.name) > 0;
    lr.trace_per_param = l.trace_per_param;
    for (int b : o.candidate_bits) {
      lr.omega[b] = l.omega.at(b);
      lr.squared_error[b] = l.error.at(b);
    }
    lr.bytes_before = l.numel * 4;
    lr.bytes_after = SizeBits(l, lr.bits) / 8;
    lr.gptq_error = std::nan("");
    lr.rtn_error = std::nan("");
    if (lr.bits >= 16) {
      lr.rounding = "float";
    } else if (auto g = result.gptq.find(l.name); g != result.gptq.end()) {
      lr.rounding = g->second.method;
      lr.note = g->second.note;
      lr.gptq_error = g->second.gptq_error;
      lr.rtn_error = g->second.rtn_error;
    } else {
      lr.rounding = "rtn";
    }
    report.layers.push_back(std::move(lr));
  }

  // ------------------------------------------------------------ evaluation
  torch::Tensor chosen_correct;  // per eval example, for the paired tests
  if (eval.has_value()) {
    RETURN_IF_ERROR(CheckCancel(cancel));
    sink->StageStart("evaluation", 3, 4);
    if (!report.accuracy_before.has_value()) {
      ASSIGN_OR_RETURN(double before, TopOneAccuracy(original, eval->inputs, eval->targets));
      report.accuracy_before = before;
    }
    // The saved file, reloaded: what users get is what is reported.
    ASSIGN_OR_RETURN(torch::jit::Module saved, LoadModel(report.model_path, o.device));
    ASSIGN_OR_RETURN(chosen_correct, TopOneCorrect(saved, eval->inputs, eval->targets));
    report.accuracy_after = PercentTrue(chosen_correct);
    sink->Progress("evaluation", 1, 3);
  }

  // ------------------------------------------------------------ baselines
  // At the chosen configuration's size: uniform bits, and the same exact
  // search with ‖δ(b)‖² alone (no Hessian; the same δ as Ω's).
  {
    Budget same = Budget::SizeBits(chosen.size_bits);
    std::vector<std::pair<std::string, absl::StatusOr<Solution>>> runs;
    runs.emplace_back("uniform", UniformForBudget(problem, same));
    runs.emplace_back("no_hessian", SolveExact(make_problem(false), same));
    int index = 1;
    for (auto& [name, solution] : runs) {
      RETURN_IF_ERROR(CheckCancel(cancel));
      if (!solution.ok()) return solution.status();
      QuantBaseline b;
      b.name = name;
      b.bits = ByName(layers, *solution);
      b.average_bits = AverageBits(layers, *solution);
      b.weight_bytes = PredictedBytes(*solution, fixed_bytes);
      ASSIGN_OR_RETURN(Solution with_hessian, EvaluateAssignment(problem, solution->bits));
      b.cost = with_hessian.cost;
      if (eval.has_value()) {
        ASSIGN_OR_RETURN(Quantized q, QuantizeModel(c, b.bits));
        ASSIGN_OR_RETURN(torch::Tensor correct, TopOneCorrect(q.module, eval->inputs,
                                                              eval->targets));
        b.accuracy = PercentTrue(correct);
        b.chosen_only_correct = (chosen_correct & ~correct).sum().item<int64_t>();
        b.baseline_only_correct = (correct & ~chosen_correct).sum().item<int64_t>();
        b.p_value = McNemarExactP(b.chosen_only_correct, b.baseline_only_correct);
        sink->Progress("evaluation", ++index, 3);
      }
      report.baselines.push_back(std::move(b));
    }
    if (eval.has_value()) sink->StageEnd("evaluation");
  }
  report.wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return report;
}

}  // namespace compress::engine
