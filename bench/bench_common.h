// Helpers shared by the Hessian benchmarks (header-only, benchmarks only):
// timing, medians, and the runtime line every table starts with.
#ifndef COMPRESS_BENCH_BENCH_COMMON_H_
#define COMPRESS_BENCH_BENCH_COMMON_H_

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace compress::bench {

using Clock = std::chrono::steady_clock;

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

// The two lines every Hessian table starts with: LibTorch version, intra-op
// threads, OPENBLAS_CORETYPE, and the sgemm throughput.
inline void PrintRuntimeLines() {
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
