#include "server/engine/prune/prune.h"

#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/engine/common/runtime.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/model/model_info.h"
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
  if (o.optimizer != "adam" && o.optimizer != "sgd") {
    return Invalid("optimizer", "must be \"adam\" or \"sgd\"");
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

// First `n` rows of `t`, repeated when it has fewer.
torch::Tensor Rows(const torch::Tensor& t, int64_t n) {
  if (t.size(0) >= n) return t.narrow(0, 0, n);
  std::vector<int64_t> reps(t.dim(), 1);
  reps[0] = (n + t.size(0) - 1) / t.size(0);
  return t.repeat(reps).narrow(0, 0, n);
}

absl::StatusOr<torch::Tensor> Logits(torch::jit::Module& module, const torch::Tensor& inputs,
                                     int64_t batch) {
  std::vector<torch::Tensor> out;
  c10::InferenceMode guard;
  for (int64_t s = 0; s < inputs.size(0); s += batch) {
    ASSIGN_OR_RETURN(torch::Tensor o,
                     RunForward(module, inputs.narrow(0, s, std::min(batch, inputs.size(0) - s))));
    out.push_back(o.detach().clone());
  }
  return torch::cat(out, 0);
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
  auto check = [cancel]() { return cancel == nullptr ? absl::OkStatus() : cancel->Check(); };
  RETURN_IF_ERROR(Validate(o));
  PruneReport report;
  report.saliency = SaliencyKindName(o.saliency);
  report.target = PruneTargetName(o.target);
  report.target_fraction = o.target_fraction;
  report.runtime = RuntimeDescription();

  ASSIGN_OR_RETURN(torch::jit::Module module, LoadModel(o.model_path, o.device));
  ASSIGN_OR_RETURN(torch::jit::Module teacher, LoadModel(o.model_path, o.device));
  auto load = [&o](const std::string& id, int64_t n) {
    return IsBuiltinDataset(id) ? LoadBuiltinDataset(id, n, o.idx_dir) : LoadDataset(id, n);
  };
  ASSIGN_OR_RETURN(LoadedDataset calibration, load(o.calibration_dataset, o.num_samples));
  const torch::Device device(o.device);
  const torch::Tensor first_param = *module.parameters().begin();
  calibration.inputs = at::isFloatingType(calibration.inputs.scalar_type())
                           ? calibration.inputs.to(device, first_param.scalar_type())
                           : calibration.inputs.to(device);
  if (calibration.targets.defined()) calibration.targets = calibration.targets.to(device);
  std::vector<int64_t> input_shape = calibration.inputs.sizes().vec();
  input_shape[0] = 1;

  ASSIGN_OR_RETURN(VitStructure vit, DiscoverVit(module, input_shape));
  report.style = vit.style;
  InspectOptions inspect;
  inspect.input_shape = input_shape;
  inspect.device = o.device;
  ASSIGN_OR_RETURN(Inspection before, InspectModelFile(o.model_path, inspect, cancel));
  report.macs_before = before.total_macs;
  report.params_before = before.summary.num_parameters;
  report.bytes_before = before.summary.model_bytes;

  Metric metric;
  metric.kind = o.target;
  metric.vit = &vit;
  metric.fixed_macs = before.total_macs;
  metric.fixed_params = before.summary.num_parameters;
  for (const VitBlock& b : vit.blocks) {
    metric.fixed_macs -= BlockMacs(vit, b.heads, b.hidden);
    metric.fixed_params -= BlockParams(vit, b.heads, b.hidden);
  }

  // Teacher logits for recovery; calibration batches (labels fixed by the
  // original model when the data have none) for saliency.
  ASSIGN_OR_RETURN(torch::Tensor teacher_logits,
                   Logits(teacher, calibration.inputs, o.batch_size));
  const int64_t saliency_n = std::min(o.saliency_samples, calibration.inputs.size(0));
  ASSIGN_OR_RETURN(
      PreparedBatches saliency_batches,
      PrepareBatches(teacher, calibration.inputs.narrow(0, 0, saliency_n),
                     calibration.targets.defined() ? calibration.targets.narrow(0, 0, saliency_n)
                                                   : torch::Tensor(),
                     o.batch_size, o.loss));

  std::optional<LoadedDataset> eval;
  if (!o.eval_dataset.empty()) {
    sink->StageStart("evaluation", 0, 1);
    ASSIGN_OR_RETURN(LoadedDataset e, load(o.eval_dataset, o.eval_samples));
    eval = std::move(e);
    report.eval_examples = eval->inputs.size(0);
    ASSIGN_OR_RETURN(double acc, TopOneAccuracy(teacher, eval->inputs, eval->targets, o.device));
    report.accuracy_before = acc;
    sink->StageEnd("evaluation");
  }
  auto step_accuracy = [&](torch::jit::Module& m) -> absl::StatusOr<std::optional<double>> {
    if (!eval.has_value()) return std::optional<double>();
    const int64_t n = std::min(o.step_eval_samples, eval->inputs.size(0));
    ASSIGN_OR_RETURN(double acc, TopOneAccuracy(m, eval->inputs.narrow(0, 0, n),
                                                eval->targets.narrow(0, 0, n), o.device));
    return std::optional<double>(acc);
  };

  // Latency tables, one per distinct block shape.
  std::vector<LatencyTable> tables;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, size_t> table_of_shape;
  torch::Tensor latency_input = Rows(calibration.inputs, o.latency_batch);
  if (o.measure_latency) {
    sink->StageStart("latency", 0, 1);
    tables.reserve(vit.blocks.size());
    for (size_t b = 0; b < vit.blocks.size(); ++b) {
      const VitBlock& blk = vit.blocks[b];
      auto key = std::make_tuple(blk.heads, blk.head_dim, blk.hidden, blk.prunable_heads);
      if (!table_of_shape.count(key)) {
        ASSIGN_OR_RETURN(LatencyTable t,
                         MeasureBlockLatency(module, vit, static_cast<int>(b), o.latency_batch,
                                             std::min(o.min_mlp, blk.hidden), cancel));
        table_of_shape[key] = tables.size();
        tables.push_back(std::move(t));
      }
      sink->Progress("latency", static_cast<int64_t>(b + 1),
                     static_cast<int64_t>(vit.blocks.size()));
    }
    for (const VitBlock& blk : vit.blocks) {
      metric.tables.push_back(
          &tables[table_of_shape[std::make_tuple(blk.heads, blk.head_dim, blk.hidden,
                                                 blk.prunable_heads)]]);
    }
    ASSIGN_OR_RETURN(double ms, MeasureLatencyMs(module, latency_input));
    report.latency_before_ms = ms;
    report.latency_batch = o.latency_batch;
    metric.fixed_ms = ms;
    for (size_t b = 0; b < vit.blocks.size(); ++b) {
      metric.fixed_ms -= metric.tables[b]->Predict(vit.blocks[b].heads, vit.blocks[b].hidden);
    }
    if (metric.fixed_ms < 0) {
      report.warnings.push_back(absl::StrFormat(
          "the blocks timed alone took longer than the whole model (%.2f ms over); the latency "
          "model treats the rest of the model as free",
          -metric.fixed_ms));
      metric.fixed_ms = 0;
    }
    sink->StageEnd("latency");
  }

  std::vector<BlockState> state(vit.blocks.size());
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    for (int64_t h = 0; h < vit.blocks[b].heads; ++h) state[b].heads.push_back(h);
    for (int64_t n = 0; n < vit.blocks[b].hidden; ++n) state[b].neurons.push_back(n);
  }
  const double m0 = metric.Total(ShapeOf(vit));
  RecoveryOptions recovery;
  recovery.steps = o.recovery_steps;
  recovery.learning_rate = o.learning_rate;
  recovery.temperature = o.temperature;
  recovery.optimizer = o.optimizer;
  recovery.batch_size = o.batch_size;

  std::vector<RankedUnit> kept_last_round;
  for (int round = 1; round <= o.steps; ++round) {
    RETURN_IF_ERROR(check());
    const std::string stage = absl::StrCat("round ", round);
    sink->StageStart(stage, round - 1, o.steps);
    const double goal = m0 * (1 - o.target_fraction * round / o.steps);
    const std::vector<PruneUnit> units = UnitsOf(vit, o.head_group, o.mlp_group);
    ASSIGN_OR_RETURN(std::vector<UnitSaliency> sal,
                     ComputeSaliency(module, vit, units, saliency_batches, o.saliency, cancel,
                                     &report.hvp_count));
    const auto shape = ShapeOf(vit);
    std::vector<double> scores, costs, saved_ms;
    for (size_t u = 0; u < units.size(); ++u) {
      const PruneUnit& unit = units[u];
      const auto [h, m] = shape[unit.block];
      const int64_t h2 = unit.head ? h - unit.count : h;
      const int64_t m2 = unit.head ? m : m - unit.count;
      scores.push_back(sal[u].score);
      costs.push_back(metric.Block(unit.block, h, m) - metric.Block(unit.block, h2, m2));
      saved_ms.push_back(metric.tables.empty() ? 0
                                               : metric.tables[unit.block]->Predict(h, m) -
                                                     metric.tables[unit.block]->Predict(h2, m2));
    }
    const double ms_scale = MeanAbs(scores), mc_scale = MeanAbs(costs), ml_scale = MeanAbs(saved_ms);
    std::vector<double> key(units.size());
    for (size_t u = 0; u < units.size(); ++u) {
      key[u] = (scores[u] / ms_scale) / std::max(costs[u] / mc_scale, 1e-6) -
               o.latency_weight * saved_ms[u] / ml_scale;
    }
    std::vector<size_t> order(units.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });

    // Greedy removal in rank order.
    auto current = shape;
    std::vector<bool> removed(units.size(), false);
    int64_t removed_count = 0;
    for (size_t u : order) {
      if (metric.Total(current) <= goal) break;
      const PruneUnit& unit = units[u];
      auto& [h, m] = current[unit.block];
      if (unit.head ? h - unit.count < o.min_heads : m - unit.count < o.min_mlp) continue;
      (unit.head ? h : m) -= unit.count;
      removed[u] = true;
      ++removed_count;
    }
    auto describe = [&](size_t u) {
      const PruneUnit& unit = units[u];
      RankedUnit r;
      r.round = round;
      r.block = vit.blocks[unit.block].path;
      r.kind = unit.head ? "head" : "mlp";
      r.first = unit.head ? state[unit.block].heads[unit.first]
                          : state[unit.block].neurons[unit.first];
      r.count = unit.count;
      r.score = sal[u].score;
      r.taylor = sal[u].taylor;
      r.first_order = sal[u].first_order;
      r.second_order = sal[u].second_order;
      r.magnitude = sal[u].magnitude;
      r.cost = costs[u];
      r.latency_ms = saved_ms[u];
      r.rank_key = key[u];
      r.removed = removed[u];
      return r;
    };
    kept_last_round.clear();
    for (size_t u : order) {
      if (removed[u]) {
        report.ranking.push_back(describe(u));
      } else {
        kept_last_round.push_back(describe(u));
      }
    }

    // Surgery.
    VitPlan plan;
    std::vector<BlockState> next(state.size());
    for (size_t b = 0; b < vit.blocks.size(); ++b) {
      std::vector<bool> drop_head(vit.blocks[b].heads, false), drop_neuron(vit.blocks[b].hidden, false);
      for (size_t u = 0; u < units.size(); ++u) {
        if (!removed[u] || units[u].block != static_cast<int>(b)) continue;
        for (int64_t i = units[u].first; i < units[u].first + units[u].count; ++i) {
          (units[u].head ? drop_head : drop_neuron)[i] = true;
        }
      }
      BlockPlan p;
      for (int64_t h = 0; h < vit.blocks[b].heads; ++h) {
        if (drop_head[h]) continue;
        p.heads.push_back(h);
        next[b].heads.push_back(state[b].heads[h]);
      }
      for (int64_t n = 0; n < vit.blocks[b].hidden; ++n) {
        if (drop_neuron[n]) continue;
        p.neurons.push_back(n);
        next[b].neurons.push_back(state[b].neurons[n]);
      }
      plan.blocks.push_back(std::move(p));
    }
    ASSIGN_OR_RETURN(vit, ApplyPlan(module, vit, plan));
    state = std::move(next);

    PruneRound r;
    r.round = round;
    r.units_removed = removed_count;
    const auto after = ShapeOf(vit);
    r.macs = metric.fixed_macs;
    r.params = metric.fixed_params;
    for (const auto& [h, m] : after) {
      r.macs += BlockMacs(vit, h, m);
      r.params += BlockParams(vit, h, m);
    }
    r.predicted_latency_ms = PredictedMs(metric.tables, metric.fixed_ms, after);
    ASSIGN_OR_RETURN(r.loss_before_recovery, MeanLoss(module, saliency_batches));
    ASSIGN_OR_RETURN(r.accuracy_before_recovery, step_accuracy(module));
    if (o.recovery_steps > 0) {
      recovery.seed = o.seed + static_cast<uint64_t>(round);
      ASSIGN_OR_RETURN(RecoveryStats stats,
                       Recover(module, calibration.inputs, teacher_logits, calibration.targets,
                               recovery, sink, stage, cancel));
      (void)stats;
      ASSIGN_OR_RETURN(r.loss_after_recovery, MeanLoss(module, saliency_batches));
      ASSIGN_OR_RETURN(r.accuracy, step_accuracy(module));
    } else {
      r.loss_after_recovery = r.loss_before_recovery;
      r.accuracy = r.accuracy_before_recovery;
    }
    std::string json = absl::StrFormat(
        "{\"round\": %d, \"units_removed\": %d, \"macs\": %d, \"params\": %d, "
        "\"loss_before_recovery\": %.6g, \"loss_after_recovery\": %.6g",
        round, removed_count, r.macs, r.params, r.loss_before_recovery, r.loss_after_recovery);
    if (r.accuracy) absl::StrAppendFormat(&json, ", \"accuracy\": %.4f", *r.accuracy);
    json += "}";
    sink->PartialResult("round", json);
    sink->Log("INFO", absl::StrFormat("round %d: removed %d units, %d MACs per example%s", round,
                                      removed_count, r.macs,
                                      r.accuracy ? absl::StrFormat(", top-1 %.2f%% on %d examples",
                                                                   *r.accuracy,
                                                                   std::min(o.step_eval_samples,
                                                                            report.eval_examples))
                                                 : ""));
    report.rounds.push_back(r);
    sink->StageEnd(stage);
    if (removed_count == 0 && metric.Total(after) > goal) break;  // minimums reached
  }
  report.ranking.insert(report.ranking.end(), kept_last_round.begin(), kept_last_round.end());

  // Save, reload, measure.
  report.model_path = (std::filesystem::path(o.output_dir) / "model.pt").string();
  try {
    module.save(report.model_path);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot save ", report.model_path, ": ",
                                            e.what_without_backtrace()));
  }
  ASSIGN_OR_RETURN(torch::jit::Module saved, LoadModel(report.model_path, o.device));
  ASSIGN_OR_RETURN(Inspection pruned, InspectModelFile(report.model_path, inspect, cancel));
  report.macs_after = pruned.total_macs;
  report.params_after = pruned.summary.num_parameters;
  report.bytes_after = pruned.summary.model_bytes;
  report.predicted_latency_after_ms = PredictedMs(metric.tables, metric.fixed_ms, ShapeOf(vit));
  if (o.measure_latency) {
    ASSIGN_OR_RETURN(double ms, MeasureLatencyMs(saved, latency_input));
    report.latency_after_ms = ms;
  }
  if (eval.has_value()) {
    sink->StageStart("evaluation", 0, 1);
    ASSIGN_OR_RETURN(double acc, TopOneAccuracy(saved, eval->inputs, eval->targets, o.device));
    report.accuracy_after = acc;
    sink->StageEnd("evaluation");
  }
  const double m_after = metric.Total(ShapeOf(vit));
  report.achieved_fraction = 1 - m_after / m0;
  report.target_met = report.achieved_fraction >= o.target_fraction - 1e-9;
  if (!report.target_met) {
    report.warnings.push_back(absl::StrFormat(
        "target not met: %.1f%% of %s removed, %.1f%% asked; the minimums per block (%d heads, "
        "%d MLP neurons) stop further pruning",
        100 * report.achieved_fraction, report.target, 100 * o.target_fraction, o.min_heads,
        o.min_mlp));
  }
  for (size_t b = 0; b < vit.blocks.size(); ++b) {
    PrunedBlock pb;
    pb.name = vit.blocks[b].path;
    pb.heads_after = vit.blocks[b].heads;
    pb.hidden_after = vit.blocks[b].hidden;
    pb.kept_heads = state[b].heads;
    pb.kept_neurons = state[b].neurons;
    pb.prunable_heads = vit.blocks[b].prunable_heads;
    report.blocks.push_back(std::move(pb));
  }
  {
    // Shapes before, from the original structure.
    torch::jit::Module original = teacher;
    ASSIGN_OR_RETURN(VitStructure v0, DiscoverVit(original, input_shape));
    for (size_t b = 0; b < v0.blocks.size() && b < report.blocks.size(); ++b) {
      report.blocks[b].heads_before = v0.blocks[b].heads;
      report.blocks[b].hidden_before = v0.blocks[b].hidden;
    }
  }
  report.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return report;
}

}  // namespace compress::engine
