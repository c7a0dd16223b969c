// Test-time TorchScript models too big (or too slow) to commit as fixtures.
#ifndef COMPRESS_TESTS_E2E_MODEL_GEN_H_
#define COMPRESS_TESTS_E2E_MODEL_GEN_H_

#include <cstdint>
#include <string>

namespace compress::testutil {

// forward(x) = `iterations` times x <- tanh(x @ w), w: [dim, dim]. Runs for a
// predictable while on an input of shape [dim, dim].
void MakeSlowModel(const std::string& path, int64_t dim, int64_t iterations);

// forward(x) = x @ w with w: [rows, cols] of random floats (rows*cols*4 bytes).
void MakeBigModel(const std::string& path, int64_t rows, int64_t cols);

// Hostile models (tests/e2e/sandbox_test.cc). Both load fine; their forward
// allocates 64 GiB, or never returns.
void MakeAllocatingModel(const std::string& path);
void MakeLoopingModel(const std::string& path);

// A copy of the TorchScript model at `from` whose parameter `name`
// ("conv2.weight") has its first value set to NaN, saved at `to`.
void CopyWithNanParameter(const std::string& from, const std::string& to, const std::string& name);

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_E2E_MODEL_GEN_H_
