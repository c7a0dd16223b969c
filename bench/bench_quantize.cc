// Quality of the QUANTIZE job on the Fashion-MNIST reference models: top-1 on
// the test set before and after, at several average-bit budgets, Hessian-
// guided versus no-Hessian allocation and uniform bits, RTN versus GPTQ, and
// the packed file size versus the budget. Prints Markdown tables.
//
//   bench_quantize [--eval N] [--samples N] [--models cnn,vit] [--quick]
//   bench_quantize --stages MODEL.pt:C,H,W [--samples N] [--probes N]
//       time of each stage of a 4-bit GPTQ job on random calibration inputs
//       of that shape, then (in a child process) the peak memory of GPTQ on
//       the model's largest linear layer.
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <torch/script.h>
#include <torch/serialize.h>

#include "absl/strings/numbers.h"
#include "bench/bench_common.h"
#include "absl/strings/str_split.h"
#include "server/engine/common/runtime.h"
#include "server/engine/model/model.h"
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
};

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
  std::vector<torch::Tensor> batches = {RandomInputs(spec, args.samples)};
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
  o.model_path = spec.model;
  o.calibration_dataset = data;
  o.num_samples = args.samples;
  o.batch_size = args.samples;
  o.trace_max_probes = args.probes;
  o.budget = QuantBudget::AverageBits(4);
  o.gptq = true;
  o.output_dir = out;
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
  std::printf("%s: %zu layers, %lld calibration inputs of [%s], 4 average bits, GPTQ, %d trace "
              "probes (%lld HVPs)\n\n",
              spec.model.c_str(), r->layers.size(), static_cast<long long>(args.samples),
              args.stages.substr(args.stages.find(':') + 1).c_str(), args.probes,
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

int Run(const Args& args) {
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  const std::string out = std::filesystem::temp_directory_path() / "bench_quantize";
  std::filesystem::create_directories(out);
  std::printf("%s\n\n", RuntimeDescription().c_str());
  for (const std::string& model : args.models) {
    QuantizeOptions base;
    base.model_path = root + "/models/fmnist_" + model + ".pt";
    base.calibration_dataset = "builtin:fashion-mnist/train";
    base.num_samples = args.samples;
    base.eval_dataset = "builtin:fashion-mnist/test";
    base.eval_samples = args.eval;
    base.output_dir = out;

    // Sensitivity once (computed in the first run), then reused.
    std::printf("## %s (calibration: %lld training images, eval: %lld test images)\n\n",
                model.c_str(), static_cast<long long>(args.samples),
                static_cast<long long>(args.eval));
    std::printf(
        "| budget | rounding | avg bits | file bytes (predicted) | top-1 | drop pp | uniform "
        "(bits, top-1) | no-Hessian top-1 | seconds |\n|---|---|---:|---:|---:|---:|---|---:|---:|\n");
    std::vector<double> budgets = args.quick ? std::vector<double>{4, 3}
                                             : std::vector<double>{4, 3.5, 3, 2.5};
    for (bool gptq : {false, true}) {
      for (double bits : budgets) {
        QuantizeOptions o = base;
        o.budget = QuantBudget::AverageBits(bits);
        o.gptq = gptq;
        StageTimer timer;
        auto start = std::chrono::steady_clock::now();
        absl::StatusOr<QuantizeReport> r = RunQuantization(o, &timer, nullptr);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!r.ok()) {
          std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
          return 1;
        }
        if (base.trace_per_param.empty()) {
          for (const QuantizedLayerReport& l : r->layers) {
            base.trace_per_param[l.name] = l.trace_per_param;
          }
        }
        const QuantBaseline* uniform = Baseline(*r, "uniform");
        const QuantBaseline* plain = Baseline(*r, "no_hessian");
        std::printf("| %.1f bits | %s | %.2f | %lld (%lld) | %s | %.2f | %.2f, %s | %s | %.0f |\n",
                    bits, gptq ? "GPTQ" : "RTN", r->average_bits,
                    static_cast<long long>(r->bytes_after),
                    static_cast<long long>(r->predicted_bytes), Acc(r->accuracy_after).c_str(),
                    *r->accuracy_before - *r->accuracy_after,
                    uniform ? uniform->average_bits : 0,
                    uniform ? Acc(uniform->accuracy).c_str() : "-",
                    plain ? Acc(plain->accuracy).c_str() : "-", seconds);
        std::fflush(stdout);
        if (gptq && bits == 3) {
          std::printf("\nGPTQ / RTN output error per layer at this setting:\n");
          for (const QuantizedLayerReport& l : r->layers) {
            std::printf("  %-20s %d bits  gptq %.3g  rtn %.3g  ratio %.3f\n", l.name.c_str(),
                        l.bits, l.gptq_error, l.rtn_error, l.gptq_error / l.rtn_error);
          }
          std::printf("\n");
        }
      }
    }
    std::printf("\nfloat top-1: see 'drop pp' baseline\n\n");
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
    } else {
      std::fprintf(stderr, "usage: bench_quantize [--eval N] [--samples N] [--models cnn,vit] "
                           "[--quick]\n");
      return 2;
    }
  }
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  if (!args.gptq_memory.empty()) return compress::engine::GptqMemory(args);
  const std::string check = compress::engine::VerifyBlasChoice(argv);
  std::printf("%s\n%s\n", check.c_str(), compress::engine::BlasDescription().c_str());
  if (!args.stages.empty()) return compress::engine::Stages(args, argv);
  return compress::engine::Run(args);
}
