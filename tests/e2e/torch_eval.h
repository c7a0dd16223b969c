// An independent top-1 check for e2e tests: loads a downloaded TorchScript
// file with torch::jit::load (as a user would) and scores it on builtin data
// read by the engine's IDX loader. Keeps LibTorch out of e2e_test.cc.
#ifndef COMPRESS_TESTS_E2E_TORCH_EVAL_H_
#define COMPRESS_TESTS_E2E_TORCH_EVAL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace compress::testutil {

// Top-1 accuracy in percent of the model at `model_path` on the first
// `examples` examples of `builtin_id` ("builtin:fashion-mnist/test"), on the
// CPU. An error when the file does not load or the data do not fit.
absl::StatusOr<double> Top1Accuracy(const std::string& model_path, const std::string& builtin_id,
                                    int64_t examples);

}  // namespace compress::testutil

#endif  // COMPRESS_TESTS_E2E_TORCH_EVAL_H_
