#include "tests/e2e/torch_eval.h"

#include <torch/script.h>

#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/engine/data/dataset.h"

namespace compress::testutil {

absl::StatusOr<double> Top1Accuracy(const std::string& model_path, const std::string& builtin_id,
                                    int64_t examples) {
  absl::StatusOr<engine::LoadedDataset> data = engine::LoadDataset(builtin_id, examples);
  if (!data.ok()) return data.status();
  if (!data->targets.defined()) return absl::InvalidArgumentError(builtin_id + " has no labels");
  try {
    torch::jit::Module model = torch::jit::load(model_path, torch::kCPU);
    model.eval();
    c10::InferenceMode guard;
    const int64_t n = data->inputs.first.size(0);
    int64_t correct = 0;
    for (int64_t start = 0; start < n; start += 250) {
      const int64_t len = std::min<int64_t>(250, n - start);
      std::vector<torch::jit::IValue> inputs = {data->inputs.first.narrow(0, start, len)};
      torch::Tensor logits = model.forward(inputs).toTensor();
      correct += logits.argmax(1).eq(data->targets.narrow(0, start, len)).sum().item<int64_t>();
    }
    return n > 0 ? 100.0 * static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": ", e.what()));
  }
}

}  // namespace compress::testutil
