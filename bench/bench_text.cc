// QUANTIZE quality on the reference text models (models/train_text.py):
// perplexity of the GPT-style decoder with every block Linear at 4 and 3
// bits, GPTQ versus round-to-nearest, and top-1 of the BERT-style classifier
// under Q-BERT-style mixed precision (trace sensitivity, group-wise
// quantizer, 4 average bits); and PRUNE of the classifier (Hessian saliency,
// a FLOPs target, distillation recovery): FLOPs removed, top-1 before and
// after, latency at batch 64 before and after timed alternately in one
// process. Prints Markdown tables.
//
//   bench_text --data DIR [--eval N] [--samples N]
//       [--models gpt,bert,bert-prune] [--bits 4,3] [--gpt-group N]
//       [--bert-group N] [--bert-rounding rtn,gptq] [--probes N]
//       [--prune-target F] [--prune-steps N] [--recovery N] [--lr X]
//       [--prune-samples N] [--threads N]
//   DIR holds the token datasets written by
//   `models/train_text.py --data DIR` (fmnist_tokens_{train,test}_{lm,cls}
//   .safetensors). --eval: first N test sequences (default 10000);
//   --samples: calibration sequences from the training set (default 256);
//   --gpt-group: 0 = per-channel scales (default), else the group size;
//   --bert-group: group size of Q-BERT (default 32); --probes: Hutchinson
//   probe cap of Q-BERT's traces (default 100); --bert-rounding: which
//   Q-BERT jobs to run (default both). bert-prune (not in the default
//   --models): --prune-target fraction of FLOPs to remove (default 0.4) in
//   --prune-steps rounds (default 2), --recovery distillation steps per round
//   (default 1000, Adam, cosine from --lr, default 1e-3) on the first
//   --prune-samples training sequences (default 0 = all); --prune-out DIR
//   keeps the pruned model.pt there (default: a temporary directory, removed).
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/engine/common/runtime.h"
#include "server/engine/model/model.h"
#include "server/engine/prune/prune.h"
#include "server/engine/quant/calibration.h"
#include "server/engine/quant/quantize.h"

namespace compress::engine {
namespace {

struct Args {
  std::string data;
  int64_t eval = 10000;
  int64_t samples = 256;
  std::vector<std::string> models = {"gpt", "bert"};
  std::vector<int> bits = {4, 3};
  int gpt_group = 0;
  int bert_group = 32;
  std::vector<std::string> bert_rounding = {"rtn", "gptq"};
  int probes = 100;
  double prune_target = 0.4;
  int prune_steps = 2;
  int recovery = 1000;
  double lr = 1e-3;
  int64_t prune_samples = 0;
  std::string prune_out;
  int threads = 0;
};

std::string SourceDir() {
  const char* dir = std::getenv("COMPRESS_SOURCE_DIR");
  return dir != nullptr && *dir != '\0' ? dir : ".";
}

std::string TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "bench_text_XXXXXX").string();
  return mkdtemp(pattern.data()) == nullptr ? "" : pattern;
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return false;
    const std::string value = argv[++i];
    bool ok = true;
    if (flag == "--data") {
      a->data = value;
    } else if (flag == "--eval") {
      ok = absl::SimpleAtoi(value, &a->eval);
    } else if (flag == "--samples") {
      ok = absl::SimpleAtoi(value, &a->samples);
    } else if (flag == "--models") {
      a->models = absl::StrSplit(value, ',');
    } else if (flag == "--bits") {
      a->bits.clear();
      for (absl::string_view b : absl::StrSplit(value, ',')) {
        int v = 0;
        ok = ok && absl::SimpleAtoi(b, &v);
        a->bits.push_back(v);
      }
    } else if (flag == "--gpt-group") {
      ok = absl::SimpleAtoi(value, &a->gpt_group);
    } else if (flag == "--bert-group") {
      ok = absl::SimpleAtoi(value, &a->bert_group);
    } else if (flag == "--bert-rounding") {
      a->bert_rounding = absl::StrSplit(value, ',');
    } else if (flag == "--prune-target") {
      ok = absl::SimpleAtod(value, &a->prune_target);
    } else if (flag == "--prune-steps") {
      ok = absl::SimpleAtoi(value, &a->prune_steps);
    } else if (flag == "--recovery") {
      ok = absl::SimpleAtoi(value, &a->recovery);
    } else if (flag == "--lr") {
      ok = absl::SimpleAtod(value, &a->lr);
    } else if (flag == "--prune-samples") {
      ok = absl::SimpleAtoi(value, &a->prune_samples);
    } else if (flag == "--prune-out") {
      a->prune_out = value;
    } else if (flag == "--probes") {
      ok = absl::SimpleAtoi(value, &a->probes);
    } else if (flag == "--threads") {
      ok = absl::SimpleAtoi(value, &a->threads);
    } else {
      return false;
    }
    if (!ok) return false;
  }
  return !a->data.empty();
}

// Options shared by every job of `model` ("gpt" or "bert").
QuantizeOptions BaseOptions(const Args& a, const std::string& model) {
  const std::string kind = model == "gpt" ? "lm" : "cls";
  QuantizeOptions o;
  o.model_path = SourceDir() + "/models/fmnist_" + model + ".pt";
  o.calibration_dataset = a.data + "/fmnist_tokens_train_" + kind + ".safetensors";
  o.eval_dataset = a.data + "/fmnist_tokens_test_" + kind + ".safetensors";
  o.num_samples = a.samples;
  o.eval_samples = a.eval;
  if (model == "gpt") o.loss = LossKind::kLanguageModeling;
  return o;
}

absl::StatusOr<QuantizeReport> Run(QuantizeOptions o) {
  o.output_dir = TempDir();
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  std::error_code ec;
  std::filesystem::remove_all(o.output_dir, ec);
  if (!r.ok()) std::fprintf(stderr, "%s: %s\n", o.model_path.c_str(), r.status().ToString().c_str());
  return r;
}

// Every block Linear at `bits`, the embeddings (and the head tied to the
// token embedding) kept float, as in GPTQ's own experiments: all layers
// pinned, so the search has nothing to choose.
int Gpt(const Args& a) {
  QuantizeOptions base = BaseOptions(a, "gpt");
  absl::StatusOr<torch::jit::Module> model = LoadModel(base.model_path);
  if (!model.ok()) return 1;
  absl::StatusOr<std::vector<QuantizableLayer>> layers = QuantizableLayers(*model);
  if (!layers.ok()) return 1;
  const char* granularity = a.gpt_group > 0 ? "group" : "per-channel";
  std::printf("\n## Decoder fmnist_gpt.pt: perplexity on %lld test sequences\n\n",
              static_cast<long long>(a.eval));
  std::printf("Block Linears at the given bits (symmetric, %s%s), embeddings and the tied head "
              "float; %lld calibration sequences.\n\n",
              granularity,
              a.gpt_group > 0 ? (" " + std::to_string(a.gpt_group)).c_str() : "",
              static_cast<long long>(a.samples));
  std::printf("| weights | rounding | avg bits | perplexity | change | s |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  bool printed_float = false;
  for (int bits : a.bits) {
    for (bool gptq : {true, false}) {
      QuantizeOptions o = base;
      o.gptq = gptq;
      if (a.gpt_group > 0) {
        o.granularity = "group";
        o.group_size = a.gpt_group;
      }
      o.candidate_bits = {bits};
      o.budget = QuantBudget::AverageBits(kFloatBits);
      std::map<std::string, int> pins;
      for (const QuantizableLayer& l : *layers) {
        const bool embedding = l.name == "embed" || l.name == "pos";
        pins[l.name] = embedding ? kFloatBits : bits;
      }
      o.pins = pins;
      absl::StatusOr<QuantizeReport> r = Run(o);
      if (!r.ok() || !r->perplexity_before || !r->perplexity_after) return 1;
      if (!printed_float) {
        std::printf("| float32 | - | 32 | %.4f | - | - |\n", *r->perplexity_before);
        printed_float = true;
      }
      std::printf("| %d-bit | %s | %.2f | %.4f | %+.2f %% | %.0f |\n", bits,
                  gptq ? "GPTQ" : "RTN", r->average_bits, *r->perplexity_after,
                  100.0 * (*r->perplexity_after / *r->perplexity_before - 1.0), r->wall_seconds);
      std::fflush(stdout);
    }
  }
  return 0;
}

void BertRow(const std::string& name, const std::string& rounding, double bits, double acc,
             double before, double seconds) {
  std::printf("| %s | %s | %.2f | %.2f | %+.2f | %s |\n", name.c_str(), rounding.c_str(), bits,
              acc, acc - before, seconds > 0 ? std::to_string(static_cast<int>(seconds)).c_str()
                                             : "-");
}

// Q-BERT: Hessian-guided mixed precision over {2, 3, 4, 8} bits at 4
// average bits (trace sensitivity, HAWQ-V2's Ω), group-wise quantizer,
// default pins (the token embedding and the classifier at 8 bits); the
// job's uniform and no-Hessian baselines at the same size next to it.
int Bert(const Args& a) {
  std::printf("\n## Classifier fmnist_bert.pt: top-1 on %lld test sequences\n\n",
              static_cast<long long>(a.eval));
  std::printf("Q-BERT-style: trace Ω (Hutchinson, at most %d probes), exact search over "
              "{2,3,4,8} bits at 4 average bits, symmetric group-wise %d, first and last layer "
              "at 8 bits; baselines at the same size from the same job; %lld calibration "
              "sequences.\n\n",
              a.probes, a.bert_group, static_cast<long long>(a.samples));
  std::printf("| allocation | rounding | avg bits | top-1 %% | change (pp) | s |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  bool printed_float = false;
  for (bool gptq : {false, true}) {
    const std::string rounding = gptq ? "GPTQ" : "RTN";
    if (std::find(a.bert_rounding.begin(), a.bert_rounding.end(), gptq ? "gptq" : "rtn") ==
        a.bert_rounding.end()) {
      continue;
    }
    QuantizeOptions o = BaseOptions(a, "bert");
    o.omega = QuantOmega::kTrace;
    o.trace_max_probes = a.probes;
    o.granularity = "group";
    o.group_size = a.bert_group;
    o.gptq = gptq;
    o.budget = QuantBudget::AverageBits(4);
    absl::StatusOr<QuantizeReport> r = Run(o);
    if (!r.ok() || !r->accuracy_before || !r->accuracy_after) return 1;
    const double before = *r->accuracy_before;
    if (!printed_float) {
      std::printf("| float32 | - | 32 | %.2f | - | - |\n", before);
      printed_float = true;
    }
    BertRow("Q-BERT (trace Ω)", rounding, r->average_bits, *r->accuracy_after, before,
            r->wall_seconds);
    for (const QuantBaseline& b : r->baselines) {
      if (!b.accuracy) continue;
      BertRow(b.name == "uniform" ? "uniform bits" : "no Hessian (‖δ‖²)", rounding,
              b.average_bits, *b.accuracy, before, 0);
    }
    std::fflush(stdout);
  }
  return 0;
}

// PRUNE of the classifier as a job runs it (RunPruning): Hessian saliency,
// FLOPs target, distillation from the original on the training sequences
// after each round; top-1 on the eval sequences and latency at batch 64,
// original and pruned timed alternately at the end of the job.
int BertPrune(const Args& a) {
  PruneOptions o;
  o.model_path = SourceDir() + "/models/fmnist_bert.pt";
  o.calibration_dataset = a.data + "/fmnist_tokens_train_cls.safetensors";
  o.num_samples = a.prune_samples;
  o.saliency_samples = a.samples;
  o.eval_dataset = a.data + "/fmnist_tokens_test_cls.safetensors";
  o.eval_samples = a.eval;
  o.target_fraction = a.prune_target;
  o.steps = a.prune_steps;
  o.recovery_steps = a.recovery;
  o.learning_rate = a.lr;
  o.output_dir = a.prune_out.empty() ? TempDir() : a.prune_out;
  std::printf("\n## PRUNE of fmnist_bert.pt: top-1 on %lld test sequences\n\n"
              "Hessian saliency on %lld training sequences, %.0f %% of FLOPs in %d rounds, "
              "%d recovery steps per round (Adam, batch 64, cosine from %g) on %s training "
              "sequences, latency at batch 64 (original and pruned alternately, median).\n\n",
              static_cast<long long>(a.eval), static_cast<long long>(a.samples),
              100 * a.prune_target, a.prune_steps, a.recovery, a.lr,
              a.prune_samples > 0 ? std::to_string(a.prune_samples).c_str() : "all");
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  std::error_code ec;
  if (!r.ok()) {
    std::fprintf(stderr, "%s: %s\n", o.model_path.c_str(), r.status().ToString().c_str());
    if (a.prune_out.empty()) std::filesystem::remove_all(o.output_dir, ec);
    return 1;
  }
  std::string heads, widths;
  for (const PrunedBlock& b : r->blocks) {
    heads += (heads.empty() ? "" : ",") + std::to_string(b.heads_after);
    widths += (widths.empty() ? "" : ",") + std::to_string(b.hidden_after);
  }
  const double removed =
      1 - static_cast<double>(r->macs_after) / static_cast<double>(r->macs_before);
  std::printf("| FLOPs removed | params | top-1 before → after | change (pp) | latency ms "
              "before → after | speed-up | heads per block | MLP per block | s |\n"
              "|---:|---|---|---:|---|---:|---|---|---:|\n");
  if (r->accuracy_before && r->accuracy_after && r->latency_before_ms && r->latency_after_ms) {
    std::printf("| %.1f %% | %lld → %lld | %.2f → %.2f | %+.2f | %.2f → %.2f | %.2fx | %s | %s | "
                "%.0f |\n",
                100 * removed, static_cast<long long>(r->params_before),
                static_cast<long long>(r->params_after), *r->accuracy_before, *r->accuracy_after,
                *r->accuracy_after - *r->accuracy_before, *r->latency_before_ms,
                *r->latency_after_ms, *r->latency_before_ms / *r->latency_after_ms, heads.c_str(),
                widths.c_str(), r->wall_seconds);
  }
  for (const PruneRound& round : r->rounds) {
    std::printf("round %d: loss %.4f → %.4f after recovery, top-1 (first %lld) %.2f → %.2f\n",
                round.round, round.loss_before_recovery, round.loss_after_recovery,
                static_cast<long long>(o.step_eval_samples),
                round.accuracy_before_recovery.value_or(-1), round.accuracy.value_or(-1));
  }
  for (const std::string& w : r->warnings) {
    std::printf("warning: %s\n", w.substr(0, w.find('\n')).c_str());
  }
  std::fflush(stdout);
  if (a.prune_out.empty()) std::filesystem::remove_all(o.output_dir, ec);
  return 0;
}

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) {
  using namespace compress::engine;
  MaybeReexecForBlas(argv);
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: bench_text --data DIR [--eval N] [--samples N] [--models gpt,bert] "
                 "[--bits 4,3] [--gpt-group N] [--bert-group N] [--bert-rounding rtn,gptq] "
                 "[--probes N] [--prune-target F] [--prune-steps N] [--recovery N] [--lr X] "
                 "[--prune-samples N] [--prune-out DIR] [--threads N]\n");
    return 2;
  }
  ConfigureThreads(args.threads);
  const std::string check = VerifyBlasChoice(argv);
  std::printf("%s%s%s\n", check.c_str(), check.empty() ? "" : "\n", BlasDescription().c_str());
  for (const std::string& m : args.models) {
    const int rc = m == "gpt"          ? Gpt(args)
                   : m == "bert"       ? Bert(args)
                   : m == "bert-prune" ? BertPrune(args)
                                       : 2;
    if (rc != 0) return rc;
  }
  return 0;
}
