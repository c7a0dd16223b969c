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

// "LibTorch 1.13.1, OpenBLAS ..., N threads" for reports and logs.
std::string RuntimeDescription();

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_RUNTIME_H_
