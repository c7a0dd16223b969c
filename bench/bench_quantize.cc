// Quality of the QUANTIZE job on the Fashion-MNIST reference models: top-1 on
// the test set before and after, at several average-bit budgets, Hessian-
// guided versus no-Hessian allocation and uniform bits, RTN versus GPTQ, and
// the packed file size versus the budget. Prints Markdown tables.
//
//   bench_quantize [--eval N] [--samples N] [--models cnn,vit] [--quick]
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

#include "absl/strings/str_split.h"
#include "server/engine/common/runtime.h"
#include "server/engine/quant/quantize.h"

namespace compress::engine {
namespace {

struct Args {
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
    } else {
      std::fprintf(stderr, "usage: bench_quantize [--eval N] [--samples N] [--models cnn,vit] "
                           "[--quick]\n");
      return 2;
    }
  }
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const std::string check = compress::engine::VerifyBlasChoice(argv);
  std::printf("%s\n%s\n", check.c_str(), compress::engine::BlasDescription().c_str());
  return compress::engine::Run(args);
}
