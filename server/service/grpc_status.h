// The one place absl::Status becomes grpc::Status (codes share numbering).
#ifndef COMPRESS_SERVICE_GRPC_STATUS_H_
#define COMPRESS_SERVICE_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace compress::service {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_GRPC_STATUS_H_
