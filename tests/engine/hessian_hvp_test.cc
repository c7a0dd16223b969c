// Parameter groups, losses and the three HVP methods against the exact
// Hessian of tiny float64 models built row by row with plain autograd.
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model_info.h"
#include "tests/engine/hessian_test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Data;
using ::compress::engine::testing::F64;
using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::FullHessian;
using ::compress::engine::testing::LoadF64;
using ::compress::engine::testing::MakeCdistModel;
using ::compress::engine::testing::MakeLinearModel;
using ::compress::engine::testing::Prepare;
using ::compress::engine::testing::RandomClassification;
using ::compress::engine::testing::RelativeError;
using ::compress::engine::testing::TestDevice;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<HvpOperator> MakeOp(
    torch::jit::Module m, PreparedBatches p, HvpMethod method,
    FiniteDifferenceScheme scheme = FiniteDifferenceScheme::kForward, int max_cached = 1) {
  HvpOptions options;
  options.method = method;
  options.fd_scheme = scheme;
  options.max_cached_batches = max_cached;
  if (TestDevice() != "cpu") {
    // A copy on the test device: the caller's module stays on the CPU.
    m = m.clone();
    m.to(torch::Device(TestDevice()));
    for (Batch& b : p.batches) {
      b.inputs = b.inputs.first.to(torch::Device(TestDevice()));
      b.targets = b.targets.to(torch::Device(TestDevice()));
    }
  }
  absl::StatusOr<std::unique_ptr<HvpOperator>> op = CreateHvpOperator(m, std::move(p), options);
  EXPECT_TRUE(op.ok()) << op.status();
  return std::move(op).value();
}

// max over a few random vectors of ‖op(v) − H v‖ / ‖H v‖.
double WorstError(HvpOperator& op, const torch::Tensor& h, uint64_t seed, int vectors = 3) {
  at::Generator gen = MakeGenerator(seed);
  double worst = 0;
  for (int i = 0; i < vectors; ++i) {
    ParamSet v = GaussianLike(op.parameters(), gen);
    absl::StatusOr<ParamSet> hv = op.Apply(v);
    EXPECT_TRUE(hv.ok()) << hv.status();
    if (!hv.ok()) return INFINITY;
    worst = std::max(worst, RelativeError(Flatten(*hv).cpu(), torch::mv(h, Flatten(v).cpu())));
  }
  return worst;
}

// --------------------------------------------------------------- ParamSet

TEST(ParamSetTest, GroupsFollowTheModulesLikeModelInfo) {
  absl::StatusOr<ModelSummary> summary = DescribeModelFile(FixturePath("tiny_cnn.pt"));
  ASSERT_TRUE(summary.ok()) << summary.status();
  torch::jit::Module m = LoadF64("tiny_cnn.pt");
  absl::StatusOr<ParamSet> params = CollectParameters(m);
  ASSERT_TRUE(params.ok()) << params.status();
  const ParamLayout& layout = *params->layout;
  ASSERT_EQ(layout.groups.size(), summary->layers.size());
  for (size_t g = 0; g < layout.groups.size(); ++g) {
    EXPECT_EQ(layout.groups[g].name, summary->layers[g].name);
    EXPECT_EQ(layout.groups[g].kind, summary->layers[g].kind);
    EXPECT_EQ(layout.groups[g].numel, summary->layers[g].numel);
    for (int i : layout.groups[g].tensors) EXPECT_EQ(layout.group_of[i], (int)g);
  }
  EXPECT_EQ(layout.numel, summary->num_parameters);
  EXPECT_EQ(layout.names.front(), "conv1.weight");
  // The live tensors, not copies.
  EXPECT_TRUE(params->tensors[0].is_same(m.attr("conv1").toModule().attr("weight").toTensor()));
}

TEST(ParamSetTest, RootParametersFormTheEmptyNamedGroup) {
  torch::jit::Module m = MakeLinearModel(4, 3, 1);
  absl::StatusOr<ParamSet> params = CollectParameters(m);
  ASSERT_TRUE(params.ok()) << params.status();
  ASSERT_EQ(params->layout->groups.size(), 1u);
  EXPECT_EQ(params->layout->groups[0].name, "");
  EXPECT_THAT(params->layout->names, ElementsAre("weight", "bias"));
  EXPECT_EQ(params->layout->numel, 15);
}

TEST(ParamSetTest, NoTrainableParametersIsFailedPrecondition) {
  torch::jit::Module m = MakeLinearModel(4, 3, 1);
  for (const auto& p : m.parameters()) p.requires_grad_(false);
  EXPECT_EQ(CollectParameters(m).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ParamSetTest, AlgebraMatchesFlatVectors) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  ParamSet params = *CollectParameters(m);
  at::Generator gen = MakeGenerator(3);
  ParamSet a = GaussianLike(params, gen);
  ParamSet b = GaussianLike(params, gen);
  torch::Tensor fa = Flatten(a), fb = Flatten(b);
  EXPECT_NEAR(Dot(a, b), torch::dot(fa, fb).item<double>(), 1e-12);
  EXPECT_NEAR(Norm(a), fa.norm().item<double>(), 1e-12);
  // Group 1 is the second Linear: the last 27 entries.
  EXPECT_EQ(params.layout->groups[1].name, "2");
  EXPECT_NEAR(GroupDot(a, b, 1),
              torch::dot(fa.narrow(0, 40, 27), fb.narrow(0, 40, 27)).item<double>(), 1e-12);
  std::vector<double> norms = GroupNorms(a);
  EXPECT_NEAR(norms[0], fa.narrow(0, 0, 40).norm().item<double>(), 1e-12);
  ParamSet y = Clone(b);
  Axpy(0.5, a, &y);
  Scale(2, &y);
  EXPECT_TRUE(torch::allclose(Flatten(y), 2 * (fb + 0.5 * fa)));
  RestrictToGroup(0, &y);
  EXPECT_EQ(Flatten(y).narrow(0, 40, 27).abs().sum().item<double>(), 0);
  EXPECT_TRUE(torch::equal(Flatten(Unflatten(fa, params)), fa));
}

TEST(ParamSetTest, ProbesAreSeededAndRademacherIsPlusMinusOne) {
  torch::jit::Module m = LoadF64("tiny_cnn.pt");
  ParamSet params = *CollectParameters(m);
  at::Generator g1 = MakeGenerator(7), g2 = MakeGenerator(7), g3 = MakeGenerator(8);
  torch::Tensor a = Flatten(RademacherLike(params, g1));
  torch::Tensor b = Flatten(RademacherLike(params, g2));
  torch::Tensor c = Flatten(RademacherLike(params, g3));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  EXPECT_TRUE(torch::equal(a.abs(), torch::ones_like(a)));
  // Roughly balanced signs.
  EXPECT_LT(std::abs(a.sum().item<double>()), 4 * std::sqrt(a.numel()));
  EXPECT_FALSE(torch::equal(Flatten(GaussianLike(params, g1)), Flatten(GaussianLike(params, g3))));
}

// ------------------------------------------------------------------- loss

TEST(LossTest, AutoPicksCrossEntropyMseOrPseudoLabels) {
  EXPECT_EQ(*ResolveLossKind(LossKind::kAuto, torch::zeros({2}, torch::kLong)),
            LossKind::kCrossEntropy);
  EXPECT_EQ(*ResolveLossKind(LossKind::kAuto, torch::zeros({2, 3})), LossKind::kMse);
  EXPECT_EQ(*ResolveLossKind(LossKind::kAuto, torch::Tensor()), LossKind::kPseudoLabel);
  EXPECT_EQ(ResolveLossKind(LossKind::kMse, torch::Tensor()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveLossKind(LossKind::kCrossEntropy, torch::zeros({2})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LossTest, ValuesMatchTheDefinitions) {
  torch::Tensor z = torch::tensor({{1.0, 2.0, 0.5}, {0.0, -1.0, 3.0}}, F64());
  torch::Tensor y = torch::tensor({1, 0}, torch::kLong);
  double want = 0;
  for (int i = 0; i < 2; ++i) {
    want += -(z[i][y[i].item<int64_t>()] - z[i].exp().sum().log()).item<double>() / 2;
  }
  EXPECT_NEAR(ComputeLoss(LossKind::kCrossEntropy, z, y)->item<double>(), want, 1e-12);
  // Pseudo-labels: argmax = {1, 2}.
  double pseudo =
      -((z[0][1] - z[0].exp().sum().log()) + (z[1][2] - z[1].exp().sum().log())).item<double>() / 2;
  EXPECT_NEAR(ComputeLoss(LossKind::kPseudoLabel, z, {})->item<double>(), pseudo, 1e-12);
  torch::Tensor t = torch::zeros({2, 3}, F64());
  EXPECT_NEAR(ComputeLoss(LossKind::kMse, z, t)->item<double>(), (z * z).mean().item<double>(),
              1e-12);
  EXPECT_EQ(
      ComputeLoss(LossKind::kCrossEntropy, z, torch::tensor({1, 3}, torch::kLong)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeLoss(LossKind::kMse, z, torch::zeros({2, 2})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Logits [N, T, V] with token targets [N, T] (a language model's layout)
// against eager PyTorch's F.cross_entropy on the same numbers, written by
// tests/fixtures/make_transformer.py (issue 19: refused before, while
// pseudo-labels took the argmax over T).
TEST(LossTest, TokenLogitsMatchPythonsCrossEntropy) {
  const testing::TransformerFixture f = testing::MakeTransformerFixture();
  if (f.model.empty()) GTEST_SKIP() << "no /usr/bin/python3";
  ASSERT_EQ(f.values.size(), 6497u);
  auto values = [&f](size_t begin, size_t count) {
    return torch::tensor(
        std::vector<double>(f.values.begin() + begin, f.values.begin() + begin + count), F64());
  };
  torch::Tensor inputs = values(0, 1024).to(torch::kFloat32).reshape({4, 8, 32});
  torch::Tensor targets = values(6144, 32).to(torch::kLong).reshape({4, 8});
  torch::Tensor logits = values(6176, 320).reshape({4, 8, 10});
  const double want = f.values[6496];

  absl::StatusOr<torch::Tensor> loss = ComputeLoss(LossKind::kCrossEntropy, logits, targets);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->item<double>(), want, 1e-6 * want);
  // The same numbers in PyTorch's own layout, classes on dim 1.
  loss = ComputeLoss(LossKind::kCrossEntropy, logits.transpose(1, 2), targets);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->item<double>(), want, 1e-6 * want);

  // Through the model: batches, forward and loss as ANALYZE runs them.
  absl::StatusOr<torch::jit::Module> m = LoadModel(f.model);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<PreparedBatches> p = PrepareBatches(*m, inputs, targets, 4, LossKind::kAuto);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->loss, LossKind::kCrossEntropy);
  torch::NoGradGuard no_grad;
  absl::StatusOr<torch::Tensor> out = RunForward(*m, p->batches[0].inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  loss = ComputeLoss(p->loss, *out, p->batches[0].targets);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_NEAR(loss->item<double>(), want, 1e-5 * want);

  // Without targets nothing says which axis holds the classes.
  absl::StatusOr<PreparedBatches> pseudo =
      PrepareBatches(*m, inputs, torch::Tensor(), 4, LossKind::kAuto);
  EXPECT_EQ(pseudo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pseudo.status().message(), HasSubstr("pseudo-labels need logits [N, C]"));
  EXPECT_THAT(pseudo.status().message(), HasSubstr("[4, 8, 10]"));
  EXPECT_EQ(ComputeLoss(LossKind::kPseudoLabel, logits, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Both axes fit [4, 10] targets on [4, 10, 10] logits: refused, not guessed.
  absl::StatusOr<torch::Tensor> both = ComputeLoss(
      LossKind::kCrossEntropy, torch::zeros({4, 10, 10}), torch::zeros({4, 10}, torch::kLong));
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(both.status().message(), HasSubstr("cannot tell the class axis"));
  // Targets of neither shape say what would fit.
  absl::StatusOr<torch::Tensor> neither =
      ComputeLoss(LossKind::kCrossEntropy, logits, torch::zeros({4, 9}, torch::kLong));
  EXPECT_THAT(neither.status().message(), HasSubstr("logits [N, T, V], targets [N, T]"));
  // Class indices are checked against V.
  EXPECT_EQ(ComputeLoss(LossKind::kCrossEntropy, logits, targets + 10).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LossTest, BatchesSplitMoveAndFixPseudoLabels) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({7, 4}, 3, 1);
  torch::Tensor f32 = d.inputs.to(torch::kFloat32);
  absl::StatusOr<PreparedBatches> p = PrepareBatches(m, f32, torch::Tensor(), 3, LossKind::kAuto);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->loss, LossKind::kCrossEntropy);
  EXPECT_TRUE(p->pseudo_labels);
  EXPECT_EQ(p->num_examples, 7);
  ASSERT_EQ(p->batches.size(), 3u);
  EXPECT_EQ(p->batches[2].size, 1);
  EXPECT_EQ(p->batches[0].inputs.first.scalar_type(), torch::kFloat64);
  torch::NoGradGuard no_grad;
  torch::Tensor out = *RunForward(m, p->batches[0].inputs);
  EXPECT_TRUE(torch::equal(p->batches[0].targets, out.argmax(1)));

  EXPECT_EQ(PrepareBatches(m, f32, torch::Tensor(), 0, LossKind::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Inputs that do not fit the model: torch's message, INVALID_ARGUMENT.
  absl::Status bad =
      PrepareBatches(m, torch::zeros({2, 5}), torch::Tensor(), 2, LossKind::kAuto).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("forward failed"));
}

// -------------------------------------------------------------------- HVP

struct Case {
  std::string name;
  torch::jit::Module model;
  PreparedBatches batches;
};

std::vector<Case> SmoothCases() {
  std::vector<Case> cases;
  {
    torch::jit::Module m = LoadF64("tiny_mlp.pt");
    Data d = RandomClassification({16, 4}, 3, 11);
    cases.push_back({"mlp_ce", m, Prepare(m, d.inputs, d.targets, 16)});
  }
  {
    // Uneven batches: 5 + 5 + 3, weighted by size.
    torch::jit::Module m = LoadF64("tiny_mlp.pt");
    at::Generator gen = MakeGenerator(12);
    torch::Tensor x = at::randn({13, 4}, gen, F64());
    torch::Tensor y = at::randn({13, 3}, gen, F64());
    cases.push_back({"mlp_mse_3_batches", m, Prepare(m, x, y, 5)});
  }
  {
    torch::jit::Module m = LoadF64("tiny_cnn.pt");
    absl::StatusOr<LoadedDataset> data = LoadDataset(FixturePath("tiny.safetensors"), 0);
    EXPECT_TRUE(data.ok()) << data.status();
    cases.push_back({"cnn_ce_2_batches", m, Prepare(m, data->inputs.first, data->targets, 4)});
  }
  return cases;
}

TEST(ExactHvpTest, MatchesTheFullHessian) {
  for (Case& c : SmoothCases()) {
    SCOPED_TRACE(c.name);
    torch::Tensor h = FullHessian(c.model, c.batches);
    EXPECT_LT((h - h.t()).abs().max().item<double>(), 1e-10);
    for (int cached : {0, 1, 8}) {
      std::unique_ptr<HvpOperator> op =
          MakeOp(c.model, c.batches, HvpMethod::kExact, FiniteDifferenceScheme::kForward, cached);
      const double err = WorstError(*op, h, 100 + cached);
      std::cout << c.name << ": exact HVP (" << cached << " cached batches), relative error " << err
                << "\n";
      EXPECT_LT(err, 1e-5) << "cached " << cached;
      EXPECT_EQ(op->num_applications(), 3);
    }
  }
}

TEST(ExactHvpTest, PseudoLabelsAreCrossEntropyWithTheModelsArgmax) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({10, 4}, 3, 5);
  PreparedBatches pseudo = Prepare(m, d.inputs, torch::Tensor(), 10);
  torch::Tensor labels;
  {
    torch::NoGradGuard no_grad;
    labels = RunForward(m, d.inputs)->argmax(1);
  }
  PreparedBatches ce = Prepare(m, d.inputs, labels, 10);
  torch::Tensor h = FullHessian(m, ce);
  std::unique_ptr<HvpOperator> op = MakeOp(m, pseudo, HvpMethod::kExact);
  EXPECT_LT(WorstError(*op, h, 1), 1e-5);
}

TEST(ExactHvpTest, UnusedParametersGetZeros) {
  torch::jit::Module m("Unused");
  at::Generator init = MakeGenerator(4);
  m.register_parameter("w", at::randn({3, 2}, init, F64()).requires_grad_(true), false);
  m.register_parameter("unused", torch::ones({4}, F64()).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.w)
)JIT");
  Data d = RandomClassification({4, 3}, 2, 1);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 4), HvpMethod::kExact);
  at::Generator gen = MakeGenerator(1);
  absl::StatusOr<ParamSet> hv = op->Apply(RademacherLike(op->parameters(), gen));
  ASSERT_TRUE(hv.ok()) << hv.status();
  EXPECT_EQ(hv->tensors[1].abs().sum().item<double>(), 0);
  EXPECT_GT(hv->tensors[0].abs().sum().item<double>(), 0);
}

TEST(ExactHvpTest, OpWithoutDoubleBackwardIsFailedPreconditionNamingIt) {
  torch::jit::Module m = MakeCdistModel(1);
  Data d = RandomClassification({6, 4}, 3, 2);
  PreparedBatches p = Prepare(m, d.inputs, d.targets, 6);
  std::unique_ptr<HvpOperator> op = MakeOp(m, p, HvpMethod::kExact);
  at::Generator gen = MakeGenerator(1);
  absl::Status s = op->Apply(RademacherLike(op->parameters(), gen)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("cdist"));
  EXPECT_THAT(s.message(), HasSubstr("finite-difference"));

  // Finite differences work on it: forward and central agree.
  std::unique_ptr<HvpOperator> fwd = MakeOp(m, p, HvpMethod::kFiniteDifference);
  std::unique_ptr<HvpOperator> ctr =
      MakeOp(m, p, HvpMethod::kFiniteDifference, FiniteDifferenceScheme::kCentral);
  ParamSet v = GaussianLike(op->parameters(), gen);
  absl::StatusOr<ParamSet> a = fwd->Apply(v);
  absl::StatusOr<ParamSet> b = ctr->Apply(v);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_LT(RelativeError(Flatten(*a), Flatten(*b)), 1e-5);
}

TEST(FiniteDifferenceHvpTest, WithinTheStatedBoundsOfTheFullHessian) {
  for (Case& c : SmoothCases()) {
    SCOPED_TRACE(c.name);
    torch::Tensor h = FullHessian(c.model, c.batches);
    std::unique_ptr<HvpOperator> fwd = MakeOp(c.model, c.batches, HvpMethod::kFiniteDifference);
    std::unique_ptr<HvpOperator> ctr =
        MakeOp(c.model, c.batches, HvpMethod::kFiniteDifference, FiniteDifferenceScheme::kCentral);
    const double fwd_err = WorstError(*fwd, h, 3, 5);
    const double ctr_err = WorstError(*ctr, h, 3, 5);
    RecordProperty(c.name + "_forward", std::to_string(fwd_err));
    RecordProperty(c.name + "_central", std::to_string(ctr_err));
    std::cout << c.name << ": finite differences, relative error forward " << fwd_err
              << ", central " << ctr_err << "\n";
    EXPECT_LT(fwd_err, 1e-6);
    EXPECT_LT(ctr_err, 1e-8);
  }
}

// ‖op(v) − H v‖ / ‖H v‖ for one given vector (flat, float64).
double ErrorAlong(HvpOperator& op, const torch::Tensor& h, const torch::Tensor& flat) {
  absl::StatusOr<ParamSet> hv = op.Apply(Unflatten(flat, op.parameters()));
  EXPECT_TRUE(hv.ok()) << hv.status();
  return RelativeError(Flatten(*hv), torch::mv(h, flat));
}

TEST(FiniteDifferenceHvpTest, Float32ModelInFloat64AndInFloat32) {
  absl::StatusOr<torch::jit::Module> m32 = LoadModel(FixturePath("tiny_cnn.pt"));
  ASSERT_TRUE(m32.ok());
  torch::jit::Module m64 = LoadF64("tiny_cnn.pt");
  absl::StatusOr<LoadedDataset> data = LoadDataset(FixturePath("tiny.safetensors"), 0);
  ASSERT_TRUE(data.ok());
  // The float32 weights are exact in float64: the same Hessian.
  torch::Tensor h = FullHessian(m64, Prepare(m64, data->inputs.first, data->targets, 6));
  torch::Tensor top = std::get<1>(torch::linalg_eigh(h)).select(1, -1);
  PreparedBatches batches = Prepare(*m32, data->inputs.first, data->targets, 6);

  HvpOptions options;
  options.method = HvpMethod::kFiniteDifference;
  std::unique_ptr<HvpOperator> f64 = *CreateHvpOperator(*m32, batches, options);
  options.fd_in_float64 = false;
  std::unique_ptr<HvpOperator> f32 = *CreateHvpOperator(*m32, batches, options);

  const double random64 = WorstError(*f64, h, 4, 5);
  const double top64 = ErrorAlong(*f64, h, top);
  const double random32 = WorstError(*f32, h, 4, 5);
  const double top32 = ErrorAlong(*f32, h, top);
  std::cout << "cnn float32 model, forward differences: in float64 " << random64 << " (random), "
            << top64 << " (top eigenvector); in float32 " << random32 << " (random), " << top32
            << " (top eigenvector)\n";
  EXPECT_LT(random64, 1e-6);
  EXPECT_LT(top64, 1e-6);
  EXPECT_LT(random32, 1e-2);
  // Results come back in the parameters' dtype.
  at::Generator gen = MakeGenerator(1);
  absl::StatusOr<ParamSet> hv = f64->Apply(RademacherLike(f64->parameters(), gen));
  ASSERT_TRUE(hv.ok());
  EXPECT_EQ(hv->tensors[0].scalar_type(), torch::kFloat32);
}

TEST(FiniteDifferenceHvpTest, NeverModifiesTheCallersModel) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  ParamSet before = Clone(*CollectParameters(m));
  Data d = RandomClassification({8, 4}, 3, 1);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 4), HvpMethod::kFiniteDifference,
             FiniteDifferenceScheme::kCentral);
  at::Generator gen = MakeGenerator(1);
  ParamSet v = RademacherLike(op->parameters(), gen);
  ASSERT_TRUE(op->Apply(v).ok());
  EXPECT_TRUE(torch::equal(Flatten(*CollectParameters(m)), Flatten(before)));
  // Its own copy is back at θ0 too.
  EXPECT_TRUE(torch::equal(Flatten(op->parameters()), Flatten(before)));
  // Zero in, zero out.
  absl::StatusOr<ParamSet> zero = op->Apply(ZerosLike(v));
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(Flatten(*zero).abs().sum().item<double>(), 0);
}

// Jᵀ H_out J built from explicit Jacobian rows of the outputs.
torch::Tensor ExplicitGaussNewton(torch::jit::Module& m, const PreparedBatches& p) {
  ParamSet params = *CollectParameters(m);
  const int64_t n = params.layout->numel;
  torch::Tensor g = torch::zeros({n, n}, F64());
  for (const Batch& b : p.batches) {
    torch::Tensor z = *RunForward(m, b.inputs);
    torch::Tensor flat = z.reshape(-1);
    std::vector<torch::Tensor> rows;
    for (int64_t k = 0; k < flat.numel(); ++k) {
      std::vector<torch::Tensor> r =
          torch::autograd::grad({flat[k]}, params.tensors, {}, true, false, true);
      ParamSet rs{params.layout, {}};
      for (size_t i = 0; i < r.size(); ++i) {
        rs.tensors.push_back(r[i].defined() ? r[i] : torch::zeros_like(params.tensors[i]));
      }
      rows.push_back(Flatten(rs));
    }
    torch::Tensor jac = torch::stack(rows);  // [K, P]
    torch::Tensor hout;
    if (p.loss == LossKind::kMse) {
      hout = torch::eye(flat.numel(), F64()) * (2.0 / flat.numel());
    } else {
      torch::Tensor prob = torch::softmax(z.detach(), 1);
      const int64_t c = z.size(1);
      std::vector<torch::Tensor> blocks;
      for (int64_t i = 0; i < z.size(0); ++i) {
        blocks.push_back((torch::diag(prob[i]) - torch::outer(prob[i], prob[i])) /
                         static_cast<double>(z.size(0)));
      }
      hout = torch::block_diag(blocks);
      EXPECT_EQ(hout.size(0), z.size(0) * c);
    }
    const double w = static_cast<double>(b.size) / p.num_examples;
    g += w * jac.t().mm(hout).mm(jac);
  }
  return g;
}

TEST(GaussNewtonHvpTest, EqualsTheHessianOfALinearModelWithSquaredLoss) {
  torch::jit::Module m = MakeLinearModel(4, 3, 2);
  at::Generator gen = MakeGenerator(5);
  torch::Tensor x = at::randn({9, 4}, gen, F64());
  torch::Tensor y = at::randn({9, 3}, gen, F64());
  PreparedBatches p = Prepare(m, x, y, 4);
  torch::Tensor h = FullHessian(m, p);
  std::unique_ptr<HvpOperator> op = MakeOp(m, p, HvpMethod::kGaussNewton);
  EXPECT_LT(WorstError(*op, h, 1), 1e-10);
  // The (unbiased) exact operator agrees as well.
  EXPECT_LT(WorstError(*MakeOp(m, p, HvpMethod::kExact), h, 1), 1e-10);
}

TEST(GaussNewtonHvpTest, MatchesExplicitJacobiansAndIsPositiveSemiDefinite) {
  for (Case& c : SmoothCases()) {
    SCOPED_TRACE(c.name);
    torch::Tensor g = ExplicitGaussNewton(c.model, c.batches);
    std::unique_ptr<HvpOperator> op = MakeOp(c.model, c.batches, HvpMethod::kGaussNewton);
    const double err = WorstError(*op, g, 9);
    std::cout << c.name << ": Gauss-Newton vs explicit Jᵀ H_out J, relative "
              << "error " << err << "\n";
    EXPECT_LT(err, 1e-10);
    torch::Tensor eig = torch::linalg_eigvalsh(g);
    EXPECT_GE(eig.min().item<double>(), -1e-10 * eig.max().item<double>());
    // How far the Gauss-Newton matrix is from the Hessian (reported, not a
    // bound: the residual term is not small for untrained models).
    torch::Tensor h = FullHessian(c.model, c.batches);
    const double diff = WorstError(*op, h, 10);
    std::cout << c.name << ": Gauss-Newton vs Hessian, relative difference " << diff << "\n";
  }
}

TEST(GaussNewtonHvpTest, OpWithoutDoubleBackwardIsFailedPrecondition) {
  torch::jit::Module m = MakeCdistModel(1);
  Data d = RandomClassification({6, 4}, 3, 2);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 6), HvpMethod::kGaussNewton);
  at::Generator gen = MakeGenerator(1);
  absl::Status s = op->Apply(RademacherLike(op->parameters(), gen)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("cdist"));
}

TEST(FisherDiagonalHvpTest, EqualsTheMeanOfSquaredPerExampleGradients) {
  // Linear model, MSE: example n's loss is ‖r_n‖²/K with r_n = W x_n + b −
  // t_n, so its gradients are 2/K · r_n x_nᵀ and 2/K · r_n in closed form.
  torch::jit::Module m = MakeLinearModel(4, 3, 2);
  at::Generator gen = MakeGenerator(5);
  torch::Tensor x = at::randn({9, 4}, gen, F64());
  torch::Tensor t = at::randn({9, 3}, gen, F64());
  PreparedBatches p = Prepare(m, x, t, 4);  // batches of 4, 4 and 1
  torch::Tensor w = m.attr("weight").toTensor().detach();
  torch::Tensor b = m.attr("bias").toTensor().detach();
  torch::Tensor r = x.mm(w.t()) + b - t;                           // [9, 3]
  torch::Tensor gw = (2.0 / 3) * r.unsqueeze(2) * x.unsqueeze(1);  // [9,3,4]
  torch::Tensor gb = (2.0 / 3) * r;
  torch::Tensor want_w = (gw * gw).mean(0);
  torch::Tensor want_b = (gb * gb).mean(0);

  std::unique_ptr<HvpOperator> op = MakeOp(m, p, HvpMethod::kFisherDiagonal);
  EXPECT_EQ(op->method(), HvpMethod::kFisherDiagonal);
  ParamSet v = RademacherLike(op->parameters(), gen);
  absl::StatusOr<ParamSet> dv = op->Apply(v);
  ASSERT_TRUE(dv.ok()) << dv.status();
  // Layout: weight, then bias.
  EXPECT_TRUE(torch::allclose(dv->tensors[0], want_w * v.tensors[0], 1e-12, 1e-14));
  EXPECT_TRUE(torch::allclose(dv->tensors[1], want_b * v.tensors[1], 1e-12, 1e-14));
}

TEST(FisherDiagonalHvpTest, NeedsNoDoubleBackwardAndHonoursCancel) {
  torch::jit::Module m = MakeCdistModel(1);
  Data d = RandomClassification({6, 4}, 3, 2);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 6), HvpMethod::kFisherDiagonal);
  at::Generator gen = MakeGenerator(1);
  absl::StatusOr<ParamSet> dv = op->Apply(RademacherLike(op->parameters(), gen));
  ASSERT_TRUE(dv.ok()) << dv.status();
  EXPECT_GT(Norm(*dv), 0);

  CancelToken cancel;
  cancel.Cancel();
  HvpOptions options;
  options.method = HvpMethod::kFisherDiagonal;
  EXPECT_EQ(
      CreateHvpOperator(m, Prepare(m, d.inputs, d.targets, 6), options, &cancel).status().code(),
      absl::StatusCode::kCancelled);
}

TEST(FiniteDifferenceSelfCheckTest, SmallOnSmoothModelsLargeAtAKink) {
  // Smooth: the forward scheme's own error, far below the tolerance.
  for (Case& c : SmoothCases()) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<HvpOperator> op = MakeOp(c.model, c.batches, HvpMethod::kFiniteDifference);
    at::Generator gen = MakeGenerator(3);
    absl::StatusOr<double> check = FiniteDifferenceSelfCheck(*op, gen, 2);
    ASSERT_TRUE(check.ok()) << check.status();
    std::cout << c.name << ": finite-difference self-check " << *check << "\n";
    EXPECT_LT(*check, 1e-6);
    EXPECT_EQ(op->num_applications(), 0);
  }
  // relu(shift) with shift exactly 0: the gradient jumps within any step.
  torch::jit::Module m("Kink");
  at::Generator gen = MakeGenerator(4);
  m.register_parameter("w", at::randn({3, 4}, gen, F64()).requires_grad_(true), false);
  m.register_parameter("shift", torch::zeros({1}, F64()).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.w.t()) + torch.relu(self.shift) * x[:, :3]
)JIT");
  m.eval();
  Data d = RandomClassification({6, 4}, 3, 2);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 6), HvpMethod::kFiniteDifference);
  absl::StatusOr<double> check = FiniteDifferenceSelfCheck(*op, gen, 2);
  ASSERT_TRUE(check.ok()) << check.status();
  std::cout << "kink: finite-difference self-check " << *check << "\n";
  EXPECT_GT(*check, kFiniteDifferenceCheckTolerance);
  // Only finite-difference operators can be checked.
  std::unique_ptr<HvpOperator> exact =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 6), HvpMethod::kExact);
  EXPECT_EQ(FiniteDifferenceSelfCheck(*exact, gen, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HvpOperatorTest, RejectsVectorsOfAnotherLayout) {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({4, 4}, 3, 1);
  std::unique_ptr<HvpOperator> op =
      MakeOp(m, Prepare(m, d.inputs, d.targets, 4), HvpMethod::kExact);
  torch::jit::Module other = MakeLinearModel(4, 3, 1);
  ParamSet v = ZerosLike(*CollectParameters(other));
  EXPECT_EQ(op->Apply(v).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress::engine
