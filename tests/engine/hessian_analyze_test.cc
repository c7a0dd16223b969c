// RunAnalysis (the torch-free facade) end to end on the committed fixtures,
// checked against the exact Hessian of the same model and data in float64.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/data/dataset.h"
#include "server/engine/hessian/analyze.h"
#include "tests/engine/hessian_test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::F64;
using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::FullHessian;
using ::compress::engine::testing::LoadF64;
using ::compress::engine::testing::MakeTempDir;
using ::compress::engine::testing::SourceDir;
using ::compress::engine::testing::TestDevice;
using ::testing::HasSubstr;

class RecordingSink : public ProgressSink {
 public:
  void StageStart(const std::string& stage, int index, int count) override {
    absl::MutexLock lock(&mu_);
    stages_.push_back(stage);
  }
  void StageEnd(const std::string&) override {}
  void Progress(const std::string&, int64_t, int64_t) override {
    absl::MutexLock lock(&mu_);
    ++progress_;
  }
  void Log(const std::string& level, const std::string& message) override {
    absl::MutexLock lock(&mu_);
    logs_.push_back(level + " " + message);
  }
  void PartialResult(const std::string& key, const std::string&) override {
    absl::MutexLock lock(&mu_);
    partial_.push_back(key);
  }

  absl::Mutex mu_;
  std::vector<std::string> stages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> logs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> partial_ ABSL_GUARDED_BY(mu_);
  int64_t progress_ ABSL_GUARDED_BY(mu_) = 0;
};

AnalyzeOptions CnnOptions() {
  AnalyzeOptions o;
  o.device = TestDevice();
  o.model_path = FixturePath("tiny_cnn.pt");
  o.dataset = FixturePath("tiny.safetensors");
  o.batch_size = 4;  // 6 examples: batches of 4 and 2
  return o;
}

// The exact float64 Hessian of tiny_cnn on tiny.safetensors (mean CE).
struct Exact {
  torch::Tensor hessian;
  ParamSet params;

  static const Exact& Get() {
    static const Exact* exact = [] {
      torch::jit::Module m = LoadF64("tiny_cnn.pt");
      absl::StatusOr<LoadedDataset> data = LoadDataset(FixturePath("tiny.safetensors"), 0);
      EXPECT_TRUE(data.ok()) << data.status();
      absl::StatusOr<PreparedBatches> p =
          PrepareBatches(m, data->inputs, data->targets, 6, LossKind::kAuto);
      EXPECT_TRUE(p.ok()) << p.status();
      return new Exact{FullHessian(m, *p), *CollectParameters(m)};
    }();
    return *exact;
  }
  double BlockTrace(int g) const {
    double t = 0;
    int64_t offset = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const int64_t n = params.tensors[i].numel();
      if (params.layout->group_of[i] == g) {
        t += hessian.diagonal().narrow(0, offset, n).sum().item<double>();
      }
      offset += n;
    }
    return t;
  }
  std::vector<double> ByMagnitude() const {
    torch::Tensor e = torch::linalg_eigvalsh(hessian);
    std::vector<double> v(e.data_ptr<double>(), e.data_ptr<double>() + e.numel());
    std::sort(v.begin(), v.end(), [](double a, double b) { return std::abs(a) > std::abs(b); });
    return v;
  }
};

void CheckAgainstExact(const AnalyzeReport& r, double eigen_tolerance) {
  const Exact& exact = Exact::Get();
  ASSERT_EQ(r.layers.size(), exact.params.layout->groups.size());
  for (size_t g = 0; g < r.layers.size(); ++g) {
    const LayerSensitivity& l = r.layers[g];
    SCOPED_TRACE(l.name);
    EXPECT_EQ(l.name, exact.params.layout->groups[g].name);
    const double want = exact.BlockTrace(static_cast<int>(g));
    EXPECT_LE(std::abs(l.trace - want), 3 * l.trace_std_error + 1e-6)
        << l.trace << " ± " << l.trace_std_error << " vs " << want;
    EXPECT_DOUBLE_EQ(l.trace_per_param, l.trace / l.numel);
  }
  std::vector<double> eig = exact.ByMagnitude();
  ASSERT_EQ(r.eigenvalues.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    std::cout << HvpMethodName(r.hvp_method) << ": eigenvalue " << i << " " << r.eigenvalues[i]
              << " vs exact " << eig[i] << " (relative "
              << std::abs(r.eigenvalues[i] - eig[i]) / std::abs(eig[i]) << ")\n";
    EXPECT_NEAR(r.eigenvalues[i], eig[i], eigen_tolerance * std::abs(eig[i]));
  }
  torch::Tensor e = torch::linalg_eigvalsh(exact.hessian);
  const double min = e.min().item<double>(), max = e.max().item<double>();
  double sum = 0;
  for (double w : r.density_weights) sum += w;
  EXPECT_NEAR(sum, 1, 1e-9);
  EXPECT_NEAR(*std::min_element(r.density_nodes.begin(), r.density_nodes.end()), min,
              eigen_tolerance * (max - min));
  EXPECT_NEAR(*std::max_element(r.density_nodes.begin(), r.density_nodes.end()), max,
              eigen_tolerance * (max - min));
}

TEST(RunAnalysisTest, EveryEstimatorAgreesWithTheExactHessian) {
  for (HvpMethod method : {HvpMethod::kExact, HvpMethod::kFiniteDifference}) {
    SCOPED_TRACE(HvpMethodName(method));
    AnalyzeOptions o = CnnOptions();
    o.hvp_method = method;
    o.eigen_enabled = true;
    o.eigen.k = 2;
    o.density_enabled = true;
    o.density.lanczos_steps = 90;
    o.density.grid_points = 200;
    o.qbert_enabled = true;
    o.qbert_subsets = 2;
    RecordingSink sink;
    absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, &sink, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->hvp_method, method);
    EXPECT_FALSE(r->fell_back);
    EXPECT_EQ(r->loss, LossKind::kCrossEntropy);
    EXPECT_FALSE(r->pseudo_labels);
    EXPECT_EQ(r->num_examples, 6);
    EXPECT_EQ(r->num_batches, 2);
    EXPECT_EQ(r->dtype, "float32");
    EXPECT_EQ(r->num_parameters, 514);
    EXPECT_GT(r->hvp_count, 0);
    EXPECT_GT(r->wall_seconds, 0);
    EXPECT_THAT(r->runtime, HasSubstr("LibTorch"));
    // float32 model vs float64 Hessian: exact products round at ~1e-6, finite
    // differences at ~1e-3 (hvp.h).
    CheckAgainstExact(*r, method == HvpMethod::kExact ? 1e-3 : 1e-2);
    ASSERT_EQ(r->density_grid.size(), 200u);
    for (const LayerSensitivity& l : r->layers) {
      EXPECT_EQ(l.qbert_eigenvalues.size(), 2u);
      EXPECT_GE(l.qbert_score, 0);
    }
    absl::MutexLock lock(&sink.mu_);
    EXPECT_EQ(sink.stages_, (std::vector<std::string>{"traces", "eigen", "density", "qbert"}));
    EXPECT_EQ(sink.partial_.size(), r->layers.size());
    EXPECT_GT(sink.progress_, 0);
  }
}

// An eigenvalue that hits max_iterations is flagged and warned about, at
// the model scope and per layer; Lanczos reports both ends of the CNN's
// indefinite spectrum, checked against eigh of the exact Hessian.
TEST(RunAnalysisTest, UnconvergedEigenvaluesAreWarningsAndLanczosGivesBothEnds) {
  AnalyzeOptions o = CnnOptions();
  o.traces_enabled = false;
  o.eigen_enabled = true;
  o.eigen.max_iterations = 2;
  o.eigen.tolerance = 1e-12;
  RecordingSink sink;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, &sink, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->eigen_converged.size(), 1u);
  EXPECT_FALSE(r->eigen_converged[0]);
  EXPECT_GT(r->eigen_relative_change[0], o.eigen.tolerance);
  EXPECT_THAT(r->warnings, ::testing::Contains(HasSubstr("did not converge within max_iterations")));
  o.eigen_scope = EigenScope::kLayer;
  r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->layers[0].top_eigenvalues_converged[0]);
  EXPECT_THAT(r->warnings, ::testing::Contains(HasSubstr("of layer ")));

  o.eigen_scope = EigenScope::kModel;
  o.eigen.method = EigenMethod::kLanczos;
  o.eigen.max_iterations = 100;
  o.eigen.tolerance = 1e-6;
  r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->warnings.empty()) << r->warnings[0];
  ASSERT_TRUE(r->min_eigenvalue.has_value() && r->max_eigenvalue.has_value());
  torch::Tensor exact = torch::linalg_eigvalsh(Exact::Get().hessian);
  const double lo = exact[0].item<double>(), hi = exact[-1].item<double>();
  EXPECT_LT(lo, 0);  // indefinite
  const double scale = std::max(std::abs(lo), std::abs(hi));
  // float32 model vs float64 Hessian (hvp.h): ~1e-6 relative.
  EXPECT_NEAR(*r->min_eigenvalue, lo, 1e-4 * scale);
  EXPECT_NEAR(*r->max_eigenvalue, hi, 1e-4 * scale);
  EXPECT_TRUE(r->eigen_converged[0]);
}

TEST(RunAnalysisTest, LayerScopeEigenvaluesAndMseData) {
  AnalyzeOptions o;
  o.model_path = FixturePath("tiny_mlp.pt");
  o.dataset = FixturePath("tiny_torchsave.pt");  // float targets [5, 3]
  o.hvp_method = HvpMethod::kGaussNewton;
  o.traces_enabled = false;
  o.eigen_enabled = true;
  o.eigen_scope = EigenScope::kLayer;
  o.eigen.k = 2;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->loss, LossKind::kMse);
  EXPECT_TRUE(r->eigenvalues.empty());
  ASSERT_EQ(r->layers.size(), 2u);
  for (const LayerSensitivity& l : r->layers) {
    ASSERT_EQ(l.top_eigenvalues.size(), 2u);
    // Gauss-Newton blocks are PSD.
    EXPECT_GE(l.top_eigenvalues[1], -1e-6);
    EXPECT_GE(l.top_eigenvalues[0], l.top_eigenvalues[1]);
  }
}

TEST(RunAnalysisTest, SameSeedSameReportOtherSeedOtherProbes) {
  AnalyzeOptions o = CnnOptions();
  o.traces.max_probes = 20;
  o.eigen_enabled = true;
  o.density_enabled = true;
  o.density.lanczos_steps = 10;
  absl::StatusOr<AnalyzeReport> a = RunAnalysis(o, nullptr, nullptr);
  absl::StatusOr<AnalyzeReport> b = RunAnalysis(o, nullptr, nullptr);
  o.seed = 1;
  absl::StatusOr<AnalyzeReport> c = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (size_t g = 0; g < a->layers.size(); ++g) {
    EXPECT_EQ(a->layers[g].trace, b->layers[g].trace);
    EXPECT_EQ(a->layers[g].trace_std_error, b->layers[g].trace_std_error);
    EXPECT_NE(a->layers[g].trace, c->layers[g].trace);
  }
  EXPECT_EQ(a->eigenvalues, b->eigenvalues);
  EXPECT_EQ(a->density_nodes, b->density_nodes);
  EXPECT_EQ(a->density_values, b->density_values);
  EXPECT_NE(a->density_nodes, c->density_nodes);
  EXPECT_EQ(a->hvp_count, b->hvp_count);
}

// A float32 TorchScript model whose forward uses cdist (no double backward
// in torch 1.13), taking tiny.safetensors' [N, 1, 8, 8] inputs.
std::string SaveCdistModel() {
  torch::jit::Module m("CdistNet");
  at::Generator gen = MakeGenerator(1);
  m.register_parameter("centers", at::randn({3, 64}, gen).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return -torch.cdist(x.flatten(1), self.centers)
)JIT");
  const std::string path = MakeTempDir() + "/cdist.pt";
  m.save(path);
  return path;
}

TEST(RunAnalysisTest, MissingDoubleBackwardFallsBackOrFails) {
  AnalyzeOptions o = CnnOptions();
  o.model_path = SaveCdistModel();
  o.hvp_method = HvpMethod::kExact;
  o.traces.max_probes = 20;
  RecordingSink sink;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, &sink, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->fell_back);
  EXPECT_EQ(r->hvp_method, HvpMethod::kFiniteDifference);
  EXPECT_THAT(r->fallback_reason, HasSubstr("cdist"));
  EXPECT_EQ(r->layers.size(), 1u);
  EXPECT_GT(r->layers[0].trace_probes, 0);
  {
    absl::MutexLock lock(&sink.mu_);
    ASSERT_FALSE(sink.logs_.empty());
    EXPECT_THAT(sink.logs_[0], HasSubstr("WARNING"));
  }

  o.fallback = HvpFallback::kNone;
  absl::Status s = RunAnalysis(o, nullptr, nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("cdist"));
}

// cdist (no double backward) plus relu(shift) with shift exactly 0: finite
// differences see the kink and fail their self-check.
std::string SaveCdistKinkModel() {
  torch::jit::Module m("CdistKinkNet");
  at::Generator gen = MakeGenerator(1);
  m.register_parameter("centers", at::randn({3, 64}, gen).requires_grad_(true), false);
  m.register_parameter("shift", torch::zeros({1}).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    f = x.flatten(1)
    return -torch.cdist(f, self.centers) + torch.relu(self.shift) * f[:, :3]
)JIT");
  const std::string path = MakeTempDir() + "/cdist_kink.pt";
  m.save(path);
  return path;
}

TEST(RunAnalysisTest, FailedFiniteDifferenceCheckFallsBackToFisher) {
  AnalyzeOptions o = CnnOptions();
  o.model_path = SaveCdistKinkModel();
  o.traces.max_probes = 20;
  o.eigen_enabled = true;
  RecordingSink sink;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, &sink, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->fell_back);
  EXPECT_EQ(r->hvp_method, HvpMethod::kFisherDiagonal);
  EXPECT_GT(r->finite_difference_check, kFiniteDifferenceCheckTolerance);
  EXPECT_THAT(r->fallback_reason, HasSubstr("cdist"));
  EXPECT_THAT(r->fallback_reason, HasSubstr("self-check"));
  ASSERT_EQ(r->layers.size(), 1u);  // the root: centers and shift
  // Rademacher probes of a diagonal matrix: every probe gives the trace
  // exactly, so the estimate has no spread and converges at min_probes.
  EXPECT_EQ(r->layers[0].trace_std_error, 0);
  EXPECT_EQ(r->layers[0].trace_probes, o.traces.min_probes);
  EXPECT_GT(r->layers[0].trace, 0);
  ASSERT_EQ(r->eigenvalues.size(), 1u);
  EXPECT_GT(r->eigenvalues[0], 0);

  // Asked for directly, finite differences run and warn.
  o.hvp_method = HvpMethod::kFiniteDifference;
  r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->fell_back);
  EXPECT_EQ(r->hvp_method, HvpMethod::kFiniteDifference);
  ASSERT_EQ(r->warnings.size(), 1u);
  EXPECT_THAT(r->warnings[0], HasSubstr("self-check"));
}

TEST(RunAnalysisTest, FisherFallbackMatchesPerExampleGradients) {
  AnalyzeOptions o = CnnOptions();
  o.model_path = SaveCdistModel();
  o.fallback = HvpFallback::kFisherDiagonal;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->fell_back);
  EXPECT_EQ(r->hvp_method, HvpMethod::kFisherDiagonal);
  EXPECT_EQ(r->finite_difference_check, 0);
  // Tr(diag F) = mean over examples of ‖∇ℓ_n‖², each computed here with a
  // batch of one.
  absl::StatusOr<torch::jit::Module> m = LoadModel(o.model_path);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LoadedDataset> data = LoadDataset(o.dataset, 0);
  ASSERT_TRUE(data.ok()) << data.status();
  torch::Tensor centers = m->attr("centers").toTensor();
  double want = 0;
  const int64_t n = data->inputs.first.size(0);
  for (int64_t e = 0; e < n; ++e) {
    torch::Tensor out = m->forward({data->inputs.first.narrow(0, e, 1)}).toTensor();
    torch::Tensor loss =
        at::cross_entropy_loss(out, data->targets.narrow(0, e, 1).to(torch::kLong));
    torch::Tensor g = torch::autograd::grad({loss}, {centers})[0];
    want += g.pow(2).sum().item<double>() / n;
  }
  ASSERT_EQ(r->layers.size(), 1u);
  EXPECT_NEAR(r->layers[0].trace, want, 1e-5 * want);
  EXPECT_NEAR(r->total_trace, want, 1e-5 * want);
}

TEST(RunAnalysisTest, BlockScopeEigenvaluesOfTheViT) {
  AnalyzeOptions o;
  o.model_path = SourceDir() + "/models/fmnist_vit.pt";
  o.dataset = "builtin:fashion-mnist/test";
  o.num_samples = 16;
  o.batch_size = 16;
  o.traces_enabled = false;
  o.eigen_enabled = true;
  o.eigen_scope = EigenScope::kBlock;
  o.eigen.max_iterations = 30;
  o.eigen.tolerance = 1e-2;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->blocks.size(), 8u);
  EXPECT_EQ(r->blocks[2].name, "blocks.0");
  EXPECT_EQ(r->blocks[2].layers.size(), 6u);
  int64_t numel = 0;
  for (const BlockSensitivity& b : r->blocks) {
    SCOPED_TRACE(b.name);
    numel += b.numel;
    ASSERT_EQ(b.top_eigenvalues.size(), 1u);
    EXPECT_NE(b.top_eigenvalues[0], 0);
  }
  EXPECT_EQ(numel, r->num_parameters);
  // A block's top eigenvalue bounds each of its layers' (Cauchy
  // interlacing for the largest eigenvalue of a principal submatrix):
  // check with the layer scope on the same data.
  o.eigen_scope = EigenScope::kLayer;
  o.eigen.tolerance = 1e-3;
  o.eigen.max_iterations = 100;
  absl::StatusOr<AnalyzeReport> layers = RunAnalysis(o, nullptr, nullptr);
  ASSERT_TRUE(layers.ok()) << layers.status();
  for (const LayerSensitivity& l : layers->layers) {
    if (!absl::StartsWith(l.name, "blocks.0.")) continue;
    SCOPED_TRACE(l.name);
    EXPECT_LE(std::abs(l.top_eigenvalues[0]), std::abs(r->blocks[2].top_eigenvalues[0]) * 1.02);
  }
}

TEST(RunAnalysisTest, DataThatDoesNotFitTheModelIsInvalidArgument) {
  AnalyzeOptions o = CnnOptions();
  o.dataset = FixturePath("tiny_torchsave.pt");  // inputs [5, 4]
  absl::Status s = RunAnalysis(o, nullptr, nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("forward failed"));
}

TEST(RunAnalysisTest, CancelledTokenStopsTheAnalysis) {
  CancelToken token;
  token.Cancel();
  EXPECT_EQ(RunAnalysis(CnnOptions(), nullptr, &token).status().code(),
            absl::StatusCode::kCancelled);
  CancelToken late;
  late.SetDeadline(absl::Now() - absl::Seconds(1));
  EXPECT_EQ(RunAnalysis(CnnOptions(), nullptr, &late).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(RunAnalysisTest, BadOptionsAndMissingFiles) {
  AnalyzeOptions o = CnnOptions();
  o.batch_size = 0;
  absl::Status s = RunAnalysis(o, nullptr, nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("batch_size"));

  o = CnnOptions();
  o.traces_enabled = false;
  EXPECT_EQ(RunAnalysis(o, nullptr, nullptr).status().code(), absl::StatusCode::kInvalidArgument);

  o = CnnOptions();
  o.eigen_enabled = true;
  o.eigen.k = 0;
  s = RunAnalysis(o, nullptr, nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("eigen.k"));

  o = CnnOptions();
  o.model_path = "/nonexistent/model.pt";
  EXPECT_EQ(RunAnalysis(o, nullptr, nullptr).status().code(), absl::StatusCode::kNotFound);

  o = CnnOptions();
  o.dataset = "/nonexistent/data.safetensors";
  EXPECT_EQ(RunAnalysis(o, nullptr, nullptr).status().code(), absl::StatusCode::kNotFound);

  o = CnnOptions();
  o.device = "tpu:0";
  EXPECT_EQ(RunAnalysis(o, nullptr, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress::engine
