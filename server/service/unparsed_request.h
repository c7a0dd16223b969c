// A gRPC server interceptor that gives a request which could not be parsed
// a precise answer. gRPC's callback server answers such a unary or
// server-streaming call with UNIMPLEMENTED and no message (the handler never
// runs), which reads as "no such method". The usual cause is a proto3
// string field holding bytes that are not UTF-8, which protobuf refuses to
// parse; this turns the answer into INVALID_ARGUMENT saying so.
// (Client-streaming uploads are answered by their reactor: services.cc.)
//
//   creators.push_back(UnparsedRequestInterceptorFactory());  // before metrics
#ifndef COMPRESS_SERVICE_UNPARSED_REQUEST_H_
#define COMPRESS_SERVICE_UNPARSED_REQUEST_H_

#include <memory>
#include <string>

#include "grpcpp/support/server_interceptor.h"

namespace compress::service {

// "<method>: the request could not be parsed; ..." for `method`, e.g.
// "/compress.v1.JobService/GetJob".
std::string UnparsedRequestMessage(const std::string& method);

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
UnparsedRequestInterceptorFactory();

}  // namespace compress::service

#endif  // COMPRESS_SERVICE_UNPARSED_REQUEST_H_
