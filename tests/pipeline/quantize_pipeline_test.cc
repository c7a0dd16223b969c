// QUANTIZE outside the engine: how a QuantizeSpec becomes QuantizeOptions
// (defaults, pins, budgets, the traces of an ANALYZE job), which specs are
// refused at submit and with which code and field, and the result summary.
#include "server/pipeline/quantize.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/pipeline/pipeline.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

constexpr char kModel[] = "model-1";
constexpr char kOtherModel[] = "model-2";
constexpr char kTrain[] = "builtin:fashion-mnist/train";
constexpr char kTest[] = "builtin:fashion-mnist/test";

class FakeResources : public Resources {
 public:
  FakeResources() {
    for (const char* id : {kModel, kOtherModel}) {
      v1::Model m;
      m.set_id(id);
      models_[id] = m;
    }
    for (const char* id : {kTrain, kTest}) {
      v1::Dataset d;
      d.set_id(id);
      datasets_[id] = d;
    }
  }
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    auto it = models_.find(id);
    if (it == models_.end()) return absl::NotFoundError("no such model");
    return it->second;
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    auto it = datasets_.find(id);
    if (it == datasets_.end()) return absl::NotFoundError("no such dataset");
    return it->second;
  }
  std::string ModelPath(const std::string& id) override { return "/blobs/" + id; }
  std::string DatasetPath(const std::string& id) override { return "data:" + id; }
  std::string BuiltinDataDir() override { return "/idx"; }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError("job " + id + " not found");
    return it->second;
  }

  // A SUCCEEDED ANALYZE job of `model` whose layers carry traces (numel
  // 100 and 40; converged unless `converged` is false: fc then has a
  // relative standard error of 40%).
  void AddAnalyzeJob(const std::string& id, const std::string& model,
                     v1::JobState state = v1::JOB_STATE_SUCCEEDED, bool traces = true,
                     bool converged = true) {
    v1::Job job;
    job.set_id(id);
    job.set_kind(v1::JOB_KIND_ANALYZE);
    job.set_state(state);
    job.mutable_spec()->mutable_analyze()->set_model_id(model);
    for (const auto& [name, per_param] : {std::pair<std::string, double>{"conv", 2.5},
                                          std::pair<std::string, double>{"fc", 0.125}}) {
      v1::LayerSensitivity* l = job.mutable_result()->mutable_analyze()->add_layers();
      l->set_name(name);
      l->set_kind(name == "conv" ? "Conv2d" : "Linear");
      l->set_numel(name == "conv" ? 100 : 40);
      l->set_trace_per_param(traces ? per_param : 0);
      l->set_trace(traces ? per_param * l->numel() : 0);
      l->set_trace_probes(traces ? 30 : 0);
      const bool fc_unconverged = !converged && name == "fc";
      l->set_trace_std_error(l->trace() * (fc_unconverged ? 0.4 : 0.01));
      l->set_trace_converged(traces && !fc_unconverged);
    }
    jobs_[id] = job;
  }
  void AddJob(const v1::Job& job) { jobs_[job.id()] = job; }

 private:
  std::map<std::string, v1::Model> models_;
  std::map<std::string, v1::Dataset> datasets_;
  std::map<std::string, v1::Job> jobs_;
};

v1::QuantizeSpec MinimalSpec() {
  v1::QuantizeSpec spec;
  spec.set_model_id(kModel);
  spec.mutable_data()->set_dataset_id(kTrain);
  return spec;
}

TEST(ToQuantizeOptionsTest, FillsDefaults) {
  FakeResources resources;
  absl::StatusOr<engine::QuantizeOptions> o =
      ToQuantizeOptions(MinimalSpec(), 42, "cuda:0", resources, "/tmp/out");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_path, "/blobs/model-1");
  EXPECT_EQ(o->calibration_dataset, "data:builtin:fashion-mnist/train");
  // Engine messages name ids, never the paths above.
  EXPECT_EQ(o->model_name, "model model-1");
  EXPECT_EQ(o->calibration_name, "dataset builtin:fashion-mnist/train");
  EXPECT_EQ(o->num_samples, 256);
  EXPECT_EQ(o->batch_size, 64);
  EXPECT_EQ(o->eval_dataset, "");
  EXPECT_EQ(o->eval_samples, 0);
  EXPECT_EQ(o->idx_dir, "/idx");
  EXPECT_EQ(o->loss, engine::LossKind::kAuto);
  EXPECT_TRUE(o->trace_per_param.empty());
  EXPECT_EQ(o->trace_tolerance, 0.05);
  EXPECT_EQ(o->trace_max_probes, 200);
  EXPECT_FALSE(o->omega.has_value()) << "the engine's default";
  EXPECT_TRUE(o->symmetric);
  EXPECT_EQ(o->granularity, "per_channel");
  EXPECT_EQ(o->group_size, 128);
  EXPECT_FALSE(o->gptq);
  EXPECT_EQ(o->gptq_damping, 0.01);
  EXPECT_EQ(o->gptq_block_size, 128);
  EXPECT_FALSE(o->gptq_act_order);
  EXPECT_EQ(o->search, engine::QuantSearch::kExact);
  EXPECT_EQ(o->budget.kind, engine::QuantBudget::Kind::kAverageBits);
  EXPECT_EQ(o->budget.value, 4);
  EXPECT_EQ(o->tolerance.kind, engine::QuantTolerance::Kind::kNone);
  EXPECT_THAT(o->candidate_bits, ElementsAre(2, 3, 4, 8));
  EXPECT_FALSE(o->pins.has_value()) << "the engine's default pins";
  EXPECT_TRUE(o->ties.empty());
  EXPECT_EQ(o->seed, 42u);
  EXPECT_EQ(o->device, "cuda:0");
  EXPECT_EQ(o->output_dir, "/tmp/out");
}

// HeadRefitOptions: unset = no re-fit; set fields map, unset ones keep the
// engine's defaults; the report's head_refit comes back in the result.
TEST(ToQuantizeOptionsTest, HeadRefitOptionsAndResult) {
  FakeResources resources;
  v1::QuantizeSpec spec = MinimalSpec();
  absl::StatusOr<engine::QuantizeOptions> o = ToQuantizeOptions(spec, 1, "cpu", resources, "/o");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->head_refit.has_value());
  spec.mutable_head_refit()->set_iterations(7);
  spec.mutable_head_refit()->set_hessian(v1::HEAD_REFIT_HESSIAN_KFAC);
  o = ToQuantizeOptions(spec, 1, "cpu", resources, "/o");
  ASSERT_TRUE(o.ok() && o->head_refit.has_value());
  EXPECT_EQ(o->head_refit->iterations, 7);
  EXPECT_EQ(o->head_refit->hessian, "kfac");
  EXPECT_EQ(o->head_refit->alpha, 0.5);
  EXPECT_EQ(o->head_refit->temperature, 1.0);
  spec.mutable_head_refit()->set_hessian(v1::HEAD_REFIT_HESSIAN_UNSPECIFIED);
  spec.mutable_head_refit()->set_alpha(0.25);
  o = ToQuantizeOptions(spec, 1, "cpu", resources, "/o");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->head_refit->hessian, "auto");
  EXPECT_EQ(o->head_refit->alpha, 0.25);

  engine::QuantizeReport report;
  report.head_refit = engine::QuantHeadRefitReport{"fc", "kfac", 5, 3, 0.27, 0.12, 0.1, 89.5, 1.5};
  const v1::QuantizeResult r = ToQuantizeResult(report);
  ASSERT_TRUE(r.has_head_refit());
  EXPECT_EQ(r.head_refit().head(), "fc");
  EXPECT_EQ(r.head_refit().hessian(), "kfac");
  EXPECT_EQ(r.head_refit().iterations(), 5);
  EXPECT_EQ(r.head_refit().bits(), 3);
  EXPECT_EQ(r.head_refit().loss_before(), 0.27);
  EXPECT_EQ(r.head_refit().loss_after(), 0.12);
  EXPECT_EQ(r.head_refit().loss_refit(), 0.1);
  EXPECT_EQ(r.head_refit().accuracy_before(), 89.5);
  EXPECT_THAT(QuantizeSummary(r), HasSubstr("head fc re-fitted (kfac Newton, 5 steps)"));
  EXPECT_FALSE(ToQuantizeResult(engine::QuantizeReport()).has_head_refit());
}

TEST(ToQuantizeOptionsTest, MapsEveryField) {
  FakeResources resources;
  v1::QuantizeSpec spec = MinimalSpec();
  spec.mutable_data()->set_num_samples(128);
  spec.mutable_data()->set_batch_size(32);
  spec.set_eval_dataset_id(kTest);
  spec.set_eval_samples(1000);
  spec.set_loss(v1::LOSS_KIND_PSEUDO_LABEL);
  spec.set_trace_tolerance(0.1);
  spec.set_trace_max_probes(50);
  spec.set_omega(v1::OMEGA_QUADRATIC);
  v1::QuantizerSettings* q = spec.mutable_quantizer();
  q->set_asymmetric(true);
  q->set_granularity(v1::GRANULARITY_GROUP);
  q->set_group_size(64);
  q->set_rounding(v1::ROUNDING_GPTQ);
  q->set_gptq_damping(0.05);
  q->set_gptq_block_size(32);
  q->set_gptq_act_order(true);
  spec.set_search(v1::SEARCH_METHOD_PARETO);
  spec.mutable_budget()->set_model_bytes(4096);
  spec.mutable_tolerance()->set_max_drop_pp(0.5);
  for (int b : {8, 2, 4, 2}) spec.add_candidate_bits(b);
  v1::LayerPin* pin = spec.add_pins();
  pin->set_layer("conv");
  pin->set_bits(6);
  pin = spec.add_pins();
  pin->set_layer("fc");
  pin->set_bits(16);
  pin = spec.add_pins();
  pin->set_layer("head");
  pin->set_bits(32);
  v1::LayerTie* tie = spec.add_ties();
  tie->add_layers("a");
  tie->add_layers("b");

  absl::StatusOr<engine::QuantizeOptions> o = ToQuantizeOptions(spec, 1, "cpu", resources, "/o");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->num_samples, 128);
  EXPECT_EQ(o->batch_size, 32);
  EXPECT_EQ(o->eval_dataset, "data:builtin:fashion-mnist/test");
  EXPECT_EQ(o->eval_name, "dataset builtin:fashion-mnist/test");
  EXPECT_EQ(o->eval_samples, 1000);
  EXPECT_EQ(o->loss, engine::LossKind::kPseudoLabel);
  EXPECT_EQ(o->trace_tolerance, 0.1);
  EXPECT_EQ(o->trace_max_probes, 50);
  EXPECT_EQ(o->omega, engine::QuantOmega::kQuadratic);
  EXPECT_FALSE(o->symmetric);
  EXPECT_EQ(o->granularity, "group");
  EXPECT_EQ(o->group_size, 64);
  EXPECT_TRUE(o->gptq);
  EXPECT_EQ(o->gptq_damping, 0.05);
  EXPECT_EQ(o->gptq_block_size, 32);
  EXPECT_TRUE(o->gptq_act_order);
  EXPECT_EQ(o->search, engine::QuantSearch::kPareto);
  EXPECT_EQ(o->budget.kind, engine::QuantBudget::Kind::kModelBytes);
  EXPECT_EQ(o->budget.value, 4096);
  EXPECT_EQ(o->tolerance.kind, engine::QuantTolerance::Kind::kMaxDropPoints);
  EXPECT_EQ(o->tolerance.value, 0.5);
  EXPECT_THAT(o->candidate_bits, ElementsAre(2, 4, 8));
  ASSERT_TRUE(o->pins.has_value());
  EXPECT_THAT(*o->pins, UnorderedElementsAre(Pair("conv", 6), Pair("fc", engine::kFloatBits),
                                             Pair("head", engine::kFloatBits)));
  ASSERT_EQ(o->ties.size(), 1u);
  EXPECT_THAT(o->ties[0], ElementsAre("a", "b"));
}

TEST(ToQuantizeOptionsTest, BudgetsTolerancesSearchesAndGranularities) {
  FakeResources resources;
  v1::QuantizeSpec spec = MinimalSpec();
  spec.mutable_budget()->set_average_bits(3.5);
  auto o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  EXPECT_EQ(o->budget.kind, engine::QuantBudget::Kind::kAverageBits);
  EXPECT_EQ(o->budget.value, 3.5);
  spec.mutable_budget()->set_bops(1e9);
  spec.set_search(v1::SEARCH_METHOD_UNIFORM);
  spec.mutable_quantizer()->set_granularity(v1::GRANULARITY_PER_TENSOR);
  o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  EXPECT_EQ(o->budget.kind, engine::QuantBudget::Kind::kBops);
  EXPECT_EQ(o->budget.value, 1e9);
  EXPECT_EQ(o->search, engine::QuantSearch::kUniform);
  EXPECT_EQ(o->granularity, "per_tensor");
  spec.set_search(v1::SEARCH_METHOD_EXACT);
  spec.mutable_quantizer()->set_granularity(v1::GRANULARITY_PER_CHANNEL);
  o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  EXPECT_EQ(o->search, engine::QuantSearch::kExact);
  EXPECT_EQ(o->granularity, "per_channel");

  // Accuracy-bounded search without a budget: the tolerance alone decides.
  spec.clear_budget();
  spec.set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
  spec.set_eval_dataset_id(kTest);
  spec.mutable_tolerance()->set_max_relative_drop(0.01);
  o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  EXPECT_EQ(o->search, engine::QuantSearch::kBisection);
  EXPECT_EQ(o->budget.kind, engine::QuantBudget::Kind::kNone);
  EXPECT_EQ(o->tolerance.kind, engine::QuantTolerance::Kind::kMaxRelativeDrop);
  EXPECT_EQ(o->tolerance.value, 0.01);
}

TEST(ToQuantizeOptionsTest, NoDefaultPinsPinsNothing) {
  FakeResources resources;
  v1::QuantizeSpec spec = MinimalSpec();
  spec.set_no_default_pins(true);
  auto o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  ASSERT_TRUE(o.ok());
  ASSERT_TRUE(o->pins.has_value());
  EXPECT_TRUE(o->pins->empty());
}

TEST(ToQuantizeOptionsTest, TracesComeFromTheAnalyzeJob) {
  FakeResources resources;
  resources.AddAnalyzeJob("analyze-ok", kModel);
  v1::QuantizeSpec spec = MinimalSpec();
  spec.set_sensitivity_job_id("analyze-ok");
  spec.set_omega(v1::OMEGA_TRACE);
  auto o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->trace_per_param, UnorderedElementsAre(Pair("conv", 2.5), Pair("fc", 0.125)));
  // Standard errors per parameter: SE / numel.
  EXPECT_THAT(o->trace_std_error_per_param,
              UnorderedElementsAre(Pair("conv", ::testing::DoubleNear(0.025, 1e-15)),
                                   Pair("fc", ::testing::DoubleNear(0.00125, 1e-15))));
  EXPECT_EQ(o->omega, engine::QuantOmega::kTrace);
}

// Traces that did not converge are refused, naming the layer and its
// relative error, unless the spec insists.
TEST(ToQuantizeOptionsTest, UnconvergedTracesNeedAllowUnconverged) {
  FakeResources resources;
  resources.AddAnalyzeJob("rough", kModel, v1::JOB_STATE_SUCCEEDED, true, /*converged=*/false);
  v1::QuantizeSpec spec = MinimalSpec();
  spec.set_sensitivity_job_id("rough");
  absl::Status refused = ToQuantizeOptions(spec, 0, "cpu", resources, "").status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("did not converge for 1 of 2 quantized layers: fc (±40% after 30 probes)"));
  EXPECT_THAT(refused.message(), HasSubstr("--allow-unconverged"));
  spec.set_allow_unconverged_traces(true);
  auto o = ToQuantizeOptions(spec, 0, "cpu", resources, "");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_NEAR(o->trace_std_error_per_param.at("fc"), 0.4 * 0.125, 1e-15);
}

TEST(ToQuantizeOptionsTest, UnusableSensitivityJobsAreRefused) {
  FakeResources resources;
  resources.AddAnalyzeJob("running", kModel, v1::JOB_STATE_RUNNING);
  resources.AddAnalyzeJob("other-model", kOtherModel);
  resources.AddAnalyzeJob("no-traces", kModel, v1::JOB_STATE_SUCCEEDED, /*traces=*/false);
  v1::Job inspect;
  inspect.set_id("inspect");
  inspect.set_kind(v1::JOB_KIND_INSPECT);
  inspect.set_state(v1::JOB_STATE_SUCCEEDED);
  resources.AddJob(inspect);
  struct Case {
    std::string job;
    absl::StatusCode code;
    std::string message;
  };
  for (const Case& c :
       {Case{"missing", absl::StatusCode::kNotFound, "job missing not found"},
        Case{"inspect", absl::StatusCode::kFailedPrecondition, "is a JOB_KIND_INSPECT job"},
        Case{"running", absl::StatusCode::kFailedPrecondition, "JOB_STATE_RUNNING"},
        Case{"other-model", absl::StatusCode::kFailedPrecondition,
             "analyzed model model-2, not model-1"},
        Case{"no-traces", absl::StatusCode::kFailedPrecondition, "no Hessian traces"}}) {
    v1::QuantizeSpec spec = MinimalSpec();
    spec.set_sensitivity_job_id(c.job);
    absl::Status s = ToQuantizeOptions(spec, 0, "cpu", resources, "").status();
    EXPECT_EQ(s.code(), c.code) << c.job << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("quantize.sensitivity_job_id")) << c.job;
    EXPECT_THAT(s.message(), HasSubstr(c.message)) << c.job;
  }
}

// Through the QUANTIZE kind's Validate, as SubmitJob calls it.
class QuantizeValidateTest : public ::testing::Test {
 protected:
  absl::Status Validate(const v1::QuantizeSpec& spec) {
    v1::JobSpec job_spec;
    *job_spec.mutable_quantize() = spec;
    return kind_->Validate(job_spec, resources_);
  }

  FakeResources resources_;
  std::unique_ptr<JobKindHandler> kind_ = NewQuantizeKind();
};

TEST_F(QuantizeValidateTest, ValidSpecsAreAccepted) {
  EXPECT_TRUE(Validate(MinimalSpec()).ok()) << "budget defaults to 4 average bits";
  v1::QuantizeSpec spec = MinimalSpec();
  spec.set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
  spec.set_eval_dataset_id(kTest);
  spec.mutable_tolerance()->set_max_drop_pp(0);
  spec.mutable_quantizer()->set_granularity(v1::GRANULARITY_GROUP);
  v1::LayerPin* pin = spec.add_pins();
  pin->set_layer("conv");
  pin->set_bits(16);
  resources_.AddAnalyzeJob("analyze-ok", kModel);
  spec.set_sensitivity_job_id("analyze-ok");
  EXPECT_TRUE(Validate(spec).ok()) << Validate(spec);
}

TEST_F(QuantizeValidateTest, EachBadFieldIsNamed) {
  struct Case {
    std::string field;
    std::function<void(v1::QuantizeSpec*)> edit;
    absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  };
  const std::vector<Case> cases = {
      {"quantize.model_id", [](auto* s) { s->clear_model_id(); }},
      {"quantize.model_id", [](auto* s) { s->set_model_id("nope"); }, absl::StatusCode::kNotFound},
      {"quantize.data.dataset_id", [](auto* s) { s->mutable_data()->clear_dataset_id(); }},
      {"quantize.data.dataset_id", [](auto* s) { s->mutable_data()->set_dataset_id("nope"); },
       absl::StatusCode::kNotFound},
      {"quantize.data.num_samples", [](auto* s) { s->mutable_data()->set_num_samples(-1); }},
      {"quantize.data.batch_size", [](auto* s) { s->mutable_data()->set_batch_size(-1); }},
      {"quantize.eval_dataset_id", [](auto* s) { s->set_eval_dataset_id("nope"); },
       absl::StatusCode::kNotFound},
      {"quantize.eval_dataset_id", [](auto* s) { s->set_eval_dataset_id(kModel); }},
      {"quantize.eval_samples", [](auto* s) { s->set_eval_samples(-5); }},
      {"quantize.trace_tolerance", [](auto* s) { s->set_trace_tolerance(0); }},
      {"quantize.trace_max_probes", [](auto* s) { s->set_trace_max_probes(0); }},
      {"quantize.head_refit.iterations",
       [](auto* s) { s->mutable_head_refit()->set_iterations(0); }},
      {"quantize.head_refit.alpha", [](auto* s) { s->mutable_head_refit()->set_alpha(1.5); }},
      {"quantize.head_refit.temperature",
       [](auto* s) { s->mutable_head_refit()->set_temperature(0); }},
      {"quantize.candidate_bits[1]",
       [](auto* s) {
         s->add_candidate_bits(4);
         s->add_candidate_bits(1);
       }},
      {"quantize.candidate_bits[0]", [](auto* s) { s->add_candidate_bits(16); }},
      {"quantize.pins[0].bits",
       [](auto* s) {
         s->add_pins()->set_layer("conv");
         s->mutable_pins(0)->set_bits(12);
       }},
      {"quantize.pins[0].layer", [](auto* s) { s->add_pins()->set_bits(8); }},
      {"quantize.pins[1].layer",
       [](auto* s) {
         for (int i = 0; i < 2; ++i) {
           v1::LayerPin* p = s->add_pins();
           p->set_layer("conv");
           p->set_bits(8);
         }
       }},
      {"quantize.ties[0].layers", [](auto* s) { s->add_ties()->add_layers("conv"); }},
      {"quantize.ties[0].layers[1]",
       [](auto* s) {
         v1::LayerTie* t = s->add_ties();
         t->add_layers("conv");
         t->add_layers("");
       }},
      {"quantize.budget.average_bits", [](auto* s) { s->mutable_budget()->set_average_bits(0); }},
      {"quantize.budget.model_bytes", [](auto* s) { s->mutable_budget()->set_model_bytes(-1); }},
      {"quantize.budget.bops", [](auto* s) { s->mutable_budget()->set_bops(0); }},
      {"quantize.tolerance.max_drop_pp",
       [](auto* s) { s->mutable_tolerance()->set_max_drop_pp(-0.1); }},
      {"quantize.tolerance.max_relative_drop",
       [](auto* s) { s->mutable_tolerance()->set_max_relative_drop(1); }},
      {"quantize.eval_dataset_id",
       [](auto* s) {
         s->set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
         s->mutable_tolerance()->set_max_drop_pp(1);
       }},
      {"quantize.tolerance",
       [](auto* s) {
         s->set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
         s->set_eval_dataset_id(kTest);
       }},
      {"quantize.quantizer.group_size",
       [](auto* s) {
         s->mutable_quantizer()->set_granularity(v1::GRANULARITY_GROUP);
         s->mutable_quantizer()->set_group_size(48);
       }},
      {"quantize.quantizer.gptq_damping",
       [](auto* s) { s->mutable_quantizer()->set_gptq_damping(0); }},
      {"quantize.quantizer.gptq_block_size",
       [](auto* s) { s->mutable_quantizer()->set_gptq_block_size(0); }},
      {"quantize.sensitivity_job_id", [](auto* s) { s->set_sensitivity_job_id("nope"); },
       absl::StatusCode::kNotFound},
      {"quantize.omega",
       [](auto* s) {
         s->set_sensitivity_job_id("analyze-ok");
         s->set_omega(v1::OMEGA_QUADRATIC);
       }},
      {"quantize.omega", [](auto* s) { s->set_omega(static_cast<v1::Omega>(9)); }},
      {"quantize.lm_ignore_id", [](auto* s) { s->set_lm_ignore_id(0); }},
      {"quantize.lm_ignore_id",
       [](auto* s) {
         s->set_loss(v1::LOSS_KIND_LANGUAGE_MODELING);
         s->set_lm_ignore_id(-2);
       }},
      {"quantize.search",
       [](auto* s) {
         s->set_loss(v1::LOSS_KIND_LANGUAGE_MODELING);
         s->set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
         s->set_eval_dataset_id(kTest);
         s->mutable_tolerance()->set_max_drop_pp(1);
       }},
  };
  for (const Case& c : cases) {
    v1::QuantizeSpec spec = MinimalSpec();
    c.edit(&spec);
    absl::Status s = Validate(spec);
    EXPECT_EQ(s.code(), c.code) << c.field << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.field + ":")) << s;
  }
}

TEST(QuantizeSummaryTest, SizesRatioAccuracyAndFlags) {
  v1::QuantizeResult r;
  r.set_average_bits(4.0234);
  r.set_bytes_before(139018);
  r.set_bytes_after(34000);
  r.set_accuracy_before(92.23);
  r.set_accuracy_after(92.01);
  r.set_budget_met(true);
  r.set_tolerance_met(true);
  EXPECT_EQ(QuantizeSummary(r),
            "4.02 average bits, 139,018 → 34,000 bytes (4.1x), top-1 92.23% → 92.01% "
            "(−0.22 pp)");
  r.clear_accuracy_before();
  r.clear_accuracy_after();
  r.set_budget_met(false);
  EXPECT_EQ(QuantizeSummary(r), "4.02 average bits, 139,018 → 34,000 bytes (4.1x); budget not met");
  r.set_budget_met(true);
  r.set_perplexity_before(9.0018);
  r.set_perplexity_after(9.1204);
  EXPECT_EQ(QuantizeSummary(r),
            "4.02 average bits, 139,018 → 34,000 bytes (4.1x), perplexity 9.002 → 9.12");
}

TEST(ToQuantizeResultTest, CopiesTheReport) {
  engine::QuantizeReport report;
  engine::QuantizedLayerReport layer;
  layer.name = "conv";
  layer.kind = "Conv2d";
  layer.numel = 288;
  layer.macs = 1000;
  layer.bits = 4;
  layer.pinned = true;
  layer.trace_per_param = 2.5;
  layer.omega = {{2, 1.0}, {4, 0.25}};
  layer.bytes_before = 1152;
  layer.bytes_after = 200;
  layer.rounding = "gptq";
  layer.note = "n";
  layer.gptq_error = 0.1;
  layer.rtn_error = 0.2;
  layer.squared_error = {{2, 8.0}, {4, 0.5}};
  report.layers.push_back(layer);
  report.search = "pareto";
  report.search_exact = false;
  report.budget_met = false;
  report.tolerance_met = false;
  report.average_bits = 4;
  report.bops = 123;
  report.bytes_before = 2000;
  report.bytes_after = 300;
  report.predicted_bytes = 290;
  report.accuracy_after = 90;
  report.perplexity_after = 9.5;
  report.eval_examples = 100;
  report.frontier.push_back({290, 4, 0.25, std::nullopt, true});
  report.measured.push_back({100, 2, 1.0, 80.0, false});
  report.baselines.push_back({"uniform", {{"conv", 4}}, 4, 290, 0.25, std::nullopt, 0, 0, std::nullopt});
  report.baselines.push_back({"no_hessian", {{"conv", 3}}, 3, 250, 0.5, 90.1, 12, 5, 0.14});
  report.sensitivity_source = "report";
  report.hvp_count = 0;
  report.omega = "trace";
  report.perturbation = "gptq";
  report.hvp_method = "";
  report.runtime = "LibTorch";
  report.wall_seconds = 1.5;

  v1::QuantizeResult r = ToQuantizeResult(report);
  ASSERT_EQ(r.layers_size(), 1);
  const v1::QuantizedLayer& l = r.layers(0);
  EXPECT_EQ(l.name(), "conv");
  EXPECT_EQ(l.kind(), "Conv2d");
  EXPECT_EQ(l.numel(), 288);
  EXPECT_EQ(l.macs(), 1000);
  EXPECT_EQ(l.bits(), 4);
  EXPECT_TRUE(l.pinned());
  EXPECT_EQ(l.trace_per_param(), 2.5);
  EXPECT_THAT(l.omega(), UnorderedElementsAre(Pair(2, 1.0), Pair(4, 0.25)));
  EXPECT_EQ(l.bytes_before(), 1152);
  EXPECT_EQ(l.bytes_after(), 200);
  EXPECT_EQ(l.rounding(), "gptq");
  EXPECT_EQ(l.note(), "n");
  EXPECT_EQ(l.gptq_error(), 0.1);
  EXPECT_EQ(l.rtn_error(), 0.2);
  EXPECT_THAT(l.squared_error(), UnorderedElementsAre(Pair(2, 8.0), Pair(4, 0.5)));
  EXPECT_EQ(r.search(), "pareto");
  EXPECT_FALSE(r.search_exact());
  EXPECT_FALSE(r.budget_met());
  EXPECT_FALSE(r.tolerance_met());
  EXPECT_EQ(r.bops(), 123);
  EXPECT_EQ(r.bytes_before(), 2000);
  EXPECT_EQ(r.bytes_after(), 300);
  EXPECT_EQ(r.predicted_bytes(), 290);
  EXPECT_FALSE(r.has_accuracy_before());
  ASSERT_TRUE(r.has_accuracy_after());
  EXPECT_EQ(r.accuracy_after(), 90);
  EXPECT_FALSE(r.has_perplexity_before());
  ASSERT_TRUE(r.has_perplexity_after());
  EXPECT_EQ(r.perplexity_after(), 9.5);
  EXPECT_EQ(r.eval_examples(), 100);
  ASSERT_EQ(r.frontier_size(), 1);
  EXPECT_TRUE(r.frontier(0).chosen());
  EXPECT_FALSE(r.frontier(0).has_accuracy());
  ASSERT_EQ(r.measured_size(), 1);
  EXPECT_EQ(r.measured(0).accuracy(), 80.0);
  ASSERT_EQ(r.baselines_size(), 2);
  EXPECT_EQ(r.baselines(0).name(), "uniform");
  EXPECT_THAT(r.baselines(0).bits(), UnorderedElementsAre(Pair("conv", 4)));
  EXPECT_FALSE(r.baselines(0).has_accuracy());
  EXPECT_FALSE(r.baselines(0).has_p_value());
  EXPECT_EQ(r.baselines(1).name(), "no_hessian");
  EXPECT_DOUBLE_EQ(r.baselines(1).accuracy(), 90.1);
  EXPECT_EQ(r.baselines(1).chosen_only_correct(), 12);
  EXPECT_EQ(r.baselines(1).baseline_only_correct(), 5);
  EXPECT_DOUBLE_EQ(r.baselines(1).p_value(), 0.14);
  EXPECT_EQ(r.sensitivity_source(), "report");
  EXPECT_EQ(r.omega(), "trace");
  EXPECT_EQ(r.perturbation(), "gptq");
  EXPECT_EQ(r.runtime(), "LibTorch");
  EXPECT_EQ(r.wall_seconds(), 1.5);
}

}  // namespace
}  // namespace compress::pipeline
