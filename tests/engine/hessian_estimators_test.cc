// Traces, eigenvalues, spectral density and Q-BERT scores against the exact
// Hessian of tiny float64 models (built row by row with plain autograd).
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/common/cancel.h"
#include "server/engine/common/progress.h"
#include "server/engine/data/dataset.h"
#include "server/engine/hessian/estimators.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/spectrum.h"
#include "tests/engine/hessian_test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::Data;
using ::compress::engine::testing::F64;
using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::FullHessian;
using ::compress::engine::testing::LoadF64;
using ::compress::engine::testing::RandomClassification;
using ::testing::HasSubstr;

class RecordingSink : public ProgressSink {
 public:
  void StageStart(const std::string& stage, int, int) override {
    absl::MutexLock lock(&mu_);
    stages_.push_back(stage);
  }
  void StageEnd(const std::string&) override {}
  void Progress(const std::string& stage, int64_t done, int64_t total) override {
    absl::MutexLock lock(&mu_);
    ++progress_calls_;
    last_done_ = done;
    last_total_ = total;
  }
  void Log(const std::string&, const std::string& message) override {
    absl::MutexLock lock(&mu_);
    logs_.push_back(message);
  }
  void PartialResult(const std::string& key, const std::string& json) override {
    absl::MutexLock lock(&mu_);
    partial_keys_.push_back(key);
  }

  absl::Mutex mu_;
  std::vector<std::string> stages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> logs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> partial_keys_ ABSL_GUARDED_BY(mu_);
  int64_t progress_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_total_ ABSL_GUARDED_BY(mu_) = 0;
};

struct Problem {
  std::string name;
  torch::jit::Module model;
  PreparedBatches batches;
  torch::Tensor hessian;  // exact, [P, P]
  ParamSet params;        // for layout / offsets

  std::unique_ptr<HvpOperator> Op(HvpMethod method = HvpMethod::kExact) {
    HvpOptions options;
    options.method = method;
    absl::StatusOr<std::unique_ptr<HvpOperator>> op = CreateHvpOperator(model, batches, options);
    EXPECT_TRUE(op.ok()) << op.status();
    return std::move(op).value();
  }
  // H_gg of group g.
  torch::Tensor Block(int g) const {
    std::vector<int64_t> index;
    int64_t offset = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const int64_t n = params.tensors[i].numel();
      if (params.layout->group_of[i] == g) {
        for (int64_t j = 0; j < n; ++j) index.push_back(offset + j);
      }
      offset += n;
    }
    torch::Tensor idx = torch::tensor(index, torch::kLong);
    return hessian.index_select(0, idx).index_select(1, idx);
  }
};

Problem MakeProblem(const std::string& name, torch::jit::Module m, const torch::Tensor& x,
                    const torch::Tensor& y, int64_t batch_size) {
  absl::StatusOr<PreparedBatches> p = PrepareBatches(m, x, y, batch_size, LossKind::kAuto);
  EXPECT_TRUE(p.ok()) << p.status();
  Problem problem{name, m, *p, FullHessian(m, *p), *CollectParameters(m)};
  return problem;
}

Problem Mlp() {
  torch::jit::Module m = LoadF64("tiny_mlp.pt");
  Data d = RandomClassification({16, 4}, 3, 11);
  return MakeProblem("mlp", m, d.inputs, d.targets, 16);
}

Problem Cnn() {
  torch::jit::Module m = LoadF64("tiny_cnn.pt");
  absl::StatusOr<LoadedDataset> data = LoadDataset(FixturePath("tiny.safetensors"), 0);
  EXPECT_TRUE(data.ok()) << data.status();
  return MakeProblem("cnn", m, data->inputs.first, data->targets, 6);
}

// Exact eigenvalues sorted by decreasing magnitude.
std::vector<double> ByMagnitude(const torch::Tensor& h) {
  torch::Tensor e = torch::linalg_eigvalsh(h);
  std::vector<double> v(e.data_ptr<double>(), e.data_ptr<double>() + e.numel());
  std::sort(v.begin(), v.end(), [](double a, double b) { return std::abs(a) > std::abs(b); });
  return v;
}

// ---------------------------------------------------------------- traces

void ExpectTracesWithinThreeStdErrors(Problem& p, const TraceResult& r) {
  ASSERT_EQ(r.layers.size(), p.params.layout->groups.size());
  double exact_total = 0;
  for (const LayerTrace& t : r.layers) {
    const double exact = p.Block(t.group).trace().item<double>();
    exact_total += exact;
    SCOPED_TRACE(p.name + " layer " + t.name);
    EXPECT_GE(t.probes, 10);
    EXPECT_EQ(t.numel, p.params.layout->groups[t.group].numel);
    EXPECT_NEAR(t.trace_per_param(), t.trace / t.numel, 1e-15);
    // A layer with an exactly estimated (diagonal) block has no spread.
    EXPECT_LE(std::abs(t.trace - exact), 3 * t.std_error + 1e-9 * std::abs(exact))
        << "estimate " << t.trace << " ± " << t.std_error << ", exact " << exact;
  }
  EXPECT_LE(std::abs(r.total_trace - exact_total),
            3 * r.total_std_error + 1e-9 * std::abs(exact_total));
}

TEST(TracesTest, AllLayersPerProbeAgreeWithExactBlockTraces) {
  for (Problem p : {Mlp(), Cnn()}) {
    std::unique_ptr<HvpOperator> op = p.Op();
    at::Generator gen = MakeGenerator(1);
    RecordingSink sink;
    absl::StatusOr<TraceResult> r = EstimateLayerTraces(*op, TraceOptions{}, gen, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectTracesWithinThreeStdErrors(p, *r);
    // One full-model HVP per probe, all layers at once.
    EXPECT_EQ(r->hvps, r->layers[0].probes);
    for (const LayerTrace& t : r->layers) EXPECT_EQ(t.probes, r->hvps);
    absl::MutexLock lock(&sink.mu_);
    EXPECT_EQ(sink.progress_calls_, r->hvps);
    EXPECT_EQ(sink.last_total_, 200);
    EXPECT_EQ(sink.partial_keys_.size(), r->layers.size());
  }
}

TEST(TracesTest, ExactPerLayerModeAgreesWithExactBlockTraces) {
  for (Problem p : {Mlp(), Cnn()}) {
    std::unique_ptr<HvpOperator> op = p.Op();
    at::Generator gen = MakeGenerator(2);
    TraceOptions options;
    options.exact_per_layer = true;
    absl::StatusOr<TraceResult> r = EstimateLayerTraces(*op, options, gen);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectTracesWithinThreeStdErrors(p, *r);
    int64_t probes = 0;
    for (const LayerTrace& t : r->layers) probes += t.probes;
    EXPECT_EQ(r->hvps, probes);
  }
}

TEST(TracesTest, SameSeedSameNumbersOtherSeedOtherProbes) {
  Problem p = Mlp();
  auto run = [&p](uint64_t seed) {
    std::unique_ptr<HvpOperator> op = p.Op();
    at::Generator gen = MakeGenerator(seed);
    TraceOptions options;
    options.max_probes = 12;
    return *EstimateLayerTraces(*op, options, gen);
  };
  TraceResult a = run(5), b = run(5), c = run(6);
  for (size_t g = 0; g < a.layers.size(); ++g) {
    EXPECT_EQ(a.layers[g].trace, b.layers[g].trace);
    EXPECT_EQ(a.layers[g].std_error, b.layers[g].std_error);
    EXPECT_NE(a.layers[g].trace, c.layers[g].trace);
  }
}

TEST(TracesTest, CancelStopsBeforeTheNextProbe) {
  Problem p = Mlp();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(1);
  CancelToken token;
  token.Cancel();
  absl::StatusOr<TraceResult> r = EstimateLayerTraces(*op, TraceOptions{}, gen, nullptr, &token);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(op->num_applications(), 0);
}

TEST(TracesTest, OptionsOutOfRangeAreInvalidArgument) {
  Problem p = Mlp();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(1);
  TraceOptions options;
  options.tolerance = 0;
  EXPECT_EQ(EstimateLayerTraces(*op, options, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = TraceOptions{};
  options.max_probes = 5;  // < min_probes
  EXPECT_EQ(EstimateLayerTraces(*op, options, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ----------------------------------------------------------- eigenvalues

TEST(EigenTest, PowerIterationWithDeflationMatchesTheTopTwo) {
  for (Problem p : {Mlp(), Cnn()}) {
    SCOPED_TRACE(p.name);
    std::vector<double> exact = ByMagnitude(p.hessian);
    std::unique_ptr<HvpOperator> op = p.Op();
    at::Generator gen = MakeGenerator(3);
    EigenOptions options;
    options.k = 2;
    RecordingSink sink;
    absl::StatusOr<EigenResult> r = TopEigenvalues(*op, options, kWholeModel, gen, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->eigenvalues.size(), 2u);
    for (int i = 0; i < 2; ++i) {
      EXPECT_TRUE(r->converged[i]);
      EXPECT_NEAR(r->eigenvalues[i], exact[i], 1e-3 * std::abs(exact[i]))
          << "eigenvalue " << i << " after " << r->iterations[i] << " iterations";
      EXPECT_NEAR(Norm(r->eigenvectors[i]), 1, 1e-12);
      std::cout << p.name << ": eigenvalue " << i << " " << r->eigenvalues[i] << " (exact "
                << exact[i] << ", relative error "
                << std::abs(r->eigenvalues[i] - exact[i]) / std::abs(exact[i]) << ", "
                << r->iterations[i] << " HVPs)\n";
    }
    EXPECT_NEAR(Dot(r->eigenvectors[0], r->eigenvectors[1]), 0, 1e-10);
    EXPECT_EQ(op->num_applications(), r->iterations[0] + r->iterations[1]);
  }
}

// Power iteration cut short says so (converged false, the last relative
// change above the tolerance); Lanczos on the same operator finds the top
// two by magnitude and both ends of the spectrum, all checked against eigh
// of the exact Hessian, with residual bounds that bound the true error.
TEST(EigenTest, LanczosFindsBothEndsAndPowerSaysWhenItStoppedEarly) {
  for (Problem p : {Mlp(), Cnn()}) {
    SCOPED_TRACE(p.name);
    torch::Tensor all = torch::linalg_eigvalsh(p.hessian);
    const double exact_min = all[0].item<double>();
    const double exact_max = all[-1].item<double>();
    std::vector<double> exact = ByMagnitude(p.hessian);

    std::unique_ptr<HvpOperator> power_op = p.Op();
    at::Generator power_gen = MakeGenerator(5);
    EigenOptions power;
    power.max_iterations = 3;
    power.tolerance = 1e-9;
    absl::StatusOr<EigenResult> cut = TopEigenvalues(*power_op, power, kWholeModel, power_gen);
    ASSERT_TRUE(cut.ok()) << cut.status();
    EXPECT_FALSE(cut->converged[0]);
    EXPECT_EQ(cut->iterations[0], 3);
    EXPECT_GT(cut->relative_change[0], power.tolerance);

    std::unique_ptr<HvpOperator> op = p.Op();
    at::Generator gen = MakeGenerator(5);
    EigenOptions lanczos;
    lanczos.method = EigenMethod::kLanczos;
    lanczos.k = 2;
    lanczos.tolerance = 1e-6;
    absl::StatusOr<EigenResult> r = TopEigenvalues(*op, lanczos, kWholeModel, gen);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->eigenvalues.size(), 2u);
    ASSERT_TRUE(r->min_eigenvalue.has_value() && r->max_eigenvalue.has_value());
    std::cout << p.name << ": Lanczos " << r->iterations[0] << " HVPs, spectrum ["
              << *r->min_eigenvalue << ", " << *r->max_eigenvalue << "] (exact [" << exact_min
              << ", " << exact_max << "]), top " << r->eigenvalues[0] << " (exact " << exact[0]
              << ")\n";
    const double scale = std::max(std::abs(exact_min), std::abs(exact_max));
    for (int i = 0; i < 2; ++i) {
      EXPECT_TRUE(r->converged[i]);
      EXPECT_NEAR(r->eigenvalues[i], exact[i], 1e-5 * scale) << i;
      // The residual bound bounds the distance to the nearest eigenvalue.
      EXPECT_LE(std::abs(r->eigenvalues[i] - exact[i]),
                r->relative_change[i] * std::abs(r->eigenvalues[i]) + 1e-9 * scale);
      EXPECT_NEAR(Norm(r->eigenvectors[i]), 1, 1e-9);
    }
    EXPECT_NEAR(*r->min_eigenvalue, exact_min, 1e-5 * scale);
    EXPECT_NEAR(*r->max_eigenvalue, exact_max, 1e-5 * scale);
    EXPECT_LE(r->min_relative_change, lanczos.tolerance);
    EXPECT_LE(r->max_relative_change, lanczos.tolerance);
    EXPECT_EQ(op->num_applications(), r->iterations[0]);
  }
}

// A Lanczos basis that does not fit max_memory_bytes is refused, not
// windowed.
TEST(EigenTest, LanczosRefusesABasisOverItsMemory) {
  Problem p = Mlp();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(5);
  EigenOptions lanczos;
  lanczos.method = EigenMethod::kLanczos;
  lanczos.max_memory_bytes = 64;
  absl::StatusOr<EigenResult> r = TopEigenvalues(*op, lanczos, kWholeModel, gen);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("max_memory_bytes"));
}

TEST(EigenTest, LayerScopeMatchesTheDiagonalBlock) {
  Problem p = Cnn();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(4);
  for (int g = 0; g < static_cast<int>(p.params.layout->groups.size()); ++g) {
    SCOPED_TRACE(p.params.layout->groups[g].name);
    std::vector<double> exact = ByMagnitude(p.Block(g));
    EigenOptions options;
    options.tolerance = 1e-6;  // small blocks can have close eigenvalues
    options.max_iterations = 1000;
    absl::StatusOr<EigenResult> r = TopEigenvalues(*op, options, g, gen);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(r->eigenvalues[0], exact[0], 1e-3 * std::abs(exact[0]));
    // The eigenvector is zero outside the layer.
    ParamSet outside = Clone(r->eigenvectors[0]);
    double inside = GroupDot(outside, outside, g);
    EXPECT_NEAR(inside, 1, 1e-12);
    EXPECT_NEAR(Norm(outside), 1, 1e-12);
  }
}

TEST(EigenTest, SeveralLayersTogetherMatchTheirJointDiagonalBlock) {
  Problem p = Cnn();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(8);
  const std::vector<int> groups = {0, 1};
  // H restricted to the rows and columns of both groups.
  std::vector<int64_t> index;
  int64_t offset = 0;
  for (size_t i = 0; i < p.params.size(); ++i) {
    const int64_t n = p.params.tensors[i].numel();
    const int g = p.params.layout->group_of[i];
    if (g == 0 || g == 1) {
      for (int64_t j = 0; j < n; ++j) index.push_back(offset + j);
    }
    offset += n;
  }
  torch::Tensor idx = torch::tensor(index, torch::kLong);
  std::vector<double> exact = ByMagnitude(p.hessian.index_select(0, idx).index_select(1, idx));
  EigenOptions options;
  options.k = 2;
  options.tolerance = 1e-6;
  options.max_iterations = 1000;
  absl::StatusOr<EigenResult> r = TopEigenvalues(*op, options, groups, gen);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->eigenvalues.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(r->eigenvalues[i], exact[i], 1e-3 * std::abs(exact[i]));
  }
  // Zero outside the two layers.
  const ParamSet& u = r->eigenvectors[0];
  EXPECT_NEAR(GroupDot(u, u, 0) + GroupDot(u, u, 1), 1, 1e-12);
  EXPECT_EQ(TopEigenvalues(*op, options, std::vector<int>{0, 0}, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlocksTest, ViTBlocksAndResidualBlocksAreFoundByName) {
  absl::StatusOr<torch::jit::Module> vit =
      LoadModel(testing::SourceDir() + "/models/fmnist_vit.pt");
  ASSERT_TRUE(vit.ok()) << vit.status();
  absl::StatusOr<ParamSet> params = CollectParameters(*vit);
  ASSERT_TRUE(params.ok()) << params.status();
  std::vector<ParamBlock> blocks = BlocksOf(*params->layout);
  std::vector<std::string> names;
  int64_t numel = 0;
  size_t layers = 0;
  for (const ParamBlock& b : blocks) {
    names.push_back(b.name);
    numel += b.numel;
    layers += b.groups.size();
  }
  EXPECT_THAT(names, ::testing::ElementsAre("", "patch_embed", "blocks.0", "blocks.1", "blocks.2",
                                            "blocks.3", "norm", "head"));
  EXPECT_EQ(numel, params->layout->numel);
  EXPECT_EQ(layers, params->layout->groups.size());
  // blocks.0: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2.
  ASSERT_EQ(blocks[2].groups.size(), 6u);
  EXPECT_EQ(params->layout->groups[blocks[2].groups[1]].name, "blocks.0.attn.qkv");
}

TEST(EigenTest, KIsCappedAtTheDimension) {
  Problem p = Mlp();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(4);
  EigenOptions options;
  options.k = 5;
  options.max_iterations = 3;
  // A model with two parameters has two eigenvalues.
  torch::jit::Module tiny("One");
  tiny.register_parameter("w", torch::ones({1, 2}, F64()).requires_grad_(true), false);
  tiny.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.w)
)JIT");
  Data d = RandomClassification({4, 1}, 2, 1);
  absl::StatusOr<PreparedBatches> b = PrepareBatches(tiny, d.inputs, d.targets, 4, LossKind::kAuto);
  ASSERT_TRUE(b.ok()) << b.status();
  std::unique_ptr<HvpOperator> op2 = *CreateHvpOperator(tiny, *b, HvpOptions{});
  absl::StatusOr<EigenResult> r = TopEigenvalues(*op2, options, kWholeModel, gen);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->eigenvalues.size(), 2u);
  options.k = 0;
  EXPECT_EQ(TopEigenvalues(*op, options, kWholeModel, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.k = 1;
  EXPECT_EQ(TopEigenvalues(*op, options, 99, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------- density

TEST(DensityTest, FullLanczosRecoversTheWholeSpectrum) {
  Problem p = Mlp();  // 67 parameters
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(5);
  DensityOptions options;
  options.lanczos_steps = 200;  // capped at 67
  absl::StatusOr<SpectralDensity> d = EstimateSpectralDensity(*op, options, gen);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->steps.size(), 1u);
  EXPECT_LE(d->steps[0], 67);
  double sum = 0;
  for (double w : d->weights) sum += w;
  EXPECT_NEAR(sum, 1, 1e-10);
  // Every node is an eigenvalue of H.
  torch::Tensor exact = torch::linalg_eigvalsh(p.hessian);
  for (double node : d->nodes) {
    EXPECT_LT((exact - node).abs().min().item<double>(), 1e-8) << node;
  }
  EXPECT_EQ(d->hvps, d->steps[0]);
}

TEST(DensityTest, NodesIncludeTheExtremeEigenvaluesAndWeightsSumToOne) {
  Problem p = Cnn();  // 514 parameters
  torch::Tensor exact = torch::linalg_eigvalsh(p.hessian);
  const double lo = exact.min().item<double>();
  const double hi = exact.max().item<double>();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(6);
  DensityOptions options;
  options.lanczos_steps = 90;
  options.runs = 2;
  options.grid_points = 500;
  RecordingSink sink;
  absl::StatusOr<SpectralDensity> d = EstimateSpectralDensity(*op, options, gen, &sink);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->steps.size(), 2u);
  EXPECT_EQ(d->nodes.size(), d->weights.size());
  double sum = 0;
  for (double w : d->weights) sum += w;
  EXPECT_NEAR(sum, 1, 1e-10);
  const double tol = 1e-3 * (hi - lo);
  EXPECT_NEAR(*std::min_element(d->nodes.begin(), d->nodes.end()), lo, tol);
  EXPECT_NEAR(*std::max_element(d->nodes.begin(), d->nodes.end()), hi, tol);
  // Ritz values lie inside the spectrum.
  for (double node : d->nodes) {
    EXPECT_GE(node, lo - 1e-9);
    EXPECT_LE(node, hi + 1e-9);
  }
  ASSERT_EQ(d->grid.size(), 500u);
  ASSERT_EQ(d->density.size(), 500u);
  double integral = 0;
  for (double v : d->density) integral += v * (d->grid[1] - d->grid[0]);
  EXPECT_NEAR(integral, 1, 1e-9);
  EXPECT_LE(d->grid.front(), lo);
  EXPECT_GE(d->grid.back(), hi);
  absl::MutexLock lock(&sink.mu_);
  EXPECT_EQ(sink.last_total_, 180);
}

TEST(DensityTest, AMemoryCapKeepsTheExtremesAndSaysSo) {
  Problem p = Cnn();  // 514 parameters, 4112 bytes per float64 vector
  torch::Tensor exact = torch::linalg_eigvalsh(p.hessian);
  const double lo = exact.min().item<double>();
  const double hi = exact.max().item<double>();
  std::unique_ptr<HvpOperator> op = p.Op();
  at::Generator gen = MakeGenerator(6);
  DensityOptions options;
  options.lanczos_steps = 90;
  options.max_memory_bytes = 10 * 4112 + 100;  // 10 vectors
  absl::StatusOr<SpectralDensity> d = EstimateSpectralDensity(*op, options, gen);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->window, 10);
  double sum = 0;
  for (double w : d->weights) sum += w;
  EXPECT_NEAR(sum, 1, 1e-10);
  // Lanczos finds the extreme eigenvalues first, orthogonal or not.
  const double tol = 1e-3 * (hi - lo);
  EXPECT_NEAR(*std::max_element(d->nodes.begin(), d->nodes.end()), hi, tol);
  EXPECT_NEAR(*std::min_element(d->nodes.begin(), d->nodes.end()), lo, tol);
  options.max_memory_bytes = 1;  // the three-term recurrence still runs
  d = EstimateSpectralDensity(*op, options, gen);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->window, 2);
  EXPECT_NEAR(*std::max_element(d->nodes.begin(), d->nodes.end()), hi, tol);
  options.max_memory_bytes = int64_t{1} << 30;
  d = EstimateSpectralDensity(*op, options, gen);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->window, 0);
}

TEST(DensityTest, SmoothingPutsTheMassAtTheNodes) {
  std::vector<double> grid, density;
  SmoothDensity({0.0, 10.0}, {0.25, 0.75}, 1001, 1e-3, &grid, &density);
  ASSERT_EQ(grid.size(), 1001u);
  const double spacing = grid[1] - grid[0];
  double left = 0, right = 0;
  for (size_t i = 0; i < grid.size(); ++i) {
    (grid[i] < 5 ? left : right) += density[i] * spacing;
  }
  EXPECT_NEAR(left, 0.25, 1e-6);
  EXPECT_NEAR(right, 0.75, 1e-6);
}

// ------------------------------------------------------ bulk and outliers

// H = Q diag(λ) Qᵀ, Q a Householder reflection I − 2uuᵀ (orthogonal, so the
// spectrum is exactly λ), applied as a matrix product: the real Lanczos and
// SLQ code runs on a matrix whose outliers are known.
class MatrixHvp : public HvpOperator {
 public:
  static std::unique_ptr<MatrixHvp> Create(const std::vector<double>& eigenvalues, uint64_t seed) {
    const int64_t n = static_cast<int64_t>(eigenvalues.size());
    auto layout = std::make_shared<ParamLayout>();
    layout->names = {"w"};
    layout->shapes = {{n}};
    layout->group_of = {0};
    layout->groups.resize(1);
    layout->groups[0].name = "w";
    layout->groups[0].kind = "Matrix";
    layout->groups[0].tensors = {0};
    layout->groups[0].numel = n;
    layout->numel = n;
    ParamSet params{layout, {torch::zeros({n}, torch::kFloat64)}};
    at::Generator gen = MakeGenerator(seed);
    torch::Tensor u = torch::randn({n}, gen, torch::kFloat64);
    u /= u.norm();
    return std::unique_ptr<MatrixHvp>(new MatrixHvp(
        std::move(params), torch::tensor(eigenvalues, torch::kFloat64), std::move(u)));
  }
  HvpMethod method() const override { return HvpMethod::kExact; }

 private:
  MatrixHvp(ParamSet params, torch::Tensor lambda, torch::Tensor u)
      : HvpOperator(std::move(params), PreparedBatches{}), lambda_(lambda), u_(u) {}
  torch::Tensor Reflect(const torch::Tensor& v) const { return v - 2 * u_.dot(v) * u_; }
  absl::StatusOr<ParamSet> ApplyImpl(const ParamSet& v) override {
    return Unflatten(Reflect(lambda_ * Reflect(Flatten(v))), v);
  }
  torch::Tensor lambda_, u_;
};

// A bulk spread evenly over [-1, 1] (n values) plus the given outliers. Both
// edges at |λ| = 1, so a top-k list that reaches the bulk on one side
// reaches it on the other (an edge far below the list's smallest |λ| leaves
// room for unseen outliers: a lower bound).
std::vector<double> BulkPlus(int64_t n, const std::vector<double>& outliers) {
  std::vector<double> spectrum;
  for (int64_t i = 0; i < n; ++i) spectrum.push_back(-1 + 2.0 * i / (n - 1));
  spectrum.insert(spectrum.end(), outliers.begin(), outliers.end());
  return spectrum;
}

// Top-k by Lanczos and the SLQ density of `op`, then the rule.
SpectrumSplit SplitOf(HvpOperator& op, int k, const OutlierOptions& options) {
  EigenOptions eigen;
  eigen.method = EigenMethod::kLanczos;
  eigen.k = k;
  eigen.max_iterations = 150;
  at::Generator gen = MakeGenerator(3);
  absl::StatusOr<EigenResult> top = TopEigenvalues(op, eigen, kWholeModel, gen);
  EXPECT_TRUE(top.ok()) << top.status();
  at::Generator density_gen = MakeGenerator(4);
  absl::StatusOr<SpectralDensity> d = EstimateSpectralDensity(op, DensityOptions{}, density_gen);
  EXPECT_TRUE(d.ok()) << d.status();
  return SeparateOutliers(top->eigenvalues, d->nodes, d->weights, options);
}

const std::vector<double> kOutliers = {20, 12, 8, 5, -4, 3, 2};

TEST(OutlierTest, FindsTheConstructedOutliersAndTheBulkEdges) {
  std::unique_ptr<MatrixHvp> op = MatrixHvp::Create(BulkPlus(20000, kOutliers), 1);
  const SpectrumSplit s = SplitOf(*op, 12, OutlierOptions{});
  ASSERT_EQ(s.count(), 7);
  const std::vector<double> expected = {20, 12, 8, 5, -4, 3, 2};  // |λ| decreasing
  for (int i = 0; i < 7; ++i) EXPECT_NEAR(s.outliers[i], expected[i], 1e-6 * 20) << i;
  EXPECT_FALSE(s.count_is_lower_bound);
  // The 1e-3 quantiles of the bulk are ±0.998; the quadrature's nodes lie
  // within one node spacing of them.
  EXPECT_NEAR(s.bulk_max, 1.0, 0.05);
  EXPECT_NEAR(s.bulk_min, -1.0, 0.05);
  EXPECT_NEAR(s.bulk_width(), 2.0, 0.1);
  // λ = 2 over the largest bulk eigenvalue, 1.
  EXPECT_NEAR(s.edge_gap, 1.0, 0.06);
}

TEST(OutlierTest, AllTopEigenvaluesOutliersIsALowerBound) {
  std::unique_ptr<MatrixHvp> op = MatrixHvp::Create(BulkPlus(20000, kOutliers), 1);
  const SpectrumSplit s = SplitOf(*op, 4, OutlierOptions{});
  ASSERT_EQ(s.count(), 4);
  EXPECT_NEAR(s.outliers[3], 5, 1e-4);
  EXPECT_TRUE(s.count_is_lower_bound);
}

TEST(OutlierTest, ABulkAloneHasNoOutliers) {
  std::unique_ptr<MatrixHvp> op = MatrixHvp::Create(BulkPlus(20000, {}), 1);
  const SpectrumSplit s = SplitOf(*op, 10, OutlierOptions{});
  EXPECT_EQ(s.count(), 0);
  EXPECT_FALSE(s.count_is_lower_bound);
  EXPECT_NEAR(s.bulk_max, 1.0, 0.05);
}

TEST(OutlierTest, RuleOnHandMadeQuadrature) {
  // Bulk nodes 0..1 carry the weight; 1.5 and 1.45 form a cluster (a 3% gap
  // between them) 45% above the edge, 6 sits alone.
  const std::vector<double> nodes = {0.0, 0.25, 0.5, 0.75, 1.0, 1.45, 1.5, 6};
  const std::vector<double> weights = {0.2, 0.2, 0.2, 0.2, 0.1997, 1e-4, 1e-4, 1e-4};
  const std::vector<double> top = {6, 1.5, 1.45, 1.0, 0.99};
  SpectrumSplit s = SeparateOutliers(top, nodes, weights, OutlierOptions{});
  EXPECT_EQ(s.bulk_max, 1.0);  // 3e-4 of weight above it
  EXPECT_EQ(s.bulk_min, 0.0);
  EXPECT_EQ(s.outliers, (std::vector<double>{6, 1.5, 1.45}));
  EXPECT_NEAR(s.edge_gap, 0.45, 1e-12);
  // A gap of 50% is more than the cluster has: only 6 stands out.
  OutlierOptions wide;
  wide.gap = 0.5;
  EXPECT_EQ(SeparateOutliers(top, nodes, weights, wide).outliers, (std::vector<double>{6}));
  // A bulk mass below one outlier node's weight puts the edge on 6 itself.
  OutlierOptions thin;
  thin.bulk_mass = 5e-5;
  s = SeparateOutliers(top, nodes, weights, thin);
  EXPECT_EQ(s.bulk_max, 6);
  EXPECT_EQ(s.count(), 0);
}

// --------------------------------------------------------------- Q-BERT

TEST(QBertTest, DataSubsetsSplitTheExamplesEvenly) {
  Problem p = Mlp();  // 16 examples in one batch
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (int s = 0; s < 3; ++s) {
    PreparedBatches sub = DataSubset(p.batches, s, 3, 4);
    sizes.push_back(sub.num_examples);
    for (const Batch& b : sub.batches) {
      EXPECT_LE(b.size, 4);
      EXPECT_TRUE(torch::equal(b.inputs.first, p.batches.batches[0].inputs.first.narrow(0, total, b.size)));
      total += b.size;
    }
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{6, 5, 5}));
  EXPECT_EQ(total, 16);
}

TEST(QBertTest, ScoresAreMeanPlusStdOfPerSubsetTopEigenvalues) {
  Problem p = Mlp();
  const int subsets = 2;
  // Exact per-subset, per-layer top eigenvalues.
  std::vector<std::vector<double>> exact(p.params.layout->groups.size());
  for (int s = 0; s < subsets; ++s) {
    PreparedBatches sub = DataSubset(p.batches, s, subsets, 16);
    Problem ps{"sub", p.model, sub, FullHessian(p.model, sub), p.params};
    for (size_t g = 0; g < exact.size(); ++g) {
      exact[g].push_back(ByMagnitude(ps.Block(static_cast<int>(g)))[0]);
    }
  }
  at::Generator gen = MakeGenerator(7);
  EigenOptions eigen;
  eigen.tolerance = 1e-7;
  eigen.max_iterations = 1000;
  RecordingSink sink;
  absl::StatusOr<QBertResult> r =
      QBertScores(p.model, p.batches, HvpOptions{}, subsets, eigen, gen, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), exact.size());
  for (size_t g = 0; g < exact.size(); ++g) {
    const QBertLayerScore& l = r->layers[g];
    ASSERT_EQ(l.top_eigenvalues.size(), 2u);
    const double mean = (exact[g][0] + exact[g][1]) / 2;
    const double std = std::abs(exact[g][0] - exact[g][1]) / 2;
    EXPECT_NEAR(l.score, std::abs(mean) + std, 1e-3 * (std::abs(mean) + std));
    EXPECT_NEAR(l.mean, mean, 1e-3 * std::abs(mean));
  }
  EXPECT_EQ(QBertScores(p.model, p.batches, HvpOptions{}, 17, eigen, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress::engine
