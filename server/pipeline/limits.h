// The server's limits on the sizes a client may ask for: how many
// eigenvalues, iterations, probes, Lanczos steps, grid points, examples,
// steps, input elements, bytes of a name. Each bounds the memory or the time
// one request can claim; without them a spec like eigen `k: 1e9` or
// `density.grid_points: 2^31-1` is accepted and runs until the deadline or
// ends in std::bad_alloc. This is the one place that states them: every
// field is a compressd flag of the same name (server/main.cc) and a row of
// the README's Configuration table.
//
//   ServerLimits limits;               // the defaults below
//   RETURN_IF_ERROR(CheckSpecLimits(request.spec, limits));
//   // INVALID_ARGUMENT "spec.analyze.eigen.k: 1000000000 is over the server
//   // limit of 64 (--max_eigenvalues)"
//
// Only upper bounds (and the floor on tolerances) live here; the lower
// bounds of a field (k >= 1, ...) are the kind's own validation.
// Torch-free: the job layer checks limits at submit.
#ifndef COMPRESS_PIPELINE_LIMITS_H_
#define COMPRESS_PIPELINE_LIMITS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "compress/v1/compress.pb.h"

namespace compress::pipeline {

struct ServerLimits {
  // ANALYZE eigen.k: top eigenvalues (each keeps a model-sized vector);
  // default 64.
  int64_t max_eigenvalues = 64;
  // ANALYZE eigen.max_iterations: power iterations per eigenvalue; default 10000.
  int64_t max_eigen_iterations = 10000;
  // ANALYZE density.lanczos_steps: steps per Lanczos run; default 1000.
  int64_t max_lanczos_steps = 1000;
  // ANALYZE density.runs: Lanczos runs; default 100.
  int64_t max_density_runs = 100;
  // ANALYZE density.grid_points: points of the smoothed density; default 100000.
  int64_t max_grid_points = 100000;
  // ANALYZE density.max_memory_bytes: the most a spec may allow for stored
  // Lanczos vectors; default 4 GiB (the engine's default), bytes.
  int64_t max_density_memory_bytes = int64_t{4} << 30;
  // Hutchinson probes: traces.max_probes, traces.min_probes,
  // trace_max_probes (one Hessian-vector product each); default 1000000.
  int64_t max_probes = 1000000;
  // Floor of every relative tolerance (traces.tolerance, eigen.tolerance,
  // trace_tolerance): smaller ones are never met in float32 arithmetic or
  // within max_probes, so the job would only end at its deadline;
  // default 1e-9 (a fraction).
  double min_tolerance = 1e-9;
  // ANALYZE qbert.subsets: data subsets with one eigenvalue each; default 64.
  int64_t max_qbert_subsets = 64;
  // Examples: data.num_samples, saliency_samples, eval_samples; default
  // 1048576 (2^20).
  int64_t max_samples = int64_t{1} << 20;
  // Batches: data.batch_size, latency_batch; default 4096 examples.
  int64_t max_batch_size = 4096;
  // PRUNE steps (pruning rounds); default 100.
  int64_t max_prune_steps = 100;
  // PRUNE recovery.steps (fine-tuning steps per round); default 100000.
  int64_t max_recovery_steps = 100000;
  // INSPECT input_shape: elements of the input tensor, batch included; the
  // peak memory of a forward pass grows with it ([20000,1,28,28], 15.7M
  // elements, peaks at 4 GB on the reference CNN); default 4194304 (2^22,
  // 16 MiB of float32).
  int64_t max_inspect_elements = int64_t{1} << 22;
  // Bytes of any string a client stores: an upload's header.name (checked
  // by the catalog), a job's request_id and device, and every string in a
  // spec (ids, layer names); default 256.
  int64_t max_name_bytes = 256;
  // Entries of any repeated field of a spec (pins, ties, candidate bits,
  // ...): specs are stored and listed with every job; default 1024.
  int64_t max_list_items = 1024;
};

// INVALID_ARGUMENT naming the first field (as a path from "spec") and the
// flag of the limit it exceeds. Call after CheckSpecValues (NaN passes
// every comparison here).
absl::Status CheckSpecLimits(const compress::v1::JobSpec& spec, const ServerLimits& limits);

// INVALID_ARGUMENT "<field>: N bytes is over the server limit of M
// (--max_name_bytes)" when `value` is longer; `field` names it
// ("header.name", "request_id").
absl::Status CheckNameLength(const std::string& field, const std::string& value,
                             const ServerLimits& limits);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_LIMITS_H_
