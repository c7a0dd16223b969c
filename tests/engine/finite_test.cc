// NaN and Inf in what a job reads and computes: data, parameters, buffers,
// losses, Hessian-vector products, model outputs, recovery. Every bad model
// and dataset is made here from the fixtures, with the non-finite values
// placed by the test, so each count and position in a message is known
// independently of the engine.
#include "server/engine/common/finite.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/data/dataset.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/prune/recovery.h"
#include "server/engine/quant/quantize.h"
#include "tests/engine/hessian_test_util.h"
#include "tests/safetensors_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::F64;
using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::compress::engine::testing::Prepare;
using ::compress::testutil::ClassificationSafetensors;
using ::compress::testutil::WriteFile;
using ::testing::Contains;
using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

class CollectingSink : public ProgressSink {
 public:
  void StageStart(const std::string&, int, int) override {}
  void StageEnd(const std::string&) override {}
  void Progress(const std::string&, int64_t, int64_t) override {}
  void Log(const std::string& level, const std::string& message) override {
    logs.push_back(level + " " + message);
  }
  void PartialResult(const std::string&, const std::string&) override {}
  std::vector<std::string> logs;
};

// 6 examples [1, 8, 8] for tiny_cnn (10 classes), values in (-1, 1), the
// listed flat indices replaced by NaN; written as safetensors.
std::string CnnDataset(const std::vector<int>& nan_at) {
  std::vector<float> x(6 * 64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  for (int i : nan_at) x[i] = std::nanf("");
  const std::string path = MakeTempDir() + "/data.safetensors";
  WriteFile(path, ClassificationSafetensors({6, 1, 8, 8}, x, {0, 1, 2, 3, 4, 5}));
  return path;
}

// tiny_cnn.pt with `edit` applied to its module, saved to a temp file.
template <typename Edit>
std::string EditedCnn(Edit edit) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(FixturePath("tiny_cnn.pt"));
  EXPECT_TRUE(m.ok()) << m.status();
  {
    torch::NoGradGuard no_grad;
    edit(*m);
  }
  const std::string path = MakeTempDir() + "/model.pt";
  m->save(path);
  return path;
}

torch::Tensor Attr(torch::jit::Module& m, const std::string& module, const std::string& name) {
  return m.attr(module).toModule().attr(name).toTensor();
}

AnalyzeOptions CnnAnalysis(const std::string& model, const std::string& data) {
  AnalyzeOptions o;
  o.model_path = model;
  o.model_name = "model M1";
  o.dataset = data;
  o.dataset_name = "dataset D1";
  o.batch_size = 4;
  o.traces.min_probes = 2;
  o.traces.max_probes = 4;
  return o;
}

// W [out, in] and b [out], random float64, without a forward method (each
// test defines its own after adding what it needs).
torch::jit::Module Linear(int64_t in, int64_t out, uint64_t seed) {
  at::Generator gen = MakeGenerator(seed);
  torch::jit::Module m("Linear");
  m.register_parameter("weight", at::randn({out, in}, gen, F64()).requires_grad_(true), false);
  m.register_parameter("bias", at::randn({out}, gen, F64()).requires_grad_(true), false);
  return m;
}

constexpr char kLinearForward[] = R"JIT(
def forward(self, x):
    return torch.matmul(x, self.weight.t()) + self.bias
)JIT";

// ------------------------------------------------------------ the helpers

TEST(FiniteTest, ExamplesAreCountedAndTheFirstBadOneIsNamed) {
  torch::Tensor x = torch::zeros({5, 3});
  x[2][1] = kNaN;
  x[4][0] = kInf;
  x[4][2] = -kInf;
  absl::Status s = CheckFiniteExamples(x, "dataset D: inputs");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(s.message()),
            "dataset D: inputs hold 3 non-finite values (NaN, +Inf, -Inf; first at example 2)");
  // Rows 3 and 4 as examples 100 and 101.
  EXPECT_EQ(std::string(CheckFiniteExamples(x.narrow(0, 3, 2), "batch", 100).message()),
            "batch hold 2 non-finite values (+Inf, -Inf; first at example 101)");
  EXPECT_TRUE(CheckFiniteExamples(x.narrow(0, 0, 2), "ok").ok());
  EXPECT_TRUE(CheckFiniteExamples(torch::ones({4}, torch::kLong), "labels").ok());
  EXPECT_TRUE(CheckFiniteExamples(torch::Tensor(), "absent").ok());
  EXPECT_EQ(DescribeNonFinite(torch::tensor({1.0, kNaN})), "1 non-finite value (NaN)");
  EXPECT_EQ(DescribeNonFinite(torch::tensor({1.0, 2.0})), "");
}

TEST(FiniteTest, ScalarsNameTheirKind) {
  EXPECT_TRUE(CheckFiniteValue(1e308, "x").ok());
  EXPECT_EQ(std::string(CheckFiniteValue(kNaN, "the loss on batch 0").message()),
            "the loss on batch 0 is NaN");
  EXPECT_EQ(std::string(CheckFiniteValue(-kInf, "trace of layer fc", " after 12 probes").message()),
            "trace of layer fc is -Inf after 12 probes");
  EXPECT_EQ(CheckFiniteValue(kInf, "x").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(FiniteTest, DataTargetsAreCheckedToo) {
  LoadedDataset data;
  data.inputs = torch::zeros({3, 2});
  data.targets = torch::zeros({3});
  data.targets[1] = kNaN;
  EXPECT_EQ(std::string(CheckFiniteData(data, "dataset D").message()),
            "dataset D: targets hold 1 non-finite value (NaN; first at example 1)");
}

TEST(FiniteTest, ParametersFailAndBuffersWarn) {
  torch::jit::Module m = Linear(4, 3, 1);
  m.register_buffer("mask", torch::full({4}, -kInf, F64()));
  m.define(kLinearForward);
  EXPECT_TRUE(CheckFiniteParameters(m, "model M").ok());
  EXPECT_THAT(NonFiniteBuffers(m, "model M"),
              ::testing::ElementsAre("model M: buffer mask holds 4 non-finite values (-Inf)"));
  {
    torch::NoGradGuard no_grad;
    m.attr("bias").toTensor()[2] = kNaN;
  }
  absl::Status s = CheckFiniteParameters(m, "model M");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(s.message()), "model M: parameter bias holds 1 non-finite value (NaN)");
}

// ------------------------------------------------------------ ANALYZE

TEST(FiniteAnalyzeTest, NanInputsFailNamingTheDatasetAndTheExample) {
  // Example 4 (flat 4·64 + 10) and example 5 hold NaN.
  const std::string data = CnnDataset({4 * 64 + 10, 5 * 64});
  absl::StatusOr<AnalyzeReport> r =
      RunAnalysis(CnnAnalysis(FixturePath("tiny_cnn.pt"), data), nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(r.status().message()),
            "dataset D1: inputs hold 2 non-finite values (NaN; first at example 4)");
  EXPECT_THAT(r.status().message(), ::testing::Not(HasSubstr(data)));
}

TEST(FiniteAnalyzeTest, NanWeightFailsNamingTheParameter) {
  const std::string model = EditedCnn([](torch::jit::Module& m) {
    torch::Tensor w = Attr(m, "conv2", "weight");
    w[0][0][0][0] = kNaN;
    w[1][1][2][2] = kNaN;
    w[3][0][1][1] = kInf;
  });
  absl::StatusOr<AnalyzeReport> r =
      RunAnalysis(CnnAnalysis(model, CnnDataset({})), nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(r.status().message()),
            "model M1: parameter conv2.weight holds 3 non-finite values (NaN, +Inf)");
}

// A NaN running variance is a buffer: a warning, until it makes the loss
// NaN, which is an error naming the batch.
TEST(FiniteAnalyzeTest, NanBufferWarnsThenTheLossFails) {
  const std::string model =
      EditedCnn([](torch::jit::Module& m) { Attr(m, "bn1", "running_var")[0] = kNaN; });
  CollectingSink sink;
  absl::StatusOr<AnalyzeReport> r = RunAnalysis(CnnAnalysis(model, CnnDataset({})), &sink, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(r.status().message()), "traces: the loss on batch 0 is NaN");
  EXPECT_THAT(sink.logs,
              Contains("WARNING model M1: buffer bn1.running_var holds 1 non-finite value (NaN)"));
}

// A -Inf buffer the forward pass never reads (an attention mask's kind of
// value) is only a warning in the report.
TEST(FiniteAnalyzeTest, UnusedInfBufferIsAWarning) {
  torch::jit::Module m = Linear(4, 3, 2);
  m.register_buffer("mask", torch::full({2, 2}, -kInf, F64()));
  m.define(kLinearForward);
  m.eval();
  const std::string dir = MakeTempDir();
  m.save(dir + "/model.pt");
  std::vector<float> x(6 * 4);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.7f * static_cast<float>(i));
  WriteFile(dir + "/data.safetensors", ClassificationSafetensors({6, 4}, x, {0, 1, 2, 0, 1, 2}));
  absl::StatusOr<AnalyzeReport> r =
      RunAnalysis(CnnAnalysis(dir + "/model.pt", dir + "/data.safetensors"), nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->warnings, Contains("model M1: buffer mask holds 4 non-finite values (-Inf)"));
  EXPECT_TRUE(std::isfinite(r->total_trace));
}

// Finite weights and inputs, but the logits are −Inf: the loss is NaN.
TEST(FiniteHvpTest, NanLossNamesTheBatch) {
  torch::jit::Module m = Linear(4, 3, 3);
  m.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.weight.t()) + self.bias + torch.log(x.sum(1, keepdim=True) * 0.0)
)JIT");
  at::Generator gen = MakeGenerator(5);
  torch::Tensor x = at::randn({8, 4}, gen, F64());
  torch::Tensor y = torch::tensor({0, 1, 2, 0, 1, 2, 0, 1}, torch::kLong);
  absl::StatusOr<std::unique_ptr<HvpOperator>> op =
      CreateHvpOperator(m, Prepare(m, x, y, 4), HvpOptions{});
  ASSERT_TRUE(op.ok()) << op.status();
  absl::StatusOr<ParamSet> hv = (*op)->Apply(RademacherLike((*op)->parameters(), gen));
  ASSERT_FALSE(hv.ok());
  EXPECT_EQ(hv.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(hv.status().message()), "the loss on batch 0 is NaN");
}

// A finite loss whose curvature is not: z = (xWᵀ + b)·sqrt(s) at s = 0.
TEST(FiniteHvpTest, NonFiniteProductNamesTheParameter) {
  torch::jit::Module m = Linear(4, 3, 4);
  m.register_parameter("s", torch::zeros({1}, F64()).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return (torch.matmul(x, self.weight.t()) + self.bias) * torch.sqrt(self.s)
)JIT");
  at::Generator gen = MakeGenerator(6);
  torch::Tensor x = at::randn({8, 4}, gen, F64());
  torch::Tensor y = torch::tensor({0, 1, 2, 0, 1, 2, 0, 1}, torch::kLong);
  absl::StatusOr<std::unique_ptr<HvpOperator>> op =
      CreateHvpOperator(m, Prepare(m, x, y, 8), HvpOptions{});
  ASSERT_TRUE(op.ok()) << op.status();
  absl::StatusOr<ParamSet> hv = (*op)->Apply(RademacherLike((*op)->parameters(), gen));
  ASSERT_FALSE(hv.ok());
  EXPECT_EQ(hv.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(hv.status().message(), HasSubstr("Hessian-vector product 1 has "));
  EXPECT_THAT(hv.status().message(), HasSubstr(" in parameter "));
}

// ------------------------------------------------------------ QUANTIZE

QuantizeOptions CnnQuantization(const std::string& model, const std::string& data) {
  QuantizeOptions o;
  o.model_path = model;
  o.model_name = "model M2";
  o.calibration_dataset = data;
  o.calibration_name = "dataset D2";
  o.batch_size = 4;
  o.trace_max_probes = 4;
  o.output_dir = MakeTempDir();
  return o;
}

TEST(FiniteQuantizeTest, NanWeightFails) {
  const std::string model =
      EditedCnn([](torch::jit::Module& m) { Attr(m, "fc", "weight")[3][5] = kNaN; });
  absl::StatusOr<QuantizeReport> r =
      RunQuantization(CnnQuantization(model, CnnDataset({})), nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(r.status().message()),
            "model M2: parameter fc.weight holds 1 non-finite value (NaN)");
}

// BatchNorm folding turns a NaN running variance (a buffer: a warning) into
// a NaN weight of the conv before it (an error).
TEST(FiniteQuantizeTest, NanRunningVarianceFailsAfterFolding) {
  const std::string model =
      EditedCnn([](torch::jit::Module& m) { Attr(m, "bn1", "running_var")[2] = kNaN; });
  CollectingSink sink;
  absl::StatusOr<QuantizeReport> r =
      RunQuantization(CnnQuantization(model, CnnDataset({})), &sink, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("model M2: parameter conv1."));
  EXPECT_THAT(r.status().message(), HasSubstr("after folding BatchNorm into the layer before it"));
  EXPECT_THAT(sink.logs,
              Contains("WARNING model M2: buffer bn1.running_var holds 1 non-finite value (NaN)"));
}

TEST(FiniteQuantizeTest, NanEvalInputsFailNamingTheEvalDataset) {
  QuantizeOptions o = CnnQuantization(FixturePath("tiny_cnn.pt"), CnnDataset({}));
  o.eval_dataset = CnnDataset({3 * 64 + 63});
  o.eval_name = "dataset E2";
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(r.status().message()),
            "dataset E2: inputs hold 1 non-finite value (NaN; first at example 3)");
}

// ------------------------------------------------------------ accuracy, recovery

TEST(FiniteAccuracyTest, NanOutputsAreNoPrediction) {
  torch::jit::Module m = Linear(4, 3, 7);
  m.define(kLinearForward);
  torch::Tensor x = torch::ones({300, 4}, F64());
  x[280][1] = kNaN;  // in the second batch of 256
  absl::StatusOr<double> acc = TopOneAccuracy(m, x, torch::zeros({300}, torch::kLong));
  ASSERT_FALSE(acc.ok());
  EXPECT_EQ(acc.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(std::string(acc.status().message()),
            "the model's outputs on the eval data hold 3 non-finite values (NaN; first at "
            "example 280)");
}

TEST(FiniteRecoveryTest, DivergenceIsNamed) {
  torch::jit::Module student("Student");
  student.register_parameter("weight", torch::ones({3, 4}).requires_grad_(true), false);
  student.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.weight.t())
)JIT");
  at::Generator gen = MakeGenerator(8);
  torch::Tensor x = at::randn({16, 4}, gen);
  torch::Tensor teacher = at::randn({16, 3}, gen);
  RecoveryOptions o;
  o.steps = 20;
  o.optimizer = "sgd";
  o.learning_rate = 1e38;  // float32 weights overflow within a few steps
  o.batch_size = 16;
  absl::StatusOr<RecoveryStats> r =
      Recover(student, x, teacher, torch::Tensor(), o, nullptr, "recovery", nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("recovery fine-tuning diverged: the loss at step "));
  EXPECT_THAT(r.status().message(), HasSubstr("(learning rate 1e+38; try a smaller one)"));
}

}  // namespace
}  // namespace compress::engine
