// ANALYZE outside the job layer: how an AnalyzeSpec becomes AnalyzeOptions
// (defaults, every field, the enums), which specs are refused at submit and
// with which field, and RunAnalyze on the tiny CNN fixture with fake
// resources, checked against the exact Hessian that PyTorch formed in
// float64 (tests/fixtures/analyze_expected.json, make_analyze_expected.py)
// and against the layer list in expected.json; then the artifacts.
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/pipeline/analyze.h"
#include "tests/pipeline/fake_job_context.h"
#include "tests/test_util.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;
using ::compress::pipeline::testing::FakeJobContext;
using ::compress::pipeline::testing::FixtureResources;
using ::compress::testutil::FixturePath;
using ::compress::testutil::ReadFile;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::SizeIs;

constexpr char kCnn[] = "tiny_cnn.pt";
constexpr char kMlp[] = "tiny_mlp.pt";
constexpr char kData[] = "tiny.safetensors";

const nlohmann::json& Expected() {
  static const nlohmann::json* json =
      new nlohmann::json(nlohmann::json::parse(ReadFile(FixturePath("expected.json"))));
  return *json;
}

// The exact Hessian of tiny_cnn.pt on tiny.safetensors (mean cross-entropy,
// eval mode, float64).
const nlohmann::json& ExactHessian() {
  static const nlohmann::json* json =
      new nlohmann::json(nlohmann::json::parse(ReadFile(FixturePath("analyze_expected.json"))));
  return *json;
}

v1::AnalyzeSpec MinimalSpec() {
  v1::AnalyzeSpec spec;
  spec.set_model_id(kCnn);
  spec.mutable_data()->set_dataset_id(kData);
  return spec;
}

class AnalyzePipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    resources_.AddModel(kCnn);
    resources_.AddModel(kMlp);
    resources_.AddDataset(kData, {1, 8, 8});
  }

  v1::Job AnalyzeJob(const v1::AnalyzeSpec& spec, uint64_t seed = 7) {
    v1::Job job;
    job.set_id("job-analyze");
    job.set_kind(v1::JOB_KIND_ANALYZE);
    job.set_seed(seed);
    *job.mutable_spec()->mutable_analyze() = spec;
    return job;
  }

  absl::Status Validate(const v1::AnalyzeSpec& spec) {
    v1::JobSpec job_spec;
    *job_spec.mutable_analyze() = spec;
    return kind_->Validate(job_spec, resources_);
  }

  FixtureResources resources_;
  std::unique_ptr<JobKindHandler> kind_ = NewAnalyzeKind();
};

// ------------------------------------------------------- spec -> options

// The defaults are the ones compress.proto documents for AnalyzeSpec.
TEST_F(AnalyzePipelineTest, OptionsFillTheDocumentedDefaults) {
  absl::StatusOr<engine::AnalyzeOptions> o =
      ToAnalyzeOptions(MinimalSpec(), 42, "cuda:1", resources_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_path, FixturePath(kCnn));
  EXPECT_EQ(o->dataset, FixturePath(kData));
  // Engine messages name ids, never the paths above.
  EXPECT_EQ(o->model_name, "model tiny_cnn.pt");
  EXPECT_EQ(o->dataset_name, "dataset tiny.safetensors");
  EXPECT_EQ(o->idx_dir, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(o->num_samples, 256);
  EXPECT_EQ(o->batch_size, 64);
  EXPECT_EQ(o->loss, engine::LossKind::kAuto);
  EXPECT_FALSE(o->hvp_method.has_value()) << "the engine's default";
  EXPECT_EQ(o->fallback, engine::HvpFallback::kFiniteDifference);
  EXPECT_TRUE(o->traces_enabled) << "traces are the default analysis";
  EXPECT_EQ(o->traces.tolerance, 0.05);
  EXPECT_EQ(o->traces.max_probes, 200);
  EXPECT_EQ(o->traces.min_probes, 10);
  EXPECT_FALSE(o->traces.exact_per_layer);
  EXPECT_FALSE(o->eigen_enabled);
  EXPECT_EQ(o->eigen.k, 1);
  EXPECT_EQ(o->eigen.tolerance, 1e-3);
  EXPECT_EQ(o->eigen.max_iterations, 100);
  EXPECT_EQ(o->eigen_scope, engine::EigenScope::kModel);
  EXPECT_FALSE(o->density_enabled);
  EXPECT_EQ(o->density.lanczos_steps, 90);
  EXPECT_EQ(o->density.runs, 1);
  EXPECT_EQ(o->density.grid_points, 1000);
  EXPECT_EQ(o->density.sigma, 1e-5);
  EXPECT_EQ(o->density.max_memory_bytes, int64_t{4} << 30);
  EXPECT_EQ(o->outliers.bulk_mass, 1e-3);
  EXPECT_EQ(o->outliers.gap, 0.2);
  EXPECT_FALSE(o->qbert_enabled);
  EXPECT_EQ(o->qbert_subsets, 4);
  EXPECT_EQ(o->seed, 42u);
  EXPECT_EQ(o->device, "cuda:1");
}

TEST_F(AnalyzePipelineTest, OptionsCarryEveryField) {
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_data()->set_dataset_id("builtin:fashion-mnist/test");
  spec.mutable_data()->set_num_samples(100);
  spec.mutable_data()->set_batch_size(25);
  spec.set_loss(v1::LOSS_KIND_PSEUDO_LABEL);
  spec.set_hvp_method(v1::HVP_METHOD_GAUSS_NEWTON);
  spec.set_fallback(v1::HVP_FALLBACK_FISHER);
  v1::TraceOptions* t = spec.mutable_traces();
  t->set_enabled(true);
  t->set_tolerance(0.02);
  t->set_max_probes(300);
  t->set_min_probes(20);
  t->set_exact_per_layer(true);
  v1::EigenOptions* e = spec.mutable_eigen();
  e->set_enabled(true);
  e->set_k(3);
  e->set_scope(v1::EIGEN_SCOPE_BLOCK);
  e->set_tolerance(1e-4);
  e->set_max_iterations(50);
  v1::DensityOptions* d = spec.mutable_density();
  d->set_enabled(true);
  d->set_lanczos_steps(30);
  d->set_runs(2);
  d->set_grid_points(500);
  d->set_sigma(1e-3);
  d->set_max_memory_bytes(1 << 20);
  d->set_bulk_mass(0.01);
  d->set_outlier_gap(0.5);
  spec.mutable_qbert()->set_enabled(true);
  spec.mutable_qbert()->set_subsets(3);

  absl::StatusOr<engine::AnalyzeOptions> o = ToAnalyzeOptions(spec, 5, "cpu", resources_);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->dataset, "builtin:fashion-mnist/test");
  EXPECT_EQ(o->num_samples, 100);
  EXPECT_EQ(o->batch_size, 25);
  EXPECT_EQ(o->loss, engine::LossKind::kPseudoLabel);
  EXPECT_EQ(o->hvp_method, engine::HvpMethod::kGaussNewton);
  EXPECT_EQ(o->fallback, engine::HvpFallback::kFisherDiagonal);
  EXPECT_TRUE(o->traces_enabled);
  EXPECT_EQ(o->traces.tolerance, 0.02);
  EXPECT_EQ(o->traces.max_probes, 300);
  EXPECT_EQ(o->traces.min_probes, 20);
  EXPECT_TRUE(o->traces.exact_per_layer);
  EXPECT_TRUE(o->eigen_enabled);
  EXPECT_EQ(o->eigen.k, 3);
  EXPECT_EQ(o->eigen_scope, engine::EigenScope::kBlock);
  EXPECT_EQ(o->eigen.tolerance, 1e-4);
  EXPECT_EQ(o->eigen.max_iterations, 50);
  EXPECT_TRUE(o->density_enabled);
  EXPECT_EQ(o->density.lanczos_steps, 30);
  EXPECT_EQ(o->density.runs, 2);
  EXPECT_EQ(o->density.grid_points, 500);
  EXPECT_EQ(o->density.sigma, 1e-3);
  EXPECT_EQ(o->density.max_memory_bytes, 1 << 20);
  EXPECT_EQ(o->outliers.bulk_mass, 0.01);
  EXPECT_EQ(o->outliers.gap, 0.5);
  EXPECT_TRUE(o->qbert_enabled);
  EXPECT_EQ(o->qbert_subsets, 3);
  EXPECT_EQ(o->seed, 5u);
}

TEST_F(AnalyzePipelineTest, OptionsMapEveryEnumValue) {
  v1::AnalyzeSpec spec = MinimalSpec();
  const std::vector<std::pair<v1::HvpMethod, engine::HvpMethod>> methods = {
      {v1::HVP_METHOD_EXACT, engine::HvpMethod::kExact},
      {v1::HVP_METHOD_FINITE_DIFFERENCE, engine::HvpMethod::kFiniteDifference},
      {v1::HVP_METHOD_GAUSS_NEWTON, engine::HvpMethod::kGaussNewton},
      {v1::HVP_METHOD_FISHER_DIAGONAL, engine::HvpMethod::kFisherDiagonal}};
  for (const auto& [proto, engine_method] : methods) {
    spec.set_hvp_method(proto);
    auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->hvp_method, engine_method) << v1::HvpMethod_Name(proto);
  }
  const std::vector<std::pair<v1::HvpFallback, engine::HvpFallback>> fallbacks = {
      {v1::HVP_FALLBACK_UNSPECIFIED, engine::HvpFallback::kFiniteDifference},
      {v1::HVP_FALLBACK_NONE, engine::HvpFallback::kNone},
      {v1::HVP_FALLBACK_FINITE_DIFFERENCE, engine::HvpFallback::kFiniteDifference},
      {v1::HVP_FALLBACK_FISHER, engine::HvpFallback::kFisherDiagonal}};
  for (const auto& [proto, engine_fallback] : fallbacks) {
    spec.set_fallback(proto);
    auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->fallback, engine_fallback) << v1::HvpFallback_Name(proto);
  }
  const std::vector<std::pair<v1::EigenScope, engine::EigenScope>> scopes = {
      {v1::EIGEN_SCOPE_UNSPECIFIED, engine::EigenScope::kModel},
      {v1::EIGEN_SCOPE_MODEL, engine::EigenScope::kModel},
      {v1::EIGEN_SCOPE_LAYER, engine::EigenScope::kLayer},
      {v1::EIGEN_SCOPE_BLOCK, engine::EigenScope::kBlock}};
  for (const auto& [proto, engine_scope] : scopes) {
    spec.mutable_eigen()->set_scope(proto);
    auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->eigen_scope, engine_scope) << v1::EigenScope_Name(proto);
  }
  const std::vector<std::pair<v1::LossKind, engine::LossKind>> losses = {
      {v1::LOSS_KIND_UNSPECIFIED, engine::LossKind::kAuto},
      {v1::LOSS_KIND_CROSS_ENTROPY, engine::LossKind::kCrossEntropy},
      {v1::LOSS_KIND_PSEUDO_LABEL, engine::LossKind::kPseudoLabel},
      {v1::LOSS_KIND_MSE, engine::LossKind::kMse},
      {v1::LOSS_KIND_LANGUAGE_MODELING, engine::LossKind::kLanguageModeling}};
  for (const auto& [proto, engine_loss] : losses) {
    spec.set_loss(proto);
    auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->loss, engine_loss) << v1::LossKind_Name(proto);
    EXPECT_FALSE(o->lm_ignore_id.has_value());
  }
  spec.set_lm_ignore_id(0);
  auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->lm_ignore_id, std::optional<int64_t>(0));
}

// Traces run when asked for, or when nothing else is.
TEST_F(AnalyzePipelineTest, TracesAreTheDefaultOnlyWhenNothingElseIsAskedFor) {
  struct Case {
    std::function<void(v1::AnalyzeSpec*)> enable;
    bool traces, eigen, density, qbert;
  };
  const std::vector<Case> cases = {
      {[](v1::AnalyzeSpec*) {}, true, false, false, false},
      {[](v1::AnalyzeSpec* s) { s->mutable_eigen()->set_enabled(true); }, false, true, false,
       false},
      {[](v1::AnalyzeSpec* s) { s->mutable_density()->set_enabled(true); }, false, false, true,
       false},
      {[](v1::AnalyzeSpec* s) { s->mutable_qbert()->set_enabled(true); }, false, false, false,
       true},
      {[](v1::AnalyzeSpec* s) {
         s->mutable_traces()->set_enabled(true);
         s->mutable_eigen()->set_enabled(true);
       },
       true, true, false, false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::AnalyzeSpec spec = MinimalSpec();
    cases[i].enable(&spec);
    auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->traces_enabled, cases[i].traces) << "case " << i;
    EXPECT_EQ(o->eigen_enabled, cases[i].eigen) << "case " << i;
    EXPECT_EQ(o->density_enabled, cases[i].density) << "case " << i;
    EXPECT_EQ(o->qbert_enabled, cases[i].qbert) << "case " << i;
  }
}

// A max_probes under the default min_probes (10) lowers min_probes with it,
// so that the engine's min <= max holds.
TEST_F(AnalyzePipelineTest, MinProbesFollowsASmallMaxProbes) {
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_traces()->set_max_probes(4);
  auto o = ToAnalyzeOptions(spec, 0, "cpu", resources_);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->traces.max_probes, 4);
  EXPECT_EQ(o->traces.min_probes, 4);
}

// ------------------------------------------------- validation at submit

TEST_F(AnalyzePipelineTest, ValidSpecsAreAccepted) {
  EXPECT_TRUE(Validate(MinimalSpec()).ok()) << Validate(MinimalSpec());
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_traces()->set_min_probes(2);
  spec.mutable_traces()->set_max_probes(2);
  spec.mutable_traces()->set_tolerance(0.5);
  spec.mutable_eigen()->set_k(1);
  spec.mutable_eigen()->set_max_iterations(1);
  spec.mutable_density()->set_lanczos_steps(2);
  spec.mutable_density()->set_grid_points(2);
  spec.mutable_density()->set_runs(1);
  spec.mutable_density()->set_max_memory_bytes(1);
  spec.mutable_qbert()->set_subsets(2);
  EXPECT_TRUE(Validate(spec).ok()) << Validate(spec);
}

TEST_F(AnalyzePipelineTest, EachBadFieldIsRefusedByName) {
  struct Case {
    std::string field;
    std::function<void(v1::AnalyzeSpec*)> edit;
    absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  };
  const std::vector<Case> cases = {
      {"analyze.model_id", [](auto* s) { s->clear_model_id(); }},
      {"analyze.model_id", [](auto* s) { s->set_model_id("nope.pt"); },
       absl::StatusCode::kNotFound},
      {"analyze.model_id", [](auto* s) { s->set_model_id(kData); }},
      {"analyze.data.dataset_id", [](auto* s) { s->mutable_data()->clear_dataset_id(); }},
      {"analyze.data.dataset_id", [](auto* s) { s->mutable_data()->set_dataset_id("nope"); },
       absl::StatusCode::kNotFound},
      {"analyze.data.dataset_id", [](auto* s) { s->mutable_data()->set_dataset_id(kCnn); }},
      {"analyze.data.num_samples", [](auto* s) { s->mutable_data()->set_num_samples(-1); }},
      {"analyze.data.batch_size", [](auto* s) { s->mutable_data()->set_batch_size(-1); }},
      {"analyze.traces.max_probes", [](auto* s) { s->mutable_traces()->set_max_probes(0); }},
      {"analyze.lm_ignore_id", [](auto* s) { s->set_lm_ignore_id(0); }},
      {"analyze.lm_ignore_id",
       [](auto* s) {
         s->set_loss(v1::LOSS_KIND_LANGUAGE_MODELING);
         s->set_lm_ignore_id(-1);
       }},
      {"analyze.traces.max_probes", [](auto* s) { s->mutable_traces()->set_max_probes(1); }},
      {"analyze.traces.min_probes", [](auto* s) { s->mutable_traces()->set_min_probes(1); }},
      {"analyze.traces.min_probes",
       [](auto* s) {
         s->mutable_traces()->set_min_probes(20);
         s->mutable_traces()->set_max_probes(10);
       }},
      {"analyze.traces.tolerance", [](auto* s) { s->mutable_traces()->set_tolerance(0); }},
      {"analyze.traces.tolerance", [](auto* s) { s->mutable_traces()->set_tolerance(1); }},
      {"analyze.eigen.k", [](auto* s) { s->mutable_eigen()->set_k(0); }},
      {"analyze.eigen.max_iterations", [](auto* s) { s->mutable_eigen()->set_max_iterations(0); }},
      {"analyze.eigen.tolerance", [](auto* s) { s->mutable_eigen()->set_tolerance(-1e-3); }},
      {"analyze.eigen.method",
       [](auto* s) { s->mutable_eigen()->set_method(static_cast<v1::EigenMethod>(7)); }},
      {"analyze.density.lanczos_steps",
       [](auto* s) { s->mutable_density()->set_lanczos_steps(1); }},
      {"analyze.density.runs", [](auto* s) { s->mutable_density()->set_runs(0); }},
      {"analyze.density.grid_points", [](auto* s) { s->mutable_density()->set_grid_points(1); }},
      {"analyze.density.sigma", [](auto* s) { s->mutable_density()->set_sigma(0); }},
      {"analyze.density.bulk_mass", [](auto* s) { s->mutable_density()->set_bulk_mass(1); }},
      {"analyze.density.outlier_gap",
       [](auto* s) { s->mutable_density()->set_outlier_gap(-0.1); }},
      {"analyze.density.max_memory_bytes",
       [](auto* s) { s->mutable_density()->set_max_memory_bytes(0); }},
      {"analyze.qbert.subsets", [](auto* s) { s->mutable_qbert()->set_subsets(1); }},
  };
  for (const Case& c : cases) {
    v1::AnalyzeSpec spec = MinimalSpec();
    c.edit(&spec);
    absl::Status s = Validate(spec);
    EXPECT_EQ(s.code(), c.code) << c.field << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.field + ":")) << s;
  }
}

// ------------------------------------------------------- RunAnalyze

// Traces (one layer at a time, to a 5% standard error), the top eigenvalue
// and the SLQ density of tiny_cnn on the 6 examples of tiny.safetensors (one
// batch, whose graph the engine caches: the fastest exact products), against
// the exact float64 Hessian.
TEST_F(AnalyzePipelineTest, RunMatchesTheExactHessian) {
  const nlohmann::json& exact = ExactHessian();
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_data()->set_num_samples(6);
  spec.mutable_data()->set_batch_size(6);
  spec.mutable_traces()->set_enabled(true);
  spec.mutable_traces()->set_exact_per_layer(true);
  spec.mutable_traces()->set_tolerance(0.05);
  spec.mutable_traces()->set_max_probes(1500);
  spec.mutable_eigen()->set_enabled(true);
  spec.mutable_density()->set_enabled(true);
  spec.mutable_density()->set_lanczos_steps(20);
  spec.mutable_density()->set_grid_points(100);
  FakeJobContext context(AnalyzeJob(spec), &resources_);
  absl::StatusOr<v1::JobResult> result = RunAnalyze(spec, context);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->has_analyze());
  const v1::AnalyzeResult& r = result->analyze();

  // What was run.
  EXPECT_EQ(r.num_parameters(), exact["num_parameters"].get<int64_t>());
  EXPECT_EQ(r.num_examples(), 6);
  EXPECT_EQ(r.batch_size(), 6);
  EXPECT_EQ(r.loss(), v1::LOSS_KIND_CROSS_ENTROPY) << "integer targets";
  EXPECT_FALSE(r.pseudo_labels());
  EXPECT_EQ(r.hvp_method(), v1::HVP_METHOD_EXACT);
  EXPECT_FALSE(r.fell_back());

  // Layers: the model's layers (expected.json), in order; each trace within
  // 4 standard errors of the exact Tr(H_ii), the standard error small
  // enough for that to tell layers apart.
  const nlohmann::json& layers = Expected()["models"][kCnn]["layers"];
  ASSERT_EQ(r.layers_size(), static_cast<int>(layers.size()));
  ASSERT_EQ(exact["layers"].size(), layers.size());
  int64_t probes = 0;
  for (int i = 0; i < r.layers_size(); ++i) {
    const v1::LayerSensitivity& l = r.layers(i);
    const nlohmann::json& want = exact["layers"][i];
    SCOPED_TRACE(l.name());
    EXPECT_EQ(l.name(), layers[i]["name"].get<std::string>());
    EXPECT_EQ(l.kind(), layers[i]["kind"].get<std::string>());
    EXPECT_EQ(l.numel(), layers[i]["numel"].get<int64_t>());
    const double trace = want["trace"].get<double>();
    EXPECT_TRUE(l.trace_converged());
    EXPECT_GT(l.trace_std_error(), 0);
    EXPECT_LE(l.trace_std_error(), 0.06 * std::abs(trace));
    EXPECT_NEAR(l.trace(), trace, 4 * l.trace_std_error());
    EXPECT_DOUBLE_EQ(l.trace_per_param(), l.trace() / static_cast<double>(l.numel()));
    probes += l.trace_probes();
    // Ω(b) = Tr(H_ii)/n_i · ‖Q_b(W_i) − W_i‖², the RTN error from Python.
    ASSERT_THAT(l.omega(), SizeIs(7));
    for (int b = 2; b <= 8; ++b) {
      const double err = want["rtn_errors"][std::to_string(b)].get<double>();
      ASSERT_EQ(l.omega().count(b), 1u) << b;
      EXPECT_NEAR(l.omega().at(b), l.trace_per_param() * err,
                  1e-9 * std::abs(l.trace_per_param() * err) + 1e-15)
          << "bits " << b;
    }
  }
  EXPECT_NEAR(r.total_trace(), exact["total_trace"].get<double>(), 4 * r.total_trace_std_error());
  EXPECT_LE(r.total_trace_std_error(), 0.06 * exact["total_trace"].get<double>());

  // Power iteration: the eigenvalue largest in magnitude (2.51, next 1.79).
  ASSERT_GE(r.eigenvalues_size(), 1);
  EXPECT_NEAR(r.eigenvalues(0), exact["top_eigenvalue"].get<double>(),
              5e-3 * std::abs(exact["top_eigenvalue"].get<double>()));
  ASSERT_GE(r.eigen_iterations_size(), 1);
  EXPECT_GE(r.hvp_count(), probes + r.eigen_iterations(0) + 20);

  // SLQ: Ritz values lie inside the spectrum, and after 20 steps the extreme
  // ones have converged to the isolated extreme eigenvalues (-1.79, 2.51);
  // the weights are a distribution.
  ASSERT_EQ(r.density_nodes_size(), 20);
  ASSERT_EQ(r.density_weights_size(), 20);
  const double lo = exact["eigenvalue_min"].get<double>(),
               hi = exact["eigenvalue_max"].get<double>();
  const double slack = 1e-4 * (hi - lo);
  double weight_sum = 0;
  for (int i = 0; i < r.density_nodes_size(); ++i) {
    EXPECT_GE(r.density_nodes(i), lo - slack) << i;
    EXPECT_LE(r.density_nodes(i), hi + slack) << i;
    EXPECT_GE(r.density_weights(i), 0) << i;
    weight_sum += r.density_weights(i);
  }
  EXPECT_NEAR(weight_sum, 1.0, 1e-6);
  const auto [min_node, max_node] =
      std::minmax_element(r.density_nodes().begin(), r.density_nodes().end());
  EXPECT_NEAR(*min_node, lo, 1e-4 * std::abs(lo));
  EXPECT_NEAR(*max_node, hi, 1e-4 * std::abs(hi));

  EXPECT_THAT(result->summary(), HasSubstr("6 layers"));
  EXPECT_THAT(result->summary(), HasSubstr("(exact)"));

  // report.json: parses and holds the same numbers, the spec and the seed.
  auto artifacts = context.artifacts();
  ASSERT_EQ(artifacts.count("report.json"), 1u);
  EXPECT_EQ(artifacts["report.json"].content_type, "application/json");
  const nlohmann::json report =
      nlohmann::json::parse(artifacts["report.json"].bytes, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(report.is_discarded()) << artifacts["report.json"].bytes;
  EXPECT_EQ(report["job_id"], "job-analyze");
  EXPECT_EQ(report["seed"], "7");
  EXPECT_EQ(report["device"], "cpu");
  EXPECT_EQ(report["dtype"], "float32");
  EXPECT_EQ(report["spec"]["model_id"], kCnn);
  EXPECT_EQ(report["spec"]["traces"]["max_probes"], 1500);
  const nlohmann::json& rr = report["result"];
  EXPECT_EQ(rr["num_parameters"], std::to_string(exact["num_parameters"].get<int64_t>()));
  EXPECT_EQ(rr["hvp_method"], "HVP_METHOD_EXACT");
  ASSERT_EQ(rr["layers"].size(), static_cast<size_t>(r.layers_size()));
  for (int i = 0; i < r.layers_size(); ++i) {
    EXPECT_EQ(rr["layers"][i]["name"], r.layers(i).name());
    EXPECT_DOUBLE_EQ(rr["layers"][i]["trace"].get<double>(), r.layers(i).trace());
    EXPECT_DOUBLE_EQ(rr["layers"][i]["omega"]["4"].get<double>(), r.layers(i).omega().at(4));
  }
  EXPECT_DOUBLE_EQ(rr["total_trace"].get<double>(), r.total_trace());
  EXPECT_DOUBLE_EQ(rr["eigenvalues"][0].get<double>(), r.eigenvalues(0));

  // sensitivity.csv: a header and one row per layer, in order.
  ASSERT_EQ(artifacts.count("sensitivity.csv"), 1u);
  std::vector<std::string> rows =
      absl::StrSplit(artifacts["sensitivity.csv"].bytes, '\n', absl::SkipEmpty());
  ASSERT_EQ(rows.size(), 1u + r.layers_size());
  EXPECT_EQ(rows[0],
            "layer,kind,numel,trace,trace_std_error,trace_probes,trace_per_param,omega_2,omega_3,"
            "omega_4,omega_5,omega_6,omega_7,omega_8,top_eigenvalue,qbert_score");
  for (int i = 0; i < r.layers_size(); ++i) {
    std::vector<std::string> cells = absl::StrSplit(rows[i + 1], ',');
    ASSERT_EQ(cells.size(), 16u) << rows[i + 1];
    EXPECT_EQ(cells[0], layers[i]["name"].get<std::string>());
    EXPECT_EQ(cells[1], layers[i]["kind"].get<std::string>());
    EXPECT_EQ(cells[2], std::to_string(layers[i]["numel"].get<int64_t>()));
    EXPECT_NEAR(std::stod(cells[3]), r.layers(i).trace(), 1e-8 * std::abs(r.layers(i).trace()));
  }

  // The charts: a bar per layer, and the density plot.
  ASSERT_EQ(artifacts.count("sensitivity.svg"), 1u);
  EXPECT_EQ(artifacts["sensitivity.svg"].content_type, "image/svg+xml");
  for (const auto& l : layers) {
    EXPECT_THAT(artifacts["sensitivity.svg"].bytes,
                HasSubstr(absl::StrCat(">", l["name"].get<std::string>(), "</text>")));
  }
  ASSERT_EQ(artifacts.count("spectrum.svg"), 1u);
  EXPECT_THAT(artifacts["spectrum.svg"].bytes, HasSubstr("<polyline"));
  // Bulk and outliers: the edges are quadrature nodes, every outlier lies
  // beyond them, the class count is the model's output width, and the plot
  // marks the edges.
  ASSERT_TRUE(r.has_spectrum_outliers());
  const v1::SpectrumOutliers& so = r.spectrum_outliers();
  EXPECT_THAT(r.density_nodes(), Contains(so.bulk_max()));
  EXPECT_THAT(r.density_nodes(), Contains(so.bulk_min()));
  EXPECT_DOUBLE_EQ(so.bulk_width(), so.bulk_max() - so.bulk_min());
  EXPECT_EQ(so.count(), so.outliers_size());
  for (double v : so.outliers()) EXPECT_TRUE(v > so.bulk_max() || v < so.bulk_min()) << v;
  EXPECT_EQ(so.num_classes(), Expected()["models"][kCnn]["output_shape"][1].get<int64_t>());
  EXPECT_THAT(artifacts["spectrum.svg"].bytes, HasSubstr(">bulk edge</text>"));

  // Progress: a stage per estimator, a partial result per layer trace.
  EXPECT_THAT(context.sink().stages(), Contains("traces"));
  EXPECT_THAT(context.sink().stages(), Contains("eigen"));
  EXPECT_THAT(context.sink().stages(), Contains("density"));
  for (const auto& l : layers) {
    EXPECT_THAT(context.sink().partial(),
                Contains(absl::StrCat("trace/", l["name"].get<std::string>())));
  }
}

// The empirical Fisher diagonal D is diagonal, so every Rademacher probe
// gives Tr(D_ii) exactly (v_j² = 1): the traces, their Ω and the top
// "eigenvalue" (D's largest entry) are compared tightly with D computed in
// Python from per-example gradients.
TEST_F(AnalyzePipelineTest, FisherDiagonalTracesAreExact) {
  const nlohmann::json& exact = ExactHessian();
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_data()->set_num_samples(6);
  spec.set_hvp_method(v1::HVP_METHOD_FISHER_DIAGONAL);
  spec.mutable_traces()->set_enabled(true);
  spec.mutable_eigen()->set_enabled(true);
  // D's two largest entries are 0.6% apart: power iteration needs ~10^3
  // products (elementwise here) to single out the largest.
  spec.mutable_eigen()->set_tolerance(1e-9);
  spec.mutable_eigen()->set_max_iterations(3000);
  FakeJobContext context(AnalyzeJob(spec), &resources_);
  absl::StatusOr<v1::JobResult> result = RunAnalyze(spec, context);
  ASSERT_TRUE(result.ok()) << result.status();
  const v1::AnalyzeResult& r = result->analyze();
  EXPECT_EQ(r.hvp_method(), v1::HVP_METHOD_FISHER_DIAGONAL);
  EXPECT_FALSE(r.fell_back());
  ASSERT_EQ(r.layers_size(), static_cast<int>(exact["layers"].size()));
  for (int i = 0; i < r.layers_size(); ++i) {
    const v1::LayerSensitivity& l = r.layers(i);
    const nlohmann::json& want = exact["layers"][i];
    SCOPED_TRACE(l.name());
    EXPECT_EQ(l.name(), want["name"].get<std::string>());
    const double trace = want["fisher_trace"].get<double>();
    EXPECT_NEAR(l.trace(), trace, 1e-5 * trace);
    EXPECT_LE(l.trace_std_error(), 1e-6 * trace);
    EXPECT_TRUE(l.trace_converged());
    EXPECT_EQ(l.trace_probes(), 10) << "converged at the default min_probes";
    const double per_param = trace / want["numel"].get<double>();
    for (int b = 2; b <= 8; ++b) {
      const double omega = per_param * want["rtn_errors"][std::to_string(b)].get<double>();
      ASSERT_EQ(l.omega().count(b), 1u) << b;
      EXPECT_NEAR(l.omega().at(b), omega, 1e-5 * omega) << "bits " << b;
    }
  }
  EXPECT_NEAR(r.total_trace(), exact["fisher_total_trace"].get<double>(),
              1e-5 * exact["fisher_total_trace"].get<double>());
  // The top "eigenvalue" of a diagonal matrix is its largest entry; the
  // next one is 0.6% lower.
  ASSERT_GE(r.eigenvalues_size(), 1);
  EXPECT_NEAR(r.eigenvalues(0), exact["fisher_max_diagonal"].get<double>(),
              1e-3 * exact["fisher_max_diagonal"].get<double>());
}

// Same seed, same numbers; another seed draws other probes.
TEST_F(AnalyzePipelineTest, TheSeedDecidesTheProbes) {
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.mutable_traces()->set_max_probes(12);
  auto traces = [&](uint64_t seed) {
    FakeJobContext context(AnalyzeJob(spec, seed), &resources_);
    absl::StatusOr<v1::JobResult> result = RunAnalyze(spec, context);
    EXPECT_TRUE(result.ok()) << result.status();
    std::vector<double> t;
    if (result.ok()) {
      for (const auto& l : result->analyze().layers()) t.push_back(l.trace());
    }
    return t;
  };
  const std::vector<double> first = traces(11);
  ASSERT_EQ(first.size(), Expected()["models"][kCnn]["layers"].size());
  EXPECT_EQ(traces(11), first);
  EXPECT_NE(traces(12), first);
}

TEST_F(AnalyzePipelineTest, ACancelledJobEndsCancelledWithoutArtifacts) {
  FakeJobContext context(AnalyzeJob(MinimalSpec()), &resources_);
  context.token().Cancel();
  absl::Status s = RunAnalyze(MinimalSpec(), context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(context.artifacts().empty());
}

// tiny_mlp takes 4 features; tiny.safetensors has 1x8x8 images.
TEST_F(AnalyzePipelineTest, DataThatDoesNotFitTheModelIsInvalidArgument) {
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.set_model_id(kMlp);
  FakeJobContext context(AnalyzeJob(spec), &resources_);
  absl::Status s = RunAnalyze(spec, context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(context.artifacts().empty());
}

TEST_F(AnalyzePipelineTest, AMissingModelFileIsNotFound) {
  v1::AnalyzeSpec spec = MinimalSpec();
  spec.set_model_id("no_such_model.pt");
  FakeJobContext context(AnalyzeJob(spec), &resources_);
  absl::Status s = RunAnalyze(spec, context).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(context.artifacts().empty());
}

}  // namespace
}  // namespace compress::pipeline
