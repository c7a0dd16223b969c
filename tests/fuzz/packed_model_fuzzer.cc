// Fuzzes the packed quantized model reader (server/engine/quant/packing.h,
// ReadPackedModel): the input is a whole packed file, a safetensors header
// whose __metadata__ holds the manifest JSON, then the data. What reads
// back is dequantized, as the QUANTIZE result and its users do.
#include <torch/script.h>

#include <cstddef>
#include <cstdint>

#include "server/engine/quant/packing.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace engine = compress::engine;
  static auto* file = new compress::fuzz::MemFile();
  auto model = engine::ReadPackedModel(file->Write(data, size));
  compress::fuzz::Explain("ReadPackedModel", model.status());
  if (!model.ok()) return 0;
  for (const auto& [layer, q] : model->layers) {
    FUZZ_CHECK(q.codes.defined() && q.codes.sizes().vec() == q.params.shape);
  }
  auto tensors = engine::DequantizedTensors(*model);
  compress::fuzz::Explain("DequantizedTensors", tensors.status());
  if (!tensors.ok()) return 0;
  for (const auto& [name, t] : *tensors) {
    if (t.numel() > 0) t.to(torch::kDouble).sum().item<double>();
  }
  return 0;
}
