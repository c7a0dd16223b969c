#include "server/service/unparsed_request.h"

#include "absl/strings/str_cat.h"

namespace compress::service {
namespace {

using grpc::experimental::InterceptionHookPoints;

class UnparsedRequest : public grpc::experimental::Interceptor {
 public:
  explicit UnparsedRequest(std::string method) : method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    // Unary and server-streaming calls receive their one request before the
    // handler runs; no message there means it did not parse. (Streams from
    // the client also end with no message, so they are left alone.)
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr && !client_streams_) {
      unparsed_ = true;
    }
    if (unparsed_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      methods->ModifySendStatus(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, UnparsedRequestMessage(method_)));
    }
    methods->Proceed();
  }

  void set_client_streams(bool v) { client_streams_ = v; }

 private:
  std::string method_;
  bool client_streams_ = false;
  bool unparsed_ = false;
};

class Factory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    auto* interceptor = new UnparsedRequest(info->method() ? info->method() : "");
    using Type = grpc::experimental::ServerRpcInfo::Type;
    interceptor->set_client_streams(info->type() == Type::CLIENT_STREAMING ||
                                    info->type() == Type::BIDI_STREAMING);
    return interceptor;
  }
};

}  // namespace

std::string UnparsedRequestMessage(const std::string& method) {
  return absl::StrCat(method.empty() ? "request" : method,
                      ": the request could not be parsed; string fields (ids, names) must be "
                      "valid UTF-8");
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
UnparsedRequestInterceptorFactory() {
  return std::make_unique<Factory>();
}

}  // namespace compress::service
