// QUANTIZE quality on the reference text models (models/train_text.py):
// perplexity of the GPT-style decoder with every block Linear at 4 and 3
// bits, GPTQ versus round-to-nearest, and top-1 of the BERT-style classifier
// under Q-BERT-style mixed precision (trace sensitivity, group-wise
// quantizer, 4 average bits). Prints Markdown tables.
//
//   bench_text --data DIR [--eval N] [--samples N] [--models gpt,bert]
//       [--bits 4,3] [--gpt-group N] [--bert-group N] [--probes N]
//       [--threads N]
//   DIR holds the token datasets written by
//   `models/train_text.py --data DIR` (fmnist_tokens_{train,test}_{lm,cls}
//   .safetensors). --eval: first N test sequences (default 10000);
//   --samples: calibration sequences from the training set (default 256);
//   --gpt-group: 0 = per-channel scales (default), else the group size;
//   --bert-group: group size of Q-BERT (default 32); --probes: Hutchinson
//   probe cap of Q-BERT's traces (default 100).
//
// COMPRESS_SOURCE_DIR (default .) locates models/.
#include <ATen/Parallel.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/engine/model/model.h"
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
  int probes = 100;
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
    const std::string rounding = gptq ? "GPTQ" : "RTN";
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

}  // namespace
}  // namespace compress::engine

int main(int argc, char** argv) {
  using namespace compress::engine;
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: bench_text --data DIR [--eval N] [--samples N] [--models gpt,bert] "
                 "[--bits 4,3] [--gpt-group N] [--bert-group N] [--probes N] [--threads N]\n");
    return 2;
  }
  if (args.threads > 0) at::set_num_threads(args.threads);
  for (const std::string& m : args.models) {
    const int rc = m == "gpt" ? Gpt(args) : m == "bert" ? Bert(args) : 2;
    if (rc != 0) return rc;
  }
  return 0;
}
