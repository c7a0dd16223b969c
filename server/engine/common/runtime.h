// Process-wide LibTorch runtime settings and device discovery.
#ifndef COMPRESS_ENGINE_COMMON_RUNTIME_H_
#define COMPRESS_ENGINE_COMMON_RUNTIME_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace compress::engine {

// Sets LibTorch intra-op and inter-op thread counts. Call once at start,
// before any model runs. `intra_op_threads` <= 0 means all cores.
void ConfigureThreads(int intra_op_threads);

// "cpu" plus "cuda:0".. for each visible CUDA device.
std::vector<std::string> AvailableDevices();

// OK for "cpu" or "cuda:N" with N visible; INVALID_ARGUMENT otherwise.
absl::Status ValidateDevice(const std::string& device);

// OpenBLAS picks its kernels when the process loads, from OPENBLAS_CORETYPE
// or its own CPU detection, which on some VMs falls back to the generic
// "Prescott" kernels (measured on the 2-core dev VM: 45 GFLOP/s sgemm
// instead of 259 with SkylakeX). Call first thing in main(): when
// OPENBLAS_CORETYPE is unset and the CPU has AVX-512 (AVX2), it sets
// SkylakeX (Haswell) and re-executes the program (/proc/self/exe, same
// argv), once. A value the environment already sets is never overridden.
void MaybeReexecForBlas(char** argv);

// After MaybeReexecForBlas: checks a float32 matrix product against float64
// (relative error ≤ 1e-4). If the chosen core type computes wrong results,
// re-executes once more with OPENBLAS_CORETYPE unset-equivalent (the
// library's own detection) and returns a description of what happened;
// "" when nothing was chosen or the check passed.
std::string VerifyBlasChoice(char** argv);

// OPENBLAS_CORETYPE as the process sees it ("" when unset) and a measured
// sgemm rate: "OPENBLAS_CORETYPE=SkylakeX (chosen at start), sgemm 259
// GFLOP/s (n = 512)". Takes ~10 ms.
std::string BlasDescription();

// "LibTorch 1.13.1, OpenBLAS ..., N threads" for reports and logs.
std::string RuntimeDescription();

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_RUNTIME_H_
