// Non-finite numbers (NaN, ±Inf) in what a job reads and computes
// (torch-including header).
//
// A NaN in a dataset or a weight flows through every Hessian product and
// estimate and comes out as "total trace nan ± nan"; these checks stop a job
// where the number first appears instead, with FAILED_PRECONDITION and a
// message that names it (never a server path: callers pass the names users
// know, "model <id>", "dataset <id>"). Each costs one isfinite pass over the
// tensor; the description of what went wrong is computed only on failure.
//
//   RETURN_IF_ERROR(CheckFiniteExamples(data.inputs, "dataset 3f2a…: inputs"));
//   // FAILED_PRECONDITION "dataset 3f2a…: inputs hold 3 non-finite values
//   //   (NaN; first at example 7)"
//   RETURN_IF_ERROR(CheckFiniteParameters(module, "model 9c1e…"));
//   // "model 9c1e…: parameter fc1.weight holds 12 non-finite values (NaN, +Inf)"
//
// Which cases are errors and which are warnings (README, "Job failures"):
// data, parameters, losses and every computed trace, eigenvalue,
// sensitivity and saliency are errors; non-finite buffers are warnings
// (an attention mask of -Inf is a legitimate buffer; a buffer that does
// poison the output shows up as a non-finite loss, which is an error).
#ifndef COMPRESS_ENGINE_COMMON_FINITE_H_
#define COMPRESS_ENGINE_COMMON_FINITE_H_

#include <torch/script.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace compress::engine {

// "NaN", "+Inf" or "-Inf" for a non-finite value; "finite" otherwise.
std::string NonFiniteName(double value);

// Which non-finite values `tensor` holds and how many: "3 non-finite values
// (NaN, +Inf)", "1 non-finite value (NaN)"; "" when every value is finite
// (always for integer and bool tensors). Works on any device.
std::string DescribeNonFinite(const torch::Tensor& tensor);

// OK when every value of `tensor` (examples along dimension 0, the first
// one numbered `first_example`) is finite; else FAILED_PRECONDITION "<what>
// hold 3 non-finite values (NaN; first at example 7)". An undefined tensor
// is OK.
absl::Status CheckFiniteExamples(const torch::Tensor& tensor, absl::string_view what,
                                 int64_t first_example = 0);

// OK when every parameter of `module` (recursively) is finite; else
// FAILED_PRECONDITION "<model>: parameter fc1.weight holds 12 non-finite
// values (NaN)" for the first such parameter, with `context` appended when
// not empty (" after folding BatchNorm into the convolutions").
absl::Status CheckFiniteParameters(const torch::jit::Module& module, absl::string_view model,
                                   absl::string_view context = "");

// One warning per buffer of `module` holding non-finite values: "model
// 9c1e…: buffer mask holds 16 non-finite values (-Inf)". Empty when all
// are finite.
std::vector<std::string> NonFiniteBuffers(const torch::jit::Module& module,
                                          absl::string_view model);

// OK when `value` is finite; else FAILED_PRECONDITION "<what> is NaN" (or
// "+Inf"/"-Inf") followed by `detail` when not empty (" after 12 probes").
absl::Status CheckFiniteValue(double value, absl::string_view what, absl::string_view detail = "");

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_COMMON_FINITE_H_
