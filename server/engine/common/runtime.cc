#include "server/engine/common/runtime.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <cstdlib>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/version.h>
#include <c10/core/Device.h>
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace compress::engine {
namespace {

// Set by MaybeReexecForBlas in the environment of the re-executed program:
// "chosen" after picking a core type, "reverted" after a failed check.
constexpr char kBlasMarker[] = "COMPRESS_OPENBLAS_CORETYPE_CHOSEN";

}  // namespace

void MaybeReexecForBlas(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  if (std::getenv(kBlasMarker) != nullptr) return;
  const char* coretype = nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    coretype = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2")) {
    coretype = "Haswell";
  }
  if (coretype == nullptr) return;
  setenv("OPENBLAS_CORETYPE", coretype, 1);
  setenv(kBlasMarker, "chosen", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the library's own detection.
  unsetenv("OPENBLAS_CORETYPE");
}

std::string VerifyBlasChoice(char** argv) {
  const char* marker = std::getenv(kBlasMarker);
  if (marker == nullptr) return "";
  if (std::string(marker) == "reverted") {
    return "OPENBLAS_CORETYPE: the chosen kernels failed the float64 check; "
           "using OpenBLAS's own detection";
  }
  at::Tensor a = at::randn({256, 256}, at::kFloat);
  at::Tensor b = at::randn({256, 256}, at::kFloat);
  at::Tensor want = at::mm(a.to(at::kDouble), b.to(at::kDouble));
  const double error =
      (at::mm(a, b).to(at::kDouble) - want).norm().item<double>() / want.norm().item<double>();
  if (error <= 1e-4) {
    return absl::StrCat("OPENBLAS_CORETYPE=", std::getenv("OPENBLAS_CORETYPE"),
                        " chosen at start (sgemm checked against float64: ", error, ")");
  }
  setenv(kBlasMarker, "reverted", 1);
  setenv("OPENBLAS_CORETYPE", "", 1);  // empty: OpenBLAS detects the CPU itself
  execv("/proc/self/exe", argv);
  return "OPENBLAS_CORETYPE check failed and re-exec failed";
}

std::string BlasDescription() {
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  const int64_t n = 512;
  at::Tensor a = at::randn({n, n}, at::kFloat);
  at::Tensor b = at::randn({n, n}, at::kFloat);
  at::mm(a, b);  // warm-up
  const int reps = 5;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) at::mm(a, b);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double gflops = 2.0 * n * n * n * reps / seconds / 1e9;
  return absl::StrCat("OPENBLAS_CORETYPE=", coretype != nullptr ? coretype : "(unset)",
                      std::getenv(kBlasMarker) != nullptr ? " (chosen at start)" : "",
                      ", sgemm ", static_cast<int>(gflops), " GFLOP/s (n = ", n, ", ",
                      at::get_num_threads(), " threads)");
}

std::optional<int> CoresFromCpuQuota(absl::string_view quota_period) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(quota_period), ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &quota) ||
      !absl::SimpleAtoi(parts[1], &period) || quota <= 0 || period <= 0) {
    return std::nullopt;  // "max" (v2) or -1 (v1): no quota
  }
  return static_cast<int>((quota + period - 1) / period);
}

int AvailableCores() {
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  auto read = [](const char* path) {
    std::ifstream in(path);
    std::string text;
    std::getline(in, text);
    return text;
  };
  std::optional<int> quota = CoresFromCpuQuota(read("/sys/fs/cgroup/cpu.max"));
  if (!quota.has_value()) {
    quota = CoresFromCpuQuota(absl::StrCat(read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), " ",
                                           read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")));
  }
  if (quota.has_value() && *quota < cores) cores = *quota;
  return std::max(cores, 1);
}

int DefaultIntraOpThreads(int cores, int cpu_workers) {
  return std::max(1, std::max(cores, 1) / std::max(cpu_workers, 1));
}

int ConfigureThreads(int intra_op_threads, int cpu_workers) {
  if (intra_op_threads <= 0) {
    intra_op_threads = DefaultIntraOpThreads(AvailableCores(), cpu_workers);
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
  return intra_op_threads;
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
