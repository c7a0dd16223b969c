// Checks every number and enum a job spec sets, whatever its kind, before a
// kind handler sees it: protobuf keeps an enum value the schema does not
// know (proto3 enums are open), and a double can arrive as NaN or infinity
// (JSON "NaN", "Infinity"). Handlers would read the first as their default
// and carry the second into arithmetic (an Infinity budget cast to int64).
// No spec field means "unbounded" by infinity, so every float must be finite.
//
//   RETURN_IF_ERROR(CheckSpecValues(request.spec));
//   // INVALID_ARGUMENT "spec.analyze.hvp_method: 99 is not a HvpMethod
//   // (known: HVP_METHOD_UNSPECIFIED, HVP_METHOD_EXACT, ...)"
#ifndef COMPRESS_PIPELINE_SPEC_VALUES_H_
#define COMPRESS_PIPELINE_SPEC_VALUES_H_

#include "absl/status/status.h"
#include "compress/v1/compress.pb.h"

namespace compress::pipeline {

// INVALID_ARGUMENT naming the first field (as a path from "spec") whose
// enum value is not declared or whose float/double is NaN or infinite.
absl::Status CheckSpecValues(const compress::v1::JobSpec& spec);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_SPEC_VALUES_H_
