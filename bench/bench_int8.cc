// model_int8.pt on the reference CNN: top-1 on the 10,000 test images and
// latency of one forward at batch 64 on one thread, against the float
// model, timed alternately in this process (int8_model.h). Prints a
// Markdown table.
//
//   bench_int8 [--rounds N] [--threads N]
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/model/model.h"
#include "server/engine/quant/int8_model.h"

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "bench_int8: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace compress::engine;
  int rounds = 50, threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--rounds") rounds = std::atoi(argv[i + 1]);
    if (flag == "--threads") threads = std::atoi(argv[i + 1]);
  }
  at::set_num_threads(threads);
  const char* dir = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string model_path = std::string(dir ? dir : ".") + "/models/fmnist_cnn.pt";
  auto model = LoadModel(model_path);
  if (!model.ok()) return Fail(model.status());
  auto train = LoadDataset("builtin:fashion-mnist/train", 256);
  if (!train.ok()) return Fail(train.status());
  auto test = LoadDataset("builtin:fashion-mnist/test", 0);
  if (!test.ok()) return Fail(test.status());
  const std::string path =
      (std::filesystem::temp_directory_path() / "bench_int8_model_int8.pt").string();
  std::vector<ModelInputs> batches;
  for (const torch::Tensor& b : train->inputs.first.split(64)) batches.emplace_back(b);
  auto info = SaveInt8Model(*model, batches, path);
  if (!info.ok()) return Fail(info.status());
  auto int8 = LoadModel(path);
  if (!int8.ok()) return Fail(int8.status());
  auto float_top1 = TopOneAccuracy(*model, test->inputs, test->targets);
  auto int8_top1 = TopOneAccuracy(*int8, test->inputs, test->targets);
  if (!float_top1.ok() || !int8_top1.ok()) return Fail(absl::InternalError("accuracy"));
  auto ms = AlternateLatencyMs(*int8, *model, test->inputs.first.narrow(0, 0, 64), 10, rounds);
  if (!ms.ok()) return Fail(ms.status());
  std::printf("## int8 model (reference CNN, engine %s, calibration 256 train images)\n\n",
              info->engine.c_str());
  std::printf("| model | file bytes | top-1 (10k test) | ms / forward, batch 64, %d thread%s "
              "(median of %d, alternating) |\n|---|---:|---:|---:|\n",
              threads, threads == 1 ? "" : "s", rounds);
  std::printf("| float | %lld | %.2f%% | %.3f |\n",
              static_cast<long long>(std::filesystem::file_size(model_path)), *float_top1,
              ms->second);
  std::printf("| int8 (W8A8) | %lld | %.2f%% | %.3f |\n",
              static_cast<long long>(info->file_bytes), *int8_top1, ms->first);
  std::printf("\ndrop %.2f pp, speed-up %.2fx\n", *float_top1 - *int8_top1,
              ms->second / ms->first);
  std::filesystem::remove(path);
  return 0;
}
