// compressd: the compression service. Every flag can also be set through the
// environment as COMPRESSD_<FLAG IN UPPER CASE> (the command line wins).
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/engine/common/runtime.h"
#include "server/service/server.h"
#include "server/store/metadata_store.h"
#include "server/store/pg_metadata_store.h"
#include "server/store/s3/s3_blob_store.h"
#include "server/store/s3/s3_config.h"
#include "server/worker/child_main.h"

namespace {
const compress::service::ServerOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, listen, kDefaults.listen, "gRPC listen address (host:port; port 0 picks one)");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen,
          "Prometheus metrics HTTP address (host:port); empty disables it");
ABSL_FLAG(std::string, health_listen, kDefaults.health_listen,
          "plaintext gRPC address serving only grpc.health.v1, for probes that speak no TLS "
          "(kubelet); empty disables it");
ABSL_FLAG(std::string, tls_cert, kDefaults.tls_cert,
          "PEM certificate chain of the gRPC server; with --tls_key turns TLS on");
ABSL_FLAG(std::string, tls_key, kDefaults.tls_key, "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, kDefaults.tls_client_ca,
          "PEM CA bundle; when set, clients must present a certificate it signed");
ABSL_FLAG(std::string, token_file, kDefaults.token_file,
          "file of \"TOKEN TENANT\" lines (re-read when it changes); empty = single tenant, "
          "no tokens");
ABSL_FLAG(std::string, data_dir, kDefaults.data_dir,
          "directory for blobs and the SQLite metadata database");
ABSL_FLAG(std::string, database, kDefaults.database,
          "metadata database: empty = SQLite in --data_dir; postgresql://user@host/db = "
          "PostgreSQL 15 (password from PGPASSWORD or ~/.pgpass); one replica for now");
ABSL_FLAG(std::string, blob_store, kDefaults.blob_store,
          "where blobs live: empty = <data_dir>/blobs; s3://bucket/prefix = an S3-compatible "
          "bucket (endpoint from COMPRESSD_S3_ENDPOINT, credentials from AWS_ACCESS_KEY_ID / "
          "AWS_SECRET_ACCESS_KEY), cached in <data_dir>/blob-cache");
ABSL_FLAG(int64_t, blob_cache_bytes, kDefaults.blob_cache_bytes,
          "with --blob_store=s3://: bound of the local blob cache in bytes (least recently "
          "used blobs are removed first, never one used in the last 10 minutes); 0 = unbounded");
ABSL_FLAG(int, cpu_workers, kDefaults.cpu_workers, "jobs that run at once on the CPU");
ABSL_FLAG(bool, use_cuda, kDefaults.use_cuda, "add one worker slot per visible CUDA device");
ABSL_FLAG(int, threads, kDefaults.intra_op_threads,
          "LibTorch intra-op threads per job; 0 = the available cores (affinity mask, cgroup "
          "CPU quota) split between --cpu_workers");
ABSL_FLAG(int, max_queued, kDefaults.max_queued,
          "queued jobs accepted before SubmitJob answers RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_model_bytes, kDefaults.max_model_bytes,
          "largest model upload, bytes (larger: RESOURCE_EXHAUSTED)");
ABSL_FLAG(int64_t, max_dataset_bytes, kDefaults.max_dataset_bytes,
          "largest dataset upload, bytes (larger: RESOURCE_EXHAUSTED)");
ABSL_FLAG(absl::Duration, default_deadline, kDefaults.default_deadline,
          "run time limit of a job that sets none (e.g. 24h, 90m)");
ABSL_FLAG(int, max_attempts, kDefaults.max_attempts,
          "server restarts a running job survives before it is FAILED");
ABSL_FLAG(absl::Duration, drain_grace, absl::Seconds(30),
          "on SIGTERM, how long running jobs may finish before they are re-queued");
ABSL_FLAG(std::string, fashion_mnist_dir, kDefaults.fashion_mnist_dir,
          "IDX files for the builtin:fashion-mnist datasets");
ABSL_FLAG(bool, reflection, kDefaults.reflection, "enable gRPC server reflection");
ABSL_FLAG(std::string, role, kDefaults.role,
          "all: the API and the job slots in one process (SQLite + local files, or "
          "PostgreSQL); api: the gRPC API only; worker: claims jobs from the shared queue "
          "(api and worker need --database=postgresql://...); child: internal");
ABSL_FLAG(std::string, worker_id, kDefaults.worker_id,
          "lease owner in the shared job queue, unique per process; empty = hostname-pid");
ABSL_FLAG(absl::Duration, lease, kDefaults.lease,
          "shared queue: a worker that stops renewing (killed, partitioned) loses its job "
          "after this; the job then runs again as its next attempt");
ABSL_FLAG(absl::Duration, gc_min_age, absl::Hours(24),
          "`compressd gc`: delete unreferenced blobs only when older than this (must exceed "
          "the 1 h upload-reuse window, so a blob about to be referenced is never swept)");
ABSL_FLAG(bool, migrate_on_start, kDefaults.migrate_on_start,
          "PostgreSQL: bring the schema up to date at start (safe with several replicas); "
          "false = refuse to start on an old schema (run `compressd migrate`)");
ABSL_FLAG(int64_t, worker_memory_limit, -1,
          "address-space limit of each process that runs model work, bytes; -1 = 80% of the "
          "machine's memory split between --cpu_workers, 0 = none");
ABSL_FLAG(absl::Duration, worker_cpu_limit, absl::InfiniteDuration(),
          "CPU time limit of each process that runs model work (e.g. 2h); inf = none");
ABSL_FLAG(absl::Duration, worker_grace, kDefaults.worker_grace,
          "after SIGTERM (cancel, deadline, shutdown), how long a worker process may take "
          "before SIGKILL");
ABSL_FLAG(bool, worker_seccomp, kDefaults.worker_seccomp,
          "run each process that does model work under a seccomp filter: no network "
          "sockets (AF_UNIX only), no ptrace, no namespaces or mounts, no module, bpf or "
          "perf calls (each fails with EPERM)");
ABSL_FLAG(absl::Duration, validate_deadline, kDefaults.validate_deadline,
          "how long loading an uploaded model to validate it may take");

// Limits on what one request may ask for (server/pipeline/limits.h); a spec
// over any of them is refused at submit with INVALID_ARGUMENT naming the
// field and the flag.
ABSL_FLAG(int64_t, max_eigenvalues, kDefaults.limits.max_eigenvalues,
          "largest ANALYZE eigen.k (top eigenvalues; each keeps a model-sized vector)");
ABSL_FLAG(int64_t, max_eigen_iterations, kDefaults.limits.max_eigen_iterations,
          "largest ANALYZE eigen.max_iterations (power iterations per eigenvalue)");
ABSL_FLAG(int64_t, max_lanczos_steps, kDefaults.limits.max_lanczos_steps,
          "largest ANALYZE density.lanczos_steps");
ABSL_FLAG(int64_t, max_density_runs, kDefaults.limits.max_density_runs,
          "largest ANALYZE density.runs (Lanczos runs)");
ABSL_FLAG(int64_t, max_grid_points, kDefaults.limits.max_grid_points,
          "largest ANALYZE density.grid_points");
ABSL_FLAG(int64_t, max_density_memory_bytes, kDefaults.limits.max_density_memory_bytes,
          "largest ANALYZE density.max_memory_bytes (stored Lanczos vectors), bytes");
ABSL_FLAG(int64_t, max_probes, kDefaults.limits.max_probes,
          "largest Hutchinson probe count (traces.max_probes, traces.min_probes, "
          "trace_max_probes)");
ABSL_FLAG(double, min_tolerance, kDefaults.limits.min_tolerance,
          "smallest relative tolerance (traces.tolerance, eigen.tolerance, trace_tolerance)");
ABSL_FLAG(int64_t, max_qbert_subsets, kDefaults.limits.max_qbert_subsets,
          "largest ANALYZE qbert.subsets");
ABSL_FLAG(int64_t, max_samples, kDefaults.limits.max_samples,
          "largest example count of a spec (data.num_samples, saliency_samples, eval_samples)");
ABSL_FLAG(int64_t, max_batch_size, kDefaults.limits.max_batch_size,
          "largest batch of a spec (data.batch_size, latency_batch), examples");
ABSL_FLAG(int64_t, max_prune_steps, kDefaults.limits.max_prune_steps,
          "largest PRUNE steps (pruning rounds)");
ABSL_FLAG(int64_t, max_recovery_steps, kDefaults.limits.max_recovery_steps,
          "largest PRUNE recovery.steps (fine-tuning steps per round)");
ABSL_FLAG(int64_t, max_inspect_elements, kDefaults.limits.max_inspect_elements,
          "largest INSPECT input (product of input_shape, batch included), elements");
ABSL_FLAG(int64_t, max_name_bytes, kDefaults.limits.max_name_bytes,
          "longest upload name (header.name), request_id, device or string in a job spec, bytes");
ABSL_FLAG(int64_t, max_list_items, kDefaults.limits.max_list_items,
          "most entries of any repeated field of a job spec (pins, ties, candidate_bits, ...)");

namespace {

// Environment first, so that the command line (parsed after) wins.
void ApplyEnvironment() {
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename().find("server/main.cc") == std::string::npos) continue;
    std::string env = absl::StrCat("COMPRESSD_", absl::AsciiStrToUpper(name));
    const char* value = std::getenv(env.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      fprintf(stderr, "compressd: %s=%s: %s\n", env.c_str(), value, error.c_str());
      std::exit(2);
    }
  }
}

// The running binary, which the server starts again as --role=child.
std::string SelfExecutable() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : self.string();
}

// 80% of physical memory split between the CPU job slots.
int64_t DefaultWorkerMemory(int cpu_workers) {
  const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  return physical / 5 * 4 / std::max(1, cpu_workers);
}

// `compressd migrate`: the PostgreSQL schema up to date, then exit. Safe
// while replicas run or start (an advisory lock orders migrations).
int Migrate() {
  const std::string database = absl::GetFlag(FLAGS_database);
  if (!compress::store::IsPostgresUrl(database)) {
    fprintf(stderr, "compressd migrate: --database must be a postgresql:// URL (SQLite "
                    "migrates itself at start)\n");
    return 2;
  }
  compress::store::PgMetadataStoreOptions options;
  options.url = database;
  options.max_connections = 1;
  auto store = compress::store::PgMetadataStore::Create(options);
  if (!store.ok()) {
    fprintf(stderr, "compressd migrate: %s\n", store.status().ToString().c_str());
    return 1;
  }
  printf("compressd migrate: schema at version %lld\n",
         static_cast<long long>(compress::store::PgMetadataStore::LatestSchemaVersion()));
  return 0;
}

// `compressd gc`: mark (every digest the metadata refers to) and sweep (the
// bucket's blobs outside that set and older than --gc_min_age). For the S3
// store only: a local blob directory loses a blob with its last reference.
int CollectGarbage() {
  const std::string url = absl::GetFlag(FLAGS_blob_store);
  if (url.empty()) {
    fprintf(stderr, "compressd gc: --blob_store must be s3://... (local blobs are deleted with "
                    "the model or dataset that was their last reference)\n");
    return 2;
  }
  std::string database = absl::GetFlag(FLAGS_database);
  if (database.empty()) database = absl::GetFlag(FLAGS_data_dir) + "/compressd.db";
  compress::store::MetadataStoreOptions mo;
  mo.migrate = false;
  auto metadata = compress::store::OpenMetadataStore(database, mo);
  auto config = compress::store::S3ConfigFromEnvironment(url);
  if (!metadata.ok() || !config.ok()) {
    fprintf(stderr, "compressd gc: %s\n",
            (metadata.ok() ? config.status() : metadata.status()).ToString().c_str());
    return 1;
  }
  compress::store::S3BlobStoreOptions so;
  so.client.config = *std::move(config);
  auto bucket = compress::store::S3BlobStore::Create(so);
  // References first, then the listing: a blob referenced after this read
  // is young (uploaded or refreshed within the reuse window) and kept.
  auto referenced = (*metadata)->ReferencedBlobs();
  if (!bucket.ok() || !referenced.ok()) {
    fprintf(stderr, "compressd gc: %s\n",
            (bucket.ok() ? referenced.status() : bucket.status()).ToString().c_str());
    return 1;
  }
  auto report = (*bucket)->CollectGarbage(*referenced, absl::GetFlag(FLAGS_gc_min_age));
  if (!report.ok()) {
    fprintf(stderr, "compressd gc: %s\n", report.status().ToString().c_str());
    return 1;
  }
  for (const auto& b : report->deleted) {
    printf("deleted %s (%lld bytes, last written %s)\n", b.sha256.c_str(),
           static_cast<long long>(b.size),
           absl::FormatTime(absl::RFC3339_sec, b.last_modified, absl::UTCTimeZone()).c_str());
  }
  printf("compressd gc: deleted %zu blob(s), %lld bytes; kept %lld referenced, %lld younger "
         "than %s; %lld foreign key(s) untouched\n",
         report->deleted.size(), static_cast<long long>(report->bytes_deleted),
         static_cast<long long>(report->kept_referenced),
         static_cast<long long>(report->kept_young),
         absl::FormatDuration(absl::GetFlag(FLAGS_gc_min_age)).c_str(),
         static_cast<long long>(report->foreign_keys));
  return 0;
}

compress::pipeline::ServerLimits LimitsFromFlags() {
  compress::pipeline::ServerLimits l;
  l.max_eigenvalues = absl::GetFlag(FLAGS_max_eigenvalues);
  l.max_eigen_iterations = absl::GetFlag(FLAGS_max_eigen_iterations);
  l.max_lanczos_steps = absl::GetFlag(FLAGS_max_lanczos_steps);
  l.max_density_runs = absl::GetFlag(FLAGS_max_density_runs);
  l.max_grid_points = absl::GetFlag(FLAGS_max_grid_points);
  l.max_density_memory_bytes = absl::GetFlag(FLAGS_max_density_memory_bytes);
  l.max_probes = absl::GetFlag(FLAGS_max_probes);
  l.min_tolerance = absl::GetFlag(FLAGS_min_tolerance);
  l.max_qbert_subsets = absl::GetFlag(FLAGS_max_qbert_subsets);
  l.max_samples = absl::GetFlag(FLAGS_max_samples);
  l.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  l.max_prune_steps = absl::GetFlag(FLAGS_max_prune_steps);
  l.max_recovery_steps = absl::GetFlag(FLAGS_max_recovery_steps);
  l.max_inspect_elements = absl::GetFlag(FLAGS_max_inspect_elements);
  l.max_name_bytes = absl::GetFlag(FLAGS_max_name_bytes);
  l.max_list_items = absl::GetFlag(FLAGS_max_list_items);
  return l;
}

// The server's options from the flags (and COMPRESSD_* variables).
compress::service::ServerOptions ServerOptionsFromFlags() {
  compress::service::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.database = absl::GetFlag(FLAGS_database);
  options.blob_store = absl::GetFlag(FLAGS_blob_store);
  options.blob_cache_bytes = absl::GetFlag(FLAGS_blob_cache_bytes);
  options.cpu_workers = absl::GetFlag(FLAGS_cpu_workers);
  options.use_cuda = absl::GetFlag(FLAGS_use_cuda);
  options.intra_op_threads = absl::GetFlag(FLAGS_threads);
  options.max_queued = absl::GetFlag(FLAGS_max_queued);
  options.max_model_bytes = absl::GetFlag(FLAGS_max_model_bytes);
  options.max_dataset_bytes = absl::GetFlag(FLAGS_max_dataset_bytes);
  options.default_deadline = absl::GetFlag(FLAGS_default_deadline);
  options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.fashion_mnist_dir = absl::GetFlag(FLAGS_fashion_mnist_dir);
  options.reflection = absl::GetFlag(FLAGS_reflection);
  options.role = absl::GetFlag(FLAGS_role);
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  options.lease = absl::GetFlag(FLAGS_lease);
  options.migrate_on_start = absl::GetFlag(FLAGS_migrate_on_start);
  options.worker_executable = SelfExecutable();  // "" is refused by main
  const int64_t memory = absl::GetFlag(FLAGS_worker_memory_limit);
  options.worker_memory_bytes = memory < 0 ? DefaultWorkerMemory(options.cpu_workers) : memory;
  options.worker_cpu_time = absl::GetFlag(FLAGS_worker_cpu_limit);
  options.worker_grace = absl::GetFlag(FLAGS_worker_grace);
  options.validate_deadline = absl::GetFlag(FLAGS_validate_deadline);
  options.worker_seccomp = absl::GetFlag(FLAGS_worker_seccomp);
  options.limits = LimitsFromFlags();
  return options;
}

// What the operator should know once the server is up, on stderr.
void LogStartup(const compress::service::ServerOptions& options,
                compress::service::Server& server) {
  const std::string& role = options.role;
  fprintf(stderr, "compressd: gRPC %s%s; %s; health-only plaintext port %s\n",
          options.tls_cert.empty() ? "plaintext" : "over TLS",
          options.tls_client_ca.empty() ? "" : " (client certificates required)",
          options.token_file.empty() ? "single tenant, no tokens"
                                     : ("bearer tokens from " + options.token_file).c_str(),
          server.health_port() == 0 ? "off"
                                        : std::to_string(server.health_port()).c_str());
  fprintf(stderr, "compressd: role %s%s\n", role.c_str(),
          compress::store::IsPostgresUrl(options.database)
              ? absl::StrCat(", shared queue on PostgreSQL, lease ",
                             absl::FormatDuration(options.lease))
                    .c_str()
              : ", in-memory queue on SQLite");
  if (role == "api") {
    fprintf(stderr, "compressd: no job slots (--role=api): workers claim the jobs\n");
  } else {
    fprintf(stderr,
            "compressd: %d CPU job slot(s) x %d LibTorch thread(s); %d core(s) available\n",
            options.cpu_workers, server.intra_op_threads(),
            compress::engine::AvailableCores());
  }
  fprintf(stderr, "compressd: model work in child processes (%s), memory limit %s each, %s\n",
          options.worker_executable.c_str(),
          options.worker_memory_bytes > 0
              ? absl::StrCat(options.worker_memory_bytes >> 20, " MiB").c_str()
              : "none",
          options.worker_seccomp ? "seccomp filter on" : "no seccomp filter");
  if (!options.token_file.empty() && options.tls_cert.empty()) {
    fprintf(stderr, "compressd: WARNING: bearer tokens without TLS travel in cleartext\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything else: may re-execute this program with OpenBLAS's
  // kernels chosen for the CPU (see runtime.h).
  compress::engine::MaybeReexecForBlas(argv);
  absl::SetProgramUsageMessage(
      "Hessian-aware neural network compression service.\n"
      "Every flag may also be set as COMPRESSD_<FLAG> in the environment.\n"
      "Usage: compressd [--flag=value ...]\n"
      "       compressd migrate --database=postgresql://...   (schema only, then exit)\n"
      "       compressd gc --blob_store=s3://... [--database=...] [--gc_min_age=24h]\n"
      "         (deletes blobs that no model, dataset or artifact refers to, then exits)");
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_helpshort_flags = [](absl::string_view f) {
    return f.find("server/main.cc") != absl::string_view::npos;
  };
  usage_config.contains_help_flags = usage_config.contains_helpshort_flags;
  absl::SetFlagsUsageConfig(usage_config);
  ApplyEnvironment();
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role == "child") return compress::worker::RunChildMain();
  if (args.size() == 2 && std::string(args[1]) == "migrate") return Migrate();
  if (args.size() == 2 && std::string(args[1]) == "gc") return CollectGarbage();
  if (args.size() > 1) {
    fprintf(stderr, "compressd: unexpected argument %s (commands: migrate, gc)\n", args[1]);
    return 2;
  }

  // Block SIGTERM/SIGINT in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  compress::service::ServerOptions options = ServerOptionsFromFlags();
  if (options.worker_executable.empty()) {
    fprintf(stderr, "compressd: cannot find its own executable in /proc/self/exe\n");
    return 1;
  }

  const std::string blas = compress::engine::VerifyBlasChoice(argv);
  if (!blas.empty()) fprintf(stderr, "compressd: %s\n", blas.c_str());

  auto server = compress::service::Server::Create(options);
  if (!server.ok()) {
    fprintf(stderr, "compressd: cannot start: %s\n", server.status().ToString().c_str());
    return 1;
  }
  LogStartup(options, **server);
  // One line on stdout that scripts and tests can wait for.
  printf("compressd listening on port %d, metrics on port %d, data in %s\n", (*server)->port(),
         (*server)->metrics_port(), options.data_dir.c_str());
  fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  fprintf(stderr, "compressd: signal %d, draining (up to %s)\n", sig,
          absl::FormatDuration(absl::GetFlag(FLAGS_drain_grace)).c_str());
  (*server)->Drain(absl::GetFlag(FLAGS_drain_grace));
  fprintf(stderr, "compressd: stopped\n");
  return 0;
}
