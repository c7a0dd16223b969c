#include "tests/e2e/model_gen.h"

#include <torch/script.h>

#include <limits>

namespace compress::testutil {

void MakeSlowModel(const std::string& path, int64_t dim, int64_t iterations) {
  torch::jit::Module m("SlowNet");
  torch::manual_seed(0);
  m.register_parameter("w", torch::randn({dim, dim}) / std::sqrt(static_cast<double>(dim)),
                       false);
  m.register_attribute("n", c10::IntType::get(), iterations);
  m.define(R"(
def forward(self, x):
    for i in range(self.n):
        x = torch.tanh(torch.matmul(x, self.w))
    return x
)");
  m.save(path);
}

void MakeBigModel(const std::string& path, int64_t rows, int64_t cols) {
  torch::jit::Module m("BigNet");
  torch::manual_seed(1);
  m.register_parameter("w", torch::randn({rows, cols}), false);
  m.define(R"(
def forward(self, x):
    return torch.matmul(x, self.w)
)");
  m.save(path);
}

void MakeAllocatingModel(const std::string& path) {
  torch::jit::Module m("GreedyNet");
  m.register_parameter("w", torch::ones({4}), false);
  // 2^34 floats = 64 GiB, far past any worker memory limit.
  m.define(R"(
def forward(self, x):
    big = torch.ones([17179869184])
    return x * 0 + big.sum() + self.w.sum()
)");
  m.save(path);
}

void MakeLoopingModel(const std::string& path) {
  torch::jit::Module m("LoopNet");
  m.register_parameter("w", torch::ones({4}), false);
  m.define(R"(
def forward(self, x):
    y = x
    # tanh keeps the sum above -1e30 forever; a loop whose body the JIT
    # could prove useless (y = y + 0) is optimised away.
    while bool(y.sum() > -1.0e30):
        y = torch.tanh(y)
    return y * self.w.sum()
)");
  m.save(path);
}

void CopyWithNanParameter(const std::string& from, const std::string& to, const std::string& name) {
  torch::jit::Module m = torch::jit::load(from);
  torch::NoGradGuard no_grad;
  for (const torch::jit::NameTensor& p : m.named_parameters(/*recurse=*/true)) {
    if (p.name == name) p.value.view({-1})[0] = std::numeric_limits<float>::quiet_NaN();
  }
  m.save(to);
}

}  // namespace compress::testutil
