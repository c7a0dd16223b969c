// PerturbationModel (gᵀδ and ½ δᵀHδ of a one-tensor perturbation) against
// closed forms for a linear model with squared loss, where they are the
// exact loss change, and against finite differences of the loss itself on
// smooth nonlinear models; HvpOperator::ApplyToTensor against the diagonal
// blocks of full Hessians; PerturbationModel::Column's cross terms against
// the off-diagonal blocks of a full Hessian.
#include "server/engine/hessian/perturbation.h"

#include <torch/script.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/param_set.h"
#include "tests/engine/hessian_test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Data;
using ::compress::engine::testing::F64;
using ::compress::engine::testing::FullHessian;
using ::compress::engine::testing::LoadF64;
using ::compress::engine::testing::MakeCdistModel;
using ::compress::engine::testing::MakeLinearModel;
using ::compress::engine::testing::Prepare;
using ::compress::engine::testing::RandomClassification;
using ::compress::engine::testing::RelativeError;
using ::testing::HasSubstr;

std::unique_ptr<PerturbationModel> MakeModel(const torch::jit::Module& m, PreparedBatches p,
                                             const std::vector<std::string>& weights,
                                             PerturbationModelOptions options = {}) {
  options.hvp.max_cached_batches = static_cast<int>(p.batches.size());
  absl::StatusOr<std::unique_ptr<PerturbationModel>> model =
      PerturbationModel::Create(m, std::move(p), weights, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(model).value() : nullptr;
}

// The parameter `name` of `m` (the module's own tensor).
torch::Tensor Parameter(const torch::jit::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters(true)) {
    if (p.name == name) return p.value;
  }
  ADD_FAILURE() << "no parameter " << name;
  return torch::Tensor();
}

// The mean loss over the prepared batches (weights n_b / N) with `name`
// shifted by `step`·δ, by plain forward passes; the model is restored.
double LossAlong(torch::jit::Module& m, const PreparedBatches& p, const std::string& name,
                 const torch::Tensor& delta, double step) {
  torch::NoGradGuard no_grad;
  torch::Tensor w = Parameter(m, name);
  torch::Tensor saved = w.clone();
  w.add_(delta, step);
  double loss = 0;
  for (const Batch& b : p.batches) {
    absl::StatusOr<torch::Tensor> out = RunForward(m, b.inputs);
    EXPECT_TRUE(out.ok()) << out.status();
    absl::StatusOr<torch::Tensor> l = ComputeLoss(p.loss, *out, b.targets);
    EXPECT_TRUE(l.ok()) << l.status();
    loss += l->item<double>() * static_cast<double>(b.size) / static_cast<double>(p.num_examples);
  }
  w.copy_(saved);
  return loss;
}

// --------------------------------------------------------- ApplyToTensor

// H_kk v_k from the full Hessian: the rows and columns of tensor k.
torch::Tensor BlockProduct(const torch::Tensor& h, const ParamLayout& layout, int k,
                           const torch::Tensor& v) {
  int64_t offset = 0;
  for (int i = 0; i < k; ++i) {
    int64_t n = 1;
    for (int64_t d : layout.shapes[i]) n *= d;
    offset += n;
  }
  const int64_t n = v.numel();
  return torch::mv(h.narrow(0, offset, n).narrow(1, offset, n), v.reshape(-1));
}

TEST(ApplyToTensorTest, IsTheDiagonalBlockProductForExactAndFiniteDifferences) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({13, 4}, 3, 21);
  PreparedBatches p = Prepare(m, d.inputs, d.targets, 5);  // 5 + 5 + 3
  torch::Tensor h = FullHessian(m, p);
  for (HvpMethod method : {HvpMethod::kExact, HvpMethod::kFiniteDifference}) {
    for (int cached : {0, 3}) {
      SCOPED_TRACE(std::string(HvpMethodName(method)) + " cached " + std::to_string(cached));
      HvpOptions options;
      options.method = method;
      options.max_cached_batches = cached;
      absl::StatusOr<std::unique_ptr<HvpOperator>> op = CreateHvpOperator(m, p, options);
      ASSERT_TRUE(op.ok()) << op.status();
      at::Generator gen = MakeGenerator(3);
      const ParamLayout& layout = (*op)->layout();
      for (int k = 0; k < static_cast<int>(layout.names.size()); ++k) {
        torch::Tensor v = at::randn(layout.shapes[k], gen, F64());
        absl::StatusOr<torch::Tensor> hv = (*op)->ApplyToTensor(k, v);
        ASSERT_TRUE(hv.ok()) << hv.status();
        const double err = RelativeError(hv->reshape(-1), BlockProduct(h, layout, k, v));
        EXPECT_LT(err, method == HvpMethod::kExact ? 1e-12 : 1e-6) << layout.names[k];
      }
      EXPECT_EQ((*op)->num_applications(), static_cast<int64_t>(layout.names.size()));
    }
  }
}

TEST(ApplyToTensorTest, RejectsABadIndexOrShape) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({4, 4}, 3, 2);
  absl::StatusOr<std::unique_ptr<HvpOperator>> op =
      CreateHvpOperator(m, Prepare(m, d.inputs, d.targets, 4), HvpOptions{});
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ((*op)->ApplyToTensor(9, torch::zeros({8, 4}, F64())).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = (*op)->ApplyToTensor(0, torch::zeros({4, 8}, F64())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("0.weight"));
}

// ------------------------------------------------------ PerturbationModel

// z = x Wᵀ + b with L = mean over all N·out elements of (z − y)²:
// ½ δᵀHδ = ‖x δᵀ‖² / (N·out), gᵀδ = 2/(N·out) Σ (z − y) ⊙ (x δᵀ), and their
// sum is exactly L(W + δ) − L(W).
TEST(PerturbationModelTest, LinearModelWithSquaredLossMatchesTheClosedForms) {
  constexpr int64_t kIn = 5, kOut = 3, kN = 20;
  torch::jit::Module m = MakeLinearModel(kIn, kOut, 7);
  at::Generator gen = MakeGenerator(8);
  torch::Tensor x = at::randn({kN, kIn}, gen, F64());
  torch::Tensor y = at::randn({kN, kOut}, gen, F64());
  PreparedBatches p = Prepare(m, x, y, 7);  // 7 + 7 + 6
  std::unique_ptr<PerturbationModel> model = MakeModel(m, p, {"weight", "bias"});
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->method(), HvpMethod::kExact);

  const torch::Tensor w = Parameter(m, "weight").detach();
  const torch::Tensor b = Parameter(m, "bias").detach();
  const torch::Tensor residual = x.mm(w.t()) + b - y;
  const double k = static_cast<double>(kN * kOut);
  for (double scale : {1e-3, 1.0, 30.0}) {
    SCOPED_TRACE(scale);
    torch::Tensor delta = scale * at::randn({kOut, kIn}, gen, F64());
    absl::StatusOr<PerturbationTerms> t = model->Terms("weight", delta);
    ASSERT_TRUE(t.ok()) << t.status();
    const torch::Tensor xd = x.mm(delta.t());
    const double quadratic = xd.pow(2).sum().item<double>() / k;
    const double linear = 2 * (residual * xd).sum().item<double>() / k;
    EXPECT_NEAR(t->quadratic, quadratic, 1e-12 * quadratic);
    EXPECT_NEAR(t->linear, linear, 1e-12 * std::abs(linear) + 1e-15);
    const double change = LossAlong(m, p, "weight", delta, 1) - LossAlong(m, p, "weight", delta, 0);
    EXPECT_NEAR(t->linear + t->quadratic, change, 1e-10 * std::abs(change) + 1e-14);
  }
  // The bias: H_bb = 2N/(N·out) I.
  torch::Tensor delta_b = at::randn({kOut}, gen, F64());
  absl::StatusOr<PerturbationTerms> tb = model->Terms("bias", delta_b);
  ASSERT_TRUE(tb.ok()) << tb.status();
  EXPECT_NEAR(tb->quadratic, delta_b.pow(2).sum().item<double>() / kOut, 1e-12);
  EXPECT_EQ(model->hvp_count(), 4);
}

// Smooth nonlinear models (GELU, softmax, LayerNorm; a ReLU MLP at steps
// that cross no kink): central differences of the loss along δ give gᵀδ and
// δᵀHδ to O(t²).
TEST(PerturbationModelTest, MatchesFiniteDifferencesOfTheLoss) {
  struct Case {
    std::string fixture;
    std::vector<int64_t> input;
    std::vector<std::string> weights;
  };
  const std::vector<Case> cases = {
      {"tiny_vit.pt", {6, 1, 28, 28}, {"patch_embed.proj.weight", "blocks.0.mlp.fc1.weight",
                                       "blocks.1.attn.qkv.weight", "head.weight"}},
      {"tiny_mlp.pt", {16, 4}, {"0.weight", "2.weight"}},
  };
  for (const Case& c : cases) {
    torch::jit::Module m = LoadF64(c.fixture);
    Data d = RandomClassification(c.input, 3, 5);
    PreparedBatches p = Prepare(m, d.inputs, d.targets, 4);  // uneven: 4 + 2 or 4·4
    std::unique_ptr<PerturbationModel> model = MakeModel(m, p, c.weights);
    ASSERT_NE(model, nullptr);
    at::Generator gen = MakeGenerator(9);
    for (const std::string& name : c.weights) {
      SCOPED_TRACE(c.fixture + " " + name);
      torch::Tensor w = Parameter(m, name).detach();
      // A quantization-like perturbation: 1% of the weights' scale.
      torch::Tensor delta = 0.01 * w.abs().mean() * at::randn(w.sizes(), gen, F64());
      absl::StatusOr<PerturbationTerms> t = model->Terms(name, delta);
      ASSERT_TRUE(t.ok()) << t.status();
      constexpr double kStep = 1e-2;  // of δ: ‖tδ‖ ~ 1e-4 of ‖W‖
      const double plus = LossAlong(m, p, name, delta, kStep);
      const double minus = LossAlong(m, p, name, delta, -kStep);
      const double zero = LossAlong(m, p, name, delta, 0);
      const double quadratic = 0.5 * (plus + minus - 2 * zero) / (kStep * kStep);
      const double linear = (plus - minus) / (2 * kStep);
      std::cout << c.fixture << " " << name << ": ½δᵀHδ " << t->quadratic << " (differences "
                << quadratic << "), gᵀδ " << t->linear << " (" << linear << ")\n";
      EXPECT_NEAR(t->quadratic, quadratic, 1e-4 * std::abs(quadratic));
      EXPECT_NEAR(t->linear, linear, 1e-6 * std::abs(linear));
    }
  }
}

TEST(PerturbationModelTest, FallsBackWhenAnOpHasNoDoubleBackward) {
  torch::jit::Module m = MakeCdistModel(1);
  Data d = RandomClassification({6, 4}, 3, 2);
  PreparedBatches p = Prepare(m, d.inputs, d.targets, 6);
  at::Generator gen = MakeGenerator(4);
  torch::Tensor delta = 0.1 * at::randn({3, 4}, gen, F64());
  const double quadratic = 0.5 *
                           (LossAlong(m, p, "centers", delta, 1e-3) +
                            LossAlong(m, p, "centers", delta, -1e-3) -
                            2 * LossAlong(m, p, "centers", delta, 0)) /
                           1e-6;

  std::unique_ptr<PerturbationModel> fd = MakeModel(m, p, {"centers"});
  ASSERT_NE(fd, nullptr);
  absl::StatusOr<PerturbationTerms> t = fd->Terms("centers", delta);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(fd->method(), HvpMethod::kFiniteDifference);
  EXPECT_THAT(fd->fallback_reason(), HasSubstr("cdist"));
  EXPECT_NEAR(t->quadratic, quadratic, 1e-4 * std::abs(quadratic));
  EXPECT_EQ(fd->hvp_count(), 2);  // the failed exact product and the difference

  PerturbationModelOptions fisher;
  fisher.fallback = HvpFallback::kFisherDiagonal;
  std::unique_ptr<PerturbationModel> diag = MakeModel(m, p, {"centers"}, fisher);
  ASSERT_NE(diag, nullptr);
  ASSERT_TRUE(diag->Terms("centers", delta).ok());
  EXPECT_EQ(diag->method(), HvpMethod::kFisherDiagonal);

  PerturbationModelOptions none;
  none.fallback = HvpFallback::kNone;
  std::unique_ptr<PerturbationModel> strict = MakeModel(m, p, {"centers"}, none);
  ASSERT_NE(strict, nullptr);
  absl::Status s = strict->Terms("centers", delta).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("cdist"));
}

TEST(PerturbationModelTest, DifferentiatesFrozenWeightsAndLeavesTheCallersModelAlone) {
  constexpr int64_t kIn = 4, kOut = 2, kN = 10;
  torch::jit::Module m = MakeLinearModel(kIn, kOut, 3);
  torch::Tensor w = Parameter(m, "weight");
  w.requires_grad_(false);  // as FoldConvBatchNorm leaves folded weights
  const torch::Tensor before = w.clone();
  at::Generator gen = MakeGenerator(6);
  torch::Tensor x = at::randn({kN, kIn}, gen, F64());
  torch::Tensor y = at::randn({kN, kOut}, gen, F64());
  PreparedBatches p = Prepare(m, x, y, kN);
  std::unique_ptr<PerturbationModel> model = MakeModel(m, p, {"weight"});
  ASSERT_NE(model, nullptr);
  torch::Tensor delta = at::randn({kOut, kIn}, gen, F64());
  absl::StatusOr<PerturbationTerms> t = model->Terms("weight", delta);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_NEAR(t->quadratic, x.mm(delta.t()).pow(2).sum().item<double>() / (kN * kOut), 1e-12);
  EXPECT_FALSE(Parameter(m, "weight").requires_grad());
  EXPECT_TRUE(Parameter(m, "bias").requires_grad());
  EXPECT_TRUE(torch::equal(Parameter(m, "weight"), before));
}

// δ_iᵀ H_ij δ_j from Column against the blocks of the full Hessian (plain
// double backward, every parameter), for every pair of perturbed tensors;
// the cross terms of the MLP's two layers are not zero, and all the terms
// sum to ½ δᵀHδ of the whole perturbation.
TEST(PerturbationModelTest, ColumnGivesEveryCrossTermOfTheFullHessian) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({13, 4}, 3, 17);
  PreparedBatches p = Prepare(m, d.inputs, d.targets, 5);  // 5 + 5 + 3
  const torch::Tensor h = FullHessian(m, p);
  absl::StatusOr<ParamSet> all = CollectParameters(m);
  ASSERT_TRUE(all.ok()) << all.status();
  const std::vector<std::string> listed = {"0.weight", "2.weight", "2.bias"};
  std::unique_ptr<PerturbationModel> model = MakeModel(m, p, listed);
  ASSERT_NE(model, nullptr);
  ASSERT_EQ(model->weights(), listed);
  // δ of every listed tensor, placed in a flat vector of all parameters.
  at::Generator gen = MakeGenerator(12);
  torch::Tensor full = torch::zeros({all->layout->numel}, F64());
  std::vector<torch::Tensor> deltas, flat;  // flat: δ_i alone, zeros elsewhere
  for (const std::string& name : listed) {
    torch::Tensor w = Parameter(m, name).detach();
    deltas.push_back(0.1 * at::randn(w.sizes(), gen, F64()));
    int64_t offset = 0;
    for (size_t k = 0; all->layout->names[k] != name; ++k) offset += all->tensors[k].numel();
    flat.push_back(torch::zeros_like(full));
    flat.back().narrow(0, offset, w.numel()).copy_(deltas.back().reshape(-1));
    full += flat.back();
  }
  double sum = 0;
  for (size_t j = 0; j < listed.size(); ++j) {
    absl::StatusOr<std::vector<torch::Tensor>> column = model->Column(listed[j], deltas[j]);
    ASSERT_TRUE(column.ok()) << column.status();
    ASSERT_EQ(column->size(), listed.size());
    for (size_t i = 0; i < listed.size(); ++i) {
      SCOPED_TRACE(listed[i] + " x " + listed[j]);
      const double expected = torch::dot(flat[i], torch::mv(h, flat[j])).item<double>();
      const double got = torch::dot(deltas[i].reshape(-1), (*column)[i].reshape(-1)).item<double>();
      EXPECT_NEAR(got, expected, 1e-10 * std::abs(expected) + 1e-15);
      if (listed[i] != "2.bias" && listed[j] != "2.bias") {
        EXPECT_GT(std::abs(expected), 1e-4);  // a real cross term
      }
      sum += 0.5 * got;
    }
    absl::StatusOr<PerturbationTerms> t = model->Terms(listed[j], deltas[j]);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_NEAR(2 * t->quadratic,
                torch::dot(deltas[j].reshape(-1), (*column)[j].reshape(-1)).item<double>(),
                1e-12 * std::abs(t->quadratic));
  }
  const double whole = 0.5 * torch::dot(full, torch::mv(h, full)).item<double>();
  EXPECT_NEAR(sum, whole, 1e-10 * std::abs(whole));
  EXPECT_EQ(model->Column("0.bias", torch::zeros({8}, F64())).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(model->Column("2.weight", torch::zeros({8, 3}, F64())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PerturbationModelTest, UnknownWeightsAndShapesAreErrors) {
  torch::jit::Module m = MakeLinearModel(4, 2, 3);
  Data d = RandomClassification({4, 4}, 2, 1);
  PreparedBatches p = Prepare(m, d.inputs, d.targets, 4);
  absl::Status s = PerturbationModel::Create(m, p, {"no.such.weight"}, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("no.such.weight"));

  std::unique_ptr<PerturbationModel> model = MakeModel(m, p, {"weight"});
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->Terms("bias", torch::zeros({2}, F64())).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(model->Terms("weight", torch::zeros({4, 2}, F64())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress::engine
