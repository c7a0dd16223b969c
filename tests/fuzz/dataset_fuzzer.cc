// Fuzzes the dataset readers (server/engine/data/dataset.h,
// dataset_info.h): the input is an uploaded dataset file, a torch.save
// dict (a zip read by LibTorch's pickle_load) or safetensors. Runs what an
// upload runs (DescribeDatasetFile) and what a job runs (LoadDataset), and
// checks that what loads matches what was described.
#include <torch/script.h>

#include <cstddef>
#include <cstdint>

#include "server/engine/data/dataset.h"
#include "server/engine/data/dataset_info.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace engine = compress::engine;
  static auto* file = new compress::fuzz::MemFile();
  const std::string& path = file->Write(data, size);
  auto summary = engine::DescribeDatasetFile(path);
  compress::fuzz::Explain("DescribeDatasetFile", summary.status());
  for (int64_t max_examples : {0, 2}) {
    auto loaded = engine::LoadDataset(path, max_examples);
    compress::fuzz::Explain("LoadDataset", loaded.status());
    if (!loaded.ok()) continue;
    FUZZ_CHECK(summary.ok());
    const torch::Tensor& inputs = loaded->inputs.first;
    FUZZ_CHECK(inputs.defined() && inputs.dim() >= 1);
    const int64_t n = inputs.size(0);
    FUZZ_CHECK(max_examples <= 0 || n <= max_examples);
    if (loaded->targets.defined()) {
      FUZZ_CHECK(loaded->targets.dim() >= 1 && loaded->targets.size(0) == n);
    }
    FUZZ_CHECK(loaded->inputs.named.size() == summary->named_inputs.size());
    // Touch every byte (ASan sees reads past what was allocated).
    if (inputs.numel() > 0) inputs.to(torch::kDouble).sum().item<double>();
    for (const auto& [name, tensor] : loaded->inputs.named) {
      FUZZ_CHECK(tensor.dim() >= 1 && tensor.size(0) == n);
      if (tensor.numel() > 0) tensor.to(torch::kDouble).sum().item<double>();
    }
  }
  return 0;
}
