// The cost of running model work in child processes (issue 13): the same
// server in-process (worker_executable empty: the handlers run on the worker
// thread, as before) and with every upload validation and job in
// `compressd --role=child`. Prints a Markdown table of medians over N runs:
// model upload (validation), submit -> first progress event and
// submit -> SUCCEEDED for an INSPECT and a small ANALYZE of the reference CNN.
// Usage: bench_sandbox --compressd=build/server/compressd [--runs=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/service/server.h"

namespace v1 = compress::v1;
using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--" + name + "=")) return a.substr(name.size() + 3);
  }
  return def;
}

struct Timing {
  std::vector<double> upload, inspect_first, inspect_total, analyze_first, analyze_total;
};

// Submits and watches one job: (first progress event, terminal) in ms.
bool RunJob(compress::client::Client& client, const v1::SubmitJobRequest& request,
            std::vector<double>* first_ms, std::vector<double>* total_ms) {
  const auto start = Clock::now();
  auto job = client.SubmitJob(request);
  if (!job.ok()) {
    fprintf(stderr, "submit: %s\n", job.status().ToString().c_str());
    return false;
  }
  double first = -1;
  auto state = client.WatchJob(job->id(), 0, [&](const v1::JobEvent& e) {
    if (first < 0 && e.has_progress()) first = Ms(start, Clock::now());
  });
  const double total = Ms(start, Clock::now());
  if (!state.ok() || *state != v1::JOB_STATE_SUCCEEDED) {
    fprintf(stderr, "job %s did not succeed: %s\n", job->id().c_str(),
            client.GetJob(job->id())->error().message().c_str());
    return false;
  }
  first_ms->push_back(first);
  total_ms->push_back(total);
  return true;
}

bool Measure(const std::string& worker, const std::string& source, int runs, Timing* t) {
  const std::string work = std::filesystem::temp_directory_path() / "compressd-bench-sandbox";
  std::filesystem::remove_all(work);
  compress::service::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.data_dir = work;
  options.intra_op_threads = 1;
  options.worker_executable = worker;
  auto server = compress::service::Server::Create(options);
  if (!server.ok()) {
    fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return false;
  }
  compress::client::Client::Options client_options;
  client_options.address = absl::StrCat("127.0.0.1:", (*server)->port());
  auto client = compress::client::Client::Create(client_options);
  if (!client.ok()) return false;
  for (int i = 0; i < runs; ++i) {
    // Deleted at the end of each run, so every upload validates again.
    const auto start = Clock::now();
    auto model = (*client)->UploadModel(source + "/models/fmnist_cnn.pt", "cnn.pt");
    if (!model.ok()) {
      fprintf(stderr, "upload: %s\n", model.status().ToString().c_str());
      return false;
    }
    t->upload.push_back(Ms(start, Clock::now()));
    v1::SubmitJobRequest inspect;
    inspect.mutable_spec()->mutable_inspect()->set_model_id(model->id());
    for (int64_t d : {1, 1, 28, 28}) inspect.mutable_spec()->mutable_inspect()->add_input_shape(d);
    if (!RunJob(**client, inspect, &t->inspect_first, &t->inspect_total)) return false;
    v1::SubmitJobRequest analyze;
    v1::AnalyzeSpec* a = analyze.mutable_spec()->mutable_analyze();
    a->set_model_id(model->id());
    a->mutable_data()->set_dataset_id("builtin:fashion-mnist/train");
    a->mutable_data()->set_num_samples(64);
    a->mutable_traces()->set_max_probes(10);
    analyze.set_seed(1);
    if (!RunJob(**client, analyze, &t->analyze_first, &t->analyze_total)) return false;
    absl::Status deleted = (*client)->DeleteModel(model->id());
    if (!deleted.ok()) {
      fprintf(stderr, "delete: %s\n", deleted.ToString().c_str());
      return false;
    }
  }
  (*server)->Drain(absl::ZeroDuration());
  std::filesystem::remove_all(work);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string compressd = Arg(argc, argv, "compressd", "build/server/compressd");
  int runs = 5;
  if (!absl::SimpleAtoi(Arg(argc, argv, "runs", "5"), &runs) || runs < 1) return 2;
  const char* src = std::getenv("COMPRESS_SOURCE_DIR");
  const std::string source = src != nullptr ? src : ".";
  const std::string worker = std::filesystem::absolute(compressd).string();
  if (!std::filesystem::exists(worker)) {
    fprintf(stderr, "bench_sandbox: %s not found (--compressd)\n", worker.c_str());
    return 2;
  }
  Timing in_process, child;
  if (!Measure("", source, runs, &in_process) || !Measure(worker, source, runs, &child)) return 1;
  printf("| median of %d runs, ms (reference CNN, 1 thread) | in-process | child process | "
         "difference |\n|---|---:|---:|---:|\n",
         runs);
  auto row = [](const char* what, const std::vector<double>& a, const std::vector<double>& b) {
    printf("| %s | %.0f | %.0f | %+.0f |\n", what, Median(a), Median(b), Median(b) - Median(a));
  };
  row("UploadModel (validation loads the model)", in_process.upload, child.upload);
  row("INSPECT: submit -> first progress event", in_process.inspect_first, child.inspect_first);
  row("INSPECT: submit -> SUCCEEDED", in_process.inspect_total, child.inspect_total);
  row("ANALYZE (64 examples, <= 10 probes): submit -> first progress", in_process.analyze_first,
      child.analyze_first);
  row("ANALYZE: submit -> SUCCEEDED", in_process.analyze_total, child.analyze_total);
  return 0;
}
