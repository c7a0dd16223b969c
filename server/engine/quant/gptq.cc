#include "server/engine/quant/gptq.h"

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

using torch::indexing::Slice;

absl::Status TorchError(const std::string& what, const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  return absl::InternalError(
      absl::StrCat(what, ": ", c10 != nullptr ? c10->what_without_backtrace() : e.what()));
}

// Images per im2col call: bounds the patch matrix's memory.
constexpr int64_t kConvChunk = 8;

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t columns) : columns_(columns) {}

absl::Status HessianAccumulator::AddRows(const torch::Tensor& rows) {
  if (!rows.defined() || rows.dim() != 2 || rows.size(1) != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("input rows must be [n, ", columns_, "], got ",
                     rows.defined() ? c10::str(rows.sizes()) : "undefined"));
  }
  if (rows.size(0) == 0) return absl::OkStatus();
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor x = rows.detach().to(torch::kCPU, torch::kFloat64);
    torch::Tensor xtx = x.t().matmul(x);
    if (sum_.defined()) {
      sum_.add_(xtx);
    } else {
      sum_ = xtx;
    }
    rows_ += rows.size(0);
  } catch (const std::exception& e) {
    return TorchError("cannot accumulate H", e);
  }
  return absl::OkStatus();
}

absl::Status HessianAccumulator::AddLinearInputs(const torch::Tensor& inputs) {
  if (!inputs.defined() || inputs.dim() < 1 || inputs.size(-1) != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear input must be [..., ", columns_, "], got ",
                     inputs.defined() ? c10::str(inputs.sizes()) : "undefined"));
  }
  return AddRows(inputs.reshape({-1, columns_}));
}

absl::Status HessianAccumulator::AddConv2dInputs(const torch::Tensor& inputs,
                                                 const Conv2dGeometry& g) {
  if (g.groups != 1) {
    return absl::UnimplementedError(
        absl::StrCat("grouped convolution (groups=", g.groups, ") is not supported"));
  }
  if (!inputs.defined() || (inputs.dim() != 3 && inputs.dim() != 4)) {
    return absl::InvalidArgumentError("conv2d input must be [N, C, H, W]");
  }
  torch::Tensor x = inputs.dim() == 3 ? inputs.unsqueeze(0) : inputs;
  if (x.size(1) * g.kernel[0] * g.kernel[1] != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("conv2d input has ", x.size(1), " channels; with a ", g.kernel[0], "x",
                     g.kernel[1], " kernel that is not ", columns_, " columns"));
  }
  try {
    torch::NoGradGuard no_grad;
    for (int64_t begin = 0; begin < x.size(0); begin += kConvChunk) {
      torch::Tensor chunk = x.narrow(0, begin, std::min(kConvChunk, x.size(0) - begin));
      // [n, C·kh·kw, L] with C outermost, like weight.reshape(out, -1).
      torch::Tensor patches =
          at::im2col(chunk.to(torch::kFloat64), g.kernel, g.dilation, g.padding, g.stride);
      RETURN_IF_ERROR(AddRows(patches.permute({0, 2, 1}).reshape({-1, columns_})));
    }
  } catch (const std::exception& e) {
    return TorchError("cannot unfold the conv2d input", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> HessianAccumulator::Hessian() const {
  if (rows_ == 0) {
    return absl::FailedPreconditionError("no layer inputs were accumulated");
  }
  return sum_ * (2.0 / static_cast<double>(rows_));
}

absl::StatusOr<ReconstructionError> OutputError(const torch::Tensor& weight,
                                                const torch::Tensor& approx,
                                                const torch::Tensor& hessian) {
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor w = weight.detach().to(torch::kFloat64).reshape({weight.size(0), -1});
    torch::Tensor q = approx.detach().to(torch::kFloat64).reshape({approx.size(0), -1});
    torch::Tensor h = hessian.detach().to(torch::kFloat64);
    if (w.sizes() != q.sizes() || h.dim() != 2 || h.size(0) != w.size(1) ||
        h.size(1) != w.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weight ", c10::str(weight.sizes()), ", approximation ", c10::str(approx.sizes()),
          " and H ", c10::str(hessian.sizes()), " do not fit together"));
    }
    torch::Tensor d = w - q;
    ReconstructionError e;
    e.absolute = (d.matmul(h) * d).sum().item<double>();
    const double base = (w.matmul(h) * w).sum().item<double>();
    e.relative = base > 0 ? e.absolute / base : (e.absolute > 0 ? INFINITY : 0);
    return e;
  } catch (const std::exception& ex) {
    return TorchError("cannot compute the output error", ex);
  }
}

namespace {

absl::Status ValidateGptqInputs(const torch::Tensor& weight, const torch::Tensor& hessian,
                                const QuantizerSpec& spec, const GptqOptions& options) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (spec.channel_axis != 0) {
    return absl::InvalidArgumentError("GPTQ needs channel_axis 0");
  }
  if (options.block_size < 1 || !(options.damp_percent >= 0)) {
    return absl::InvalidArgumentError("block_size must be ≥ 1 and damp_percent ≥ 0");
  }
  if (!weight.defined() || weight.dim() < 2 || weight.numel() == 0 || !weight.is_floating_point()) {
    return absl::InvalidArgumentError(
        "GPTQ needs a non-empty floating weight with at least 2 dimensions");
  }
  const int64_t cols = weight.numel() / weight.size(0);
  if (!hessian.defined() || hessian.dim() != 2 || hessian.size(0) != cols ||
      hessian.size(1) != cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "H must be [", cols, ", ", cols, "] for a weight of shape ", c10::str(weight.sizes())));
  }
  return absl::OkStatus();
}

// The column sweep's state: the weight as it receives the error feedback,
// the factor that spreads it, and the codes and group parameters so far.
// Columns are in visiting order (act-order permutes them).
struct Sweep {
  const QuantizerSpec* spec = nullptr;
  int64_t rows = 0, cols = 0;
  torch::Tensor w;  // [rows, cols] float64
  torch::Tensor u;  // upper Cholesky factor of (damped H)⁻¹
  torch::Tensor perm, inv_perm;
  std::vector<int64_t> perm_v, inv_v;
  // Per-tensor or per-channel: each column's scale and zero point.
  torch::Tensor col_scale, col_zero;
  // Groups: computed when the sweep reaches a group's first column.
  torch::Tensor group_scale, group_zero;
  std::vector<bool> group_done;
  torch::Tensor codes;  // [rows, cols] float64
};

// Fills the sweep's w, u and permutation from the weight and H: dead
// columns (zero diagonal: inputs that are always 0) get weight 0 and a unit
// diagonal; act-order visits columns by decreasing diagonal; the damping
// adds `damp_percent` of the mean diagonal. FAILED_PRECONDITION when a
// Cholesky factorisation fails.
absl::Status FactorHessian(const torch::Tensor& weight, const torch::Tensor& hessian,
                           const GptqOptions& options, Sweep* s, int64_t* dead_columns) {
  s->w = weight.detach().to(torch::kCPU, torch::kFloat64).reshape({s->rows, s->cols}).clone();
  torch::Tensor h = hessian.detach().to(torch::kCPU, torch::kFloat64).clone();
  torch::Tensor dead = h.diagonal() == 0;
  *dead_columns = dead.sum().item<int64_t>();
  if (*dead_columns > 0) {
    h.diagonal().masked_fill_(dead, 1.0);
    s->w.index_put_({Slice(), dead}, 0.0);
  }
  s->perm = torch::arange(s->cols, torch::kLong);
  if (options.act_order) {
    s->perm = std::get<1>(torch::sort(h.diagonal(), /*stable=*/true, /*dim=*/0,
                                      /*descending=*/true));
    s->w = s->w.index_select(1, s->perm);
    h = h.index_select(0, s->perm).index_select(1, s->perm);
  }
  s->inv_perm = torch::argsort(s->perm);
  h.diagonal().add_(options.damp_percent * h.diagonal().mean().item<double>());

  torch::Tensor chol;
  torch::Tensor info;
  std::tie(chol, info) = torch::linalg_cholesky_ex(h);
  if (info.item<int64_t>() != 0) {
    return absl::FailedPreconditionError(
        "H + damping is not positive definite; raise damp_percent");
  }
  std::tie(s->u, info) = torch::linalg_cholesky_ex(torch::cholesky_inverse(chol), /*upper=*/true);
  if (info.item<int64_t>() != 0) {
    return absl::FailedPreconditionError(
        "H⁻¹ is not numerically positive definite; raise damp_percent");
  }
  s->perm_v.assign(s->perm.data_ptr<int64_t>(), s->perm.data_ptr<int64_t>() + s->cols);
  s->inv_v.assign(s->inv_perm.data_ptr<int64_t>(), s->inv_perm.data_ptr<int64_t>() + s->cols);
  return absl::OkStatus();
}

// Scale and zero point of group `g` from its current columns: those in
// the block [i1, i2) from `w1` (feedback applied up to column i1 + i), later
// ones from w minus the block's pending feedback `err1`.
void ComputeGroupParams(Sweep* s, int64_t g, const torch::Tensor& w1, const torch::Tensor& err1,
                        int64_t i1, int64_t i2, int64_t i) {
  const QuantizerSpec& spec = *s->spec;
  const int64_t begin = g * spec.group_size;
  const int64_t n = std::min(spec.group_size, s->cols - begin);
  torch::Tensor values = torch::empty({s->rows, n}, torch::kFloat64);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t p = s->inv_v[begin + k];
    torch::Tensor v;
    if (p < i2) {
      v = w1.select(1, p - i1);
    } else {
      v = s->w.select(1, p);
      if (i > 0) {
        v = v - err1.narrow(1, 0, i).matmul(s->u.index({Slice(i1, i1 + i), p}));
      }
    }
    values.select(1, k).copy_(v);
  }
  auto [scale, zero] = RowParams(values, spec);
  s->group_scale.select(1, g).copy_(scale);
  s->group_zero.select(1, g).copy_(zero);
  s->group_done[g] = true;
}

// Quantizes the columns [i1, i2) one by one, spreading each column's error
// over the block's later columns, then the block's error over the columns
// after it.
void QuantizeBlock(Sweep* s, int64_t i1, int64_t i2) {
  const QuantizerSpec& spec = *s->spec;
  const bool grouped = spec.granularity == QuantGranularity::kGroup;
  const int64_t count = i2 - i1;
  torch::Tensor w1 = s->w.narrow(1, i1, count).clone();
  torch::Tensor err1 = torch::zeros({s->rows, count}, torch::kFloat64);
  torch::Tensor u1 = s->u.index({Slice(i1, i2), Slice(i1, i2)});
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i1 + i;
    torch::Tensor scale;
    torch::Tensor zero;
    if (grouped) {
      const int64_t g = s->perm_v[j] / spec.group_size;
      if (!s->group_done[g]) ComputeGroupParams(s, g, w1, err1, i1, i2, i);
      scale = s->group_scale.select(1, g).to(torch::kFloat64);
      zero = s->group_zero.select(1, g);
    } else {
      scale = s->col_scale.select(1, j);
      zero = s->col_zero.select(1, j);
    }
    torch::Tensor col = w1.select(1, i);
    torch::Tensor code = QuantizeValues(col, scale, zero, spec);
    torch::Tensor q = (code - zero) * scale;
    s->codes.select(1, j).copy_(code);
    torch::Tensor err = (col - q) / u1.index({i, i});
    w1.narrow(1, i, count - i).sub_(err.unsqueeze(1) * u1.index({i, Slice(i, count)}).unsqueeze(0));
    err1.select(1, i).copy_(err);
  }
  if (i2 < s->cols) {
    s->w.narrow(1, i2, s->cols - i2)
        .sub_(err1.matmul(s->u.index({Slice(i1, i2), Slice(i2, s->cols)})));
  }
}

}  // namespace

absl::StatusOr<GptqResult> GptqQuantize(const torch::Tensor& weight, const torch::Tensor& hessian,
                                        const QuantizerSpec& spec, const GptqOptions& options) {
  RETURN_IF_ERROR(ValidateGptqInputs(weight, hessian, spec, options));
  const std::vector<int64_t> shape(weight.sizes().begin(), weight.sizes().end());
  const bool grouped = spec.granularity == QuantGranularity::kGroup;
  GptqResult result;
  QuantParams params;
  if (!grouped) {
    ASSIGN_OR_RETURN(params, ComputeParams(weight, spec));
  }
  try {
    torch::NoGradGuard no_grad;
    Sweep s;
    s.spec = &spec;
    s.rows = shape[0];
    s.cols = weight.numel() / s.rows;
    RETURN_IF_ERROR(FactorHessian(weight, hessian, options, &s, &result.dead_columns));
    if (!grouped) {
      ASSIGN_OR_RETURN(auto expanded, ExpandParams(params));
      s.col_scale = expanded.first.to(torch::kFloat64).index_select(1, s.perm);
      s.col_zero = expanded.second.to(torch::kFloat64).index_select(1, s.perm);
    }
    const int64_t num_groups = grouped ? (s.cols + spec.group_size - 1) / spec.group_size : 0;
    s.group_scale = torch::zeros({s.rows, std::max<int64_t>(num_groups, 1)}, torch::kFloat32);
    s.group_zero = torch::zeros_like(s.group_scale, torch::kFloat64);
    s.group_done.assign(num_groups, false);
    s.codes = torch::zeros({s.rows, s.cols}, torch::kFloat64);
    for (int64_t i1 = 0; i1 < s.cols; i1 += options.block_size) {
      QuantizeBlock(&s, i1, std::min(i1 + options.block_size, s.cols));
    }

    if (grouped) {
      params.spec = spec;
      params.shape = shape;
      params.scale = s.group_scale.contiguous();
      params.zero_point = s.group_zero.to(torch::kUInt8).contiguous();
    }
    result.quantized.params = params;
    result.quantized.codes =
        s.codes.index_select(1, s.inv_perm).to(torch::kUInt8).reshape(shape).contiguous();
  } catch (const std::exception& e) {
    return TorchError("GPTQ failed", e);
  }
  ASSIGN_OR_RETURN(result.dequantized, Dequantize(result.quantized));
  return result;
}

}  // namespace compress::engine
