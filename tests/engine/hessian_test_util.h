// Tiny models, data and an independent full Hessian for the hessian tests.
//
// FullHessian builds H row by row with plain autograd (row j = ∂g_j/∂θ for
// the basis vector e_j), independently of the engine's HVP operators, which
// take arbitrary vectors through one product g·v.
#ifndef COMPRESS_TESTS_ENGINE_HESSIAN_TEST_UTIL_H_
#define COMPRESS_TESTS_ENGINE_HESSIAN_TEST_UTIL_H_

#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model.h"
#include "tests/engine/test_util.h"

namespace compress::engine::testing {

inline torch::TensorOptions F64() {
  return torch::TensorOptions().dtype(torch::kFloat64);
}

// tests/fixtures/<name> in float64 and eval mode.
inline torch::jit::Module LoadF64(const std::string& name) {
  absl::StatusOr<torch::jit::Module> m = LoadModel(FixturePath(name));
  EXPECT_TRUE(m.ok()) << m.status();
  m->to(torch::kFloat64);
  m->eval();
  return *m;
}

// z = x Wᵀ + b, W [out, in]: linear in its parameters.
inline torch::jit::Module MakeLinearModel(int64_t in, int64_t out,
                                          uint64_t seed) {
  at::Generator gen = MakeGenerator(seed);
  torch::jit::Module m("LinearModel");
  m.register_parameter(
      "weight", at::randn({out, in}, gen, F64()).requires_grad_(true), false);
  m.register_parameter(
      "bias", at::randn({out}, gen, F64()).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return torch.matmul(x, self.weight.t()) + self.bias
)JIT");
  m.eval();
  return m;
}

// Logits = −cdist(x, centers): torch 1.13 has no double backward for
// _cdist_backward.
inline torch::jit::Module MakeCdistModel(uint64_t seed) {
  at::Generator gen = MakeGenerator(seed);
  torch::jit::Module m("CdistModel");
  m.register_parameter(
      "centers", at::randn({3, 4}, gen, F64()).requires_grad_(true), false);
  m.define(R"JIT(
def forward(self, x):
    return -torch.cdist(x, self.centers)
)JIT");
  m.eval();
  return m;
}

// PrepareBatches, failing the test on an error.
inline PreparedBatches Prepare(torch::jit::Module& m, const torch::Tensor& inputs,
                               const torch::Tensor& targets, int64_t batch_size,
                               LossKind loss = LossKind::kAuto) {
  absl::StatusOr<PreparedBatches> p = PrepareBatches(m, inputs, targets, batch_size, loss);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// The Hessian of the prepared mean loss (weights n_b / N), [P, P] float64.
inline torch::Tensor FullHessian(torch::jit::Module& module,
                                 const PreparedBatches& prepared) {
  absl::StatusOr<ParamSet> params = CollectParameters(module);
  EXPECT_TRUE(params.ok()) << params.status();
  const int64_t n = params->layout->numel;
  torch::Tensor h = torch::zeros({n, n}, F64());
  for (const Batch& b : prepared.batches) {
    absl::StatusOr<torch::Tensor> out = RunForward(module, b.inputs);
    EXPECT_TRUE(out.ok()) << out.status();
    absl::StatusOr<torch::Tensor> loss =
        ComputeLoss(prepared.loss, *out, b.targets);
    EXPECT_TRUE(loss.ok()) << loss.status();
    std::vector<torch::Tensor> g = torch::autograd::grad(
        {*loss}, params->tensors, {}, true, /*create_graph=*/true, true);
    std::vector<torch::Tensor> parts;
    for (size_t i = 0; i < g.size(); ++i) {
      parts.push_back(g[i].defined()
                          ? g[i].reshape(-1)
                          : torch::zeros({params->tensors[i].numel()}, F64()));
    }
    torch::Tensor flat = torch::cat(parts);
    const double w = static_cast<double>(b.size) /
                     static_cast<double>(prepared.num_examples);
    for (int64_t j = 0; j < n; ++j) {
      if (!flat[j].requires_grad()) continue;
      std::vector<torch::Tensor> row = torch::autograd::grad(
          {flat[j]}, params->tensors, {}, /*retain_graph=*/true, false, true);
      ParamSet r{params->layout, {}};
      for (size_t i = 0; i < row.size(); ++i) {
        r.tensors.push_back(
            row[i].defined() ? row[i] : torch::zeros_like(params->tensors[i]));
      }
      h[j] += w * Flatten(r);
    }
  }
  return h;
}

// ‖a − b‖ / ‖b‖ for flat tensors.
inline double RelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

// Random classification data: inputs [n, ...shape], int64 labels < classes.
struct Data {
  torch::Tensor inputs;
  torch::Tensor targets;
};

inline Data RandomClassification(std::vector<int64_t> shape, int64_t classes,
                                 uint64_t seed) {
  at::Generator gen = MakeGenerator(seed);
  Data d;
  d.inputs = at::randn(shape, gen, F64());
  d.targets = at::randint(0, classes, {shape[0]}, gen,
                          torch::TensorOptions().dtype(torch::kLong));
  return d;
}

}  // namespace compress::engine::testing

#endif  // COMPRESS_TESTS_ENGINE_HESSIAN_TEST_UTIL_H_
