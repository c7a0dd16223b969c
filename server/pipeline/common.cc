#include "server/pipeline/common.h"

#include "google/protobuf/util/json_util.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

engine::LossKind LossFromProto(v1::LossKind loss) {
  switch (loss) {
    case v1::LOSS_KIND_CROSS_ENTROPY:
      return engine::LossKind::kCrossEntropy;
    case v1::LOSS_KIND_PSEUDO_LABEL:
      return engine::LossKind::kPseudoLabel;
    case v1::LOSS_KIND_MSE:
      return engine::LossKind::kMse;
    default:
      return engine::LossKind::kAuto;
  }
}

v1::LossKind LossToProto(engine::LossKind loss) {
  switch (loss) {
    case engine::LossKind::kCrossEntropy:
      return v1::LOSS_KIND_CROSS_ENTROPY;
    case engine::LossKind::kPseudoLabel:
      return v1::LOSS_KIND_PSEUDO_LABEL;
    case engine::LossKind::kMse:
      return v1::LOSS_KIND_MSE;
    default:
      return v1::LOSS_KIND_UNSPECIFIED;
  }
}

std::string ProtoJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

}  // namespace compress::pipeline
