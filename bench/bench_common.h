// Helpers shared by the benchmarks (header-only, benchmarks only): timing,
// medians, model specs on the command line, /proc/self/status, and the
// runtime lines every table starts with, and the device the benchmarks run on.
#ifndef COMPRESS_BENCH_BENCH_COMMON_H_
#define COMPRESS_BENCH_BENCH_COMMON_H_

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace compress::bench {

using Clock = std::chrono::steady_clock;

// A model on the command line: MODEL.pt:C,H,W:BATCH[:REPS].
struct Spec {
  std::string path;
  std::vector<int64_t> shape;
  int64_t batch = 0;
  int reps = 0;      // 0: the global default
  std::string name;  // file name without ".pt"
};

// Parses MODEL.pt:C,H,W:BATCH, plus :REPS when `allow_reps`.
inline std::optional<Spec> ParseSpec(const std::string& arg, bool allow_reps) {
  std::vector<std::string> parts;
  std::stringstream ss(arg);
  std::string part;
  while (std::getline(ss, part, ':')) parts.push_back(part);
  if (parts.size() < 3 || parts.size() > (allow_reps ? 4u : 3u)) return std::nullopt;
  Spec spec;
  spec.path = parts[0];
  std::stringstream dims(parts[1]);
  std::string d;
  while (std::getline(dims, d, ',')) spec.shape.push_back(std::stoll(d));
  spec.batch = std::stoll(parts[2]);
  if (parts.size() == 4) spec.reps = std::stoi(parts[3]);
  size_t slash = spec.path.find_last_of('/');
  std::string base = slash == std::string::npos ? spec.path : spec.path.substr(slash + 1);
  size_t dot = base.rfind(".pt");
  spec.name = dot == std::string::npos ? base : base.substr(0, dot);
  if (spec.shape.empty() || spec.batch < 1) return std::nullopt;
  return spec;
}

// A value of /proc/self/status in KiB ("VmHWM", "VmRSS"); -1 if absent.
inline int64_t ProcStatusKib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

inline double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start)
      .count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// float32 2048x2048 matrix product throughput (torch::mm, median of 5 after
// a warm-up), with the current thread count.
inline double SgemmGflops() {
  torch::manual_seed(0);
  torch::Tensor a = torch::rand({2048, 2048});
  torch::Tensor b = torch::rand({2048, 2048});
  torch::Tensor c = torch::mm(a, b);  // warm-up
  std::vector<double> times;
  for (int i = 0; i < 5; ++i) {
    Clock::time_point start = Clock::now();
    c = torch::mm(a, b);
    times.push_back(MsSince(start));
  }
  double flops = 2.0 * 2048.0 * 2048.0 * 2048.0;
  return flops / (Median(times) * 1e-3) / 1e9;
}

// The device of every benchmark run: COMPRESS_BENCH_DEVICE ("cpu" when unset
// or empty; "cuda:N" on a GPU machine, bench/gpu-check.sh).
inline std::string BenchDevice() {
  const char* device = std::getenv("COMPRESS_BENCH_DEVICE");
  return device == nullptr || *device == '\0' ? "cpu" : device;
}

inline bool OnCuda() { return BenchDevice().rfind("cuda", 0) == 0; }

// Waits for the kernels queued on the device (CUDA runs them
// asynchronously), so that a wall-clock time read next covers them.
inline void SyncDevice() {
  if (OnCuda()) torch::cuda::synchronize();
}

// "- device: cpu", or on CUDA the GPU's name. LibTorch's C++ API has no
// device-name call without the CUDA headers (the CPU build lacks them), so
// the name comes from nvidia-smi.
inline void PrintDeviceLine() {
  std::string device = BenchDevice();
  if (OnCuda()) {
    const size_t colon = device.find(':');
    const std::string index = colon == std::string::npos ? "0" : device.substr(colon + 1);
    const std::string command =
        "nvidia-smi --query-gpu=name --format=csv,noheader -i " + index + " 2>/dev/null";
    std::string name;
    if (FILE* pipe = popen(command.c_str(), "r")) {
      char buf[256];
      while (std::fgets(buf, sizeof(buf), pipe) != nullptr) name += buf;
      pclose(pipe);
    }
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
    device += " (" + (name.empty() ? std::string("name unknown") : name) + ", " +
              std::to_string(torch::cuda::device_count()) + " CUDA devices visible)";
  }
  std::printf("- device: %s\n", device.c_str());
}

// The lines every Hessian table starts with: the device, and: LibTorch version, intra-op
// threads, OPENBLAS_CORETYPE, and the sgemm throughput.
inline void PrintRuntimeLines() {
  PrintDeviceLine();
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  std::printf("- LibTorch %s, at::get_num_threads() = %d, OPENBLAS_CORETYPE=%s\n",
              TORCH_VERSION, at::get_num_threads(),
              coretype ? coretype : "unset");
  std::printf("- sgemm 2048x2048 float32 (torch::mm): %.1f GFLOP/s\n",
              SgemmGflops());
  std::fflush(stdout);
}

}  // namespace compress::bench

#endif  // COMPRESS_BENCH_BENCH_COMMON_H_
