// Sensitivity hygiene (search/pricing.h) on models away from a minimum: one
// 4-bit QUANTIZE job (exact search, RTN) on a TorchScript model, printed as
// one Markdown row; bench/run.sh hygiene adds the test-set output errors
// computed in stock PyTorch (tests/fixtures/hygiene_reference.py).
//
//   bench_hygiene MODEL.pt OMEGA SAMPLES PROBES OUT_DIR
//       OMEGA: quadratic or trace (Hutchinson traces computed in the job,
//       at most PROBES probes); SAMPLES calibration images.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "server/engine/quant/quantize.h"

int main(int argc, char** argv) {
  using namespace compress::engine;
  if (argc != 6) {
    std::fprintf(stderr, "usage: bench_hygiene MODEL.pt quadratic|trace SAMPLES PROBES OUT_DIR\n");
    return 2;
  }
  QuantizeOptions o;
  o.model_path = argv[1];
  o.omega = std::string(argv[2]) == "trace" ? QuantOmega::kTrace : QuantOmega::kQuadratic;
  o.calibration_dataset = "builtin:fashion-mnist/train";
  o.num_samples = std::atoll(argv[3]);
  o.batch_size = 64;
  if (std::atoi(argv[4]) > 0) o.trace_max_probes = std::atoi(argv[4]);
  o.budget = QuantBudget::AverageBits(4);
  o.output_dir = argv[5];
  absl::StatusOr<QuantizeReport> r = RunQuantization(o, nullptr, nullptr);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return 1;
  }
  int negative = 0, unconverged = 0;
  for (const QuantizedLayerReport& l : r->layers) {
    negative += l.omega.at(4) < 0;
    unconverged += l.fallback && l.omega.at(4) >= 0;
  }
  auto value = [](const std::optional<double>& v) { return v ? *v : std::nan(""); };
  // model | Ω | layers | Ω(4) < 0 | other fallbacks | avg bits | searched err
  // | uniform err | kept | HVPs | seconds
  std::printf("| %s | %s | %zu | %d | %d | %.2f | %.4g | %.4g | %s | %lld | %.0f |\n", argv[1],
              argv[2], r->layers.size(), negative, unconverged, r->average_bits,
              value(r->searched_output_error), value(r->uniform_output_error),
              r->chose_uniform ? "uniform" : "searched", static_cast<long long>(r->hvp_count),
              r->wall_seconds);
  std::printf("MODEL_PT=%s\n", r->model_path.c_str());
  return 0;
}
