// Quality of the QUANTIZE job on the Fashion-MNIST reference models: top-1 on
// the test set before and after, at several average-bit budgets, Hessian-
// guided versus no-Hessian allocation and uniform bits, RTN versus GPTQ, and
// the packed file size versus the budget. Prints Markdown tables.
//
//   bench_quantize [--eval N] [--samples N] [--models cnn,vit] [--quick]
//       [--budgets 4,3.5,3,2.5] [--rounding rtn,gptq] [--omega trace|quadratic]
//       [--perturbation rounding|nearest] [--trace-samples N]
//       [--trace-tolerance X] [--trace-max-probes N] [--seed N] [--verbose]
//       [--threads N]
//       one job per (rounding, budget); --omega trace computes the traces
//       once (on --trace-samples images) and every job reuses them.
//   bench_quantize --fidelity [--models cnn,vit] [--rounding rtn,gptq]
//       Ω of every (layer, width) next to the measured loss and top-1
//       change when that layer alone is rounded, and rank correlations.
//   bench_quantize --stages MODEL.pt:C,H,W [--samples N] [--probes N]
//       [--omega trace|quadratic]
//       time of each stage of a 4-bit GPTQ job on random calibration inputs
//       of that shape, then (in a child process) the peak memory of GPTQ on
//       the model's largest linear layer.
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <torch/nn/functional/loss.h>
#include <torch/script.h>
#include <torch/serialize.h>

#include "absl/strings/numbers.h"
#include "bench/bench_common.h"
#include "absl/strings/str_split.h"
#include "server/engine/common/runtime.h"
#include "server/engine/model/model.h"
#include "server/engine/data/dataset.h"
#include "server/engine/data/loss.h"
#include "server/engine/hessian/analyze.h"
#include "server/engine/hessian/perturbation.h"
#include "server/engine/quant/bn_fold.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/gptq.h"
#include "server/engine/quant/quantize.h"

namespace compress::engine {
namespace {

struct Args {
  std::string stages;  // MODEL.pt:C,H,W
  std::string gptq_memory;  // child mode: MODEL.pt:C,H,W
  int probes = 4;
  int64_t eval = 10000;
  int64_t samples = 256;
  std::vector<std::string> models = {"cnn", "vit"};
  bool quick = false;
  std::vector<double> budgets;        // default {4, 3.5, 3, 2.5} ({4, 3} with --quick)
  std::vector<std::string> roundings = {"rtn", "gptq"};
  std::string omega;                  // "" = the job's default
  std::string perturbation;           // "" = the job's default for the Ω
  int64_t trace_samples = 0;          // kTrace: calibration images of the traces; 0 = --samples
  double trace_tolerance = 0.05;
  int trace_max_probes = 200;
  bool verbose = false;               // Ω and bits per layer
  bool fidelity = false;
  int threads = 0;                    // LibTorch intra-op threads; 0 = every core
  uint64_t seed = 0;                  // of the jobs (trace probes)
};

bool ParseOmega(const std::string& name, QuantOmega* omega) {
  for (QuantOmega o : {QuantOmega::kTrace, QuantOmega::kQuadratic}) {
    if (name == QuantOmegaName(o)) {
      *omega = o;
      return true;
    }
  }
  return false;
}

class StageTimer : public ProgressSink {
 public:
  void StageStart(const std::string& stage, int, int) override {
    Close();
    stage_ = stage;
    start_ = std::chrono::steady_clock::now();
  }
  void StageEnd(const std::string&) override { Close(); }
  void Progress(const std::string&, int64_t, int64_t) override {}
  void Log(const std::string&, const std::string&) override {}
  void PartialResult(const std::string&, const std::string&) override {}
  void Close() {
    if (stage_.empty()) return;
    seconds[stage_] +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    stage_.clear();
  }
  std::map<std::string, double> seconds;

 private:
  std::string stage_;
  std::chrono::steady_clock::time_point start_;
};

std::string Acc(const std::optional<double>& a) {
  char buf[32];
  if (!a.has_value()) return "-";
  std::snprintf(buf, sizeof buf, "%.2f", *a);
  return buf;
}

const QuantBaseline* Baseline(const QuantizeReport& r, const std::string& name) {
  for (const QuantBaseline& b : r.baselines) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

// "57 / 43 (p 0.19)": eval examples only the chosen allocation / only the
// baseline gets right, and McNemar's exact p-value.
std::string Paired(const QuantBaseline* b) {
  if (b == nullptr || !b->p_value.has_value()) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld / %lld (p %.2g)",
                static_cast<long long>(b->chosen_only_correct),
                static_cast<long long>(b->baseline_only_correct), *b->p_value);
  return buf;
}

struct StagesSpec {
  std::string model;
  std::vector<int64_t> shape;  // C,H,W
};

bool ParseStages(const std::string& text, StagesSpec* spec) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() != 2) return false;
  spec->model = parts[0];
  for (absl::string_view d : absl::StrSplit(parts[1], ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(d, &v)) return false;
    spec->shape.push_back(v);
  }
  return true;
}

torch::Tensor RandomInputs(const StagesSpec& spec, int64_t n) {
  std::vector<int64_t> shape = {n};
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  torch::manual_seed(0);
  return torch::rand(shape);
}

// Peak memory of GPTQ on the largest Linear weight: H collected from the
// calibration inputs, then GptqQuantize at 4 bits; VmHWM before and after.
int GptqMemory(const Args& args) {
  StagesSpec spec;
  if (!ParseStages(args.gptq_memory, &spec)) return 2;
  absl::StatusOr<torch::jit::Module> model = LoadModel(spec.model);
  if (!model.ok()) return 1;
  absl::StatusOr<std::vector<QuantizableLayer>> layers = QuantizableLayers(*model);
  const QuantizableLayer* largest = nullptr;
  for (const QuantizableLayer& l : *layers) {
    if (l.weight.dim() == 2 && (largest == nullptr || l.weight.numel() > largest->weight.numel())) {
      largest = &l;
    }
  }
  if (largest == nullptr) return 1;
  std::vector<ModelInputs> batches = {RandomInputs(spec, args.samples)};
  absl::StatusOr<LayerHessian> h = CollectLayerHessian(*model, largest->name, batches, nullptr);
  if (!h.ok()) {
    std::fprintf(stderr, "%s\n", h.status().ToString().c_str());
    return 1;
  }
  const int64_t before_kb = bench::ProcStatusKib("VmRSS");
  const int64_t hwm_before_kb = bench::ProcStatusKib("VmHWM");
  QuantizerSpec q;
  q.bits = 4;
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<GptqResult> r =
      GptqQuantize(largest->weight.detach(), h->hessian, q, GptqOptions{});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) return 1;
  const int64_t hwm_kb = bench::ProcStatusKib("VmHWM");
  std::printf("| %s | [%lld, %lld] | %.1f | %.1f | %.1f | %.1f | %.2f |\n", largest->name.c_str(),
              static_cast<long long>(largest->weight.size(0)),
              static_cast<long long>(largest->weight.size(1)),
              largest->weight.numel() * 4 / 1048576.0,
              h->hessian.numel() * 8 / 1048576.0, before_kb / 1024.0,
              (std::max(hwm_kb, hwm_before_kb) - before_kb) / 1024.0, seconds);
  return 0;
}

int Stages(const Args& args, char** argv) {
  StagesSpec spec;
  if (!ParseStages(args.stages, &spec)) {
    std::fprintf(stderr, "--stages MODEL.pt:C,H,W\n");
    return 2;
  }
  const std::string out = std::filesystem::temp_directory_path() / "bench_quantize_stages";
  std::filesystem::create_directories(out);
  // Random inputs (no labels: pseudo-labels) as a torch.save'd dict.
  const std::string data = out + "/calibration.pt";
  {
    c10::Dict<std::string, torch::Tensor> dict;
    dict.insert("inputs", RandomInputs(spec, args.samples));
    std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
    std::ofstream(data, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  QuantizeOptions o;
  o.device = bench::BenchDevice();
  o.model_path = spec.model;
  o.calibration_dataset = data;
  o.num_samples = args.samples;
  o.batch_size = args.samples;
  o.trace_max_probes = args.probes;
  o.budget = QuantBudget::AverageBits(4);
  o.gptq = true;
  o.output_dir = out;
  if (!args.omega.empty()) {
    QuantOmega omega;
    if (!ParseOmega(args.omega, &omega)) return 2;
    o.omega = omega;
  }
  bench::PrintDeviceLine();
  StageTimer timer;
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, &timer, nullptr);
  timer.Close();
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf("%s: %zu layers, %lld calibration inputs of [%s], 4 average bits, GPTQ, %s Ω "
              "(%d trace probes at most), %lld HVPs\n\n",
              spec.model.c_str(), r->layers.size(), static_cast<long long>(args.samples),
              args.stages.substr(args.stages.find(':') + 1).c_str(), r->omega.c_str(), args.probes,
              static_cast<long long>(r->hvp_count));
  std::printf("| stage | seconds |\n|---|---:|\n");
  for (const auto& [stage, seconds] : timer.seconds) {
    std::printf("| %s | %.1f |\n", stage.c_str(), seconds);
  }
  std::printf("| total (incl. load, BN folding, packing, saving) | %.1f |\n", total);
  std::printf("\nbytes %lld -> %lld, peak RSS of this process %.0f MiB\n\n",
              static_cast<long long>(r->bytes_before), static_cast<long long>(r->bytes_after),
              bench::ProcStatusKib("VmHWM") / 1024.0);
  std::fflush(stdout);
  // GPTQ's memory on the largest linear layer, in a fresh process.
  std::printf("| largest linear layer | weight | weight MiB | H MiB (float64) | RSS before MiB | "
              "GPTQ peak over it MiB | GPTQ s |\n|---|---|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    const std::string samples = std::to_string(args.samples);
    execl("/proc/self/exe", argv[0], "--gptq-memory", args.stages.c_str(), "--samples",
          samples.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

// Mean loss and top-1 (%) of `m` on `data` (targets: class labels).
std::pair<double, double> LossAndAccuracy(torch::jit::Module& m, const LoadedDataset& data) {
  torch::NoGradGuard no_grad;
  const int64_t n = data.inputs.first.size(0);
  double loss = 0;
  int64_t correct = 0;
  for (int64_t s = 0; s < n; s += 500) {
    const int64_t len = std::min<int64_t>(500, n - s);
    torch::Tensor out = m.forward({data.inputs.first.narrow(0, s, len)}).toTensor();
    torch::Tensor y = data.targets.narrow(0, s, len).to(torch::kLong);
    loss += torch::nn::functional::cross_entropy(
                out, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += out.argmax(1).eq(y).sum().item<int64_t>();
  }
  return {loss / static_cast<double>(n), 100.0 * static_cast<double>(correct) / n};
}

// Spearman rank correlation of two equally long lists.
double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> order(v.size());
    for (size_t i = 0; i < v.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return v[x] < v[y]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[order[i]] = static_cast<double>(i);
    return r;
  };
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double n = static_cast<double>(a.size());
  double d2 = 0;
  for (size_t i = 0; i < a.size(); ++i) d2 += (ra[i] - rb[i]) * (ra[i] - rb[i]);
  return 1 - 6 * d2 / (n * (n * n - 1));
}

// How well each Ω predicts what quantizing one layer alone does: for every
// (layer, width), ‖δ‖², Ω trace, Ω quadratic and gᵀδ next to the measured
// change of the calibration loss, the test loss and test top-1 when that
// layer alone is rounded (RTN, or GPTQ on all calibration images); with
// GPTQ also the job's cross-fitted Ω (each half's δ priced on the other
// half). Then Spearman rank correlations over all (layer, width) pairs.
int Fidelity(const Args& args) {
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  const std::string out = std::filesystem::temp_directory_path() / "bench_quantize_fidelity";
  std::filesystem::create_directories(out);
  for (const std::string& name : args.models) {
    const std::string path = root + "/models/fmnist_" + name + ".pt";
    absl::StatusOr<torch::jit::Module> original = LoadModel(path);
    if (!original.ok()) return 1;
    absl::StatusOr<torch::jit::Module> folded = FoldBatchNorm(*original);
    if (!folded.ok()) return 1;
    const std::string idx = kFashionMnistDir;
    absl::StatusOr<LoadedDataset> cal =
        LoadBuiltinDataset("builtin:fashion-mnist/train", args.samples, idx);
    absl::StatusOr<LoadedDataset> test =
        LoadBuiltinDataset("builtin:fashion-mnist/test", args.eval, idx);
    if (!cal.ok() || !test.ok()) return 1;
    // Traces of the folded model, as the job computes them.
    const std::string folded_path = out + "/folded.pt";
    folded->save(folded_path);
    AnalyzeOptions a;
    a.model_path = folded_path;
    a.dataset = "builtin:fashion-mnist/train";
    a.num_samples = args.samples;
    a.traces.tolerance = args.trace_tolerance;
    a.traces.max_probes = args.trace_max_probes;
    a.max_cached_batches = 1 << 20;
    absl::StatusOr<AnalyzeReport> traces = RunAnalysis(a, nullptr, nullptr);
    if (!traces.ok()) {
      std::fprintf(stderr, "%s\n", traces.status().ToString().c_str());
      return 1;
    }
    std::map<std::string, double> tpp;
    for (const LayerSensitivity& l : traces->layers) tpp[l.name] = l.trace_per_param;
    absl::StatusOr<std::vector<QuantizableLayer>> layers = QuantizableLayers(*folded);
    std::vector<std::string> weights;
    for (const QuantizableLayer& l : *layers) weights.push_back(l.name + ".weight");
    // The whole calibration set, and its two halves.
    struct Part {
      std::vector<ModelInputs> batches;
      std::unique_ptr<PerturbationModel> model;
    };
    std::vector<Part> parts(3);
    const int64_t n = cal->inputs.first.size(0);
    for (int p = 0; p < 3; ++p) {
      const int64_t begin = p == 0 ? 0 : (p - 1) * n / 2, end = p == 0 ? n : p * n / 2;
      torch::Tensor x = cal->inputs.first.narrow(0, begin, end - begin);
      torch::Tensor y = cal->targets.narrow(0, begin, end - begin);
      absl::StatusOr<PreparedBatches> prepared =
          PrepareBatches(*folded, x, y, 64, LossKind::kAuto);
      if (!prepared.ok()) return 1;
      for (const Batch& b : prepared->batches) parts[p].batches.push_back(b.inputs);
      PerturbationModelOptions pm;
      pm.hvp.max_cached_batches = 1 << 20;
      absl::StatusOr<std::unique_ptr<PerturbationModel>> model =
          PerturbationModel::Create(*folded, *prepared, weights, pm);
      if (!model.ok()) {
        std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
        return 1;
      }
      parts[p].model = std::move(*model);
    }
    const auto [cal_loss, cal_acc] = LossAndAccuracy(*folded, *cal);
    const auto [test_loss, test_acc] = LossAndAccuracy(*folded, *test);
    for (const std::string& rounding : args.roundings) {
      const bool gptq = rounding == "gptq";
      std::printf("\n## %s, %s δ (float: calibration loss %.4f, test loss %.4f, top-1 %.2f%%)\n\n",
                  name.c_str(), rounding.c_str(), cal_loss, test_loss, test_acc);
      std::printf("| layer | bits | ‖δ‖² | Ω trace | Ω quadratic | Ω quadratic, cross-fitted | "
                  "gᵀδ | ΔL calibration | ΔL test | Δ top-1 pp |\n"
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
      std::vector<double> sq, tr, quad, crossed, taylor, dcal, dtest, dacc;
      for (const QuantizableLayer& l : *layers) {
        const std::string weight = l.name + ".weight";
        std::vector<LayerHessian> h;  // whole set, first half, second half
        for (int p = 0; gptq && p < 3; ++p) {
          absl::StatusOr<LayerHessian> collected =
              CollectLayerHessian(*folded, l.name, parts[p].batches);
          if (collected.ok()) h.push_back(std::move(*collected));
        }
        const torch::Tensor w = l.weight.detach().clone();
        for (int b : {2, 3, 4, 8}) {
          QuantizerSpec spec;
          spec.bits = b;
          auto round = [&](int p) {
            return h.size() == 3 ? GptqQuantize(w, h[p].hessian, spec, GptqOptions{})->dequantized
                                 : *Dequantize(*Quantize(w, spec));
          };
          torch::Tensor rounded = round(0);
          torch::Tensor delta = rounded.to(torch::kFloat64) - w.to(torch::kFloat64);
          absl::StatusOr<PerturbationTerms> t = parts[0].model->Terms(weight, delta);
          if (!t.ok()) return 1;
          double cross = 0;
          for (int p = 1; p <= 2; ++p) {
            torch::Tensor d = round(p).to(torch::kFloat64) - w.to(torch::kFloat64);
            absl::StatusOr<PerturbationTerms> other = parts[3 - p].model->Terms(weight, d);
            if (!other.ok()) return 1;
            cross += 0.5 * other->quadratic;
          }
          {
            torch::NoGradGuard no_grad;
            l.weight.copy_(rounded);
          }
          const auto [cl, ca] = LossAndAccuracy(*folded, *cal);
          const auto [tl, ta] = LossAndAccuracy(*folded, *test);
          {
            torch::NoGradGuard no_grad;
            l.weight.copy_(w);
          }
          const double norm2 = delta.pow(2).sum().item<double>();
          sq.push_back(norm2);
          tr.push_back(tpp[l.name] * norm2);
          quad.push_back(t->quadratic);
          crossed.push_back(cross);
          taylor.push_back(t->quadratic + t->linear);
          dcal.push_back(cl - cal_loss);
          dtest.push_back(tl - test_loss);
          dacc.push_back(test_acc - ta);
          std::printf("| %s | %d | %.3g | %.3g | %.3g | %.3g | %.3g | %.3g | %.3g | %.2f |\n",
                      l.name.c_str(), b, norm2, tr.back(), quad.back(), cross, t->linear,
                      dcal.back(), dtest.back(), dacc.back());
          std::fflush(stdout);
        }
      }
      std::printf("\nSpearman over %zu (layer, width) pairs | ΔL calibration | ΔL test | Δ top-1 |\n"
                  "|---|---:|---:|---:|\n", sq.size());
      const std::pair<const char*, const std::vector<double>*> rows[] = {
          {"‖δ‖² (no Hessian)", &sq},
          {"trace", &tr},
          {"quadratic", &quad},
          {"quadratic, cross-fitted", &crossed},
          {"quadratic + gᵀδ", &taylor}};
      for (const auto& [label, v] : rows) {
        std::printf("| %s | %.3f | %.3f | %.3f |\n", label, Spearman(*v, dcal), Spearman(*v, dtest),
                    Spearman(*v, dacc));
      }
    }
  }
  return 0;
}

int Run(const Args& args) {
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  const std::string out = std::filesystem::temp_directory_path() / "bench_quantize";
  std::filesystem::create_directories(out);
  std::printf("%s\n", RuntimeDescription().c_str());
  bench::PrintDeviceLine();
  std::printf("\n");
  std::optional<QuantOmega> omega;
  if (!args.omega.empty()) {
    QuantOmega parsed;
    if (!ParseOmega(args.omega, &parsed)) {
      std::fprintf(stderr, "--omega trace|quadratic\n");
      return 2;
    }
    omega = parsed;
  }
  for (const std::string& model : args.models) {
    QuantizeOptions base;
    base.device = bench::BenchDevice();
    base.model_path = root + "/models/fmnist_" + model + ".pt";
    base.calibration_dataset = "builtin:fashion-mnist/train";
    base.num_samples = args.samples;
    base.eval_dataset = "builtin:fashion-mnist/test";
    base.eval_samples = args.eval;
    base.output_dir = out;
    base.omega = omega;
    base.seed = args.seed;
    base.trace_tolerance = args.trace_tolerance;
    base.trace_max_probes = args.trace_max_probes;
    if (args.perturbation == "nearest") base.perturbation = QuantPerturbation::kNearest;
    if (args.perturbation == "rounding") base.perturbation = QuantPerturbation::kRounding;
    const bool trace = omega == QuantOmega::kTrace;
    // Traces once, then reused by every run (Ω = trace · ‖δ‖² needs
    // nothing else); the other Ω depend on the rounding's δ and are
    // computed in each run.
    double trace_seconds = 0;
    if (trace) {
      QuantizeOptions t = base;
      t.eval_dataset.clear();
      if (args.trace_samples > 0) t.num_samples = args.trace_samples;
      StageTimer timer;
      absl::StatusOr<QuantizeReport> r = RunQuantization(t, &timer, nullptr);
      timer.Close();
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        return 1;
      }
      for (const QuantizedLayerReport& l : r->layers) {
        base.trace_per_param[l.name] = l.trace_per_param;
      }
      trace_seconds = timer.seconds["sensitivity"];
      std::printf("traces: %lld calibration images, %lld HVPs, %.1f s\n",
                  static_cast<long long>(t.num_samples), static_cast<long long>(r->hvp_count),
                  trace_seconds);
    }

    std::printf("## %s (calibration: %lld training images, eval: %lld test images)\n\n",
                model.c_str(), static_cast<long long>(args.samples),
                static_cast<long long>(args.eval));
    std::printf(
        "| budget | rounding | Ω (δ) | avg bits | file bytes (predicted) | top-1 | drop pp | uniform "
        "(bits, top-1) | no-Hessian top-1 | Hessian − no-Hessian pp | only Hessian / only "
        "no-Hessian right (p) | sensitivity s | seconds "
        "|\n|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n");
    std::vector<double> budgets = !args.budgets.empty() ? args.budgets
                                  : args.quick          ? std::vector<double>{4, 3}
                                                        : std::vector<double>{4, 3.5, 3, 2.5};
    for (const std::string& rounding : args.roundings) {
      const bool gptq = rounding == "gptq";
      for (double bits : budgets) {
        QuantizeOptions o = base;
        o.budget = QuantBudget::AverageBits(bits);
        o.gptq = gptq;
        StageTimer timer;
        auto start = std::chrono::steady_clock::now();
        absl::StatusOr<QuantizeReport> r = RunQuantization(o, &timer, nullptr);
        timer.Close();
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!r.ok()) {
          std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
          return 1;
        }
        const QuantBaseline* uniform = Baseline(*r, "uniform");
        const QuantBaseline* plain = Baseline(*r, "no_hessian");
        const double gain = plain != nullptr && plain->accuracy.has_value()
                                ? *r->accuracy_after - *plain->accuracy
                                : std::nan("");
        std::printf(
            "| %.1f bits | %s | %s (%s) | %.2f | %lld (%lld) | %s | %.2f | %.2f, %s | %s | %+.2f | "
            "%s | %.1f | %.0f |\n",
            bits, gptq ? "GPTQ" : "RTN", r->omega.c_str(), r->perturbation.c_str(),
            r->average_bits, static_cast<long long>(r->bytes_after),
            static_cast<long long>(r->predicted_bytes), Acc(r->accuracy_after).c_str(),
            *r->accuracy_before - *r->accuracy_after, uniform ? uniform->average_bits : 0,
            uniform ? Acc(uniform->accuracy).c_str() : "-",
            plain ? Acc(plain->accuracy).c_str() : "-", gain, Paired(plain).c_str(),
            trace ? trace_seconds : timer.seconds["sensitivity"], seconds);
        std::fflush(stdout);
        if (args.verbose) {
          for (const QuantizedLayerReport& l : r->layers) {
            std::printf("    %-34s %2d bits (no-Hessian %2d)", l.name.c_str(), l.bits,
                        plain ? plain->bits.at(l.name) : 0);
            for (const auto& [b, w] : l.omega) {
              std::printf("  Ω(%d) %.3g ‖δ‖² %.3g", b, w, l.squared_error.at(b));
            }
            std::printf("\n");
          }
        }
        if (gptq && bits == 3 && !args.verbose) {
          std::printf("\nGPTQ / RTN output error per layer at this setting:\n");
          for (const QuantizedLayerReport& l : r->layers) {
            std::printf("  %-20s %d bits  gptq %.3g  rtn %.3g  ratio %.3f\n", l.name.c_str(),
                        l.bits, l.gptq_error, l.rtn_error, l.gptq_error / l.rtn_error);
          }
          std::printf("\n");
        }
      }
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) {
  compress::engine::MaybeReexecForBlas(argv);
  compress::engine::Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--eval" && i + 1 < argc) {
      args.eval = std::atoll(argv[++i]);
    } else if (a == "--samples" && i + 1 < argc) {
      args.samples = std::atoll(argv[++i]);
    } else if (a == "--models" && i + 1 < argc) {
      args.models = absl::StrSplit(argv[++i], ',');
    } else if (a == "--quick") {
      args.quick = true;
    } else if (a == "--stages" && i + 1 < argc) {
      args.stages = argv[++i];
    } else if (a == "--gptq-memory" && i + 1 < argc) {
      args.gptq_memory = argv[++i];
    } else if (a == "--probes" && i + 1 < argc) {
      args.probes = std::atoi(argv[++i]);
    } else if (a == "--budgets" && i + 1 < argc) {
      args.budgets.clear();
      for (absl::string_view b : absl::StrSplit(argv[++i], ',')) {
        double v = 0;
        if (!absl::SimpleAtod(b, &v)) return 2;
        args.budgets.push_back(v);
      }
    } else if (a == "--rounding" && i + 1 < argc) {
      args.roundings = absl::StrSplit(argv[++i], ',');
    } else if (a == "--omega" && i + 1 < argc) {
      args.omega = argv[++i];
    } else if (a == "--perturbation" && i + 1 < argc) {
      args.perturbation = argv[++i];
    } else if (a == "--trace-samples" && i + 1 < argc) {
      args.trace_samples = std::atoll(argv[++i]);
    } else if (a == "--trace-tolerance" && i + 1 < argc) {
      args.trace_tolerance = std::atof(argv[++i]);
    } else if (a == "--trace-max-probes" && i + 1 < argc) {
      args.trace_max_probes = std::atoi(argv[++i]);
    } else if (a == "--verbose") {
      args.verbose = true;
    } else if (a == "--fidelity") {
      args.fidelity = true;
    } else if (a == "--seed" && i + 1 < argc) {
      args.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--threads" && i + 1 < argc) {
      args.threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: bench_quantize [--eval N] [--samples N] [--models cnn,vit] [--quick]\n"
                   "  [--budgets 4,3.5] [--rounding rtn,gptq] [--omega trace|quadratic]\n"
                   "  [--perturbation rounding|nearest] [--trace-samples N]\n"
                   "  [--trace-tolerance X] [--trace-max-probes N] [--seed N] [--verbose]\n"
                   "  [--threads N]\n"
                   "bench_quantize --fidelity [--models cnn,vit] [--rounding rtn,gptq]\n"
                   "bench_quantize --stages MODEL.pt:C,H,W [--samples N] [--probes N]\n"
                   "  [--omega trace|quadratic]\n");
      return 2;
    }
  }
  at::set_num_threads(args.threads > 0 ? args.threads
                                       : static_cast<int>(std::thread::hardware_concurrency()));
  if (!args.gptq_memory.empty()) return compress::engine::GptqMemory(args);
  const std::string check = compress::engine::VerifyBlasChoice(argv);
  std::printf("%s\n%s\n", check.c_str(), compress::engine::BlasDescription().c_str());
  if (!args.stages.empty()) return compress::engine::Stages(args, argv);
  if (args.fidelity) return compress::engine::Fidelity(args);
  return compress::engine::Run(args);
}
