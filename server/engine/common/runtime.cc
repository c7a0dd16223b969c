#include "server/engine/common/runtime.h"

#include <thread>

#include <ATen/Parallel.h>
#include <torch/version.h>
#include <c10/core/Device.h>
#include <torch/cuda.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace compress::engine {

void ConfigureThreads(int intra_op_threads) {
  if (intra_op_threads <= 0) {
    intra_op_threads = static_cast<int>(std::thread::hardware_concurrency());
    if (intra_op_threads <= 0) intra_op_threads = 1;
  }
  at::set_num_threads(intra_op_threads);
  // Inter-op parallelism would oversubscribe the cores the worker pool
  // already shares; one inter-op thread keeps each job on its intra-op pool.
  static bool interop_set = false;
  if (!interop_set) {
    interop_set = true;
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
      // Already started by an earlier torch call; harmless.
    }
  }
}

std::vector<std::string> AvailableDevices() {
  std::vector<std::string> devices = {"cpu"};
  int n = static_cast<int>(torch::cuda::device_count());
  for (int i = 0; i < n; ++i) devices.push_back(absl::StrCat("cuda:", i));
  return devices;
}

absl::Status ValidateDevice(const std::string& device) {
  if (device == "cpu") return absl::OkStatus();
  if (absl::StartsWith(device, "cuda:")) {
    int index = -1;
    if (absl::SimpleAtoi(device.substr(5), &index) && index >= 0 &&
        index < static_cast<int>(torch::cuda::device_count())) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("device ", device, " is not visible (",
                     torch::cuda::device_count(), " CUDA devices)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device must be auto, cpu or cuda:N, got \"", device, "\""));
}

std::string RuntimeDescription() {
  return absl::StrCat("LibTorch ", TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR,
                      ".", TORCH_VERSION_PATCH, ", ", at::get_num_threads(),
                      " intra-op threads, CUDA devices: ",
                      torch::cuda::device_count());
}

}  // namespace compress::engine
