// Job kinds as the API names them, derived from the proto itself.
//
// Every job kind is one JobKind enum value and one field of JobSpec's `spec`
// oneof with the same name in lower case (JOB_KIND_QUANTIZE <-> quantize),
// and the same field in JobResult's `result` oneof. These functions read that
// correspondence from the descriptors, so adding a kind to the .proto is the
// whole change here: there is no switch over kinds to forget.
// tests/proto/job_kinds_test.cc checks that the proto keeps the convention.
//
//   v1::JobKind kind = v1::KindOf(spec);  // JOB_KIND_UNSPECIFIED when empty
#ifndef COMPRESS_PROTO_JOB_KINDS_H_
#define COMPRESS_PROTO_JOB_KINDS_H_

#include <string>
#include <vector>

#include "compress/v1/compress.pb.h"

namespace compress::v1 {

// The kind a spec asks for; JOB_KIND_UNSPECIFIED when the oneof is empty.
JobKind KindOf(const JobSpec& spec);

// The kind of a result; JOB_KIND_UNSPECIFIED when the oneof is empty.
JobKind KindOf(const JobResult& result);

// The JobSpec/JobResult field name of a kind ("quantize"); empty for
// JOB_KIND_UNSPECIFIED and unknown values.
std::string KindFieldName(JobKind kind);

// Every kind with a JobSpec field, in field order.
std::vector<JobKind> AllJobKinds();

}  // namespace compress::v1

#endif  // COMPRESS_PROTO_JOB_KINDS_H_
