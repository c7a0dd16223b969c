// Hessian-vector product cost and accuracy per HVP method.
//
//   bench_hessian [--reps=N] MODEL:SHAPE:BATCH[:REPS] ...
//   (on the device COMPRESS_BENCH_DEVICE names, default cpu)
//   e.g. bench_hessian models/fmnist_cnn.pt:1,28,28:64
//                      bench/out/resnet18.pt:3,224,224:8:2  (one command)
//
// For each model: random inputs (uniform [0,1), seeded) of [BATCH, SHAPE] and
// random integer labels in [0, num_classes) (num_classes from one forward
// pass), one calibration batch, cross-entropy. Measures one gradient
// (RunForward + loss + autograd::grad over the trainable parameters) and one
// HVP per method (exact double backward, finite differences: forward and
// central in float64, forward in the model dtype; Gauss-Newton), each the
// median of REPS repetitions after one warm-up, plus each method's relative error
// ‖Hv − Hv_exact‖ / ‖Hv_exact‖ on the same Gaussian vector v, and ‖Hv‖
// (float64 accumulation; ‖v‖ ≈ sqrt(#params)). "setup ms" is
// CreateHvpOperator (for finite differences: the module copy and the base
// gradient). Exact and Gauss-Newton cache the batch's first-order graph
// (max_cached_batches = 1), so after the warm-up an HVP is only the extra
// backward passes. Prints Markdown.
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_common.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/options.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model.h"

namespace compress::engine {
namespace {

using bench::Clock;
using bench::ParseSpec;
using bench::Spec;
using bench::Median;
using bench::MsSince;

// Median time of `reps` calls after one warm-up call; stops at the first
// failure.
absl::StatusOr<double> TimeIt(int reps, const std::function<absl::Status()>& f) {
  absl::Status s = f();
  if (!s.ok()) return s;
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    Clock::time_point start = Clock::now();
    s = f();
    if (!s.ok()) return s;
    bench::SyncDevice();
    times.push_back(MsSince(start));
  }
  return Median(times);
}

// ‖a − b‖ / ‖b‖, in float64 tensor by tensor.
double RelativeError(const ParamSet& a, const ParamSet& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    torch::Tensor bd = b.tensors[i].to(torch::kFloat64);
    torch::Tensor ad = a.tensors[i].to(torch::kFloat64);
    diff += (ad - bd).pow(2).sum().item<double>();
    ref += bd.pow(2).sum().item<double>();
  }
  return std::sqrt(diff) / std::sqrt(ref);
}

struct Method {
  std::string label;
  HvpOptions options;
};

std::string Fmt(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, x);
  return buf;
}

absl::Status RunModel(const Spec& spec, int reps,
                      std::vector<std::string>* notes) {
  absl::StatusOr<torch::jit::Module> loaded = LoadModel(spec.path, bench::BenchDevice());
  if (!loaded.ok()) return loaded.status();
  torch::jit::Module module = *loaded;

  std::vector<int64_t> shape = {spec.batch};
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  at::Generator gen = MakeGenerator(1234);
  // Drawn on the CPU (the same numbers on every device), then moved.
  torch::Tensor inputs = torch::rand(shape, gen).to(torch::Device(bench::BenchDevice()));
  int64_t classes = 0;
  {
    torch::NoGradGuard no_grad;
    absl::StatusOr<torch::Tensor> out = RunForward(module, inputs.narrow(0, 0, 1));
    if (!out.ok()) return out.status();
    classes = out->size(1);
  }
  torch::Tensor targets = torch::randint(0, classes, {spec.batch}, gen, torch::kLong)
                              .to(torch::Device(bench::BenchDevice()));
  absl::StatusOr<PreparedBatches> prepared = PrepareBatches(
      module, inputs, targets, spec.batch, LossKind::kCrossEntropy);
  if (!prepared.ok()) return prepared.status();

  absl::StatusOr<ParamSet> params = CollectParameters(module);
  if (!params.ok()) return params.status();
  std::string dtype = DtypeName(params->tensors[0].scalar_type());

  // One gradient: forward + loss + backward w.r.t. the parameters.
  const Batch& batch = prepared->batches[0];
  std::vector<ParamSet> grads;  // warm-up and last repetition
  absl::StatusOr<double> grad_ms = TimeIt(reps, [&]() -> absl::Status {
    torch::AutoGradMode grad_mode(true);
    absl::StatusOr<torch::Tensor> out = RunForward(module, batch.inputs);
    if (!out.ok()) return out.status();
    absl::StatusOr<torch::Tensor> loss =
        ComputeLoss(prepared->loss, *out, batch.targets);
    if (!loss.ok()) return loss.status();
    torch::autograd::variable_list g =
        torch::autograd::grad({*loss}, params->tensors);
    if (grads.size() == 2) grads.pop_back();
    grads.push_back(ParamSet{params->layout, g});
    return absl::OkStatus();
  });
  if (!grad_ms.ok()) return grad_ms.status();

  if (grads.size() == 2) {
    notes->push_back(spec.name + ": two gradients at the same parameters " +
                     "differ by " + Fmt("%.1e", RelativeError(grads[1], grads[0])) +
                     " relative (‖g‖ = " + Fmt("%.3e", Norm(grads[0])) + ")");
  }
  std::vector<Method> methods;
  {
    Method m{"exact (double backward)", {}};
    m.options.method = HvpMethod::kExact;
    methods.push_back(m);
    m = {"finite diff. forward, float64", {}};
    m.options.method = HvpMethod::kFiniteDifference;
    m.options.fd_in_float64 = true;
    methods.push_back(m);
    m = {"finite diff. central, float64", {}};
    m.options.method = HvpMethod::kFiniteDifference;
    m.options.fd_scheme = FiniteDifferenceScheme::kCentral;
    m.options.fd_in_float64 = true;
    methods.push_back(m);
    m = {"finite diff. forward, " + dtype, {}};
    m.options.method = HvpMethod::kFiniteDifference;
    m.options.fd_in_float64 = false;
    methods.push_back(m);
    m = {"Gauss-Newton", {}};
    m.options.method = HvpMethod::kGaussNewton;
    methods.push_back(m);
  }

  at::Generator vgen = MakeGenerator(99);
  ParamSet v = GaussianLike(*params, vgen);
  std::optional<ParamSet> exact_hv;
  std::string label =
      spec.name + " (" + std::to_string(params->layout->numel) + " params)";
  for (const Method& method : methods) {
    std::string row = "| " + label + " | " + std::to_string(spec.batch) +
                      " | " + Fmt("%.1f", *grad_ms) + " | " + method.label +
                      " | ";
    Clock::time_point setup_start = Clock::now();
    absl::StatusOr<std::unique_ptr<HvpOperator>> op =
        CreateHvpOperator(module, *prepared, method.options);
    double setup_ms = MsSince(setup_start);
    if (!op.ok()) {
      std::printf("%sfailed: %s | | | | |\n", row.c_str(),
                  op.status().ToString().c_str());
      std::fflush(stdout);
      continue;
    }
    ParamSet hv;
    absl::StatusOr<double> hvp_ms = TimeIt(reps, [&]() -> absl::Status {
      absl::StatusOr<ParamSet> r = (*op)->Apply(v);
      if (!r.ok()) return r.status();
      hv = *std::move(r);
      return absl::OkStatus();
    });
    op->reset();  // free cached graphs / the module copy before the next one
    if (!hvp_ms.ok()) {
      std::printf("%sfailed: %s | | | | %.1f |\n", row.c_str(),
                  hvp_ms.status().ToString().c_str(), setup_ms);
      std::fflush(stdout);
      continue;
    }
    std::string err;
    if (method.options.method == HvpMethod::kExact) {
      exact_hv = hv;
      err = "0 (reference)";
    } else if (exact_hv.has_value()) {
      err = Fmt("%.2e", RelativeError(hv, *exact_hv));
    } else {
      err = "n/a (no exact)";
    }
    std::printf("%s%.1f | %.2f | %s | %.3e | %.1f |\n", row.c_str(), *hvp_ms,
                *hvp_ms / *grad_ms, err.c_str(), Norm(hv), setup_ms);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  int reps = 3;
  std::vector<Spec> specs;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--reps=", 0) == 0) {
      reps = std::max(1, std::atoi(arg.c_str() + 7));
      continue;
    }
    std::optional<Spec> spec = ParseSpec(arg, /*allow_reps=*/true);
    if (!spec) {
      std::fprintf(stderr,
                   "usage: %s [--reps=N] MODEL.pt:C,H,W:BATCH[:REPS] ...\n"
                   "bad argument: %s\n",
                   argv[0], arg.c_str());
      return 2;
    }
    specs.push_back(*spec);
  }
  if (specs.empty()) {
    std::fprintf(stderr, "usage: %s [--reps=N] MODEL.pt:C,H,W:BATCH[:REPS] ...\n",
                 argv[0]);
    return 2;
  }
  std::printf("## Hessian-vector products\n\n");
  bench::PrintRuntimeLines();
  std::printf(
      "- times: median of REPS after one warm-up; one calibration batch, "
      "cross-entropy on random labels; exact and Gauss-Newton reuse the "
      "cached first-order graph\n\n");
  std::printf(
      "| model | batch | gradient ms | method | HVP ms | HVP/gradient | rel. "
      "error vs exact | ‖Hv‖ | setup ms |\n");
  std::printf("|---|---:|---:|---|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
  int failures = 0;
  std::vector<std::string> notes;
  for (const Spec& spec : specs) {
    absl::Status s = RunModel(spec, spec.reps > 0 ? spec.reps : reps, &notes);
    if (!s.ok()) {
      std::printf("| %s | %lld | failed: %s | | | | | | |\n", spec.name.c_str(),
                  (long long)spec.batch, s.ToString().c_str());
      std::fflush(stdout);
      ++failures;
    }
  }
  if (!notes.empty()) std::printf("\n");
  for (const std::string& note : notes) std::printf("- %s\n", note.c_str());
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) { return compress::engine::Main(argc, argv); }
