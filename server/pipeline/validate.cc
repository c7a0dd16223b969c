#include "server/pipeline/validate.h"

#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/model/model_info.h"
#include "server/util/client_text.h"
#include "server/util/defaults.h"
#include "server/util/status_macros.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

namespace {

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status CheckDataset(const std::string& field, const std::string& id, Resources& r) {
  if (id.empty()) return Invalid(field, "required");
  auto dataset = r.GetDataset(id);
  if (dataset.ok()) return absl::OkStatus();
  if (absl::IsNotFound(dataset.status()) && r.GetModel(id).ok()) {
    return Invalid(field, absl::StrCat(QuoteClientText(id), " is a model, not a dataset"));
  }
  if (absl::IsNotFound(dataset.status())) {
    return absl::NotFoundError(
        absl::StrCat(field, ": dataset ", QuoteClientText(id), " not found"));
  }
  return dataset.status();
}

absl::Status CheckData(const std::string& field, const v1::CalibrationData& d, Resources& r) {
  RETURN_IF_ERROR(CheckDataset(field + ".dataset_id", d.dataset_id(), r));
  if (d.num_samples() < 0) return Invalid(field + ".num_samples", "must be >= 0 (0 = all)");
  if (d.batch_size() < 0) return Invalid(field + ".batch_size", "must be >= 0 (0 = default)");
  return absl::OkStatus();
}

template <typename Int>
absl::Status AtLeast(const std::string& field, bool has, Int value, Int min) {
  if (has && value < min) return Invalid(field, absl::StrCat("must be >= ", min, ", got ", value));
  return absl::OkStatus();
}

absl::Status Fraction(const std::string& field, bool has, double value) {
  if (has && !(value > 0 && value < 1)) {
    return Invalid(field, absl::StrCat("must be in (0, 1), got ", value));
  }
  return absl::OkStatus();
}

absl::Status Positive(const std::string& field, bool has, double value) {
  if (has && !(value > 0)) return Invalid(field, absl::StrCat("must be > 0, got ", value));
  return absl::OkStatus();
}


// The language-modeling loss's ignore id: only with that loss, and a token
// id (>= 0).
absl::Status CheckLmIgnoreId(const std::string& f, v1::LossKind loss, bool has, int64_t id) {
  if (!has) return absl::OkStatus();
  if (loss != v1::LOSS_KIND_LANGUAGE_MODELING) {
    return Invalid(f + ".lm_ignore_id", "only with loss LOSS_KIND_LANGUAGE_MODELING");
  }
  if (id < 0) return Invalid(f + ".lm_ignore_id", absl::StrCat("must be >= 0, got ", id));
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckModel(const std::string& field, const std::string& id, Resources& r,
                        v1::Model* out) {
  if (id.empty()) return Invalid(field, "required");
  auto model = r.GetModel(id);
  if (model.ok()) {
    if (out != nullptr) *out = *std::move(model);
    return absl::OkStatus();
  }
  if (absl::IsNotFound(model.status()) && r.GetDataset(id).ok()) {
    return Invalid(field, absl::StrCat(QuoteClientText(id), " is a dataset, not a model"));
  }
  if (absl::IsNotFound(model.status())) {
    return absl::NotFoundError(absl::StrCat(field, ": model ", QuoteClientText(id), " not found"));
  }
  return model.status();
}

absl::Status ValidateAnalyzeSpec(const v1::AnalyzeSpec& s, Resources& r) {
  const std::string f = "analyze";
  RETURN_IF_ERROR(CheckModel(f + ".model_id", s.model_id(), r));
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), r));
  const auto& t = s.traces();
  // A standard error needs two probes; the engine refuses fewer at run time.
  RETURN_IF_ERROR(AtLeast(f + ".traces.max_probes", t.has_max_probes(), t.max_probes(), 2));
  RETURN_IF_ERROR(AtLeast(f + ".traces.min_probes", t.has_min_probes(), t.min_probes(), 2));
  if (t.has_min_probes() && t.has_max_probes() && t.min_probes() > t.max_probes()) {
    return Invalid(f + ".traces.min_probes", "must not exceed max_probes");
  }
  RETURN_IF_ERROR(Fraction(f + ".traces.tolerance", t.has_tolerance(), t.tolerance()));
  const auto& e = s.eigen();
  RETURN_IF_ERROR(AtLeast(f + ".eigen.k", e.has_k(), e.k(), 1));
  RETURN_IF_ERROR(
      AtLeast(f + ".eigen.max_iterations", e.has_max_iterations(), e.max_iterations(), 1));
  RETURN_IF_ERROR(Fraction(f + ".eigen.tolerance", e.has_tolerance(), e.tolerance()));
  if (!v1::EigenMethod_IsValid(e.method())) {
    return Invalid(f + ".eigen.method", absl::StrCat("unknown value ", e.method()));
  }
  const auto& d = s.density();
  RETURN_IF_ERROR(
      AtLeast(f + ".density.lanczos_steps", d.has_lanczos_steps(), d.lanczos_steps(), 2));
  RETURN_IF_ERROR(AtLeast(f + ".density.runs", d.has_runs(), d.runs(), 1));
  RETURN_IF_ERROR(AtLeast(f + ".density.grid_points", d.has_grid_points(), d.grid_points(), 2));
  RETURN_IF_ERROR(Positive(f + ".density.sigma", d.has_sigma(), d.sigma()));
  RETURN_IF_ERROR(AtLeast(f + ".density.max_memory_bytes", d.has_max_memory_bytes(),
                          d.max_memory_bytes(), int64_t{1}));
  if (d.has_bulk_mass() && !(d.bulk_mass() >= 0 && d.bulk_mass() < 1)) {
    return Invalid(f + ".density.bulk_mass",
                   absl::StrCat("must be in [0, 1), got ", d.bulk_mass()));
  }
  if (d.has_outlier_gap() && !(d.outlier_gap() >= 0)) {
    return Invalid(f + ".density.outlier_gap",
                   absl::StrCat("must be >= 0, got ", d.outlier_gap()));
  }
  RETURN_IF_ERROR(AtLeast(f + ".qbert.subsets", s.qbert().has_subsets(), s.qbert().subsets(), 2));
  return CheckLmIgnoreId(f, s.loss(), s.has_lm_ignore_id(), s.lm_ignore_id());
}

absl::Status ValidateQuantizeSpec(const std::string& f, const v1::QuantizeSpec& s,
                                     Resources& r) {
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), r));
  if (!s.eval_dataset_id().empty()) {
    RETURN_IF_ERROR(CheckDataset(f + ".eval_dataset_id", s.eval_dataset_id(), r));
  }
  for (int i = 0; i < s.candidate_bits_size(); ++i) {
    const int bits = s.candidate_bits(i);
    if (!defaults::IsQuantizedBits(bits)) {
      return Invalid(absl::StrCat(f, ".candidate_bits[", i, "]"),
                     absl::StrCat("must be ", defaults::kMinBits, "..",
                                  defaults::kMaxBits,
                                  " (float is always a candidate), got ", bits));
    }
  }
  std::set<std::string> pinned;
  for (int i = 0; i < s.pins_size(); ++i) {
    const std::string field = absl::StrCat(f, ".pins[", i, "]");
    if (s.pins(i).layer().empty()) return Invalid(field + ".layer", "required");
    if (!pinned.insert(s.pins(i).layer()).second) {
      return Invalid(field + ".layer",
                     absl::StrCat(QuoteClientText(s.pins(i).layer()), " is pinned twice"));
    }
    if (!defaults::IsPinBits(s.pins(i).bits())) {
      return Invalid(field + ".bits",
                     absl::StrCat("must be ", defaults::kMinBits, "..",
                                  defaults::kMaxBits, ", 16 or 32 (float), got ",
                                  s.pins(i).bits()));
    }
  }
  for (int i = 0; i < s.ties_size(); ++i) {
    const std::string field = absl::StrCat(f, ".ties[", i, "].layers");
    if (s.ties(i).layers_size() < 2) {
      return Invalid(field,
                     absl::StrCat("a tie needs at least 2 layers, got ", s.ties(i).layers_size()));
    }
    for (int j = 0; j < s.ties(i).layers_size(); ++j) {
      if (s.ties(i).layers(j).empty()) {
        return Invalid(absl::StrCat(field, "[", j, "]"), "empty layer name");
      }
    }
  }
  if (s.omega() == v1::OMEGA_QUADRATIC && !s.sensitivity_job_id().empty()) {
    return Invalid(f + ".omega",
                   "OMEGA_QUADRATIC is computed in the job; sensitivity_job_id gives traces only");
  }
  if (!v1::Omega_IsValid(s.omega())) {
    return Invalid(f + ".omega", absl::StrCat("unknown value ", s.omega()));
  }
  RETURN_IF_ERROR(AtLeast(f + ".eval_samples", s.has_eval_samples(), s.eval_samples(), int64_t{0}));
  RETURN_IF_ERROR(Fraction(f + ".trace_tolerance", s.has_trace_tolerance(), s.trace_tolerance()));
  RETURN_IF_ERROR(
      AtLeast(f + ".trace_max_probes", s.has_trace_max_probes(), s.trace_max_probes(), 1));
  const auto& q = s.quantizer();
  if (q.granularity() == v1::GRANULARITY_GROUP || q.has_group_size()) {
    const int64_t g = q.has_group_size() ? q.group_size() : defaults::kGroupSize;
    if (!defaults::IsGroupSize(g)) {
      return Invalid(f + ".quantizer.group_size",
                     absl::StrCat("must be ", defaults::GroupSizesText(), ", got ", g));
    }
  }
  if (q.has_gptq_damping() && !(q.gptq_damping() > 0 && q.gptq_damping() < 1)) {
    return Invalid(f + ".quantizer.gptq_damping", "must be in (0, 1)");
  }
  RETURN_IF_ERROR(
      AtLeast(f + ".quantizer.gptq_block_size", q.has_gptq_block_size(), q.gptq_block_size(), 1));
  switch (s.budget().limit_case()) {
    case v1::Budget::kAverageBits:
      if (!(s.budget().average_bits() >= 2 && s.budget().average_bits() <= 32)) {
        return Invalid(f + ".budget.average_bits",
                       absl::StrCat("must be in [2, 32], got ", s.budget().average_bits()));
      }
      break;
    case v1::Budget::kModelBytes:
      if (s.budget().model_bytes() <= 0) return Invalid(f + ".budget.model_bytes", "must be > 0");
      break;
    case v1::Budget::kBops:
      if (!(s.budget().bops() > 0)) return Invalid(f + ".budget.bops", "must be > 0");
      break;
    default:
      break;  // 4 average bits, or none for accuracy-bounded search
  }
  if (s.has_head_refit()) {
    const v1::HeadRefitOptions& h = s.head_refit();
    if (h.has_iterations() && (h.iterations() < 1 || h.iterations() > 1000)) {
      return Invalid(f + ".head_refit.iterations",
                     absl::StrCat("must be in 1..1000, got ", h.iterations()));
    }
    if (h.has_alpha() && !(h.alpha() >= 0 && h.alpha() <= 1)) {
      return Invalid(f + ".head_refit.alpha", "must be in [0, 1]");
    }
    RETURN_IF_ERROR(
        Positive(f + ".head_refit.temperature", h.has_temperature(), h.temperature()));
  }
  RETURN_IF_ERROR(CheckLmIgnoreId(f, s.loss(), s.has_lm_ignore_id(), s.lm_ignore_id()));
  if (s.search() == v1::SEARCH_METHOD_ACCURACY_BISECTION) {
    if (s.loss() == v1::LOSS_KIND_LANGUAGE_MODELING) {
      return Invalid(f + ".search", "accuracy-bounded search keeps a top-1 accuracy, which a "
                                    "language model (loss LOSS_KIND_LANGUAGE_MODELING) is not "
                                    "measured by; give a size budget");
    }
    if (s.eval_dataset_id().empty()) {
      return Invalid(f + ".eval_dataset_id", "required for accuracy-bounded search");
    }
    if (s.tolerance().limit_case() == v1::AccuracyTolerance::LIMIT_NOT_SET) {
      return Invalid(f + ".tolerance", "required for accuracy-bounded search");
    }
  }
  if (s.tolerance().has_max_drop_pp() && !(s.tolerance().max_drop_pp() >= 0)) {
    return Invalid(f + ".tolerance.max_drop_pp", "must be >= 0");
  }
  if (s.tolerance().has_max_relative_drop() &&
      !(s.tolerance().max_relative_drop() >= 0 && s.tolerance().max_relative_drop() < 1)) {
    return Invalid(f + ".tolerance.max_relative_drop", "must be in [0, 1)");
  }
  return absl::OkStatus();
}

absl::Status ValidatePruneSpec(const std::string& f, const v1::PruneSpec& s, Resources& r) {
  v1::Model model;
  RETURN_IF_ERROR(CheckModel(f + ".model_id", s.model_id(), r, &model));
  // The upload's verdict from the run's own discovery; models stored before
  // it existed fall back to the layer-name heuristic.
  if (model.prune_check().checked()) {
    if (!model.prune_check().prunable()) {
      return absl::FailedPreconditionError(absl::StrCat(f, ".model_id: model ",
                                                        QuoteClientText(s.model_id()), ": ",
                                                        model.prune_check().reason()));
    }
  } else if (!LooksLikeTransformer(model)) {
    return absl::FailedPreconditionError(absl::StrCat(
        f, ".model_id: model ", QuoteClientText(s.model_id()),
        " is not a transformer (no attn.qkv, self_attention, q_proj, query, q, c_attn or qkv "
        "layers); structural pruning needs one"));
  }
  RETURN_IF_ERROR(CheckData(f + ".data", s.data(), r));
  if (!s.eval_dataset_id().empty()) {
    RETURN_IF_ERROR(CheckDataset(f + ".eval_dataset_id", s.eval_dataset_id(), r));
  }
  switch (s.target().target_case()) {
    case v1::PruneTarget::kFlopsFraction:
      RETURN_IF_ERROR(Fraction(f + ".target.flops_fraction", true, s.target().flops_fraction()));
      break;
    case v1::PruneTarget::kParamsFraction:
      RETURN_IF_ERROR(Fraction(f + ".target.params_fraction", true, s.target().params_fraction()));
      break;
    case v1::PruneTarget::kLatencyFraction:
      RETURN_IF_ERROR(
          Fraction(f + ".target.latency_fraction", true, s.target().latency_fraction()));
      break;
    default:
      return Invalid(f + ".target",
                     "required (flops_fraction, params_fraction or latency_fraction)");
  }
  if (s.latency_weight() < 0) return Invalid(f + ".latency_weight", "must be >= 0");
  RETURN_IF_ERROR(AtLeast(f + ".head_group", s.has_head_group(), s.head_group(), 1));
  RETURN_IF_ERROR(AtLeast(f + ".mlp_group", s.has_mlp_group(), s.mlp_group(), 1));
  RETURN_IF_ERROR(AtLeast(f + ".steps", s.has_steps(), s.steps(), 1));
  RETURN_IF_ERROR(
      AtLeast(f + ".recovery.steps", s.recovery().has_steps(), s.recovery().steps(), 0));
  RETURN_IF_ERROR(Positive(f + ".recovery.learning_rate", s.recovery().has_learning_rate(),
                           s.recovery().learning_rate()));
  RETURN_IF_ERROR(Positive(f + ".recovery.temperature", s.recovery().has_temperature(),
                           s.recovery().temperature()));
  if (!s.recovery().optimizer().empty() && s.recovery().optimizer() != "adam" &&
      s.recovery().optimizer() != "sgd" && s.recovery().optimizer() != "newton") {
    return Invalid(f + ".recovery.optimizer",
                   absl::StrCat("must be \"adam\", \"sgd\" or \"newton\", got \"",
                                QuoteClientText(s.recovery().optimizer()), "\""));
  }
  RETURN_IF_ERROR(AtLeast(f + ".saliency_samples", s.has_saliency_samples(),
                          s.saliency_samples(), int64_t{1}));
  RETURN_IF_ERROR(AtLeast(f + ".eval_samples", s.has_eval_samples(), s.eval_samples(), int64_t{0}));
  RETURN_IF_ERROR(AtLeast(f + ".latency_batch", s.has_latency_batch(), s.latency_batch(), int64_t{1}));
  RETURN_IF_ERROR(AtLeast(f + ".min_heads", s.has_min_heads(), s.min_heads(), 1));
  RETURN_IF_ERROR(AtLeast(f + ".min_mlp", s.has_min_mlp(), s.min_mlp(), 1));
  return absl::OkStatus();
}

bool LooksLikeTransformer(const v1::Model& model) {
  for (const v1::Layer& l : model.layers()) {
    if (absl::StrContains(l.name(), "self_attention")) return true;
    for (const char* end : {"attn.qkv", ".qkv", ".q_proj", ".query", ".q", ".c_attn", ".q_lin",
                            ".wq"}) {
      if (absl::EndsWith(l.name(), end)) return true;
    }
  }
  return false;
}

absl::Status ValidateInspectSpec(const v1::InspectSpec& s, Resources& r) {
  RETURN_IF_ERROR(CheckModel("inspect.model_id", s.model_id(), r));
  if (!s.input_dtype().empty() && !engine::IsInputDtype(s.input_dtype())) {
    return Invalid("inspect.input_dtype",
                   absl::StrCat("must be one of ", absl::StrJoin(engine::kInputDtypes, ", "),
                                ", got \"", QuoteClientText(s.input_dtype()), "\""));
  }
  if (s.input_shape_size() == 0) {
    if (s.dataset_id().empty()) {
      return Invalid("inspect.input_shape", "required when inspect.dataset_id is empty");
    }
    return CheckDataset("inspect.dataset_id", s.dataset_id(), r);
  }
  if (s.input_shape_size() > 8) return Invalid("inspect.input_shape", "at most 8 dimensions");
  int64_t numel = 1;
  for (int i = 0; i < s.input_shape_size(); ++i) {
    if (s.input_shape(i) <= 0) {
      return Invalid(absl::StrCat("inspect.input_shape[", i, "]"),
                     absl::StrCat("must be > 0, got ", s.input_shape(i)));
    }
    numel *= s.input_shape(i);
    if (numel > (int64_t{1} << 31)) return Invalid("inspect.input_shape", "input too large");
  }
  return absl::OkStatus();
}

}  // namespace compress::pipeline
