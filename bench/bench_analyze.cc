// Whole-analysis benchmarks of the Hessian engine (the ANALYZE issue's).
//
//   bench_analyze traces MODEL.pt:C,H,W:BATCH [--all-probes=N]
//                 [--layer-probes=M] [--threads=T] [--per-layer]
//     Per-layer Hutchinson traces of every layer, two ways, on one exact HVP
//     operator (random inputs, uniform [0,1) seeded, random labels): the
//     all-layers estimator (TraceOptions::exact_per_layer = false: one
//     Rademacher probe over all parameters per HVP gives every layer's
//     v_lᵀ(Hv)_l) with N probes and with M probes, and the exact per-layer
//     loop (exact_per_layer = true: probes zero outside one layer, M probes
//     per layer, layers × M HVPs). Probe counts are fixed (min = max), so
//     the tolerance never stops a run. One warm-up product builds the cached
//     first-order graph first, so no mode pays for it. Prints the cost of
//     each and their agreement per layer: z = |t_a − t_b| / sqrt(se_a² +
//     se_b²), the relative difference against the exact per-layer trace and
//     the ratio of standard errors.
//
//   bench_analyze memory MODEL.pt:C,H,W:BATCH [--probes=2] [--threads=T]
//                 [--classes=10] [--methods=exact,finite_difference,...]
//     Peak resident memory (VmHWM, printed by the child) of one ANALYZE (RunAnalysis,
//     traces only, min_probes = max_probes = --probes) per HVP method, each
//     in a fresh child process (this binary's `analyze` mode), after a
//     baseline child that only loads the model and the data. The data
//     (random inputs, random labels in [0, classes)) are written once as a
//     torch.save dict under bench/out/.
//
//   bench_analyze analyze --model=M --data=D [--method=exact] [--samples=0]
//                 [--batch=64] [--threads=T] [--no-traces] [--trace-tol=0.05]
//                 [--trace-min=10] [--trace-max=200] [--eigen] [--eig-tol=1e-3]
//                 [--eig-max=100] [--eig-k=1] [--lanczos] [--density]
//                 [--steps=90] [--seed=0]
//     One RunAnalysis; prints one JSON line (wall time, products, results,
//     VmHWM; with --eigen and --density also the eigenvalues, the quadrature
//     and the bulk/outlier split). The child of `memory` and of bench/compare_pytorch.py.
//
//   bench_analyze load --model=M --data=D [--batch=64] [--threads=T]
//     Loads the model and the data and prepares the batches, nothing else;
//     one JSON line (the memory baseline).
//
//   bench_analyze runtime [--threads=T]
//     Prints the runtime lines of the tables (LibTorch, threads,
//     OPENBLAS_CORETYPE, sgemm GFLOP/s); for bench/compare_pytorch.py.
//
// Threads: LibTorch intra-op threads are set with ConfigureThreads(--threads,
// default 2) before anything runs. Prints Markdown (traces, memory).
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_common.h"
#include "nlohmann/json.hpp"
#include "server/engine/common/runtime.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/estimators.h"
#include "server/engine/hessian/hvp.h"
#include "server/engine/hessian/options.h"
#include "server/engine/hessian/param_set.h"
#include "server/engine/model/model.h"

extern char** environ;

namespace compress::engine {
namespace {

using bench::Clock;
using bench::Median;
using bench::MsSince;
using bench::ParseSpec;
using bench::ProcStatusKib;
using bench::Spec;

// --key=value flags after the mode; a bare --key is "1".
class Flags {
 public:
  Flags(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) {
        positional_.push_back(arg);
        continue;
      }
      size_t eq = arg.find('=');
      if (eq == std::string::npos) {
        values_[arg.substr(2)] = "1";
      } else {
        values_[arg.substr(2, eq - 2)] = arg.substr(eq + 1);
      }
    }
  }
  std::string Get(const std::string& key, const std::string& def) const {
    auto it = values_.find(key);
    return it == values_.end() ? def : it->second;
  }
  int64_t Int(const std::string& key, int64_t def) const {
    auto it = values_.find(key);
    return it == values_.end() ? def : std::stoll(it->second);
  }
  double Double(const std::string& key, double def) const {
    auto it = values_.find(key);
    return it == values_.end() ? def : std::stod(it->second);
  }
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

std::string Fmt(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, x);
  return buf;
}

int64_t DtypeBytes(const std::string& dtype) {
  if (dtype == "float64") return 8;
  if (dtype == "float16" || dtype == "bfloat16") return 2;
  return 4;
}

absl::StatusOr<HvpMethod> ParseMethod(const std::string& name) {
  for (HvpMethod m : {HvpMethod::kExact, HvpMethod::kFiniteDifference,
                      HvpMethod::kGaussNewton, HvpMethod::kFisherDiagonal}) {
    if (name == HvpMethodName(m)) return m;
  }
  return absl::InvalidArgumentError("unknown HVP method " + name);
}

// Random inputs of [batch, shape] and random labels in [0, classes) (classes
// from one forward pass when `classes` <= 0).
absl::StatusOr<std::pair<torch::Tensor, torch::Tensor>> RandomData(
    torch::jit::Module& module, const Spec& spec, int64_t classes) {
  std::vector<int64_t> shape = {spec.batch};
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  at::Generator gen = MakeGenerator(1234);
  torch::Tensor inputs = torch::rand(shape, gen);
  if (classes <= 0) {
    torch::NoGradGuard no_grad;
    absl::StatusOr<torch::Tensor> out =
        RunForward(module, inputs.narrow(0, 0, 1));
    if (!out.ok()) return out.status();
    classes = out->size(1);
  }
  torch::Tensor targets =
      torch::randint(0, classes, {spec.batch}, gen, torch::kLong);
  return std::make_pair(inputs, targets);
}

// ------------------------------------------------------------- traces

struct TraceRun {
  std::string label;
  int probes = 0;
  TraceResult result;
  double seconds = 0;
};

absl::StatusOr<TraceRun> RunTraces(HvpOperator& op, bool exact_per_layer,
                                   int probes, uint64_t seed,
                                   const std::string& label) {
  TraceOptions options;
  options.exact_per_layer = exact_per_layer;
  options.min_probes = probes;
  options.max_probes = probes;
  at::Generator gen = MakeGenerator(seed);
  Clock::time_point start = Clock::now();
  absl::StatusOr<TraceResult> r = EstimateLayerTraces(op, options, gen);
  if (!r.ok()) return r.status();
  TraceRun run;
  run.label = label;
  run.probes = probes;
  run.result = *std::move(r);
  run.seconds = MsSince(start) / 1000;
  return run;
}

struct Agreement {
  int layers = 0;
  int within2 = 0;
  int within3 = 0;
  double median_rel_diff = 0;
  double median_se_ratio = 0;  // se_a / se_b
};

Agreement Compare(const TraceResult& a, const TraceResult& b) {
  Agreement out;
  std::vector<double> rel, ratio;
  for (size_t g = 0; g < a.layers.size(); ++g) {
    const LayerTrace& x = a.layers[g];
    const LayerTrace& y = b.layers[g];
    ++out.layers;
    const double diff = std::abs(x.trace - y.trace);
    const double se = std::sqrt(x.std_error * x.std_error +
                                y.std_error * y.std_error);
    const double z = se > 0 ? diff / se : (diff == 0 ? 0 : INFINITY);
    out.within2 += z <= 2;
    out.within3 += z <= 3;
    if (y.trace != 0) rel.push_back(diff / std::abs(y.trace));
    if (y.std_error > 0) ratio.push_back(x.std_error / y.std_error);
  }
  out.median_rel_diff = Median(rel);
  out.median_se_ratio = Median(ratio);
  return out;
}

int CountConverged(const TraceResult& r, double tolerance) {
  int n = 0;
  for (const LayerTrace& t : r.layers) {
    n += t.trace != 0 && t.std_error / std::abs(t.trace) <= tolerance;
  }
  return n;
}

int TracesMain(const Flags& flags) {
  if (flags.positional().size() != 1) {
    std::fprintf(stderr, "usage: bench_analyze traces MODEL.pt:C,H,W:BATCH "
                         "[--all-probes=N] [--layer-probes=M] [--threads=T]\n");
    return 2;
  }
  std::optional<Spec> spec = ParseSpec(flags.positional()[0], /*allow_reps=*/false);
  if (!spec) {
    std::fprintf(stderr, "bad model spec %s\n", flags.positional()[0].c_str());
    return 2;
  }
  const int all_probes = static_cast<int>(flags.Int("all-probes", 200));
  const int layer_probes = static_cast<int>(flags.Int("layer-probes", 10));
  ConfigureThreads(static_cast<int>(flags.Int("threads", 2)));

  std::printf("## Per-layer traces: all layers per probe vs exact per layer\n\n");
  bench::PrintRuntimeLines();

  Clock::time_point total_start = Clock::now();
  absl::StatusOr<torch::jit::Module> loaded = LoadModel(spec->path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  torch::jit::Module module = *loaded;
  auto data = RandomData(module, *spec, 0);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<PreparedBatches> prepared =
      PrepareBatches(module, data->first, data->second, spec->batch,
                     LossKind::kCrossEntropy);
  if (!prepared.ok()) {
    std::fprintf(stderr, "%s\n", prepared.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<HvpOperator>> op =
      CreateHvpOperator(module, *prepared, HvpOptions{});
  if (!op.ok()) {
    std::fprintf(stderr, "%s\n", op.status().ToString().c_str());
    return 1;
  }
  // Warm-up: builds the cached first-order graph, which every mode reuses.
  Clock::time_point warm_start = Clock::now();
  {
    at::Generator gen = MakeGenerator(7);
    absl::StatusOr<ParamSet> hv =
        (*op)->Apply(RademacherLike((*op)->parameters(), gen));
    if (!hv.ok()) {
      std::fprintf(stderr, "%s\n", hv.status().ToString().c_str());
      return 1;
    }
  }
  const double warm_s = MsSince(warm_start) / 1000;
  const int layers = static_cast<int>((*op)->layout().groups.size());
  std::printf(
      "- %s, batch %lld (random inputs, random labels, cross-entropy), %d "
      "layers, %lld parameters, exact HVPs; first product (first-order graph "
      "+ HVP, not counted below) %.1f s\n"
      "- fixed probe counts (min_probes = max_probes); Rademacher probes; "
      "z = |t_a − t_b| / sqrt(se_a² + se_b²) per layer; relative difference "
      "|t_a − t_b| / |t_b|; b = exact per layer\n\n",
      spec->name.c_str(), (long long)spec->batch, layers,
      (long long)(*op)->layout().numel, warm_s);
  std::fflush(stdout);

  // Short run first, then the two long ones.
  std::vector<TraceRun> runs;
  struct Mode {
    bool exact;
    int probes;
    uint64_t seed;
    std::string label;
  };
  const std::vector<Mode> modes = {
      {false, layer_probes, 3,
       "all layers per probe, " + std::to_string(layer_probes) + " probes"},
      {false, all_probes, 1,
       "all layers per probe, " + std::to_string(all_probes) + " probes"},
      {true, layer_probes, 2,
       "exact per layer, " + std::to_string(layer_probes) + " probes × " +
           std::to_string(layers) + " layers"},
  };
  std::printf(
      "| mode | HVPs | wall s | s / HVP | Tr(H) ± SE | layers with SE ≤ 5%% "
      "of |trace| |\n|---|---:|---:|---:|---|---:|\n");
  std::fflush(stdout);
  for (const Mode& m : modes) {
    absl::StatusOr<TraceRun> run =
        RunTraces(**op, m.exact, m.probes, m.seed, m.label);
    if (!run.ok()) {
      std::printf("| %s | failed: %s | | | | |\n", m.label.c_str(),
                  run.status().ToString().c_str());
      return 1;
    }
    const TraceResult& r = run->result;
    std::printf("| %s | %lld | %.1f | %.3f | %.4g ± %.2g | %d / %d |\n",
                run->label.c_str(), (long long)r.hvps, run->seconds,
                run->seconds / static_cast<double>(r.hvps), r.total_trace,
                r.total_std_error, CountConverged(r, 0.05), layers);
    std::fflush(stdout);
    runs.push_back(*std::move(run));
  }
  const TraceRun& short_all = runs[0];
  const TraceRun& long_all = runs[1];
  const TraceRun& exact = runs[2];

  std::printf(
      "\n| a vs b = exact per layer (%d probes) | layers | z ≤ 2 | z ≤ 3 | "
      "median rel. diff. | median se_a / se_b |\n"
      "|---|---:|---:|---:|---:|---:|\n",
      layer_probes);
  for (const TraceRun* a : {&short_all, &long_all}) {
    Agreement ag = Compare(a->result, exact.result);
    std::printf("| %s | %d | %d (%.0f%%) | %d (%.0f%%) | %.3f | %.2f |\n",
                a->label.c_str(), ag.layers, ag.within2,
                100.0 * ag.within2 / ag.layers, ag.within3,
                100.0 * ag.within3 / ag.layers, ag.median_rel_diff,
                ag.median_se_ratio);
  }
  // The standard error falls as 1/sqrt(probes): the all-layers estimator's
  // error at the exact loop's cost (layers × M HVPs), from the long run.
  Agreement long_ag = Compare(long_all.result, exact.result);
  const double equal_cost_scale =
      std::sqrt(static_cast<double>(all_probes) /
                static_cast<double>(exact.result.hvps));
  const double z_total =
      std::abs(long_all.result.total_trace - exact.result.total_trace) /
      std::sqrt(long_all.result.total_std_error *
                    long_all.result.total_std_error +
                exact.result.total_std_error * exact.result.total_std_error);
  std::printf(
      "\n- standard errors at equal probe counts (%d each): all-layers / "
      "exact per layer, median over layers = %.2f\n"
      "- at equal HVP counts (%lld each, scaled from the %d-probe run by "
      "1/sqrt(probes)): %.2f\n"
      "- whole-model trace: all layers (%d probes) %.4g ± %.2g vs exact per "
      "layer %.4g ± %.2g, z = %.2f\n"
      "- total wall time %.0f s (load, warm-up and the three runs)\n",
      layer_probes, Compare(short_all.result, exact.result).median_se_ratio,
      (long long)exact.result.hvps, all_probes,
      long_ag.median_se_ratio * equal_cost_scale, all_probes,
      long_all.result.total_trace, long_all.result.total_std_error,
      exact.result.total_trace, exact.result.total_std_error, z_total,
      MsSince(total_start) / 1000);
  if (flags.Has("per-layer")) {
    std::printf(
        "\n| layer | numel | all layers (%d) | exact per layer (%d) | z |\n"
        "|---|---:|---:|---:|---:|\n",
        all_probes, layer_probes);
    for (int g = 0; g < layers; ++g) {
      const LayerTrace& x = long_all.result.layers[g];
      const LayerTrace& y = exact.result.layers[g];
      const double se = std::sqrt(x.std_error * x.std_error +
                                  y.std_error * y.std_error);
      std::printf("| %s | %lld | %.4g ± %.2g | %.4g ± %.2g | %.2f |\n",
                  x.name.c_str(), (long long)x.numel, x.trace, x.std_error,
                  y.trace, y.std_error,
                  se > 0 ? std::abs(x.trace - y.trace) / se : 0.0);
    }
  }
  return 0;
}

// ------------------------------------------------------------ analyze / load

int AnalyzeMain(const Flags& flags) {
  ConfigureThreads(static_cast<int>(flags.Int("threads", 2)));
  AnalyzeOptions o;
  o.device = bench::BenchDevice();
  o.model_path = flags.Get("model", "");
  o.dataset = flags.Get("data", "");
  o.num_samples = flags.Int("samples", 0);
  o.batch_size = flags.Int("batch", 64);
  absl::StatusOr<HvpMethod> method =
      ParseMethod(flags.Get("method", HvpMethodName(kDefaultHvpMethod)));
  if (!method.ok()) {
    std::fprintf(stderr, "%s\n", method.status().ToString().c_str());
    return 2;
  }
  o.hvp_method = *method;
  o.traces_enabled = !flags.Has("no-traces");
  o.traces.tolerance = flags.Double("trace-tol", o.traces.tolerance);
  o.traces.min_probes =
      static_cast<int>(flags.Int("trace-min", o.traces.min_probes));
  o.traces.max_probes =
      static_cast<int>(flags.Int("trace-max", o.traces.max_probes));
  o.eigen_enabled = flags.Has("eigen");
  o.eigen.k = static_cast<int>(flags.Int("eig-k", 1));
  if (flags.Has("lanczos")) o.eigen.method = EigenMethod::kLanczos;
  o.density_enabled = flags.Has("density");
  o.density.lanczos_steps = static_cast<int>(flags.Int("steps", o.density.lanczos_steps));
  o.eigen.tolerance = flags.Double("eig-tol", o.eigen.tolerance);
  o.eigen.max_iterations =
      static_cast<int>(flags.Int("eig-max", o.eigen.max_iterations));
  o.seed = static_cast<uint64_t>(flags.Int("seed", 0));
  absl::StatusOr<AnalyzeReport> report = RunAnalysis(o, nullptr, nullptr);
  if (!report.ok()) {
    std::fprintf(stderr, "%s\n", report.status().ToString().c_str());
    return 1;
  }
  nlohmann::json j;
  j["impl"] = "engine";
  j["device"] = o.device;
  j["threads"] = at::get_num_threads();
  j["method"] = HvpMethodName(report->hvp_method);
  j["fell_back"] = report->fell_back;
  j["layers"] = report->layers.size();
  j["params"] = report->num_parameters;
  j["param_bytes"] = report->num_parameters * DtypeBytes(report->dtype);
  j["wall_s"] = report->wall_seconds;
  j["hvps"] = report->hvp_count;
  int64_t probes = 0;
  for (const LayerSensitivity& l : report->layers) {
    probes = std::max(probes, l.trace_probes);
  }
  j["trace_probes"] = probes;
  j["total_trace"] = report->total_trace;
  j["total_trace_se"] = report->total_trace_std_error;
  if (!report->eigenvalues.empty()) {
    j["eigenvalue"] = report->eigenvalues[0];
    j["eigen_iterations"] = report->eigen_iterations[0];
    j["eigen_converged"] = static_cast<bool>(report->eigen_converged[0]);
  }
  if (report->spectrum) {
    j["eigenvalues"] = report->eigenvalues;
    j["density_nodes"] = report->density_nodes;
    j["density_weights"] = report->density_weights;
    j["outliers"] = report->spectrum->outliers;
    j["outlier_count"] = report->spectrum->count();
    j["outlier_count_is_lower_bound"] = report->spectrum->count_is_lower_bound;
    j["bulk"] = {report->spectrum->bulk_min, report->spectrum->bulk_max};
    j["num_classes"] = report->num_classes;
  }
  j["fd_check"] = report->finite_difference_check;
  j["warnings"] = report->warnings;
  j["vm_hwm_kib"] = ProcStatusKib("VmHWM");
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

int LoadMain(const Flags& flags) {
  ConfigureThreads(static_cast<int>(flags.Int("threads", 2)));
  Clock::time_point start = Clock::now();
  absl::StatusOr<torch::jit::Module> module = LoadModel(flags.Get("model", ""));
  if (!module.ok()) {
    std::fprintf(stderr, "%s\n", module.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<LoadedDataset> data = LoadDataset(flags.Get("data", ""), 0);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<PreparedBatches> prepared =
      PrepareBatches(*module, data->inputs, data->targets,
                     flags.Int("batch", 64), LossKind::kAuto);
  if (!prepared.ok()) {
    std::fprintf(stderr, "%s\n", prepared.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<ParamSet> params = CollectParameters(*module);
  if (!params.ok()) {
    std::fprintf(stderr, "%s\n", params.status().ToString().c_str());
    return 1;
  }
  int64_t bytes = 0;
  for (const torch::Tensor& t : params->tensors) bytes += t.nbytes();
  nlohmann::json j;
  j["params"] = params->layout->numel;
  j["param_bytes"] = bytes;
  j["wall_s"] = MsSince(start) / 1000;
  j["hvps"] = 0;
  j["vm_hwm_kib"] = ProcStatusKib("VmHWM");
  j["vm_rss_kib"] = ProcStatusKib("VmRSS");
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

// ------------------------------------------------------------- memory

struct ChildResult {
  int exit_code = -1;
  // ru_maxrss from wait4 (KiB). Not the child's own peak: exec folds the
  // parent's high-water mark at spawn time into it, so the tables use the
  // VmHWM the child prints at its end.
  int64_t maxrss_kib = 0;
  double seconds = 0;
  nlohmann::json json;  // its last output line, when it parses
};

// Runs this binary with `args` in a fresh process, its stdout captured.
absl::StatusOr<ChildResult> RunChild(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<std::string> all = {"/proc/self/exe"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  Clock::time_point start = Clock::now();
  int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(),
                       environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return absl::InternalError("posix_spawn failed");
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fds[0]);
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) != pid) {
    return absl::InternalError("wait4 failed");
  }
  ChildResult result;
  result.seconds = MsSince(start) / 1000;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.maxrss_kib = usage.ru_maxrss;
  size_t end = out.find_last_not_of('\n');
  if (end != std::string::npos) {
    size_t begin = out.find_last_of('\n', end);
    begin = begin == std::string::npos ? 0 : begin + 1;
    result.json = nlohmann::json::parse(out.substr(begin, end - begin + 1),
                                        nullptr, /*allow_exceptions=*/false);
  }
  return result;
}

int MemoryMain(const Flags& flags) {
  if (flags.positional().size() != 1) {
    std::fprintf(stderr, "usage: bench_analyze memory MODEL.pt:C,H,W:BATCH "
                         "[--probes=2] [--threads=T] [--methods=...]\n");
    return 2;
  }
  std::optional<Spec> spec = ParseSpec(flags.positional()[0], /*allow_reps=*/false);
  if (!spec) {
    std::fprintf(stderr, "bad model spec %s\n", flags.positional()[0].c_str());
    return 2;
  }
  const int threads = static_cast<int>(flags.Int("threads", 2));
  const int probes = static_cast<int>(flags.Int("probes", 2));
  ConfigureThreads(threads);
  std::vector<std::string> methods;
  {
    std::stringstream ss(flags.Get(
        "methods", "exact,finite_difference,gauss_newton,fisher_diagonal"));
    std::string m;
    while (std::getline(ss, m, ',')) methods.push_back(m);
  }

  // The data file both kinds of child read.
  const std::string data_path = flags.Get(
      "data-out", "bench/out/" + spec->name + "_batch" +
                      std::to_string(spec->batch) + ".pt");
  {
    std::vector<int64_t> shape = {spec->batch};
    shape.insert(shape.end(), spec->shape.begin(), spec->shape.end());
    at::Generator gen = MakeGenerator(1234);
    c10::Dict<std::string, torch::Tensor> dict;
    dict.insert("inputs", torch::rand(shape, gen));
    dict.insert("targets", torch::randint(0, flags.Int("classes", 10),
                                          {spec->batch}, gen, torch::kLong));
    std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
    std::ofstream out(data_path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", data_path.c_str());
      return 1;
    }
  }

  std::printf("## Peak memory of an ANALYZE per HVP method\n\n");
  bench::PrintRuntimeLines();
  const std::string batch = "--batch=" + std::to_string(spec->batch);
  const std::string thr = "--threads=" + std::to_string(threads);
  const std::string model = "--model=" + spec->path;
  const std::string data = "--data=" + data_path;
  Clock::time_point total_start = Clock::now();
  absl::StatusOr<ChildResult> base = RunChild({"load", model, data, batch, thr});
  if (!base.ok() || base->exit_code != 0 || base->json.is_discarded()) {
    std::fprintf(stderr, "baseline child failed\n");
    return 1;
  }
  const double mib = 1024.0;
  const double param_mib = base->json["param_bytes"].get<double>() / (1 << 20);
  std::printf(
      "- %s: %lld parameters, %.1f MiB of parameters; batch %lld of "
      "[%s] random inputs (%s), random labels, cross-entropy\n"
      "- each row a fresh child process (this binary, `analyze`): "
      "RunAnalysis with traces only, min_probes = max_probes = %d, %d "
      "LibTorch threads; peak RSS = the child's VmHWM at its end "
      "(/proc/self/status; ru_maxrss is not used: exec folds the parent's "
      "peak into it); "
      "baseline = a child that only loads the model and the data "
      "(VmRSS at its end %.0f MiB)\n\n",
      spec->name.c_str(), (long long)base->json["params"].get<int64_t>(),
      param_mib, (long long)spec->batch,
      [&] {
        std::string s;
        for (size_t i = 0; i < spec->shape.size(); ++i) {
          s += (i ? "," : "") + std::to_string(spec->shape[i]);
        }
        return s;
      }().c_str(),
      data_path.c_str(), probes, threads,
      base->json["vm_rss_kib"].get<double>() / mib);
  std::printf(
      "| run | peak RSS MiB | over baseline MiB | over baseline / params | "
      "wall s | HVPs | notes |\n|---|---:|---:|---:|---:|---:|---|\n");
  const double base_mib = base->json["vm_hwm_kib"].get<double>() / mib;
  std::printf("| load model + data (baseline) | %.0f | 0 | 0 | %.1f | 0 | |\n",
              base_mib, base->seconds);
  std::fflush(stdout);
  int failures = 0;
  for (const std::string& m : methods) {
    absl::StatusOr<ChildResult> r = RunChild(
        {"analyze", model, data, batch, thr, "--method=" + m,
         "--trace-min=" + std::to_string(probes),
         "--trace-max=" + std::to_string(probes)});
    if (!r.ok() || r->exit_code != 0 || r->json.is_discarded()) {
      std::printf("| %s | failed (exit %d) | | | | | |\n", m.c_str(),
                  r.ok() ? r->exit_code : -1);
      ++failures;
      continue;
    }
    const double peak = r->json["vm_hwm_kib"].get<double>() / mib;
    std::string notes;
    if (r->json["fell_back"].get<bool>()) {
      notes = "fell back to " + r->json["method"].get<std::string>();
    }
    if (m == "finite_difference") {
      notes += "float64 copy, self-check " +
               Fmt("%.1e", r->json["fd_check"].get<double>());
    }
    std::printf("| %s | %.0f | %.0f | %.1f | %.1f | %lld | %s |\n", m.c_str(),
                peak, peak - base_mib, (peak - base_mib) / param_mib,
                r->seconds, (long long)r->json["hvps"].get<int64_t>(),
                notes.c_str());
    std::fflush(stdout);
  }
  std::printf("\n- total wall time %.0f s\n", MsSince(total_start) / 1000);
  return failures ? 1 : 0;
}

int Main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  Flags flags(argc, argv, 2);
  if (mode == "traces") return TracesMain(flags);
  if (mode == "memory") return MemoryMain(flags);
  if (mode == "analyze") return AnalyzeMain(flags);
  if (mode == "load") return LoadMain(flags);
  if (mode == "runtime") {
    ConfigureThreads(static_cast<int>(flags.Int("threads", 2)));
    bench::PrintRuntimeLines();
    return 0;
  }
  std::fprintf(stderr,
               "usage: %s traces|memory|analyze|load|runtime ... (see the header of "
               "bench/bench_analyze.cc)\n",
               argv[0]);
  return 2;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) { return compress::engine::Main(argc, argv); }
