// Process-wide LibTorch runtime settings and device discovery.
#ifndef COMPRESS_ENGINE_COMMON_RUNTIME_H_
#define COMPRESS_ENGINE_COMMON_RUNTIME_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace compress::engine {

// Cores this process may use: the CPUs of its affinity mask (taskset, a
// container's cpuset), capped by a cgroup CPU quota rounded up (cgroup v2
// /sys/fs/cgroup/cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us); at
// least 1. (std::thread::hardware_concurrency counts the host's cores, so a
// pod limited to 4 CPUs on a 64-core node would run 64 threads.)
int AvailableCores();

// The cores a cgroup v2 cpu.max line ("QUOTA PERIOD") allows, rounded up:
// "250000 100000" -> 3. nullopt for "max 100000" (no quota) or a line that
// does not parse. For v1, pass "QUOTA PERIOD" from the two files (a quota
// of -1 is no quota).
std::optional<int> CoresFromCpuQuota(absl::string_view quota_period);

// Intra-op threads per job when the operator gives none: `cores` split
// between the `cpu_workers` jobs that may run at once (each job's parallel
// regions get their own threads, so 2 jobs x all cores oversubscribes 2x);
// at least 1.
int DefaultIntraOpThreads(int cores, int cpu_workers);

// Sets LibTorch intra-op and inter-op thread counts and returns the
// intra-op count. Call once at start, before any model runs.
// `intra_op_threads` <= 0 means DefaultIntraOpThreads(AvailableCores(),
// cpu_workers).
int ConfigureThreads(int intra_op_threads, int cpu_workers = 1);

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
