// Quality and speed of the PRUNE job on the Fashion-MNIST reference ViT:
// FLOPs removed, top-1 on the test set before and after, measured CPU
// latency at batch 64, per saliency kind, with and without recovery; and
// COMPRESS (prune, then 4-bit QUANTIZE of the pruned model). Prints a
// Markdown table, one row per configuration.
//
//   bench_prune [--saliency hessian,taylor,magnitude] [--recovery 0,300]
//               [--target 0.5] [--steps 4] [--samples N] [--lr X]
//               [--saliency-samples N] [--eval N] [--compress] [--model PATH]
//               [--threads N] [--data PATH --eval-data PATH]
//       --data/--eval-data replace Fashion-MNIST's train/test sets (e.g. a
//       token-id classifier from tests/fixtures/make_prune_text_models.py
//       bench, with --model bench_bert.pt; --eval 0 = all examples).
//   bench_prune --compare-latency ORIGINAL.pt PRUNED.pt [--threads N]
//       median latency of both at batch 64 on Fashion-MNIST test images,
//       measured alternately (5 x 1 s each), and the speedup.
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_common.h"
#include "server/engine/common/runtime.h"
#include "server/engine/data/dataset.h"
#include "server/engine/model/model.h"
#include "server/engine/prune/latency.h"
#include "server/engine/prune/prune.h"
#include "server/engine/quant/quantize.h"

namespace compress::engine {
namespace {

struct Args {
  std::vector<std::string> saliency = {"hessian", "taylor", "magnitude"};
  std::vector<int> recovery = {0, 300};
  double target = 0.5;
  int steps = 4;
  int64_t samples = 4096;
  int64_t saliency_samples = 256;
  double lr = 5e-4;
  int64_t eval = 10000;
  bool compress = false;
  std::string model;
  std::string data = "builtin:fashion-mnist/train";
  std::string eval_data = "builtin:fashion-mnist/test";
  int threads = static_cast<int>(std::thread::hardware_concurrency());
};

std::string TempDir() {
  std::string dir = (std::filesystem::temp_directory_path() / "bench_prune_XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

// Stage starts and log lines on stderr, with seconds since the job began.
class StderrSink : public ProgressSink {
 public:
  void StageStart(const std::string& stage, int, int) override { Print("start " + stage); }
  void StageEnd(const std::string& stage) override { Print("end " + stage); }
  void Progress(const std::string&, int64_t, int64_t) override {}
  void Log(const std::string&, const std::string& message) override { Print(message); }
  void PartialResult(const std::string&, const std::string&) override {}

 private:
  void Print(const std::string& line) {
    std::fprintf(stderr, "[%6.1f s] %s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(),
                 line.c_str());
  }
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

SaliencyKind KindOf(const std::string& name) {
  if (name == "taylor") return SaliencyKind::kTaylor;
  if (name == "magnitude") return SaliencyKind::kMagnitude;
  return SaliencyKind::kHessian;
}

int Run(const Args& args) {
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string model =
      args.model.empty() ? std::string(src ? src : ".") + "/models/fmnist_vit.pt" : args.model;
  bench::PrintDeviceLine();
  std::printf("model %s, calibration %lld training images (saliency on the first %lld), target %.0f%% of FLOPs in %d rounds, "
              "recovery lr %g (Adam, batch 64), top-1 on %lld test images, latency at batch 64 "
              "(median), %d threads\n\n",
              model.c_str(), static_cast<long long>(args.samples),
              static_cast<long long>(args.saliency_samples), 100 * args.target, args.steps,
              args.lr, static_cast<long long>(args.eval),
              args.threads);
  std::printf("| saliency | recovery steps/round | FLOPs removed | params | top-1 before | top-1 "
              "after | drop pp | latency before → after (ms) | speedup | heads per block | MLP "
              "per block | wall s |\n|---|---:|---:|---|---:|---:|---:|---|---:|---|---|---:|\n");
  for (const std::string& kind : args.saliency) {
    for (int recovery : args.recovery) {
      PruneOptions o;
      o.device = bench::BenchDevice();
      o.model_path = model;
      o.calibration_dataset = args.data;
      o.num_samples = args.samples;
      o.saliency_samples = args.saliency_samples;
      o.eval_dataset = args.eval_data;
      o.eval_samples = args.eval;
      o.target_fraction = args.target;
      o.steps = args.steps;
      o.saliency = KindOf(kind);
      o.recovery_steps = recovery;
      o.learning_rate = args.lr;
      o.output_dir = TempDir();
      StderrSink sink;
      absl::StatusOr<PruneReport> r = RunPruning(o, &sink, nullptr);
      if (!r.ok()) {
        std::printf("| %s | %d | failed: %s |\n", kind.c_str(), recovery,
                    std::string(r.status().message()).c_str());
        continue;
      }
      std::string heads, widths;
      for (const PrunedBlock& b : r->blocks) {
        heads += (heads.empty() ? "" : ",") + std::to_string(b.heads_after);
        widths += (widths.empty() ? "" : ",") + std::to_string(b.hidden_after);
      }
      std::printf(
          "| %s | %d | %.1f%% | %lld → %lld | %.2f | %.2f | %.2f | %.2f → %.2f | %.2fx | %s | %s "
          "| %.0f |\n",
          kind.c_str(), recovery,
          100.0 * (1 - static_cast<double>(r->macs_after) / static_cast<double>(r->macs_before)),
          static_cast<long long>(r->params_before), static_cast<long long>(r->params_after),
          *r->accuracy_before, *r->accuracy_after, *r->accuracy_before - *r->accuracy_after,
          *r->latency_before_ms, *r->latency_after_ms, *r->latency_before_ms / *r->latency_after_ms,
          heads.c_str(), widths.c_str(), r->wall_seconds);
      std::fflush(stdout);
      if (!args.compress || recovery == 0) continue;
      QuantizeOptions q;
      q.device = o.device;
      q.model_path = r->model_path;
      q.calibration_dataset = "builtin:fashion-mnist/train";
      q.eval_dataset = "builtin:fashion-mnist/test";
      q.eval_samples = args.eval;
      q.budget = QuantBudget::AverageBits(4);
      q.gptq = true;
      q.output_dir = TempDir();
      absl::StatusOr<QuantizeReport> qr = RunQuantization(q, nullptr, nullptr);
      if (!qr.ok()) {
        std::printf("compress failed: %s\n", std::string(qr.status().message()).c_str());
        continue;
      }
      std::printf(
          "\nCOMPRESS (%s, then 4-bit GPTQ): top-1 %.2f%% → %.2f%% (drop %.2f pp), %.2f average "
          "bits, %lld float bytes → %lld packed bytes (%.1fx smaller), FLOPs %.1f%% removed\n\n",
          kind.c_str(), *r->accuracy_before, *qr->accuracy_after,
          *r->accuracy_before - *qr->accuracy_after, qr->average_bits,
          static_cast<long long>(r->bytes_before), static_cast<long long>(qr->bytes_after),
          static_cast<double>(r->bytes_before) / static_cast<double>(qr->bytes_after),
          100.0 * (1 - static_cast<double>(r->macs_after) / static_cast<double>(r->macs_before)));
    }
  }
  return 0;
}

int CompareLatencyMain(const std::string& original, const std::string& pruned, int threads) {
  absl::StatusOr<torch::jit::Module> a = LoadModel(original);
  absl::StatusOr<torch::jit::Module> b = LoadModel(pruned);
  absl::StatusOr<LoadedDataset> data = LoadDataset("builtin:fashion-mnist/test", 64);
  if (!a.ok() || !b.ok() || !data.ok()) {
    std::fprintf(stderr, "cannot load the models or the data\n");
    return 1;
  }
  std::vector<double> ta, tb;
  for (int i = 0; i < 5; ++i) {
    ta.push_back(*MeasureLatencyMs(*a, data->inputs, 1.0));
    tb.push_back(*MeasureLatencyMs(*b, data->inputs, 1.0));
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  std::printf("| model | latency at batch 64 (median of 5 medians) | threads |\n|---|---:|---:|\n"
              "| %s | %.2f ms | %d |\n| %s | %.2f ms | %d |\n\nspeedup %.2fx\n",
              original.c_str(), ta[2], threads, pruned.c_str(), tb[2], threads, ta[2] / tb[2]);
  return 0;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) {
  compress::engine::MaybeReexecForBlas(argv);
  compress::engine::Args args;
  std::string compare_a, compare_b;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool value = i + 1 < argc;
    if (a == "--saliency" && value) {
      args.saliency = absl::StrSplit(argv[++i], ',');
    } else if (a == "--recovery" && value) {
      args.recovery.clear();
      for (absl::string_view s : absl::StrSplit(argv[++i], ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(s, &n)) return 2;
        args.recovery.push_back(n);
      }
    } else if (a == "--target" && value) {
      args.target = std::atof(argv[++i]);
    } else if (a == "--steps" && value) {
      args.steps = std::atoi(argv[++i]);
    } else if (a == "--samples" && value) {
      args.samples = std::atoll(argv[++i]);
    } else if (a == "--saliency-samples" && value) {
      args.saliency_samples = std::atoll(argv[++i]);
    } else if (a == "--lr" && value) {
      args.lr = std::atof(argv[++i]);
    } else if (a == "--eval" && value) {
      args.eval = std::atoll(argv[++i]);
    } else if (a == "--model" && value) {
      args.model = argv[++i];
    } else if (a == "--data" && value) {
      args.data = argv[++i];
    } else if (a == "--eval-data" && value) {
      args.eval_data = argv[++i];
    } else if (a == "--threads" && value) {
      args.threads = std::atoi(argv[++i]);
    } else if (a == "--compare-latency" && i + 2 < argc) {
      compare_a = argv[++i];
      compare_b = argv[++i];
    } else if (a == "--compress") {
      args.compress = true;
    } else {
      std::fprintf(stderr,
                   "usage: bench_prune [--saliency LIST] [--recovery LIST] [--target F] "
                   "[--steps N] [--samples N] [--saliency-samples N] [--lr X] [--eval N] [--compress] [--model PATH] "
                   "[--data PATH --eval-data PATH]\n");
      return 2;
    }
  }
  compress::engine::ConfigureThreads(args.threads);
  const std::string check = compress::engine::VerifyBlasChoice(argv);
  std::printf("%s\n%s\n", check.c_str(), compress::engine::BlasDescription().c_str());
  if (!compare_a.empty()) {
    return compress::engine::CompareLatencyMain(compare_a, compare_b, args.threads);
  }
  return compress::engine::Run(args);
}
