// Regularized Newton re-fitting of a classifier head: one step against
// plain PyTorch (autograd Hessian + dense solve, written by
// tests/fixtures/make_head_refit_fixture.py), the adaptive rule on problems
// with a known minimiser, and the reference CNN after 3-bit rounding.
#include "server/engine/prune/head_refit.h"

#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/prune/prune.h"
#include "server/engine/quant/quantize.h"
#include "server/engine/quant/quantizer.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::SourceDir;
using ::compress::testutil::FixturePath;
using ::testing::HasSubstr;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

torch::Tensor FromJson(const nlohmann::json& values, std::vector<int64_t> shape) {
  return torch::tensor(values.get<std::vector<double>>(), kF64).view(shape);
}

const nlohmann::json& Fixture() {
  static const nlohmann::json* j = [] {
    std::ifstream in(FixturePath("head_refit_expected.json"));
    return new nlohmann::json(nlohmann::json::parse(in));
  }();
  return *j;
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// One step with the exact Hessian equals x − (H + c‖g‖^α I)⁻¹ g from
// PyTorch's autograd Hessian and torch.linalg.solve.
TEST(HeadRefitTest, ExactStepMatchesDenseSolveInPyTorch) {
  const nlohmann::json& j = Fixture();
  const int64_t n = j["n"], d = j["d"], k = j["k"];
  const double t = j["temperature"];
  const torch::Tensor x = FromJson(j["features"], {n, d});
  const torch::Tensor teacher = FromJson(j["teacher"], {n, k});
  const torch::Tensor y = torch::tensor(j["targets"].get<std::vector<int64_t>>());
  const torch::Tensor w = FromJson(j["weight"], {k, d});
  const torch::Tensor b = FromJson(j["bias"], {k});
  for (const std::string name : {"labels", "no_labels"}) {
    SCOPED_TRACE(name);
    const nlohmann::json& c = j["cases"][name];
    const torch::Tensor targets = name == "labels" ? y : torch::Tensor();
    absl::StatusOr<HeadDerivatives> der = HeadLossDerivatives(x, teacher, targets, w, b, t);
    ASSERT_TRUE(der.ok()) << der.status();
    EXPECT_NEAR(der->loss, c["loss"].get<double>(), 1e-12);
    EXPECT_LT(MaxAbsDiff(der->grad, FromJson(c["grad"], {-1})), 1e-12);
    const int64_t p = k * (d + 1);
    EXPECT_LT(MaxAbsDiff(der->hessian, FromJson(c["hessian"], {p, p})), 1e-12);

    HeadRefitOptions o;
    o.hessian = HeadHessian::kExact;
    o.temperature = t;
    o.newton.iterations = 1;
    o.newton.reg_init = j["c"];
    o.newton.alpha = j["alpha"];
    absl::StatusOr<HeadRefitResult> r = RefitHead(x, teacher, targets, w, b, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->trace.size(), 2u);
    EXPECT_EQ(r->trace[1].rejected, 0);
    EXPECT_NEAR(r->trace[1].lambda, c["lambda"].get<double>(), 1e-12);
    const torch::Tensor step = FromJson(c["step"], {k, d + 1});
    EXPECT_LT(MaxAbsDiff(r->weight, w - step.narrow(1, 0, d)), 1e-10);
    EXPECT_LT(MaxAbsDiff(r->bias, b - step.select(1, d)), 1e-10);
    EXPECT_NEAR(r->loss_after, c["loss_after"].get<double>(), 1e-10);
    // The autograd form of the loss (used for Adam) agrees too.
    absl::StatusOr<torch::Tensor> l = HeadLoss(x, teacher, targets, w, b, t);
    ASSERT_TRUE(l.ok());
    EXPECT_NEAR(l->item<double>(), c["loss"].get<double>(), 1e-12);
  }
}

// f(x) = ½xᵀAx − bᵀx with only diag(A) as the approximate Hessian: the
// adaptive rule still converges to A⁻¹b (dense solve).
TEST(HeadRefitTest, ApproximateHessianConvergesOnQuadratic) {
  torch::manual_seed(1);
  const torch::Tensor m = torch::randn({6, 6}, kF64);
  const torch::Tensor a = m.mm(m.t()) + torch::eye(6, kF64);
  const torch::Tensor b = torch::randn({6}, kF64);
  const torch::Tensor x_star = at::linalg_solve(a, b.unsqueeze(1)).squeeze(1);
  NewtonProblem problem;
  problem.loss = [&](const torch::Tensor& x) -> absl::StatusOr<double> {
    return (0.5 * x.dot(a.mv(x)) - b.dot(x)).item<double>();
  };
  problem.model = [&](const torch::Tensor& x) -> absl::StatusOr<LocalModel> {
    LocalModel lm;
    lm.loss = *problem.loss(x);
    lm.grad = a.mv(x) - b;
    const torch::Tensor diag = a.diagonal();
    const torch::Tensor g = lm.grad;
    lm.solve = [diag, g](double lambda) -> absl::StatusOr<torch::Tensor> {
      return g / (diag + lambda);
    };
    return lm;
  };
  RegularizedNewtonOptions o;
  o.iterations = 2000;
  std::vector<NewtonTrace> trace;
  absl::StatusOr<torch::Tensor> x = MinimizeRegularizedNewton(problem, torch::zeros({6}, kF64), o,
                                                              &trace);
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_LT(MaxAbsDiff(*x, x_star), 1e-6);
  for (size_t i = 1; i < trace.size(); ++i) EXPECT_LE(trace[i].loss, trace[i - 1].loss);
}

// A realizable softmax problem (teacher logits from a known head, no
// labels): both Hessians drive the KL to 0, i.e. to the minimiser's
// probabilities (the head itself is fixed only up to softmax's shift).
TEST(HeadRefitTest, ConvergesToKnownMinimiserOfSoftmaxProblem) {
  torch::manual_seed(2);
  const int64_t n = 400, d = 8, k = 5;
  const torch::Tensor x = torch::randn({n, d}, kF64);
  const torch::Tensor w_star = torch::randn({k, d}, kF64);
  const torch::Tensor b_star = torch::randn({k}, kF64);
  const torch::Tensor teacher = x.mm(w_star.t()) + b_star;
  for (HeadHessian kind : {HeadHessian::kExact, HeadHessian::kKfac}) {
    SCOPED_TRACE(HeadHessianName(kind));
    HeadRefitOptions o;
    o.hessian = kind;
    o.newton.iterations = kind == HeadHessian::kExact ? 40 : 400;
    absl::StatusOr<HeadRefitResult> r =
        RefitHead(x, teacher, torch::Tensor(), torch::zeros({k, d}, kF64),
                  torch::zeros({k}, kF64), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LT(r->loss_after, 1e-9);
    const torch::Tensor p = at::softmax(x.mm(r->weight.t()) + r->bias, 1);
    EXPECT_LT(MaxAbsDiff(p, at::softmax(teacher, 1)), 1e-4);
  }
}

TEST(HeadRefitTest, RejectsBadInput) {
  const torch::Tensor x = torch::randn({10, 3000}, kF64);
  const torch::Tensor t = torch::randn({10, 4}, kF64);
  HeadRefitOptions o;
  o.hessian = HeadHessian::kExact;
  absl::StatusOr<HeadRefitResult> r =
      RefitHead(x, t, torch::Tensor(), torch::zeros({4, 3000}, kF64), torch::zeros({4}, kF64), o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("12004 parameters"));
  r = RefitHead(x, t, torch::Tensor(), torch::zeros({5, 3000}, kF64), torch::zeros({5}, kF64),
                HeadRefitOptions());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  o.hessian = HeadHessian::kKfac;
  o.newton.alpha = 2;
  r = RefitHead(x, t, torch::Tensor(), torch::zeros({4, 3000}, kF64), torch::zeros({4}, kF64), o);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("alpha"));
}

// Mean T=1 KL of the student's to the teacher's probabilities, computed
// from two full forward passes.
double ModelKl(torch::jit::Module& student, torch::jit::Module& teacher, const torch::Tensor& in) {
  torch::NoGradGuard g;
  const torch::Tensor s = student.forward({in}).toTensor().to(torch::kFloat64);
  const torch::Tensor t = teacher.forward({in}).toTensor().to(torch::kFloat64);
  const torch::Tensor tq = at::softmax(t, 1);
  return (tq * (tq.log() - at::log_softmax(s, 1))).sum(1).mean().item<double>();
}

// The reference CNN, every Conv/Linear weight rounded to 3 bits: the head's
// features reproduce the model's logits, and re-fitting the head (K-FAC)
// lowers the distillation loss of the whole model on its calibration data.
TEST(HeadRefitTest, ReferenceCnnAfterThreeBitRounding) {
  const std::string path = SourceDir() + "/models/fmnist_cnn.pt";
  absl::StatusOr<torch::jit::Module> teacher = LoadModel(path, "cpu");
  absl::StatusOr<torch::jit::Module> student = LoadModel(path, "cpu");
  ASSERT_TRUE(teacher.ok() && student.ok());
  absl::StatusOr<LoadedDataset> data = LoadDataset("builtin:fashion-mnist/train", 256);
  ASSERT_TRUE(data.ok()) << data.status();
  {
    torch::NoGradGuard g;
    QuantizerSpec spec;
    spec.bits = 3;
    for (const auto& p : student->named_parameters()) {
      if (p.value.dim() < 2) continue;
      absl::StatusOr<QuantizedTensor> q = Quantize(p.value, spec);
      ASSERT_TRUE(q.ok());
      p.value.copy_(*Dequantize(*q));
    }
  }
  absl::StatusOr<HeadFeatures> hf = ComputeHeadFeatures(*student, data->inputs.first);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->head, "fc");
  EXPECT_EQ(hf->features.size(1), 1568);
  torch::Tensor logits, teacher_logits;
  {
    torch::NoGradGuard g;
    logits = student->forward({data->inputs.first}).toTensor();
    teacher_logits = teacher->forward({data->inputs.first}).toTensor();
  }
  EXPECT_LT(MaxAbsDiff(at::linear(hf->features, hf->weight, hf->bias), logits), 1e-4);
  const double before = ModelKl(*student, *teacher, data->inputs.first);
  HeadRefitOptions o;
  o.newton.iterations = 5;
  absl::StatusOr<HeadRefitResult> r =
      RefitHead(hf->features, teacher_logits, data->targets, hf->weight, hf->bias, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->loss_after, r->loss_before);
  ASSERT_TRUE(SetHead(*student, hf->head, r->weight, r->bias).ok());
  const double after = ModelKl(*student, *teacher, data->inputs.first);
  EXPECT_LT(after, 0.8 * before) << before << " -> " << after;
}

// PRUNE with optimizer "newton": the reference ViT cut to half its FLOPs in
// one round, then only its head re-fitted; the round's calibration loss
// falls and the other parameters are those of the job without recovery.
TEST(HeadRefitTest, PruneJobWithNewtonRecovery) {
  PruneOptions o;
  o.model_path = SourceDir() + "/models/fmnist_vit.pt";
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = 256;
  o.saliency_samples = 64;
  o.saliency = SaliencyKind::kMagnitude;  // no HVPs: the test is about recovery
  o.steps = 1;
  o.target_fraction = 0.5;
  o.measure_latency = false;
  o.optimizer = "newton";
  o.recovery_steps = 10;
  o.output_dir = testing::MakeTempDir();
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rounds.size(), 1u);
  EXPECT_LT(r->rounds[0].loss_after_recovery, 0.9 * r->rounds[0].loss_before_recovery)
      << r->rounds[0].loss_before_recovery;
  o.recovery_steps = 0;
  o.output_dir = testing::MakeTempDir();
  absl::StatusOr<PruneReport> plain = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  torch::jit::Module a = torch::jit::load(r->model_path);
  torch::jit::Module b = torch::jit::load(plain->model_path);
  int64_t same = 0, differ = 0;
  std::map<std::string, torch::Tensor> pb;
  for (const auto& p : b.named_parameters()) pb[p.name] = p.value;
  for (const auto& p : a.named_parameters()) {
    bool head = p.name.rfind("head.", 0) == 0;
    bool equal = p.value.equal(pb[p.name]);
    if (head) {
      EXPECT_FALSE(equal) << p.name;
    } else {
      (equal ? same : differ)++;
    }
  }
  EXPECT_GT(same, 0);
  EXPECT_EQ(differ, 0);
  o.optimizer = "lbfgs";
  EXPECT_EQ(RunPruning(o, nullptr, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

// QUANTIZE with head_refit: every layer at 3 bits (uniform, no pins), the
// head re-fitted (K-FAC) and rounded again. model.pt's head lies on a 3-bit
// grid per row, and the report's loss after the re-fit is the loss of
// model.pt against the float model, recomputed here from full forward passes.
TEST(HeadRefitTest, QuantizeJobRefitsAndRoundsTheHead) {
  QuantizeOptions o;
  o.model_path = SourceDir() + "/models/fmnist_cnn.pt";
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = 256;
  o.batch_size = 64;
  o.eval_dataset = "builtin:fashion-mnist/test";
  o.eval_samples = 500;
  o.search = QuantSearch::kUniform;
  o.budget = QuantBudget::AverageBits(3);
  o.pins = std::map<std::string, int>();
  o.trace_tolerance = 0.5;
  o.trace_max_probes = 4;
  o.output_dir = testing::MakeTempDir();
  o.head_refit = QuantHeadRefit{5, "kfac", 0.5, 1.0};
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->head_refit.has_value());
  const QuantHeadRefitReport& h = *r->head_refit;
  EXPECT_EQ(h.head, "fc");
  EXPECT_EQ(h.hessian, "kfac");
  EXPECT_EQ(h.bits, 3);
  std::printf("head re-fit: loss %.4f -> %.4f (re-fit) -> %.4f (rounded again); top-1 %.2f -> %.2f\n",
              h.loss_before, h.loss_refit, h.loss_after, h.accuracy_before.value_or(-1),
              r->accuracy_after.value_or(-1));
  EXPECT_LT(h.loss_refit, 0.8 * h.loss_before);
  EXPECT_LT(h.loss_after, 0.9 * h.loss_before);
  ASSERT_TRUE(h.accuracy_before.has_value());

  torch::jit::Module saved = torch::jit::load(r->model_path);
  torch::jit::Module original = torch::jit::load(o.model_path);
  saved.eval();
  original.eval();
  const torch::Tensor w = saved.attr("fc").toModule().attr("weight").toTensor();
  for (int64_t row = 0; row < w.size(0); ++row) {
    EXPECT_LE(std::get<0>(at::_unique(w[row])).numel(), 8) << row;
  }
  absl::StatusOr<LoadedDataset> data = LoadDataset(o.calibration_dataset, o.num_samples);
  ASSERT_TRUE(data.ok());
  torch::NoGradGuard g;
  const torch::Tensor s = saved.forward({data->inputs.first}).toTensor().to(torch::kFloat64);
  const torch::Tensor t = original.forward({data->inputs.first}).toTensor().to(torch::kFloat64);
  const torch::Tensor tq = at::softmax(t, 1);
  const double loss = (tq * (tq.log() - at::log_softmax(s, 1))).sum(1).mean().item<double>() +
                      at::cross_entropy_loss(s, data->targets).item<double>();
  EXPECT_NEAR(loss, h.loss_after, 2e-3);

  o.head_refit->iterations = 0;
  EXPECT_EQ(RunQuantization(o, nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress::engine
