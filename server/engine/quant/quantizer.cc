#include "server/engine/quant/quantizer.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/util/defaults.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<int64_t> Axis(const std::vector<int64_t>& shape, const QuantizerSpec& spec) {
  const int64_t dims = static_cast<int64_t>(shape.size());
  int64_t axis = spec.channel_axis < 0 ? spec.channel_axis + dims : spec.channel_axis;
  if (dims == 0 || axis < 0 || axis >= dims) {
    return absl::InvalidArgumentError(absl::StrCat("channel_axis ", spec.channel_axis,
                                                   " is not an axis of a tensor of shape ",
                                                   ShapeString(shape)));
  }
  return axis;
}

int64_t NumGroups(int64_t cols, const QuantizerSpec& spec) {
  if (spec.granularity != QuantGranularity::kGroup) return 1;
  return (cols + spec.group_size - 1) / spec.group_size;
}

absl::Status TorchError(const std::string& what, const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  return absl::InternalError(
      absl::StrCat(what, ": ", c10 != nullptr ? c10->what_without_backtrace() : e.what()));
}

}  // namespace

std::string GranularityName(QuantGranularity granularity) {
  switch (granularity) {
    case QuantGranularity::kPerTensor:
      return "per_tensor";
    case QuantGranularity::kPerChannel:
      return "per_channel";
    case QuantGranularity::kGroup:
      return "group";
  }
  return "unknown";
}

absl::StatusOr<QuantGranularity> ParseGranularity(const std::string& name) {
  for (QuantGranularity g :
       {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel, QuantGranularity::kGroup}) {
    if (name == GranularityName(g)) return g;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("granularity \"", name, "\" is not per_tensor, per_channel or group"));
}

absl::Status ValidateSpec(const QuantizerSpec& spec) {
  if (!defaults::IsQuantizedBits(spec.bits)) {
    return absl::InvalidArgumentError(absl::StrCat("bits ", spec.bits, " not in ",
                                                   defaults::kMinBits, "..", defaults::kMaxBits));
  }
  if (spec.granularity == QuantGranularity::kGroup && !defaults::IsGroupSize(spec.group_size)) {
    return absl::InvalidArgumentError(absl::StrCat("group_size ", spec.group_size, " is not ",
                                                   defaults::GroupSizesText()));
  }
  return absl::OkStatus();
}

int64_t MinCode(const QuantizerSpec& spec) { return spec.symmetric ? 1 : 0; }
int64_t MaxCode(const QuantizerSpec& spec) { return (int64_t{1} << spec.bits) - 1; }

absl::StatusOr<std::pair<int64_t, int64_t>> MatrixShape(const std::vector<int64_t>& shape,
                                                        const QuantizerSpec& spec) {
  ASSIGN_OR_RETURN(int64_t axis, Axis(shape, spec));
  int64_t cols = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape ", ShapeString(shape)));
    }
    if (static_cast<int64_t>(i) != axis) cols *= shape[i];
  }
  return std::make_pair(shape[axis], cols);
}

absl::StatusOr<torch::Tensor> ToMatrix(const torch::Tensor& t, const QuantizerSpec& spec) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  ASSIGN_OR_RETURN(int64_t axis, Axis(shape, spec));
  ASSIGN_OR_RETURN(auto rc, MatrixShape(shape, spec));
  try {
    return t.movedim(axis, 0).reshape({rc.first, rc.second});
  } catch (const std::exception& e) {
    return TorchError("cannot view the tensor as a matrix", e);
  }
}

absl::StatusOr<torch::Tensor> FromMatrix(const torch::Tensor& matrix,
                                         const std::vector<int64_t>& shape,
                                         const QuantizerSpec& spec) {
  ASSIGN_OR_RETURN(int64_t axis, Axis(shape, spec));
  std::vector<int64_t> moved = shape;
  moved.erase(moved.begin() + axis);
  moved.insert(moved.begin(), shape[axis]);
  try {
    return matrix.reshape(moved).movedim(0, axis).contiguous();
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("cannot reshape to ", ShapeString(shape)), e);
  }
}

std::pair<torch::Tensor, torch::Tensor> RowParams(const torch::Tensor& matrix,
                                                  const QuantizerSpec& spec) {
  torch::Tensor m = matrix.to(torch::kFloat64);
  torch::Tensor scale;
  torch::Tensor zero_point;
  if (spec.symmetric) {
    const double levels = static_cast<double>((int64_t{1} << (spec.bits - 1)) - 1);
    scale = (m.abs().amax(/*dim=*/1) / levels).to(torch::kFloat32);
    scale = torch::where(scale > 0, scale, torch::ones_like(scale));
    zero_point = torch::full_like(scale, static_cast<double>(int64_t{1} << (spec.bits - 1)),
                                  torch::kFloat64);
  } else {
    const double max_code = static_cast<double>(MaxCode(spec));
    torch::Tensor lo = torch::clamp_max(m.amin(/*dim=*/1), 0.0);
    torch::Tensor hi = torch::clamp_min(m.amax(/*dim=*/1), 0.0);
    scale = ((hi - lo) / max_code).to(torch::kFloat32);
    scale = torch::where(scale > 0, scale, torch::ones_like(scale));
    zero_point = torch::clamp(torch::round(-lo / scale.to(torch::kFloat64)), 0.0, max_code);
  }
  return {scale, zero_point};
}

torch::Tensor QuantizeValues(const torch::Tensor& values, const torch::Tensor& scale,
                             const torch::Tensor& zero_point, const QuantizerSpec& spec) {
  torch::Tensor q = torch::round(values.to(torch::kFloat64) / scale.to(torch::kFloat64)) +
                    zero_point.to(torch::kFloat64);
  return torch::clamp(q, static_cast<double>(MinCode(spec)), static_cast<double>(MaxCode(spec)));
}

absl::StatusOr<QuantParams> ComputeParams(const torch::Tensor& t, const QuantizerSpec& spec) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (!t.defined() || !t.is_floating_point()) {
    return absl::InvalidArgumentError("only floating tensors can be quantized");
  }
  if (t.numel() == 0) {
    return absl::InvalidArgumentError("cannot quantize an empty tensor");
  }
  ASSIGN_OR_RETURN(torch::Tensor matrix, ToMatrix(t.detach(), spec));
  QuantParams params;
  params.spec = spec;
  params.shape.assign(t.sizes().begin(), t.sizes().end());
  try {
    torch::NoGradGuard no_grad;
    if (!torch::isfinite(matrix).all().item<bool>()) {
      return absl::InvalidArgumentError("cannot quantize a tensor with NaN or infinite values");
    }
    const int64_t rows = matrix.size(0);
    const int64_t cols = matrix.size(1);
    torch::Tensor scale;
    torch::Tensor zero_point;
    switch (spec.granularity) {
      case QuantGranularity::kPerTensor: {
        auto [s, z] = RowParams(matrix.reshape({1, -1}), spec);
        scale = s.reshape({1, 1});
        zero_point = z.reshape({1, 1});
        break;
      }
      case QuantGranularity::kPerChannel: {
        auto [s, z] = RowParams(matrix, spec);
        scale = s.reshape({rows, 1});
        zero_point = z.reshape({rows, 1});
        break;
      }
      case QuantGranularity::kGroup: {
        std::vector<torch::Tensor> scales;
        std::vector<torch::Tensor> zeros;
        for (int64_t g = 0; g < NumGroups(cols, spec); ++g) {
          const int64_t begin = g * spec.group_size;
          auto [s, z] =
              RowParams(matrix.narrow(1, begin, std::min(spec.group_size, cols - begin)), spec);
          scales.push_back(s);
          zeros.push_back(z);
        }
        scale = torch::stack(scales, /*dim=*/1);
        zero_point = torch::stack(zeros, /*dim=*/1);
        break;
      }
    }
    params.scale = scale.contiguous();
    params.zero_point = zero_point.to(torch::kUInt8).contiguous();
  } catch (const std::exception& e) {
    return TorchError("cannot compute quantization parameters", e);
  }
  return params;
}

absl::StatusOr<std::pair<torch::Tensor, torch::Tensor>> ExpandParams(const QuantParams& params) {
  RETURN_IF_ERROR(ValidateSpec(params.spec));
  ASSIGN_OR_RETURN(auto rc, MatrixShape(params.shape, params.spec));
  const auto [rows, cols] = rc;
  const int64_t groups = NumGroups(cols, params.spec);
  const int64_t want_rows = params.spec.granularity == QuantGranularity::kPerTensor ? 1 : rows;
  for (const torch::Tensor* t : {&params.scale, &params.zero_point}) {
    if (!t->defined() || t->dim() != 2 || t->size(0) != want_rows || t->size(1) != groups) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quantization parameters must be [", want_rows, ", ", groups, "] for a tensor of shape ",
          ShapeString(params.shape), " (", GranularityName(params.spec.granularity), ")"));
    }
  }
  try {
    torch::Tensor scale = params.scale.to(torch::kFloat32);
    torch::Tensor zero_point = params.zero_point.to(torch::kFloat32);
    if (params.spec.granularity == QuantGranularity::kGroup) {
      scale = scale.repeat_interleave(params.spec.group_size, /*dim=*/1).narrow(1, 0, cols);
      zero_point =
          zero_point.repeat_interleave(params.spec.group_size, /*dim=*/1).narrow(1, 0, cols);
    }
    return std::make_pair(scale.expand({rows, cols}), zero_point.expand({rows, cols}));
  } catch (const std::exception& e) {
    return TorchError("cannot expand quantization parameters", e);
  }
}

absl::StatusOr<QuantizedTensor> QuantizeWithParams(const torch::Tensor& t,
                                                   const QuantParams& params) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  if (shape != params.shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor of shape ", ShapeString(shape),
                                                   " does not match parameters for ",
                                                   ShapeString(params.shape)));
  }
  ASSIGN_OR_RETURN(auto expanded, ExpandParams(params));
  ASSIGN_OR_RETURN(torch::Tensor matrix, ToMatrix(t.detach(), params.spec));
  QuantizedTensor q;
  q.params = params;
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor codes =
        QuantizeValues(matrix, expanded.first, expanded.second, params.spec).to(torch::kUInt8);
    ASSIGN_OR_RETURN(q.codes, FromMatrix(codes, shape, params.spec));
  } catch (const std::exception& e) {
    return TorchError("cannot quantize", e);
  }
  return q;
}

absl::StatusOr<QuantizedTensor> Quantize(const torch::Tensor& t, const QuantizerSpec& spec) {
  ASSIGN_OR_RETURN(QuantParams params, ComputeParams(t, spec));
  return QuantizeWithParams(t, params);
}

absl::StatusOr<torch::Tensor> Dequantize(const QuantizedTensor& q) {
  if (!q.codes.defined() || q.codes.scalar_type() != torch::kUInt8 ||
      std::vector<int64_t>(q.codes.sizes().begin(), q.codes.sizes().end()) != q.params.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("codes must be uint8 of shape ", ShapeString(q.params.shape)));
  }
  ASSIGN_OR_RETURN(auto expanded, ExpandParams(q.params));
  ASSIGN_OR_RETURN(torch::Tensor codes, ToMatrix(q.codes, q.params.spec));
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor w = (codes.to(torch::kFloat32) - expanded.second) * expanded.first;
    return FromMatrix(w, q.params.shape, q.params.spec);
  } catch (const std::exception& e) {
    return TorchError("cannot dequantize", e);
  }
}

}  // namespace compress::engine
