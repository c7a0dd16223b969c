#include "server/engine/quant/quantize.h"

#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/engine/common/finite.h"
#include "server/engine/common/runtime.h"
#include "server/engine/common/stages.h"
#include "server/engine/common/stats.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/perturbation.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
#include "server/engine/prune/head_refit.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/compact_model.h"
#include "server/engine/quant/gptq.h"
#include "server/engine/quant/gptq_model.h"
#include "server/engine/quant/int8_model.h"
#include "server/engine/quant/packing.h"
#include "server/engine/quant/quantizer.h"
#include "server/engine/search/bisection.h"
#include "server/engine/search/bit_allocation.h"
#include "server/engine/search/pricing.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

// Frontier points kept in the report (evenly spaced in size, plus the
// chosen one): a 60-layer model has ~20,000.
constexpr size_t kMaxReportedFrontier = 200;
// Calibration folds over which quadratic Ω's standard error is taken.
constexpr int64_t kQuadraticFolds = 4;

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
  if (o.head_refit) {
    const QuantHeadRefit& h = *o.head_refit;
    if (h.iterations < 1 || h.iterations > 1000) {
      return Invalid("head_refit.iterations", "must be in 1..1000");
    }
    if (!(h.alpha >= 0 && h.alpha <= 1)) return Invalid("head_refit.alpha", "must be in [0, 1]");
    if (!(h.temperature > 0)) return Invalid("head_refit.temperature", "must be > 0");
    if (h.hessian != "auto" && !ParseHeadHessian(h.hessian).ok()) {
      return Invalid("head_refit.hessian", "must be auto, exact or kfac");
    }
  }
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
  std::string param_name;  // "<name>.weight", or the in_proj_weight's name
  // Module owning the weight (= name unless an attention's in_proj): an
  // ANALYZE report's traces and the inspection's MACs are per module.
  std::string module;
  torch::Tensor weight;    // folded float weight (the module's own tensor)
  std::vector<std::string> tied;  // later layers sharing `weight`
  int64_t numel = 0;
  int64_t scale_count = 0;  // scales (= zero points) per quantized tensor
  int64_t macs = 0;
  double trace_per_param = 0;     // kTrace
  double trace_se_per_param = 0;  // its Hutchinson standard error
  std::map<int, double> error;     // ‖δ(b)‖² per width the search may pick
  std::map<int, double> omega;     // Ω(b) per width the search may pick
  std::map<int, double> omega_se;  // its standard error over folds/probes
  std::map<int, double> price;     // what the search charges (pricing.h)
  bool fallback = false;           // price is κ·‖δ‖², not Ω
  std::string fallback_reason;
};

// Calibration examples that compute or price a perturbation.
struct CalibrationFold {
  ModelInputs inputs;
  torch::Tensor targets;
  std::vector<ModelInputs> batches;          // inputs in batches of batch_size
  double weight = 1;                         // examples / all calibration examples
  std::unique_ptr<PerturbationModel> model;  // kQuadratic
};

// Bits of storage of one layer at `bits`: packed codes plus a float32 scale
// and a uint8 zero point per channel or group (as WritePackedModel stores).
int64_t SizeBits(const Layer& l, int bits) {
  if (bits >= 16) return l.numel * 32;  // kept in float32
  return 8 * (PackedBytes(l.numel, bits) + l.scale_count * 5);
}

// Everything needed to turn a bit assignment into a quantized model.
struct Context {
  const QuantizeOptions* options = nullptr;
  torch::jit::Module folded;               // float, BatchNorm folded
  std::vector<ModelInputs> calibration;    // input batches
  QuantizerSpec spec;                      // bits set per layer
  ProgressSink* sink = nullptr;
  const CancelToken* cancel = nullptr;
};

struct Quantized {
  torch::jit::Module module;
  std::map<std::string, QuantizedTensor> tensors;  // by layer name
  std::map<std::string, LayerQuantResult> gptq;    // GPTQ only
};

GptqOptions GptqOptionsOf(const QuantizeOptions& o) {
  GptqOptions g;
  g.damp_percent = o.gptq_damping;
  g.block_size = o.gptq_block_size;
  g.act_order = o.gptq_act_order;
  return g;
}

absl::StatusOr<Quantized> QuantizeModel(const Context& c, const std::map<std::string, int>& bits) {
  std::map<std::string, int> low;
  for (const auto& [name, b] : bits) {
    if (b < 16) low[name] = b;
  }
  Quantized q;
  if (c.options->gptq) {
    ASSIGN_OR_RETURN(GptqModelResult r,
                     GptqQuantizeModel(c.folded, c.calibration, low, c.spec,
                                       GptqOptionsOf(*c.options), c.sink, c.cancel));
    q.module = r.module;
    for (LayerQuantResult& l : r.layers) {
      q.tensors[l.name] = l.quantized;
      q.gptq[l.name] = std::move(l);
    }
    return q;
  }
  ASSIGN_OR_RETURN(q.module, CloneKeepingTies(c.folded));
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

// Top-1 of the model quantized to `bits` on the eval data.
absl::StatusOr<double> QuantizedAccuracy(const Context& c, const std::map<std::string, int>& bits,
                                         const LoadedDataset& eval) {
  ASSIGN_OR_RETURN(Quantized q, QuantizeModel(c, bits));
  return TopOneAccuracy(q.module, eval.inputs, eval.targets);
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

QuantPoint PointOf(const std::vector<Layer>& layers, const Solution& s, int64_t fixed_bytes) {
  QuantPoint p;
  p.weight_bytes = PredictedBytes(s, fixed_bytes);
  p.average_bits = AverageBits(layers, s);
  p.cost = s.cost;
  return p;
}

// ---------------------------------------------------------------- before the stages

// Bytes of the parameters and buffers of `model` as stored (a tied tensor
// once).
absl::StatusOr<int64_t> StateBytes(const torch::jit::Module& model) {
  int64_t bytes = 0;
  try {
    const std::map<std::string, std::string> aliases = TiedAliases(model);
    for (const auto& p : model.named_parameters(true)) {
      if (aliases.count(p.name) > 0) continue;
      bytes += p.value.numel() * static_cast<int64_t>(p.value.element_size());
    }
    for (const auto& b : model.named_buffers(true)) {
      bytes += b.value.numel() * static_cast<int64_t>(b.value.element_size());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  return bytes;
}

absl::StatusOr<LoadedDataset> LoadData(const QuantizeOptions& o, const std::string& id, int64_t n) {
  return IsBuiltinDataset(id) ? LoadBuiltinDataset(id, n, o.idx_dir) : LoadDataset(id, n);
}

// `inputs` in batches of `batch_size` rows (the last one may be shorter).
std::vector<ModelInputs> Batches(const ModelInputs& inputs, int64_t batch_size) {
  std::vector<ModelInputs> batches;
  for (int64_t s = 0; s < inputs.examples(); s += batch_size) {
    batches.push_back(inputs.Narrow(s, std::min(batch_size, inputs.examples() - s)));
  }
  return batches;
}

// The quantizable layers of `folded` with their sizes, scale counts and
// MACs per example (the file inspected at one example shaped and typed as
// `inputs`: token ids stay integer).
absl::StatusOr<std::vector<Layer>> FindLayers(const torch::jit::Module& folded,
                                              const std::string& model_path,
                                              const QuantizerSpec& spec,
                                              const ModelInputs& inputs,
                                              const CancelToken* cancel) {
  ASSIGN_OR_RETURN(std::vector<QuantizableLayer> found, QuantizableLayers(folded));
  if (found.empty()) {
    return absl::FailedPreconditionError("the model has no layer with a weight to quantize");
  }
  InspectOptions inspect;
  SetProbeLike(inputs, &inspect);
  ASSIGN_OR_RETURN(Inspection inspection, InspectModelFile(model_path, inspect, cancel));
  std::map<std::string, int64_t> macs;
  for (const LayerCost& l : inspection.layers) macs[l.name] = l.macs;
  std::vector<Layer> layers;
  for (const QuantizableLayer& f : found) {
    Layer l;
    l.name = f.name;
    l.kind = f.kind;
    l.param_name = f.param;
    l.module = f.module;
    l.weight = f.weight;
    l.tied = f.tied;
    l.numel = f.weight.numel();
    // An attention module's MACs are its in_proj's: the attention products
    // read no parameter and out_proj is a module of its own.
    l.macs = macs[f.module];
    ASSIGN_OR_RETURN(auto matrix, MatrixShape(f.weight.sizes().vec(), spec));
    const int64_t groups = spec.granularity == QuantGranularity::kGroup
                               ? (matrix.second + spec.group_size - 1) / spec.group_size
                               : 1;
    l.scale_count = spec.granularity == QuantGranularity::kPerTensor ? 1 : matrix.first * groups;
    layers.push_back(std::move(l));
  }
  return layers;
}

// The caller's pins, or the first and the last layer at 8 bits; 16 bits
// means float.
std::map<std::string, int> InitialPins(const QuantizeOptions& o, const std::vector<Layer>& layers) {
  std::map<std::string, int> pins;
  if (o.pins.has_value()) {
    pins = *o.pins;
  } else {
    pins[layers.front().name] = 8;
    pins[layers.back().name] = 8;
  }
  for (auto& [layer, bits] : pins) {
    if (bits == 16) bits = kFloatBits;
  }
  return pins;
}

// Widths the search may pick: the candidates and any pinned width (a pin
// may ask for any width).
std::set<int> SearchWidths(const std::vector<int>& candidates,
                           const std::map<std::string, int>& pins) {
  std::set<int> widths(candidates.begin(), candidates.end());
  for (const auto& [layer, bits] : pins) {
    if (bits < 16) widths.insert(bits);
  }
  return widths;
}

// A job's model, data and layers: what the stages start from.
struct Prepared {
  torch::jit::Module original;
  Context context;  // the folded model, calibration batches, quantizer
  LoadedDataset calibration;
  std::optional<LoadedDataset> eval;
  std::vector<Layer> layers;        // the stages fill their traces, Ω and ‖δ‖²
  std::map<std::string, int> pins;  // before the search drops any
  std::set<int> widths;
};

// Loads and folds the model, loads the data onto the device and finds the
// quantizable layers. Sets the report's bytes_before and eval_examples.
absl::StatusOr<Prepared> Prepare(const QuantizeOptions& o, ProgressSink* sink,
                                 const CancelToken* cancel, QuantizeReport* report) {
  if (o.search == QuantSearch::kBisection && o.loss == LossKind::kLanguageModeling) {
    return absl::InvalidArgumentError(
        "search: bisection keeps a top-1 accuracy, which a language model (loss "
        "language_modeling) is not measured by; use a size budget");
  }
  Prepared p;
  ASSIGN_OR_RETURN(p.original, LoadModel(o.model_path, o.device));
  RETURN_IF_ERROR(CheckFiniteParameters(p.original, o.model_name));
  for (std::string& w : NonFiniteBuffers(p.original, o.model_name)) {
    sink->Log("WARNING", w);
    report->warnings.push_back(std::move(w));
  }
  ASSIGN_OR_RETURN(torch::jit::Module folded, FoldBatchNorm(p.original));
  // A BatchNorm's non-finite running statistics become non-finite weights.
  RETURN_IF_ERROR(CheckFiniteParameters(folded, o.model_name,
                                        " after folding BatchNorm into the layer before it"));
  ASSIGN_OR_RETURN(report->bytes_before, StateBytes(p.original));
  ASSIGN_OR_RETURN(p.calibration, LoadData(o, o.calibration_dataset, o.num_samples));
  RETURN_IF_ERROR(CheckFiniteData(p.calibration, o.calibration_name));
  torch::Device device(o.device);
  p.calibration.inputs = p.calibration.inputs.To(device);
  if (p.calibration.targets.defined()) {
    p.calibration.targets = p.calibration.targets.to(device);
  }
  if (!o.eval_dataset.empty()) {
    ASSIGN_OR_RETURN(LoadedDataset e, LoadData(o, o.eval_dataset, o.eval_samples));
    RETURN_IF_ERROR(CheckFiniteData(e, o.eval_name));
    e.inputs = e.inputs.To(device);
    p.eval = std::move(e);
    report->eval_examples = p.eval->inputs.examples();
  }

  Context& c = p.context;
  c.options = &o;
  c.folded = folded;
  c.sink = sink;
  c.cancel = cancel;
  c.calibration = Batches(p.calibration.inputs, o.batch_size);
  ASSIGN_OR_RETURN(c.spec.granularity, ParseGranularity(o.granularity));
  c.spec.symmetric = o.symmetric;
  c.spec.group_size = o.group_size;
  RETURN_IF_ERROR(ValidateSpec(c.spec));

  ASSIGN_OR_RETURN(p.layers, FindLayers(folded, o.model_path, c.spec, p.calibration.inputs,
                                        cancel));
  p.pins = InitialPins(o, p.layers);
  p.widths = SearchWidths(o.candidate_bits, p.pins);
  return p;
}

// ---------------------------------------------------------------- sensitivity

// Which Ω prices δ, and whether δ is GPTQ's (else round-to-nearest's).
struct Pricing {
  QuantOmega omega = kDefaultQuantOmega;
  bool gptq_delta = false;
};

Pricing PricingOf(const QuantizeOptions& o) {
  Pricing p;
  p.omega = o.omega.value_or(o.trace_per_param.empty() ? kDefaultQuantOmega : QuantOmega::kTrace);
  const QuantPerturbation perturbation = o.perturbation.value_or(
      p.omega == QuantOmega::kTrace ? QuantPerturbation::kNearest : QuantPerturbation::kRounding);
  p.gptq_delta = o.gptq && perturbation == QuantPerturbation::kRounding;
  return p;
}

// Tr(H_ii)/n_i of every layer, and its standard error, from the caller's
// ANALYZE report.
absl::Status TracesFromReport(const std::map<std::string, double>& trace_per_param,
                              const std::map<std::string, double>& std_error_per_param,
                              std::vector<Layer>* layers) {
  for (Layer& l : *layers) {
    if (auto se = std_error_per_param.find(l.module); se != std_error_per_param.end()) {
      l.trace_se_per_param = se->second;
    }
    auto it = trace_per_param.find(l.module);
    if (it == trace_per_param.end()) {
      return Invalid("trace_per_param",
                     absl::StrCat("the sensitivity report has no layer \"", l.module, "\""));
    }
    l.trace_per_param = it->second;
    RETURN_IF_ERROR(CheckFiniteValue(
        l.trace_per_param, absl::StrCat("the sensitivity report's trace of layer ", l.name)));
  }
  return absl::OkStatus();
}

// Hutchinson traces of the folded model (its weights are the ones
// quantized): RunAnalysis, traces only, on the calibration data.
absl::StatusOr<AnalyzeReport> AnalyzeFolded(const QuantizeOptions& o, const Context& c) {
  const std::string folded_path = o.output_dir + "/.folded.pt";
  try {
    c.folded.save(folded_path);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot save the folded model: ", e.what_without_backtrace()));
  }
  AnalyzeOptions a;
  a.model_path = folded_path;
  a.model_name = o.model_name;
  a.dataset = o.calibration_dataset;
  a.dataset_name = o.calibration_name;
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
  SensitivitySink renamed(c.sink);
  absl::StatusOr<AnalyzeReport> analysis = RunAnalysis(a, &renamed, c.cancel);
  std::error_code ec;
  std::filesystem::remove(folded_path, ec);
  return analysis;
}

// The calibration data in `count` contiguous folds, each with its batches
// and, for kQuadratic, a PerturbationModel of the folded model on it.
absl::StatusOr<std::vector<CalibrationFold>> MakeFolds(const QuantizeOptions& o, const Context& c,
                                                       const LoadedDataset& calibration,
                                                       const std::vector<Layer>& layers, int count,
                                                       QuantOmega omega) {
  const int64_t examples = calibration.inputs.examples();
  torch::jit::Module folded = c.folded;  // PrepareBatches runs it
  std::vector<CalibrationFold> fold(count);
  for (int f = 0; f < count; ++f) {
    const int64_t begin = examples * f / count, end_ = examples * (f + 1) / count;
    fold[f].inputs = calibration.inputs.Narrow(begin, end_ - begin);
    if (calibration.targets.defined()) {
      fold[f].targets = calibration.targets.narrow(0, begin, end_ - begin);
    }
    fold[f].weight = static_cast<double>(end_ - begin) / static_cast<double>(examples);
    fold[f].batches = Batches(fold[f].inputs, o.batch_size);
    if (omega == QuantOmega::kTrace) continue;
    PerturbationModelOptions pm;
    // Every batch's first-order graph stays cached (as for the traces).
    pm.hvp.max_cached_batches = static_cast<int>(fold[f].batches.size());
    pm.seed = o.seed;
    std::vector<std::string> weights;
    for (const Layer& l : layers) weights.push_back(l.param_name);
    ASSIGN_OR_RETURN(PreparedBatches prepared,
                     PrepareBatches(folded, fold[f].inputs, fold[f].targets, o.batch_size, o.loss,
                                    o.lm_ignore_id));
    ASSIGN_OR_RETURN(fold[f].model,
                     PerturbationModel::Create(folded, std::move(prepared), weights, pm, c.cancel));
  }
  return fold;
}

// H of each fold's inputs to layer `name` of the float model (Ω must not
// depend on the other layers' bits). Empty for a layer GPTQ cannot handle:
// it is rounded to nearest there too (gptq_model.h).
absl::StatusOr<std::vector<LayerHessian>> FoldHessians(const Context& c, const std::string& name,
                                                       const std::vector<CalibrationFold>& folds) {
  std::vector<LayerHessian> hessians;
  torch::jit::Module folded = c.folded;
  for (const CalibrationFold& f : folds) {
    absl::StatusOr<LayerHessian> h = CollectLayerHessian(folded, name, f.batches, c.cancel);
    if (h.ok()) {
      RETURN_IF_ERROR(CheckFiniteHessian(*h, name));
      hessians.push_back(std::move(*h));
    } else if (absl::IsUnimplemented(h.status()) || absl::IsFailedPrecondition(h.status())) {
      return std::vector<LayerHessian>();
    } else {
      return h.status();
    }
  }
  return hessians;
}

// A rounded weight, and the folds (with their weights) that price its δ.
struct Rounded {
  torch::Tensor weight;
  std::vector<std::pair<int, double>> pricing;
};

// The roundings of `weight` at `spec` whose δ Ω prices: GPTQ's on each
// fold's `hessians`, priced on the other fold; or, without them,
// round-to-nearest's, priced on every fold.
absl::StatusOr<std::vector<Rounded>> RoundForPricing(const torch::Tensor& weight,
                                                     const std::vector<LayerHessian>& hessians,
                                                     const std::vector<CalibrationFold>& folds,
                                                     const QuantizerSpec& spec,
                                                     const GptqOptions& gptq) {
  const int count = static_cast<int>(folds.size());
  std::vector<Rounded> rounded;
  if (!hessians.empty()) {
    for (int f = 0; f < count; ++f) {
      ASSIGN_OR_RETURN(GptqResult g, GptqQuantize(weight, hessians[f].hessian, spec, gptq));
      const int other = count == 1 ? f : 1 - f;
      rounded.push_back({g.dequantized, {{other, folds[other].weight}}});
    }
    return rounded;
  }
  ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(weight, spec));
  ASSIGN_OR_RETURN(torch::Tensor nearest, Dequantize(q));
  std::vector<std::pair<int, double>> all;
  for (int f = 0; f < count; ++f) all.push_back({f, folds[f].weight});
  rounded.push_back({nearest, all});
  return rounded;
}

// ‖δ(b)‖², Ω(b) and Ω's standard error of one layer at one width: Ω is the
// weighted mean over `rounded` and their pricing folds of Ω on each fold
// alone, its standard error their spread (MeanAndStdError), and for the
// trace form also the Hutchinson standard error times ‖δ‖².
absl::Status PriceWidth(const Layer& l, const torch::Tensor& weight,
                        const std::vector<Rounded>& rounded,
                        const std::vector<CalibrationFold>& folds, double* error, double* omega,
                        double* omega_se) {
  *error = 0;
  std::vector<std::pair<double, double>> per_fold;  // (Ω on the fold, weight)
  for (const Rounded& r : rounded) {
    const torch::Tensor delta =
        r.weight.to(weight.device(), torch::kFloat64) - weight.to(torch::kFloat64);
    const double norm2 = delta.pow(2).sum().item<double>();
    for (const auto& [f, w] : r.pricing) {
      *error += w * norm2;
      if (folds[f].model == nullptr) {
        per_fold.emplace_back(l.trace_per_param * norm2, w);
      } else {
        ASSIGN_OR_RETURN(PerturbationTerms t, folds[f].model->Terms(l.param_name, delta));
        per_fold.emplace_back(t.quadratic, w);
      }
    }
  }
  const WeightedMean m = MeanAndStdError(per_fold);
  *omega = m.mean;
  const double hutchinson = folds.front().model == nullptr ? l.trace_se_per_param * *error : 0;
  *omega_se = std::hypot(m.std_error, hutchinson);
  return absl::OkStatus();
}

// Ω(b) and ‖δ(b)‖² of `l` for every width; one unit of progress per width.
absl::Status PriceLayer(const Context& c, const Pricing& pricing,
                        const std::vector<CalibrationFold>& folds, const std::set<int>& widths,
                        const std::function<void()>& priced, Layer* l) {
  std::vector<LayerHessian> hessians;
  if (pricing.gptq_delta) {
    ASSIGN_OR_RETURN(hessians, FoldHessians(c, l->name, folds));
  }
  const GptqOptions gptq = GptqOptionsOf(*c.options);
  const torch::Tensor weight = l->weight.detach();
  for (int b : widths) {
    RETURN_IF_ERROR(CheckCancel(c.cancel));
    QuantizerSpec spec = c.spec;
    spec.bits = b;
    ASSIGN_OR_RETURN(std::vector<Rounded> rounded,
                     RoundForPricing(weight, hessians, folds, spec, gptq));
    RETURN_IF_ERROR(
        PriceWidth(*l, weight, rounded, folds, &l->error[b], &l->omega[b], &l->omega_se[b]));
    const std::string at = absl::StrCat(" of layer ", l->name, " at ", b, " bits");
    RETURN_IF_ERROR(CheckFiniteValue(l->error[b], absl::StrCat("the rounding error", at)));
    RETURN_IF_ERROR(CheckFiniteValue(l->omega[b], absl::StrCat("the sensitivity Ω", at)));
    priced();
  }
  return absl::OkStatus();
}

// Adds the folds' Hessian-vector products to the report (with a warning
// when exact products were not available) and frees their cached graphs.
void ReleaseFolds(ProgressSink* sink, std::vector<CalibrationFold>* folds, QuantizeReport* report) {
  for (CalibrationFold& f : *folds) {
    if (f.model == nullptr) continue;
    report->hvp_count += f.model->hvp_count();
    report->hvp_method = HvpMethodName(f.model->method());
    if (!f.model->fallback_reason().empty() && report->warnings.empty()) {
      const std::string why =
          absl::StrCat("exact Hessian-vector products are not available for this model (",
                       f.model->fallback_reason(), ")");
      report->warnings.push_back(why);
      sink->Log("WARNING", why);
    }
    f.model.reset();
  }
}

// Calibration folds: GPTQ's δ two (each half rounds, the other prices);
// quadratic Ω of round-to-nearest's δ four, so that Ω (their weighted mean,
// the same number one fold of all the data gives) has a standard error;
// the trace form one (its error is the Hutchinson one).
int FoldCount(const Pricing& pricing, int64_t examples) {
  if (pricing.gptq_delta) return examples >= 2 ? 2 : 1;
  if (pricing.omega == QuantOmega::kQuadratic) {
    return static_cast<int>(std::clamp<int64_t>(examples, 1, kQuadraticFolds));
  }
  return 1;
}

// The search's price of every layer (search/pricing.h), with a warning that
// names every layer priced by the fallback.
void ApplyPricing(ProgressSink* sink, std::vector<Layer>* layers, QuantizeReport* report) {
  std::vector<LayerSensitivityEstimate> estimates;
  for (const Layer& l : *layers) estimates.push_back({l.omega, l.omega_se, l.error});
  const PricingResult pricing = PriceLayers(estimates);
  std::vector<std::string> named;
  for (size_t i = 0; i < layers->size(); ++i) {
    Layer& l = (*layers)[i];
    l.price = pricing.layers[i].price;
    l.fallback = pricing.layers[i].fallback;
    l.fallback_reason = pricing.layers[i].reason;
    if (l.fallback) named.push_back(absl::StrCat(l.name, " (", l.fallback_reason, ")"));
  }
  report->fallback_layers = pricing.fallback_count;
  report->fallback_curvature = pricing.curvature;
  if (named.empty()) return;
  const std::string why = absl::StrCat(
      named.size(), " of ", layers->size(), " layers have a negative or unresolved sensitivity Ω ",
      "and are priced at least as a typical layer (curvature times ‖δ‖²)",
      pricing.none_resolved ? " (no layer is resolved at every width)" : "",
      ": ", absl::StrJoin(named, "; "));
  report->warnings.push_back(why);
  sink->Log("WARNING", why);
}

// Stage "sensitivity": traces when Ω needs them, then δ_i(b) for every layer
// and width, priced as Ω says, one layer at a time (only one layer's
// perturbations are alive). Round-to-nearest's δ does not depend on the
// data: one fold, all of it. GPTQ fits its δ to the inputs it sees, so on
// those same inputs ½δᵀHδ is biased low (the CNN's classifier has 1,568
// inputs and 256 calibration rows: GPTQ's 2-bit δ changes the calibration
// loss by −0.0005 and the test loss by +0.073): two folds, each half's δ
// priced on the other half.
absl::Status ComputeSensitivity(const QuantizeOptions& o, const Context& c,
                                const LoadedDataset& calibration, const std::set<int>& widths,
                                std::vector<Layer>* layers, QuantizeReport* report) {
  const Pricing pricing = PricingOf(o);
  report->omega = QuantOmegaName(pricing.omega);
  report->perturbation = pricing.gptq_delta ? "gptq" : "rtn";
  report->sensitivity_source = o.trace_per_param.empty() ? "computed" : "report";
  if (!o.trace_per_param.empty()) {
    RETURN_IF_ERROR(TracesFromReport(o.trace_per_param, o.trace_std_error_per_param, layers));
  } else if (pricing.omega == QuantOmega::kTrace) {
    ASSIGN_OR_RETURN(AnalyzeReport analysis, AnalyzeFolded(o, c));
    report->hvp_count = analysis.hvp_count;
    std::map<std::string, const LayerSensitivity*> by_name;
    for (const LayerSensitivity& s : analysis.layers) by_name[s.name] = &s;
    for (Layer& l : *layers) {
      const LayerSensitivity* s = by_name[l.module];
      if (s == nullptr) continue;
      l.trace_per_param = s->trace_per_param;
      l.trace_se_per_param = s->numel > 0 ? s->trace_std_error / s->numel : 0;
    }
  }

  const int folds = FoldCount(pricing, calibration.inputs.examples());
  ASSIGN_OR_RETURN(std::vector<CalibrationFold> fold,
                   MakeFolds(o, c, calibration, *layers, folds, pricing.omega));
  const int64_t units = static_cast<int64_t>(layers->size() * widths.size());
  int64_t done = 0;
  auto priced = [&] { c.sink->Progress("sensitivity", ++done, units); };
  for (Layer& l : *layers) RETURN_IF_ERROR(PriceLayer(c, pricing, fold, widths, priced, &l));
  ReleaseFolds(c.sink, &fold, report);
  ApplyPricing(c.sink, layers, report);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- search

// Per layer the candidate widths, priced by Ω or its fallback (`hessian`,
// Layer::price) or by ‖δ‖² alone
// (the no-Hessian baseline), plus float.
SearchProblem MakeProblem(const std::vector<Layer>& layers, const std::set<int>& widths,
                          const std::map<std::string, int>& pins,
                          const std::vector<std::vector<std::string>>& ties, bool hessian) {
  SearchProblem p;
  for (const Layer& l : layers) {
    LayerChoices lc;
    lc.name = l.name;
    lc.numel = l.numel;
    for (int b : widths) {
      const double cost = hessian ? l.price.at(b) : l.error.at(b);
      lc.choices.push_back({b, cost, SizeBits(l, b), l.macs * b * 32});
    }
    lc.choices.push_back({kFloatBits, 0.0, SizeBits(l, kFloatBits), l.macs * 32 * 32});
    p.layers.push_back(std::move(lc));
  }
  p.pins = pins;
  p.ties = ties;
  return p;
}

// Names the packed tensor of `l` after its parameter ("A.in_proj_weight"),
// where that is not "<layer>.weight".
void SetTensorName(const Layer& l, PackedModel* packed) {
  if (l.param_name != absl::StrCat(l.name, ".weight")) packed->tensor_names[l.name] = l.param_name;
}

// The packed file besides the quantizable layers' weights.
struct PackedLayout {
  PackedModel skeleton;     // every other parameter and buffer, in float
  int64_t fixed_bytes = 0;  // their bytes plus the header
};

// The header is measured by writing the file once with every layer at 8
// bits.
absl::StatusOr<PackedLayout> MeasurePackedLayout(const torch::jit::Module& folded,
                                                 const std::vector<Layer>& layers,
                                                 const QuantizerSpec& quantizer,
                                                 const std::string& output_dir) {
  PackedLayout layout;
  PackedModel& skeleton = layout.skeleton;
  std::set<std::string> weights;
  for (const Layer& l : layers) weights.insert(l.param_name);
  try {
    // A tied tensor is stored once; the manifest names its other names.
    skeleton.aliases = TiedAliases(folded);
    for (const auto& p : folded.named_parameters(true)) {
      if (weights.count(p.name) == 0 && skeleton.aliases.count(p.name) == 0) {
        skeleton.float_tensors[p.name] = p.value.detach().cpu();
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot list the model's parameters: ", e.what_without_backtrace()));
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
    QuantizerSpec spec = quantizer;
    spec.bits = 8;
    ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(l.weight.detach().cpu(), spec));
    probe.layers[l.name] = std::move(q);
    SetTensorName(l, &probe);
    data_bytes += SizeBits(l, 8) / 8;
  }
  const std::string path = output_dir + "/.probe.safetensors";
  ASSIGN_OR_RETURN(PackedFileInfo info, WritePackedModel(probe, path, output_dir + "/.probe.json"));
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::filesystem::remove(output_dir + "/.probe.json", ec);
  layout.fixed_bytes = info.file_bytes - data_bytes;  // header
  for (const auto& [name, t] : skeleton.float_tensors) {
    layout.fixed_bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return layout;
}

// The search's budget; a file size counts the weights only.
Budget BudgetOf(const QuantBudget& b, int64_t fixed_bytes) {
  Budget budget;
  switch (b.kind) {
    case QuantBudget::Kind::kAverageBits:
      budget = Budget::AverageBits(b.value);
      break;
    case QuantBudget::Kind::kModelBytes:
      budget =
          Budget::SizeBits(std::max<int64_t>(0, 8 * (static_cast<int64_t>(b.value) - fixed_bytes)));
      break;
    case QuantBudget::Kind::kBops:
      budget = Budget::Bops(static_cast<int64_t>(b.value));
      break;
    case QuantBudget::Kind::kNone:
      break;
  }
  return budget;
}

// What the search stage hands on to the stages after it.
struct SearchSetup {
  std::map<std::string, int> pins;  // in force
  SearchProblem problem;            // priced by Ω (or its fallback)
  SearchProblem no_hessian;         // priced by ‖δ‖²
  Budget budget;
  PackedLayout layout;
};

// The problem, the packed layout and the budget; the default pins (first
// and last layer at 8 bits, as HAWQ does) are for small layers: when they
// alone break the budget (the CNN's classifier holds 46% of its weights)
// they are dropped, and the report says so.
absl::StatusOr<SearchSetup> SetUpSearch(const QuantizeOptions& o, const Prepared& p,
                                        ProgressSink* sink, QuantizeReport* report) {
  SearchSetup s;
  s.pins = p.pins;
  s.problem = MakeProblem(p.layers, p.widths, s.pins, o.ties, true);
  {
    absl::Status valid = ValidateProblem(s.problem);
    if (!valid.ok()) return Invalid("pins/ties", std::string(valid.message()));
  }
  ASSIGN_OR_RETURN(s.layout,
                   MeasurePackedLayout(p.context.folded, p.layers, p.context.spec, o.output_dir));
  s.budget = BudgetOf(o.budget, s.layout.fixed_bytes);
  if (!o.pins.has_value() && o.budget.kind != QuantBudget::Kind::kNone &&
      o.search != QuantSearch::kBisection) {
    SearchOptions so;
    ASSIGN_OR_RETURN(Solution pinned, SolveExact(s.problem, s.budget, so));
    if (!pinned.budget_met) {
      const std::string why =
          absl::StrCat("the default pins (", p.layers.front().name, " and ", p.layers.back().name,
                       " at 8 bits) do not fit the budget; searching without them");
      report->warnings.push_back(why);
      sink->Log("WARNING", why);
      s.pins.clear();
      s.problem = MakeProblem(p.layers, p.widths, s.pins, o.ties, true);
    }
  }
  s.no_hessian = MakeProblem(p.layers, p.widths, s.pins, o.ties, false);
  report->pins = s.pins;
  return s;
}

// kExact or kPareto: the Pareto frontier (a thinned copy in the report) and
// the point at the budget.
absl::StatusOr<Solution> SearchFrontier(const QuantizeOptions& o, const SearchSetup& s,
                                        const std::vector<Layer>& layers, ProgressSink* sink,
                                        QuantizeReport* report) {
  SearchOptions so;
  ASSIGN_OR_RETURN(Frontier frontier, ParetoFrontier(s.problem, s.budget.resource, so));
  ASSIGN_OR_RETURN(int64_t limit, ResourceLimit(s.problem, s.budget));
  std::optional<size_t> at = frontier.PickAtBudget(limit);
  Solution chosen;
  if (o.search == QuantSearch::kExact) {
    ASSIGN_OR_RETURN(chosen, SolveExact(s.problem, s.budget, so));
  } else if (at.has_value()) {
    chosen = frontier.SolutionAt(*at);
  } else {
    ASSIGN_OR_RETURN(chosen, SolveExact(s.problem, s.budget, so));  // least resource
  }
  report->search_exact = frontier.exact() && chosen.exact;
  const std::vector<FrontierPoint>& points = frontier.points();
  const size_t step = std::max<size_t>(1, points.size() / kMaxReportedFrontier);
  for (size_t i = 0; i < points.size(); ++i) {
    const bool is_chosen = at.has_value() && i == *at;
    if (i % step != 0 && !is_chosen && i + 1 != points.size()) continue;
    QuantPoint point = PointOf(layers, frontier.SolutionAt(i), s.layout.fixed_bytes);
    point.chosen = is_chosen;
    report->frontier.push_back(point);
  }
  sink->Log("INFO", absl::StrFormat("%d-point Pareto frontier of (%s, sensitivity)", points.size(),
                                    ResourceName(s.budget.resource)));
  return chosen;
}

// kBisection's chain and the accuracy it must keep.
struct BisectionPlan {
  std::vector<Solution> chain;
  double min_accuracy = 0;
};

// The chain from every layer at the lowest candidate to every layer at the
// highest, raising layers in decreasing order of Ω(low); measures the float
// model (the report's accuracy_before) for the tolerance.
absl::StatusOr<BisectionPlan> PlanBisection(const QuantizeOptions& o, const SearchSetup& s,
                                            const std::vector<Layer>& layers,
                                            torch::jit::Module original, const LoadedDataset& eval,
                                            QuantizeReport* report) {
  const int low = *std::min_element(o.candidate_bits.begin(), o.candidate_bits.end());
  const int high = *std::max_element(o.candidate_bits.begin(), o.candidate_bits.end());
  std::vector<double> sensitivity;
  for (const Layer& l : layers) sensitivity.push_back(l.price.at(low));
  BisectionPlan plan;
  ASSIGN_OR_RETURN(plan.chain, SensitivityOrderedConfigs(s.problem, sensitivity, low, high));
  ASSIGN_OR_RETURN(double base, TopOneAccuracy(original, eval.inputs, eval.targets));
  report->accuracy_before = base;
  plan.min_accuracy = o.tolerance.kind == QuantTolerance::Kind::kMaxDropPoints
                          ? base - o.tolerance.value
                          : base * (1 - o.tolerance.value);
  return plan;
}

// Stage "search": the configuration for the budget; for kBisection only the
// plan, which the next stage measures.
absl::Status Search(const QuantizeOptions& o, const Prepared& p, SearchSetup* setup,
                    BisectionPlan* plan, Solution* chosen, QuantizeReport* report) {
  ProgressSink* sink = p.context.sink;
  ASSIGN_OR_RETURN(*setup, SetUpSearch(o, p, sink, report));
  switch (o.search) {
    case QuantSearch::kBisection: {
      ASSIGN_OR_RETURN(*plan, PlanBisection(o, *setup, p.layers, p.original, *p.eval, report));
      break;
    }
    case QuantSearch::kUniform: {
      ASSIGN_OR_RETURN(*chosen, UniformForBudget(setup->problem, setup->budget));
      break;
    }
    case QuantSearch::kExact:
    case QuantSearch::kPareto: {
      ASSIGN_OR_RETURN(*chosen, SearchFrontier(o, *setup, p.layers, sink, report));
      break;
    }
  }
  return absl::OkStatus();
}

// Stage "evaluation" of kBisection: measures the chain's configurations on
// the eval data until the smallest one within the tolerance is found.
absl::StatusOr<Solution> Bisect(const Context& c, const std::vector<Layer>& layers,
                                const BisectionPlan& plan, const LoadedDataset& eval,
                                int64_t fixed_bytes, QuantizeReport* report) {
  int64_t measured = 0;
  const int64_t expected =
      2 + static_cast<int64_t>(std::ceil(std::log2(static_cast<double>(plan.chain.size()))));
  AccuracyFn fn = [&](const Assignment& a) -> absl::StatusOr<double> {
    RETURN_IF_ERROR(CheckCancel(c.cancel));
    Solution s;
    s.bits = a;
    ASSIGN_OR_RETURN(double acc, QuantizedAccuracy(c, ByName(layers, s), eval));
    c.sink->Progress("evaluation", ++measured, std::max(expected, measured));
    c.sink->Log("INFO", absl::StrFormat("measured %.2f%% top-1 at %.2f average bits", acc,
                                        AverageBits(layers, s)));
    return acc;
  };
  ASSIGN_OR_RETURN(BisectionResult r, AccuracyBisection(plan.chain, fn, plan.min_accuracy));
  report->tolerance_met = r.met;
  for (const BisectionPoint& m : r.measured) {
    QuantPoint p = PointOf(layers, plan.chain[m.index], fixed_bytes);
    p.accuracy = m.accuracy;
    p.chosen = m.index == r.index;
    report->measured.push_back(p);
  }
  return r.config;
}

// The chosen configuration's totals, and the baselines at its size: uniform
// bits, and the same exact search with ‖δ(b)‖² alone (no Hessian; the same
// δ as Ω's), without accuracies yet.
absl::Status RecordChoice(const SearchSetup& s, const std::vector<Layer>& layers,
                          const Solution& chosen, const CancelToken* cancel,
                          QuantizeReport* report) {
  report->budget_met = chosen.budget_met;
  report->average_bits = AverageBits(layers, chosen);
  report->bops = chosen.bops;
  report->predicted_bytes = PredictedBytes(chosen, s.layout.fixed_bytes);

  Budget same = Budget::SizeBits(chosen.size_bits);
  std::vector<std::pair<std::string, absl::StatusOr<Solution>>> runs;
  runs.emplace_back("uniform", UniformForBudget(s.problem, same));
  runs.emplace_back("no_hessian", SolveExact(s.no_hessian, same));
  for (auto& [name, solution] : runs) {
    RETURN_IF_ERROR(CheckCancel(cancel));
    if (!solution.ok()) return solution.status();
    QuantBaseline b;
    b.name = name;
    b.bits = ByName(layers, *solution);
    b.average_bits = AverageBits(layers, *solution);
    b.weight_bytes = PredictedBytes(*solution, s.layout.fixed_bytes);
    ASSIGN_OR_RETURN(Solution with_hessian, EvaluateAssignment(s.problem, solution->bits));
    b.cost = with_hessian.cost;
    report->baselines.push_back(std::move(b));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- rounding

// model.pt (the quantized model as evaluated, its quantized weights stored
// as codes: compact_model.h), the packed weights.safetensors +
// manifest.json and encodings.json in `output_dir`.
absl::Status WriteOutputs(const Quantized& result, const std::vector<Layer>& layers,
                          const PackedLayout& layout, const std::string& output_dir,
                          ProgressSink* sink, QuantizeReport* report) {
  report->model_path = output_dir + "/model.pt";
  report->weights_path = output_dir + "/weights.safetensors";
  report->manifest_path = output_dir + "/manifest.json";
  report->encodings_path = output_dir + "/encodings.json";
  // Codes for modules' `weight`s; a MultiheadAttention's in_proj_weight
  // (not a module weight) stays in model.pt as its dequantized float.
  std::map<std::string, QuantizedTensor> module_weights;
  for (const Layer& l : layers) {
    auto it = result.tensors.find(l.name);
    const std::string weight = l.name.empty() ? "weight" : absl::StrCat(l.name, ".weight");
    if (it != result.tensors.end() && l.param_name == weight) module_weights.insert(*it);
  }
  absl::StatusOr<CompactModelInfo> compact =
      SaveCompactModel(result.module, module_weights, report->model_path);
  if (compact.ok()) {
    report->model_bytes = compact->file_bytes;
  } else {
    // Still a correct model, only as large as the float one.
    const std::string why = absl::StrCat(
        "model.pt holds the quantized weights in float: ", compact.status().message());
    report->warnings.push_back(why);
    sink->Log("WARNING", why);
    try {
      result.module.save(report->model_path);
      report->model_bytes = static_cast<int64_t>(std::filesystem::file_size(report->model_path));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("cannot save the quantized model: ", e.what()));
    }
  }
  PackedModel packed = layout.skeleton;
  for (const Layer& l : layers) {
    auto it = result.tensors.find(l.name);
    if (it != result.tensors.end()) {
      QuantizedTensor q = it->second;
      q.codes = q.codes.cpu();
      q.params.scale = q.params.scale.cpu();
      q.params.zero_point = q.params.zero_point.cpu();
      packed.layers[l.name] = std::move(q);
      SetTensorName(l, &packed);
    } else {
      packed.float_tensors[l.param_name] = l.weight.detach().cpu();
    }
  }
  ASSIGN_OR_RETURN(PackedFileInfo info,
                   WritePackedModel(packed, report->weights_path, report->manifest_path));
  report->bytes_after = info.file_bytes;
  return WriteEncodings(packed, report->encodings_path).status();
}

std::vector<QuantizedLayerReport> LayerReports(const std::vector<Layer>& layers,
                                               const Solution& chosen,
                                               const std::map<std::string, int>& pins,
                                               const std::vector<int>& candidate_bits,
                                               const Quantized& result) {
  std::vector<QuantizedLayerReport> reports;
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
    lr.fallback = l.fallback;
    lr.fallback_reason = l.fallback_reason;
    for (int b : candidate_bits) {
      lr.omega[b] = l.omega.at(b);
      lr.omega_std_error[b] = l.omega_se.at(b);
      lr.price[b] = l.price.at(b);
      lr.squared_error[b] = l.error.at(b);
    }
    lr.bytes_before = l.numel * 4;
    lr.bytes_after = SizeBits(l, lr.bits) / 8;
    lr.gptq_error = std::nan("");
    lr.rtn_error = std::nan("");
    lr.tied = l.tied;
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
    reports.push_back(std::move(lr));
  }
  return reports;
}

// Relative output error Σ‖f_q(x) − f(x)‖² / Σ‖f(x)‖² of `quantized`
// against the float (folded) model on the calibration batches.
absl::StatusOr<double> OutputError(const Context& c, torch::jit::Module quantized) {
  torch::NoGradGuard no_grad;
  torch::jit::Module reference = c.folded;
  double difference = 0, norm = 0;
  for (const ModelInputs& batch : c.calibration) {
    RETURN_IF_ERROR(CheckCancel(c.cancel));
    ASSIGN_OR_RETURN(torch::Tensor f, RunForward(reference, batch));
    ASSIGN_OR_RETURN(torch::Tensor q, RunForward(quantized, batch));
    const torch::Tensor f64 = f.to(torch::kFloat64);
    difference += (q.to(torch::kFloat64) - f64).pow(2).sum().item<double>();
    norm += f64.pow(2).sum().item<double>();
  }
  return norm > 0 ? difference / norm : difference;
}

// After a search that priced some layer by the fallback (a guess), its
// allocation is compared with the uniform bits that fit the same budget
// (what a user would otherwise take: every layer at the highest width that
// fits) on the calibration outputs, each
// rounded as the job rounds, and the one with the smaller error is kept.
absl::Status GuardAgainstUniform(const Prepared& p, SearchSetup* setup, Quantized* result,
                                 Solution* chosen, QuantizeReport* report) {
  const SearchSetup& s = *setup;
  const Context& c = p.context;
  // The caller's pins bind the uniform allocation too; the default ones
  // (a heuristic of the search) do not.
  SearchProblem problem = s.problem;
  if (!c.options->pins.has_value()) problem.pins.clear();
  ASSIGN_OR_RETURN(Solution uniform, UniformForBudget(problem, s.budget));
  if (!uniform.budget_met) return absl::OkStatus();
  if (uniform.bits == chosen->bits) return absl::OkStatus();
  ASSIGN_OR_RETURN(double searched, OutputError(c, result->module));
  ASSIGN_OR_RETURN(Quantized uniform_model, QuantizeModel(c, ByName(p.layers, uniform)));
  ASSIGN_OR_RETURN(double uniform_error, OutputError(c, uniform_model.module));
  report->searched_output_error = searched;
  report->uniform_output_error = uniform_error;
  if (!(uniform_error < searched)) return absl::OkStatus();
  const std::string why = absl::StrFormat(
      "the searched allocation's output error on the calibration data (%.4g) is above that of "
      "uniform %.2f-bit rounding within the same budget (%.4g); keeping the uniform allocation",
      searched, AverageBits(p.layers, uniform), uniform_error);
  report->warnings.push_back(why);
  c.sink->Log("WARNING", why);
  report->chose_uniform = true;
  *result = std::move(uniform_model);
  *chosen = uniform;
  setup->pins = problem.pins;
  report->pins = problem.pins;
  report->baselines.clear();
  return RecordChoice(s, p.layers, *chosen, c.cancel, report);
}

// ---------------------------------------------------------------- evaluation

// Stage "evaluation": the float model (unless the bisection measured it),
// the saved file, reloaded (what users get is what is reported), and each
// baseline paired with it on the same examples.
// A language model's "evaluation": perplexity of the float model and of the
// saved file (top-1 accuracy of next tokens is not what LM users compare).
absl::Status EvaluatePerplexity(const QuantizeOptions& o, const Prepared& p,
                                QuantizeReport* report) {
  torch::jit::Module original = p.original;
  ASSIGN_OR_RETURN(report->perplexity_before, Perplexity(original, p.eval->inputs, o.lm_ignore_id));
  p.context.sink->Progress("evaluation", 1, 2);
  ASSIGN_OR_RETURN(torch::jit::Module saved, LoadModel(report->model_path, o.device));
  ASSIGN_OR_RETURN(report->perplexity_after, Perplexity(saved, p.eval->inputs, o.lm_ignore_id));
  p.context.sink->Progress("evaluation", 2, 2);
  return absl::OkStatus();
}

absl::Status Evaluate(const QuantizeOptions& o, const Prepared& p, QuantizeReport* report) {
  if (o.loss == LossKind::kLanguageModeling) return EvaluatePerplexity(o, p, report);
  const LoadedDataset& eval = *p.eval;
  ProgressSink* sink = p.context.sink;
  if (!report->accuracy_before.has_value()) {
    torch::jit::Module original = p.original;
    ASSIGN_OR_RETURN(double before, TopOneAccuracy(original, eval.inputs, eval.targets));
    report->accuracy_before = before;
  }
  ASSIGN_OR_RETURN(torch::jit::Module saved, LoadModel(report->model_path, o.device));
  ASSIGN_OR_RETURN(torch::Tensor chosen_correct, TopOneCorrect(saved, eval.inputs, eval.targets));
  report->accuracy_after = PercentTrue(chosen_correct);
  sink->Progress("evaluation", 1, 3);
  int index = 1;
  for (QuantBaseline& b : report->baselines) {
    RETURN_IF_ERROR(CheckCancel(p.context.cancel));
    ASSIGN_OR_RETURN(Quantized q, QuantizeModel(p.context, b.bits));
    ASSIGN_OR_RETURN(torch::Tensor correct, TopOneCorrect(q.module, eval.inputs, eval.targets));
    b.accuracy = PercentTrue(correct);
    b.chosen_only_correct = (chosen_correct & ~correct).sum().item<int64_t>();
    b.baseline_only_correct = (correct & ~chosen_correct).sum().item<int64_t>();
    b.p_value = McNemarExactP(b.chosen_only_correct, b.baseline_only_correct);
    sink->Progress("evaluation", ++index, 3);
  }
  return absl::OkStatus();
}

// Batch and rounds of the int8 latency measurement.
constexpr int64_t kLatencyBatch = 64;
constexpr int kLatencyWarmup = 5;
constexpr int kLatencyRounds = 20;

absl::StatusOr<Int8ModelReport> MakeInt8Model(const QuantizeOptions& o, const Prepared& p) {
  Int8ModelReport r;
  r.path = o.output_dir + "/model_int8.pt";
  ASSIGN_OR_RETURN(Int8ModelInfo info,
                   SaveInt8Model(p.original, p.context.calibration, r.path));
  r.bytes = info.file_bytes;
  r.engine = info.engine;
  r.quantized_ops = info.quantized_ops;
  ASSIGN_OR_RETURN(torch::jit::Module int8, LoadModel(r.path, "cpu"));
  ASSIGN_OR_RETURN(torch::jit::Module float_model, LoadModel(o.model_path, "cpu"));
  const bool classify = p.eval.has_value() && o.loss != LossKind::kLanguageModeling;
  if (classify) {
    ASSIGN_OR_RETURN(r.accuracy,
                     TopOneAccuracy(int8, p.eval->inputs.To(torch::kCPU), p.eval->targets.cpu()));
  }
  const ModelInputs& pool = p.eval.has_value() ? p.eval->inputs : p.calibration.inputs;
  const ModelInputs x =
      pool.Narrow(0, std::min(kLatencyBatch, pool.examples())).To(torch::kCPU);
  ASSIGN_OR_RETURN(auto ms,
                   AlternateLatencyMs(int8, float_model, x, kLatencyWarmup, kLatencyRounds));
  r.latency_ms = ms.first;
  r.float_latency_ms = ms.second;
  r.latency_batch = x.examples();
  r.threads = at::get_num_threads();
  return r;
}

// Stage "int8": a failure is a warning (the other artifacts stand).
absl::Status Int8Stage(const QuantizeOptions& o, const Prepared& p, QuantizeReport* report) {
  absl::StatusOr<Int8ModelReport> r = MakeInt8Model(o, p);
  if (r.ok()) {
    report->int8 = std::move(*r);
    return absl::OkStatus();
  }
  if (absl::IsCancelled(r.status()) || absl::IsDeadlineExceeded(r.status())) return r.status();
  const std::string why = absl::StrCat("no model_int8.pt: ", r.status().message());
  report->warnings.push_back(why);
  p.context.sink->Log("WARNING", why);
  std::error_code ec;
  std::filesystem::remove(o.output_dir + "/model_int8.pt", ec);
  return absl::OkStatus();
}


// ---------------------------------------------------------------- head re-fit

absl::StatusOr<torch::Tensor> Logits(torch::jit::Module& module, const torch::Tensor& inputs) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < inputs.size(0); i += 256) {
    ASSIGN_OR_RETURN(torch::Tensor y,
                     RunForward(module, inputs.narrow(0, i, std::min<int64_t>(256, inputs.size(0) - i))));
    parts.push_back(y.detach());
  }
  return torch::cat(parts, 0);
}

// Stage "head refit": the rounded model's head re-fitted against the float
// (folded) model's logits on the calibration data, then rounded again with
// the spec it was rounded with (GPTQ heads too: RTN of the re-fitted
// weight, since its GPTQ rounding belonged to the old weight).
absl::Status HeadRefitStage(const QuantizeOptions& o, const Prepared& p, Quantized* result,
                            QuantizeReport* report) {
  const QuantHeadRefit& h = *o.head_refit;
  const absl::Time start = absl::Now();
  const torch::Tensor& inputs = p.calibration.inputs.first;  // the head re-fit takes one input
  torch::jit::Module folded = p.context.folded;
  ASSIGN_OR_RETURN(torch::Tensor teacher, Logits(folded, inputs));
  ASSIGN_OR_RETURN(HeadFeatures hf, ComputeHeadFeatures(result->module, inputs));
  const torch::Tensor& t = p.calibration.targets;
  const torch::Tensor targets =
      t.defined() && t.dim() == 1 && !t.is_floating_point() ? t : torch::Tensor();
  HeadRefitOptions ho;
  ho.newton.iterations = h.iterations;
  ho.newton.alpha = h.alpha;
  ho.temperature = h.temperature;
  const int64_t count = hf.weight.size(0) * (hf.weight.size(1) + 1);
  if (h.hessian == "auto") {
    ho.hessian = count <= ho.max_dense_params ? HeadHessian::kExact : HeadHessian::kKfac;
  } else {
    ASSIGN_OR_RETURN(ho.hessian, ParseHeadHessian(h.hessian));
  }
  QuantHeadRefitReport r;
  if (p.eval) {
    ASSIGN_OR_RETURN(r.accuracy_before,
                     TopOneAccuracy(result->module, p.eval->inputs, p.eval->targets));
  }
  ASSIGN_OR_RETURN(HeadRefitResult fit,
                   RefitHead(hf.features, teacher, targets, hf.weight, hf.bias, ho));
  torch::Tensor weight = fit.weight;
  if (auto it = result->tensors.find(hf.head); it != result->tensors.end()) {
    ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(weight, it->second.params.spec));
    ASSIGN_OR_RETURN(weight, Dequantize(q));
    weight = weight.to(fit.weight.device(), fit.weight.scalar_type());
    r.bits = it->second.params.spec.bits;
    it->second = std::move(q);
    result->gptq.erase(hf.head);
  }
  RETURN_IF_ERROR(SetHead(result->module, hf.head, weight, fit.bias));
  ASSIGN_OR_RETURN(torch::Tensor after,
                   HeadLoss(hf.features, teacher, targets, weight, fit.bias, h.temperature));
  r.head = hf.head;
  r.hessian = HeadHessianName(ho.hessian);
  r.iterations = static_cast<int>(fit.trace.size()) - 1;
  r.loss_before = fit.loss_before;
  r.loss_after = after.item<double>();
  r.loss_refit = fit.loss_after;
  r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  p.context.sink->Log("INFO", absl::StrFormat("head %s re-fitted (%s, %d iterations): loss %.4g -> %.4g "
                                              "(%.4g before rounding again)",
                                              r.head, r.hessian, r.iterations, r.loss_before,
                                              r.loss_after, r.loss_refit));
  report->head_refit = std::move(r);
  return absl::OkStatus();
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
  ASSIGN_OR_RETURN(Prepared p, Prepare(o, sink, cancel, &report));

  // What each stage hands on to the next ones.
  SearchSetup setup;
  BisectionPlan plan;
  Solution chosen;
  Quantized result;
  const bool bisection = o.search == QuantSearch::kBisection;
  StageList stages;
  stages.Add("sensitivity", [&] {
    return ComputeSensitivity(o, p.context, p.calibration, p.widths, &p.layers, &report);
  });
  stages.Add("search", [&]() -> absl::Status {
    RETURN_IF_ERROR(Search(o, p, &setup, &plan, &chosen, &report));
    if (bisection) return absl::OkStatus();
    return RecordChoice(setup, p.layers, chosen, cancel, &report);
  });
  stages.AddIf(bisection, "evaluation", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(chosen,
                     Bisect(p.context, p.layers, plan, *p.eval, setup.layout.fixed_bytes, &report));
    return RecordChoice(setup, p.layers, chosen, cancel, &report);
  });
  stages.Add("rounding", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(result, QuantizeModel(p.context, ByName(p.layers, chosen)));
    if (bisection || o.search == QuantSearch::kUniform || report.fallback_layers == 0) {
      return absl::OkStatus();
    }
    return GuardAgainstUniform(p, &setup, &result, &chosen, &report);
  });
  stages.AddIf(o.head_refit.has_value(), "head refit",
               [&] { return HeadRefitStage(o, p, &result, &report); });
  stages.AddStep("outputs", [&]() -> absl::Status {
    RETURN_IF_ERROR(
        WriteOutputs(result, p.layers, setup.layout, o.output_dir, sink, &report));
    report.layers = LayerReports(p.layers, chosen, setup.pins, o.candidate_bits, result);
    return absl::OkStatus();
  });
  stages.AddIf(p.eval.has_value(), "evaluation", [&] { return Evaluate(o, p, &report); });
  stages.AddIf(o.int8_model, "int8", [&] { return Int8Stage(o, p, &report); });
  RETURN_IF_ERROR(stages.Run(sink, cancel));

  report.wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return report;
}

}  // namespace compress::engine
