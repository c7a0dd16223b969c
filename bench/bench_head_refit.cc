// Head re-fitting after compression: gradient-regularized Newton (exact
// Hessian or K-FAC, server/engine/prune/head_refit.h) against Adam on the
// same head parameters, the same calibration features and the same loss.
//
//   bench_head_refit [--calib 1024] [--eval 10000] [--bits 3] [--iters 20]
//                    [--adam-steps 300] [--adam-lr 0.01,0.001] [--no-vit]
//
// Cases: the reference CNN with every Conv/Linear weight rounded to --bits
// (RTN, per output channel, symmetric; no layer pinned), and the reference
// ViT pruned to 50% of its FLOPs (Hessian saliency, 4 steps, no recovery).
// Teacher = the float model; loss = T²·KL (T = 1) + cross-entropy on the
// first --calib training images; top-1 on the first --eval test images.
// The head is the model's last layer, so top-1 comes from the fixed
// features and the current (W, b). One thread. Run from the repository
// root (or set COMPRESS_SOURCE_DIR) so models/ is found.
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "server/engine/common/runtime.h"
#include "server/util/status_macros.h"
#include "server/engine/data/dataset.h"
#include "server/engine/model/model.h"
#include "server/engine/prune/head_refit.h"
#include "server/engine/prune/prune.h"
#include "server/engine/quant/quantizer.h"

namespace compress::engine {
namespace {

struct Args {
  int64_t calib = 1024;
  int64_t eval = 10000;
  int bits = 3;
  int iters = 20;
  int adam_steps = 300;
  std::vector<double> adam_lr = {1e-2, 1e-3};
  bool vit = true;
};

struct Case {
  std::string name;
  torch::jit::Module student;
  torch::jit::Module teacher;
};

struct Data {
  torch::Tensor calib_x, calib_y, eval_x, eval_y;
};

double TopOne(const torch::Tensor& f, const torch::Tensor& y, const torch::Tensor& w,
              const torch::Tensor& b) {
  torch::NoGradGuard g;
  const torch::Tensor pred = at::linear(f.to(w.scalar_type()), w, b).argmax(1);
  return 100.0 * pred.eq(y).to(torch::kFloat64).mean().item<double>();
}

void Row(const std::string& method, int it, double seconds, double loss, double top1) {
  std::printf("| %s | %d | %.3f | %.4f | %.2f |\n", method.c_str(), it, seconds, loss, top1);
  std::fflush(stdout);
}

bool Checkpoint(int step) {
  return step <= 2 || step == 5 || step == 10 || step == 20 || step == 50 || step % 100 == 0;
}

void RunAdam(const HeadFeatures& hf, const HeadFeatures& ev, const torch::Tensor& teacher,
             const Data& d, double lr, int steps) {
  torch::Tensor w = hf.weight.clone().requires_grad_(true);
  torch::Tensor b = hf.bias.clone().requires_grad_(true);
  torch::optim::Adam opt({w, b}, torch::optim::AdamOptions(lr));
  const std::string name = "Adam lr " + std::to_string(lr).substr(0, 6);
  const bench::Clock::time_point start = bench::Clock::now();
  for (int s = 1; s <= steps; ++s) {
    opt.zero_grad();
    torch::Tensor loss = *HeadLoss(hf.features, teacher, d.calib_y, w, b, 1.0);
    loss.backward();
    opt.step();
    if (!Checkpoint(s) && s != steps) continue;
    const double sec = std::chrono::duration<double>(bench::Clock::now() - start).count();
    torch::NoGradGuard g;
    Row(name, s, sec, HeadLoss(hf.features, teacher, d.calib_y, w, b, 1.0)->item<double>(),
        TopOne(ev.features, d.eval_y, w, b));
  }
}

void RunNewton(const HeadFeatures& hf, const HeadFeatures& ev, const torch::Tensor& teacher,
               const Data& d, HeadHessian kind, int iters) {
  HeadRefitOptions o;
  o.hessian = kind;
  o.newton.iterations = iters;
  const std::string name = std::string("Newton ") + HeadHessianName(kind);
  absl::StatusOr<HeadRefitResult> r = RefitHead(
      hf.features, teacher, d.calib_y, hf.weight, hf.bias, o,
      [&](const NewtonTrace& t, const torch::Tensor& w, const torch::Tensor& b) {
        Row(name + " (λ " + std::to_string(t.lambda).substr(0, 8) + ", rej " +
                std::to_string(t.rejected) + ")",
            t.iteration, t.seconds, t.loss, TopOne(ev.features, d.eval_y, w, b));
      });
  if (!r.ok()) {
    std::printf("| %s | – | – | %s | |\n", name.c_str(), std::string(r.status().message()).c_str());
  }
}

void RunCase(Case& c, const Data& d, const Args& args) {
  torch::Tensor teacher;
  {
    torch::NoGradGuard g;
    teacher = c.teacher.forward({d.calib_x}).toTensor();
  }
  absl::StatusOr<HeadFeatures> hf = ComputeHeadFeatures(c.student, d.calib_x);
  absl::StatusOr<HeadFeatures> ev = ComputeHeadFeatures(c.student, d.eval_x);
  absl::StatusOr<HeadFeatures> tf = ComputeHeadFeatures(c.teacher, d.eval_x);
  if (!hf.ok() || !ev.ok() || !tf.ok()) {
    std::printf("%s: features failed\n", c.name.c_str());
    return;
  }
  std::printf("\n### %s: head `%s` %lld×%lld (+bias), float model top-1 %.2f\n\n", c.name.c_str(),
              hf->head.c_str(), static_cast<long long>(hf->weight.size(0)),
              static_cast<long long>(hf->weight.size(1)),
              TopOne(tf->features, d.eval_y, tf->weight, tf->bias));
  std::printf("| method | iteration / step | wall s | calib loss | eval top-1 |\n"
              "|---|---:|---:|---:|---:|\n");
  Row("compressed, head as is", 0, 0,
      HeadLoss(hf->features, teacher, d.calib_y, hf->weight, hf->bias, 1.0)->item<double>(),
      TopOne(ev->features, d.eval_y, hf->weight, hf->bias));
  RunNewton(*hf, *ev, teacher, d, HeadHessian::kKfac, args.iters);
  RunNewton(*hf, *ev, teacher, d, HeadHessian::kExact, args.iters);
  for (double lr : args.adam_lr) RunAdam(*hf, *ev, teacher, d, lr, args.adam_steps);
}

absl::StatusOr<Case> RoundedCnn(const std::string& path, int bits) {
  Case c;
  c.name = "CNN, all Conv/Linear weights RTN " + std::to_string(bits) + "-bit (no pins)";
  ASSIGN_OR_RETURN(c.teacher, LoadModel(path, "cpu"));
  ASSIGN_OR_RETURN(c.student, LoadModel(path, "cpu"));
  torch::NoGradGuard g;
  QuantizerSpec spec;
  spec.bits = bits;
  for (const auto& p : c.student.named_parameters()) {
    if (p.value.dim() < 2) continue;
    ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(p.value, spec));
    ASSIGN_OR_RETURN(torch::Tensor w, Dequantize(q));
    p.value.copy_(w);
  }
  return c;
}

absl::StatusOr<Case> PrunedVit(const std::string& path) {
  PruneOptions o;
  o.device = "cpu";
  o.model_path = path;
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = 512;
  o.target_fraction = 0.5;
  o.recovery_steps = 0;
  o.measure_latency = false;
  o.output_dir = std::filesystem::temp_directory_path() / "bench_head_refit_vit";
  std::filesystem::create_directories(o.output_dir);
  ASSIGN_OR_RETURN(PruneReport r, RunPruning(o, nullptr, nullptr));
  Case c;
  c.name = "ViT pruned to 50% of FLOPs (Hessian saliency, 4 steps, no recovery)";
  ASSIGN_OR_RETURN(c.teacher, LoadModel(path, "cpu"));
  ASSIGN_OR_RETURN(c.student, LoadModel(r.model_path, "cpu"));
  return c;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) {
  using namespace compress::engine;
  MaybeReexecForBlas(argv);
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--no-vit") {
      args.vit = false;
    } else if (v != nullptr && a == "--calib") {
      args.calib = std::atoll(argv[++i]);
    } else if (v != nullptr && a == "--eval") {
      args.eval = std::atoll(argv[++i]);
    } else if (v != nullptr && a == "--bits") {
      args.bits = std::atoi(argv[++i]);
    } else if (v != nullptr && a == "--iters") {
      args.iters = std::atoi(argv[++i]);
    } else if (v != nullptr && a == "--adam-steps") {
      args.adam_steps = std::atoi(argv[++i]);
    } else if (v != nullptr && a == "--adam-lr") {
      args.adam_lr.clear();
      std::stringstream ss(argv[++i]);
      std::string part;
      while (std::getline(ss, part, ',')) args.adam_lr.push_back(std::atof(part.c_str()));
    } else {
      std::fprintf(stderr, "usage: bench_head_refit [--calib N] [--eval N] [--bits B] "
                           "[--iters N] [--adam-steps N] [--adam-lr LIST] [--no-vit]\n");
      return 2;
    }
  }
  at::set_num_threads(1);
  compress::bench::PrintRuntimeLines();
  Data d;
  absl::StatusOr<LoadedDataset> train = LoadDataset("builtin:fashion-mnist/train", args.calib);
  absl::StatusOr<LoadedDataset> test = LoadDataset("builtin:fashion-mnist/test", args.eval);
  if (!train.ok() || !test.ok()) {
    std::fprintf(stderr, "cannot load Fashion-MNIST\n");
    return 1;
  }
  d = {train->inputs, train->targets, test->inputs, test->targets};
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string root = src ? src : ".";
  absl::StatusOr<Case> cnn = RoundedCnn(root + "/models/fmnist_cnn.pt", args.bits);
  if (!cnn.ok()) return 1;
  RunCase(*cnn, d, args);
  if (args.vit) {
    absl::StatusOr<Case> vit = PrunedVit(root + "/models/fmnist_vit.pt");
    if (!vit.ok()) {
      std::printf("ViT pruning failed: %s\n", std::string(vit.status().message()).c_str());
      return 1;
    }
    RunCase(*vit, d, args);
  }
  return 0;
}
