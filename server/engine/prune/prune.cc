#include "server/engine/prune/prune.h"

#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/engine/common/finite.h"
#include "server/engine/common/runtime.h"
#include "server/engine/common/stages.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
#include "server/engine/prune/head_refit.h"
#include "server/engine/prune/latency.h"
#include "server/engine/prune/recovery.h"
#include "server/engine/prune/saliency.h"
#include "server/engine/prune/vit.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status Validate(const PruneOptions& o) {
  if (o.model_path.empty()) return Invalid("model_path", "required");
  if (o.calibration_dataset.empty()) return Invalid("calibration_dataset", "required");
  if (o.output_dir.empty()) return Invalid("output_dir", "required");
  if (o.num_samples < 0) return Invalid("num_samples", "must be >= 0");
  if (o.batch_size < 1) return Invalid("batch_size", "must be >= 1");
  if (o.saliency_samples < 1) return Invalid("saliency_samples", "must be >= 1");
  if (!(o.target_fraction > 0 && o.target_fraction < 1)) {
    return Invalid("target_fraction", "must be in (0, 1)");
  }
  if (o.latency_weight < 0) return Invalid("latency_weight", "must be >= 0");
  if (o.head_group < 1) return Invalid("head_group", "must be >= 1");
  if (o.mlp_group < 1) return Invalid("mlp_group", "must be >= 1");
  if (o.min_heads < 1) return Invalid("min_heads", "must be >= 1");
  if (o.min_mlp < 1) return Invalid("min_mlp", "must be >= 1");
  if (o.steps < 1) return Invalid("steps", "must be >= 1");
  if (o.recovery_steps < 0) return Invalid("recovery_steps", "must be >= 0");
  if (!(o.learning_rate > 0)) return Invalid("learning_rate", "must be > 0");
  if (!(o.temperature > 0)) return Invalid("temperature", "must be > 0");
  if (o.optimizer != "adam" && o.optimizer != "sgd" && o.optimizer != "newton") {
    return Invalid("optimizer", "must be \"adam\", \"sgd\" or \"newton\"");
  }
  if (o.latency_batch < 1) return Invalid("latency_batch", "must be >= 1");
  if (!o.measure_latency && (o.target == PruneTargetKind::kLatency || o.latency_weight > 0)) {
    return Invalid("measure_latency", "a latency target or weight needs the latency timings");
  }
  return absl::OkStatus();
}

// Current state of one block during pruning.
struct BlockState {
  std::vector<int64_t> heads;    // original indices of the current heads
  std::vector<int64_t> neurons;  // original indices of the current neurons
};

// The quantity the target is about, for given per-block (heads, hidden).
struct Metric {
  PruneTargetKind kind = PruneTargetKind::kFlops;
  const VitStructure* vit = nullptr;
  int64_t fixed_macs = 0, fixed_params = 0;
  double fixed_ms = 0;
  std::vector<const LatencyTable*> tables;  // per block; empty without timings

  double Block(int b, int64_t heads, int64_t hidden) const {
    switch (kind) {
      case PruneTargetKind::kFlops:
        return static_cast<double>(BlockMacs(*vit, heads, hidden));
      case PruneTargetKind::kParams:
        return static_cast<double>(BlockParams(*vit, heads, hidden));
      case PruneTargetKind::kLatency:
        break;
    }
    return tables[b]->Predict(heads, hidden);
  }
  double Fixed() const {
    switch (kind) {
      case PruneTargetKind::kFlops:
        return static_cast<double>(fixed_macs);
      case PruneTargetKind::kParams:
        return static_cast<double>(fixed_params);
      case PruneTargetKind::kLatency:
        break;
    }
    return fixed_ms;
  }
  double Total(const std::vector<std::pair<int64_t, int64_t>>& shape) const {
    double total = Fixed();
    for (size_t b = 0; b < shape.size(); ++b) {
      total += Block(static_cast<int>(b), shape[b].first, shape[b].second);
    }
    return total;
  }
};

double PredictedMs(const std::vector<const LatencyTable*>& tables, double fixed_ms,
                   const std::vector<std::pair<int64_t, int64_t>>& shape) {
  if (tables.empty()) return 0;
  double ms = fixed_ms;
  for (size_t b = 0; b < shape.size(); ++b) ms += tables[b]->Predict(shape[b].first, shape[b].second);
  return ms;
}

std::vector<std::pair<int64_t, int64_t>> ShapeOf(const VitStructure& vit) {
  std::vector<std::pair<int64_t, int64_t>> shape;
  for (const VitBlock& b : vit.blocks) shape.emplace_back(b.heads, b.hidden);
  return shape;
}

double MeanAbs(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += std::abs(x);
  return v.empty() ? 1 : std::max(s / static_cast<double>(v.size()), 1e-300);
}

// First `n` examples of `inputs`, repeated when it has fewer.
ModelInputs Rows(const ModelInputs& inputs, int64_t n) {
  const int64_t have = inputs.examples();
  if (have >= n) return inputs.Narrow(0, n);
  const torch::Tensor index =
      torch::arange(n, torch::TensorOptions().dtype(torch::kLong)).remainder(have);
  return inputs.Select(index);
}

absl::StatusOr<torch::Tensor> Logits(torch::jit::Module& module, const ModelInputs& inputs,
                                     int64_t batch) {
  std::vector<torch::Tensor> out;
  c10::InferenceMode guard;
  const int64_t n = inputs.examples();
  for (int64_t s = 0; s < n; s += batch) {
    ASSIGN_OR_RETURN(torch::Tensor o,
                     RunForward(module, inputs.Narrow(s, std::min(batch, n - s))));
    out.push_back(o.detach().clone());
  }
  return torch::cat(out, 0);
}

absl::StatusOr<LoadedDataset> LoadData(const PruneOptions& o, const std::string& id, int64_t n) {
  return IsBuiltinDataset(id) ? LoadBuiltinDataset(id, n, o.idx_dir) : LoadDataset(id, n);
}

// What RunPruning's stages share. Not movable: `metric` points into it.
struct PruneState {
  PruneState() = default;
  PruneState(const PruneState&) = delete;
  PruneState& operator=(const PruneState&) = delete;

  // Read before the stages.
  torch::jit::Module module;   // pruned in place, round by round
  torch::jit::Module teacher;  // the original: distillation, shapes before
  LoadedDataset calibration;   // on the device
  InspectOptions inspect;      // one example
  VitStructure vit;            // of `module`; each round's surgery updates it
  Metric metric;               // its vit is `vit`; its tables are `tables`
  torch::Tensor teacher_logits;
  PreparedBatches saliency_batches;  // labels from the original when the data have none
  ModelInputs latency_input;
  std::vector<BlockState> blocks;  // original indices still in each block
  std::vector<std::pair<int64_t, int64_t>> shape_before;  // (heads, hidden) per block

  // Filled by the stages.
  std::optional<LoadedDataset> eval;
  std::vector<LatencyTable> tables;  // one per distinct block shape
  double m0 = 0;                     // the target quantity before pruning
  std::vector<RankedUnit> kept_last_round;
  bool stopped = false;      // a round reached the minimums without the goal
  torch::jit::Module saved;  // model.pt, reloaded
};

// Loads the model twice (student and teacher) and the calibration data,
// finds the ViT structure and the target quantity's fixed part, and
// computes the teacher's logits and the saliency batches. Sets the report's
// style and sizes before.
absl::Status Prepare(const PruneOptions& o, const CancelToken* cancel, PruneState* s,
                     PruneReport* report) {
  ASSIGN_OR_RETURN(s->module, LoadModel(o.model_path, o.device));
  RETURN_IF_ERROR(CheckFiniteParameters(s->module, o.model_name));
  for (std::string& w : NonFiniteBuffers(s->module, o.model_name)) report->warnings.push_back(w);
  ASSIGN_OR_RETURN(s->teacher, LoadModel(o.model_path, o.device));
  ASSIGN_OR_RETURN(s->calibration, LoadData(o, o.calibration_dataset, o.num_samples));
  RETURN_IF_ERROR(CheckFiniteData(s->calibration, o.calibration_name));
  LoadedDataset& calibration = s->calibration;
  const torch::Device device(o.device);
  const torch::Tensor first_param = *s->module.parameters().begin();
  calibration.inputs = calibration.inputs.To(device, first_param.scalar_type());
  if (calibration.targets.defined()) calibration.targets = calibration.targets.to(device);
  // The layout probe: zeros as the first argument (token 0, a black
  // image), the first example's further arguments (its attention mask).
  ModelInputs probe = calibration.inputs.Narrow(0, 1);
  probe.first = torch::zeros_like(probe.first);
  ASSIGN_OR_RETURN(s->vit, DiscoverVit(s->module, probe));
  report->style = s->vit.style;
  s->shape_before = ShapeOf(s->vit);
  for (const VitBlock& b : s->vit.blocks) {
    // torchvision's nn.MultiheadAttention (no `attn`) is fixed by design.
    if (b.fixed_heads.empty() || b.attn.empty()) continue;
    report->warnings.push_back(
        absl::StrCat("heads of ", b.path, " are kept (MLP neurons only): ", b.fixed_heads));
  }
  SetProbeLike(calibration.inputs, &s->inspect);
  s->inspect.device = o.device;
  ASSIGN_OR_RETURN(Inspection before, InspectModelFile(o.model_path, s->inspect, cancel));
  report->macs_before = before.total_macs;
  report->params_before = before.summary.num_parameters;
  report->bytes_before = before.summary.model_bytes;

  Metric& metric = s->metric;
  metric.kind = o.target;
  metric.vit = &s->vit;
  metric.fixed_macs = before.total_macs;
  metric.fixed_params = before.summary.num_parameters;
  for (const VitBlock& b : s->vit.blocks) {
    metric.fixed_macs -= BlockMacs(s->vit, b.heads, b.hidden);
    metric.fixed_params -= BlockParams(s->vit, b.heads, b.hidden);
  }

  ASSIGN_OR_RETURN(s->teacher_logits, Logits(s->teacher, calibration.inputs, o.batch_size));
  // Distillation targets: recovery would diverge on them at once.
  RETURN_IF_ERROR(CheckFiniteExamples(
      s->teacher_logits, absl::StrCat(o.model_name, ": outputs on the calibration data")));
  const int64_t saliency_n = std::min(o.saliency_samples, calibration.inputs.examples());
  ASSIGN_OR_RETURN(
      s->saliency_batches,
      PrepareBatches(s->teacher, calibration.inputs.Narrow(0, saliency_n),
                     calibration.targets.defined() ? calibration.targets.narrow(0, 0, saliency_n)
                                                   : torch::Tensor(),
                     o.batch_size, o.loss));
  s->latency_input = Rows(calibration.inputs, o.latency_batch);
  s->blocks.resize(s->vit.blocks.size());
  for (size_t b = 0; b < s->vit.blocks.size(); ++b) {
    for (int64_t h = 0; h < s->vit.blocks[b].heads; ++h) s->blocks[b].heads.push_back(h);
    for (int64_t n = 0; n < s->vit.blocks[b].hidden; ++n) s->blocks[b].neurons.push_back(n);
  }
  return absl::OkStatus();
}

// Stage "evaluation" (first): loads the eval data and measures the original.
absl::Status EvaluateOriginal(const PruneOptions& o, PruneState* s, PruneReport* report) {
  ASSIGN_OR_RETURN(s->eval, LoadData(o, o.eval_dataset, o.eval_samples));
  RETURN_IF_ERROR(CheckFiniteData(*s->eval, o.eval_name));
  report->eval_examples = s->eval->inputs.examples();
  ASSIGN_OR_RETURN(report->accuracy_before,
                   TopOneAccuracy(s->teacher, s->eval->inputs, s->eval->targets, o.device));
  return absl::OkStatus();
}

// Stage "latency": one latency table per distinct block shape, and the
// measured latency of the whole model; the rest of the model's latency is
// what the blocks do not explain.
absl::Status MeasureLatency(const PruneOptions& o, ProgressSink* sink, const CancelToken* cancel,
                            PruneState* s, PruneReport* report) {
  const VitStructure& vit = s->vit;
  Metric& metric = s->metric;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, size_t> table_of_shape;
  s->tables.reserve(vit.blocks.size());  // metric.tables point into it
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    const VitBlock& blk = vit.blocks[b];
    auto key = std::make_tuple(blk.heads, blk.head_dim, blk.hidden, blk.prunable_heads);
    if (!table_of_shape.count(key)) {
      ASSIGN_OR_RETURN(LatencyTable t,
                       MeasureBlockLatency(s->module, vit, static_cast<int>(b), o.latency_batch,
                                           std::min(o.min_mlp, blk.hidden), cancel));
      table_of_shape[key] = s->tables.size();
      s->tables.push_back(std::move(t));
    }
    sink->Progress("latency", static_cast<int64_t>(b + 1), static_cast<int64_t>(vit.blocks.size()));
  }
  for (const VitBlock& blk : vit.blocks) {
    metric.tables.push_back(&s->tables[table_of_shape[std::make_tuple(
        blk.heads, blk.head_dim, blk.hidden, blk.prunable_heads)]]);
  }
  ASSIGN_OR_RETURN(double ms, MeasureLatencyMs(s->module, s->latency_input));
  report->latency_before_ms = ms;
  report->latency_batch = o.latency_batch;
  metric.fixed_ms = ms;
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    metric.fixed_ms -= metric.tables[b]->Predict(vit.blocks[b].heads, vit.blocks[b].hidden);
  }
  if (metric.fixed_ms < 0) {
    report->warnings.push_back(absl::StrFormat(
        "the blocks timed alone took longer than the whole model (%.2f ms over); the latency "
        "model treats the rest of the model as free",
        -metric.fixed_ms));
    metric.fixed_ms = 0;
  }
  return absl::OkStatus();
}

// One round's units, scored and ranked.
struct Ranking {
  std::vector<PruneUnit> units;
  std::vector<UnitSaliency> saliency;
  std::vector<double> costs;     // of the target quantity, each unit's share
  std::vector<double> saved_ms;  // predicted latency each unit saves
  std::vector<double> key;       // what the ranking sorts by
  std::vector<size_t> order;     // units, lowest key first
};

// Saliency per unit of cost (both scaled by their mean magnitude), minus
// the latency weight times the (scaled) latency a unit saves.
absl::StatusOr<Ranking> RankUnits(const PruneOptions& o, const CancelToken* cancel, PruneState* s,
                                  int64_t* hvp_count) {
  Ranking r;
  r.units = UnitsOf(s->vit, o.head_group, o.mlp_group);
  ASSIGN_OR_RETURN(r.saliency, ComputeSaliency(s->module, s->vit, r.units, s->saliency_batches,
                                               o.saliency, cancel, hvp_count));
  for (size_t u = 0; u < r.units.size(); ++u) {
    const PruneUnit& unit = r.units[u];
    RETURN_IF_ERROR(CheckFiniteValue(
        r.saliency[u].score,
        absl::StrCat("the saliency of ", unit.head ? "heads " : "MLP neurons ", unit.first, "-",
                     unit.first + unit.count - 1, " of block ", unit.block)));
  }
  const Metric& metric = s->metric;
  const auto shape = ShapeOf(s->vit);
  std::vector<double> scores;
  for (size_t u = 0; u < r.units.size(); ++u) {
    const PruneUnit& unit = r.units[u];
    const auto [h, m] = shape[unit.block];
    const int64_t h2 = unit.head ? h - unit.count : h;
    const int64_t m2 = unit.head ? m : m - unit.count;
    scores.push_back(r.saliency[u].score);
    r.costs.push_back(metric.Block(unit.block, h, m) - metric.Block(unit.block, h2, m2));
    r.saved_ms.push_back(metric.tables.empty() ? 0
                                               : metric.tables[unit.block]->Predict(h, m) -
                                                     metric.tables[unit.block]->Predict(h2, m2));
  }
  const double ms_scale = MeanAbs(scores), mc_scale = MeanAbs(r.costs),
               ml_scale = MeanAbs(r.saved_ms);
  r.key.resize(r.units.size());
  for (size_t u = 0; u < r.units.size(); ++u) {
    r.key[u] = (scores[u] / ms_scale) / std::max(r.costs[u] / mc_scale, 1e-6) -
               o.latency_weight * r.saved_ms[u] / ml_scale;
  }
  r.order.resize(r.units.size());
  std::iota(r.order.begin(), r.order.end(), 0);
  std::stable_sort(r.order.begin(), r.order.end(),
                   [&](size_t a, size_t b) { return r.key[a] < r.key[b]; });
  return r;
}

// Removes units in rank order until the target quantity is at most `goal`,
// skipping those that would break a block's minimum; which units went.
std::vector<bool> RemoveInRankOrder(const PruneOptions& o, const Metric& metric, const Ranking& r,
                                    std::vector<std::pair<int64_t, int64_t>> shape, double goal) {
  std::vector<bool> removed(r.units.size(), false);
  for (size_t u : r.order) {
    if (metric.Total(shape) <= goal) break;
    const PruneUnit& unit = r.units[u];
    auto& [h, m] = shape[unit.block];
    if (unit.head ? h - unit.count < o.min_heads : m - unit.count < o.min_mlp) continue;
    (unit.head ? h : m) -= unit.count;
    removed[u] = true;
  }
  return removed;
}

RankedUnit Describe(const Ranking& r, size_t u, bool removed, int round, const VitStructure& vit,
                    const std::vector<BlockState>& blocks) {
  const PruneUnit& unit = r.units[u];
  RankedUnit d;
  d.round = round;
  d.block = vit.blocks[unit.block].path;
  d.kind = unit.head ? "head" : "mlp";
  d.first =
      unit.head ? blocks[unit.block].heads[unit.first] : blocks[unit.block].neurons[unit.first];
  d.count = unit.count;
  d.score = r.saliency[u].score;
  d.taylor = r.saliency[u].taylor;
  d.first_order = r.saliency[u].first_order;
  d.second_order = r.saliency[u].second_order;
  d.magnitude = r.saliency[u].magnitude;
  d.cost = r.costs[u];
  d.latency_ms = r.saved_ms[u];
  d.rank_key = r.key[u];
  d.removed = removed;
  return d;
}

// Cuts the removed units out of `module` (updating `vit`) and keeps track
// of which original heads and neurons remain in each block.
absl::Status Cut(const Ranking& r, const std::vector<bool>& removed, torch::jit::Module& module,
                 VitStructure* vit, std::vector<BlockState>* blocks) {
  VitPlan plan;
  std::vector<BlockState> next(blocks->size());
  for (size_t b = 0; b < vit->blocks.size(); ++b) {
    std::vector<bool> drop_head(vit->blocks[b].heads, false);
    std::vector<bool> drop_neuron(vit->blocks[b].hidden, false);
    for (size_t u = 0; u < r.units.size(); ++u) {
      if (!removed[u] || r.units[u].block != static_cast<int>(b)) continue;
      for (int64_t i = r.units[u].first; i < r.units[u].first + r.units[u].count; ++i) {
        (r.units[u].head ? drop_head : drop_neuron)[i] = true;
      }
    }
    BlockPlan p;
    for (int64_t h = 0; h < vit->blocks[b].heads; ++h) {
      if (drop_head[h]) continue;
      p.heads.push_back(h);
      next[b].heads.push_back((*blocks)[b].heads[h]);
    }
    for (int64_t n = 0; n < vit->blocks[b].hidden; ++n) {
      if (drop_neuron[n]) continue;
      p.neurons.push_back(n);
      next[b].neurons.push_back((*blocks)[b].neurons[n]);
    }
    plan.blocks.push_back(std::move(p));
  }
  ASSIGN_OR_RETURN(*vit, ApplyPlan(module, *vit, plan));
  *blocks = std::move(next);
  return absl::OkStatus();
}

// Top-1 on the first step_eval_samples eval examples; none without eval
// data.
absl::StatusOr<std::optional<double>> StepAccuracy(const PruneOptions& o,
                                                   const std::optional<LoadedDataset>& eval,
                                                   torch::jit::Module& module) {
  if (!eval.has_value()) return std::optional<double>();
  const int64_t n = std::min(o.step_eval_samples, eval->inputs.examples());
  ASSIGN_OR_RETURN(double acc, TopOneAccuracy(module, eval->inputs.Narrow(0, n),
                                              eval->targets.narrow(0, 0, n), o.device));
  return std::optional<double>(acc);
}

// Optimizer "adam"/"sgd": distillation fine-tuning of every parameter.
absl::Status RecoverByFineTuning(const PruneOptions& o, int round, const std::string& stage,
                                 ProgressSink* sink, const CancelToken* cancel, PruneState* s) {
  RecoveryOptions recovery;
  recovery.steps = o.recovery_steps;
  recovery.learning_rate = o.learning_rate;
  recovery.temperature = o.temperature;
  recovery.optimizer = o.optimizer;
  recovery.batch_size = o.batch_size;
  recovery.seed = o.seed + static_cast<uint64_t>(round);
  return Recover(s->module, s->calibration.inputs, s->teacher_logits, s->calibration.targets,
                 recovery, sink, stage, cancel)
      .status();
}

// Optimizer "newton": only the head (the last Linear layer) is re-fitted,
// on features computed once, by the regularized Newton iteration of
// head_refit.h with at most `recovery_steps` iterations: the exact Hessian
// when the head has at most 4096 parameters (the reference ViT's has 650),
// else K-FAC.
absl::Status RefitHeadByNewton(const PruneOptions& o, PruneState* s) {
  ASSIGN_OR_RETURN(HeadFeatures hf, ComputeHeadFeatures(s->module, s->calibration.inputs.first));
  HeadRefitOptions h;
  h.newton.iterations = o.recovery_steps;
  h.temperature = o.temperature;
  h.hessian = hf.weight.size(0) * (hf.weight.size(1) + 1) <= h.max_dense_params
                  ? HeadHessian::kExact
                  : HeadHessian::kKfac;
  const torch::Tensor targets =
      s->calibration.targets.defined() && !s->calibration.targets.is_floating_point() &&
              s->calibration.targets.dim() == 1
          ? s->calibration.targets
          : torch::Tensor();
  ASSIGN_OR_RETURN(HeadRefitResult r, RefitHead(hf.features, s->teacher_logits, targets,
                                                hf.weight, hf.bias, h));
  return SetHead(s->module, hf.head, r.weight, r.bias);
}

// The pruned model's sizes, then its loss and accuracy before and after
// the recovery fine-tuning (progress in recovery steps under `stage`).
absl::Status MeasureAndRecover(const PruneOptions& o, int round, const std::string& stage,
                               ProgressSink* sink, const CancelToken* cancel, PruneState* s,
                               PruneRound* r) {
  const auto after = ShapeOf(s->vit);
  r->macs = s->metric.fixed_macs;
  r->params = s->metric.fixed_params;
  for (const auto& [h, m] : after) {
    r->macs += BlockMacs(s->vit, h, m);
    r->params += BlockParams(s->vit, h, m);
  }
  r->predicted_latency_ms = PredictedMs(s->metric.tables, s->metric.fixed_ms, after);
  ASSIGN_OR_RETURN(r->loss_before_recovery, MeanLoss(s->module, s->saliency_batches));
  RETURN_IF_ERROR(CheckFiniteValue(r->loss_before_recovery,
                                   absl::StrCat("the loss after pruning round ", round)));
  ASSIGN_OR_RETURN(r->accuracy_before_recovery, StepAccuracy(o, s->eval, s->module));
  if (o.recovery_steps == 0) {
    r->loss_after_recovery = r->loss_before_recovery;
    r->accuracy = r->accuracy_before_recovery;
    return absl::OkStatus();
  }
  if (o.optimizer == "newton") {
    RETURN_IF_ERROR(RefitHeadByNewton(o, s));
  } else {
    RETURN_IF_ERROR(RecoverByFineTuning(o, round, stage, sink, cancel, s));
  }
  ASSIGN_OR_RETURN(r->loss_after_recovery, MeanLoss(s->module, s->saliency_batches));
  RETURN_IF_ERROR(CheckFiniteValue(r->loss_after_recovery,
                                   absl::StrCat("the loss after recovery in round ", round)));
  ASSIGN_OR_RETURN(r->accuracy, StepAccuracy(o, s->eval, s->module));
  return absl::OkStatus();
}

// The partial result "round" and the log line of a finished round.
void ReportRound(const PruneRound& r, int64_t step_examples, ProgressSink* sink) {
  std::string json = absl::StrFormat(
      "{\"round\": %d, \"units_removed\": %d, \"macs\": %d, \"params\": %d, "
      "\"loss_before_recovery\": %.6g, \"loss_after_recovery\": %.6g",
      r.round, r.units_removed, r.macs, r.params, r.loss_before_recovery, r.loss_after_recovery);
  if (r.accuracy) absl::StrAppendFormat(&json, ", \"accuracy\": %.4f", *r.accuracy);
  json += "}";
  sink->PartialResult("round", json);
  sink->Log("INFO", absl::StrFormat("round %d: removed %d units, %d MACs per example%s", r.round,
                                    r.units_removed, r.macs,
                                    r.accuracy ? absl::StrFormat(", top-1 %.2f%% on %d examples",
                                                                 *r.accuracy, step_examples)
                                               : ""));
}

// Stage "round N": rank, remove down to this round's share of the target,
// cut, recover. Sets `stopped` when the minimums stop it short of its goal.
absl::Status PruneOneRound(const PruneOptions& o, int round, const std::string& stage,
                           ProgressSink* sink, const CancelToken* cancel, PruneState* s,
                           PruneReport* report) {
  const double goal = s->m0 * (1 - o.target_fraction * round / o.steps);
  ASSIGN_OR_RETURN(Ranking ranking, RankUnits(o, cancel, s, &report->hvp_count));
  const std::vector<bool> removed = RemoveInRankOrder(o, s->metric, ranking, ShapeOf(s->vit), goal);
  s->kept_last_round.clear();
  for (size_t u : ranking.order) {
    RankedUnit d = Describe(ranking, u, removed[u], round, s->vit, s->blocks);
    (removed[u] ? report->ranking : s->kept_last_round).push_back(std::move(d));
  }
  RETURN_IF_ERROR(Cut(ranking, removed, s->module, &s->vit, &s->blocks));

  PruneRound r;
  r.round = round;
  r.units_removed = std::count(removed.begin(), removed.end(), true);
  RETURN_IF_ERROR(MeasureAndRecover(o, round, stage, sink, cancel, s, &r));
  ReportRound(r, std::min(o.step_eval_samples, report->eval_examples), sink);
  report->rounds.push_back(r);
  s->stopped = r.units_removed == 0 && s->metric.Total(ShapeOf(s->vit)) > goal;
  return absl::OkStatus();
}

// Saves model.pt, reloads it, and measures the file: MACs, parameters,
// bytes, and latency (measured and predicted).
absl::Status SaveAndMeasure(const PruneOptions& o, const CancelToken* cancel, PruneState* s,
                            PruneReport* report) {
  report->model_path = (std::filesystem::path(o.output_dir) / "model.pt").string();
  try {
    s->module.save(report->model_path);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot save ", report->model_path, ": ", e.what_without_backtrace()));
  }
  ASSIGN_OR_RETURN(s->saved, LoadModel(report->model_path, o.device));
  ASSIGN_OR_RETURN(Inspection pruned, InspectModelFile(report->model_path, s->inspect, cancel));
  report->macs_after = pruned.total_macs;
  report->params_after = pruned.summary.num_parameters;
  report->bytes_after = pruned.summary.model_bytes;
  report->predicted_latency_after_ms =
      PredictedMs(s->metric.tables, s->metric.fixed_ms, ShapeOf(s->vit));
  if (o.measure_latency) {
    // Alternate runs of both models: timed minutes apart, on a loaded
    // machine, the same cut once read 6.61x and once 0.76x.
    ASSIGN_OR_RETURN(TimingComparison c,
                     CompareLatency(s->teacher, s->saved, s->latency_input, cancel));
    report->latency_before_ms = c.before_ms;
    report->latency_after_ms = c.after_ms;
    report->latency_comparison = c;
    if (!c.reliable) {
      report->warnings.push_back(
          absl::StrCat("no speed-up reported for the pruned model: ", c.reason));
    }
  }
  return absl::OkStatus();
}

// The target reached, and per block the shapes before and after and the
// original heads and neurons kept.
absl::Status Summarize(const PruneOptions& o, PruneState* s, PruneReport* report) {
  report->ranking.insert(report->ranking.end(), s->kept_last_round.begin(),
                         s->kept_last_round.end());
  const double m_after = s->metric.Total(ShapeOf(s->vit));
  report->achieved_fraction = 1 - m_after / s->m0;
  report->target_met = report->achieved_fraction >= o.target_fraction - 1e-9;
  if (!report->target_met) {
    report->warnings.push_back(absl::StrFormat(
        "target not met: %.1f%% of %s removed, %.1f%% asked; the minimums per block (%d heads, "
        "%d MLP neurons) stop further pruning",
        100 * report->achieved_fraction, report->target, 100 * o.target_fraction, o.min_heads,
        o.min_mlp));
  }
  const VitStructure& vit = s->vit;
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    PrunedBlock pb;
    pb.name = vit.blocks[b].path;
    pb.heads_after = vit.blocks[b].heads;
    pb.hidden_after = vit.blocks[b].hidden;
    pb.kept_heads = s->blocks[b].heads;
    pb.kept_neurons = s->blocks[b].neurons;
    pb.prunable_heads = vit.blocks[b].prunable_heads;
    report->blocks.push_back(std::move(pb));
  }
  for (size_t b = 0; b < s->shape_before.size() && b < report->blocks.size(); ++b) {
    report->blocks[b].heads_before = s->shape_before[b].first;
    report->blocks[b].hidden_before = s->shape_before[b].second;
  }
  return absl::OkStatus();
}

}  // namespace

const char* PruneTargetName(PruneTargetKind kind) {
  switch (kind) {
    case PruneTargetKind::kParams:
      return "params";
    case PruneTargetKind::kLatency:
      return "latency";
    case PruneTargetKind::kFlops:
      break;
  }
  return "flops";
}

absl::StatusOr<PruneReport> RunPruning(const PruneOptions& o, ProgressSink* sink,
                                       const CancelToken* cancel) {
  const auto wall_start = std::chrono::steady_clock::now();
  NullProgressSink null_sink;
  if (sink == nullptr) sink = &null_sink;
  RETURN_IF_ERROR(Validate(o));
  PruneReport report;
  report.saliency = SaliencyKindName(o.saliency);
  report.target = PruneTargetName(o.target);
  report.target_fraction = o.target_fraction;
  report.runtime = RuntimeDescription();
  PruneState s;
  RETURN_IF_ERROR(Prepare(o, cancel, &s, &report));

  const bool eval = !o.eval_dataset.empty();
  StageList stages;
  stages.AddIf(eval, "evaluation", [&] { return EvaluateOriginal(o, &s, &report); });
  stages.AddIf(o.measure_latency, "latency",
               [&] { return MeasureLatency(o, sink, cancel, &s, &report); });
  // The target quantity before pruning (with a latency target, it needs the
  // timings).
  stages.AddStep("goal", [&] {
    s.m0 = s.metric.Total(ShapeOf(s.vit));
    return absl::OkStatus();
  });
  for (int round = 1; round <= o.steps; ++round) {
    const std::string stage = absl::StrCat("round ", round);
    stages.AddWhen(
        [&s] { return !s.stopped; }, stage,
        [&, round, stage] { return PruneOneRound(o, round, stage, sink, cancel, &s, &report); });
  }
  stages.AddStep("save", [&] { return SaveAndMeasure(o, cancel, &s, &report); });
  stages.AddIf(eval, "evaluation", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(report.accuracy_after,
                     TopOneAccuracy(s.saved, s.eval->inputs, s.eval->targets, o.device));
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(stages.Run(sink, cancel));
  RETURN_IF_ERROR(Summarize(o, &s, &report));
  report.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return report;
}

absl::Status CheckPrunableModelFile(const std::string& path) {
  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(path, "cpu"));
  try {
    return FindVitBlocks(module).status();
  } catch (const std::exception& e) {  // c10::Error or torch::jit::JITException
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the structure of ", path, ": ", e.what()));
  }
}

}  // namespace compress::engine
