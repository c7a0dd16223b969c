// Service benchmarks (issue: service foundation). Prints a Markdown table.
//   upload throughput of a 500 MB dataset over loopback vs `cat` of the file
//   submit -> first progress event latency (p50/p95 over N jobs)
//   200 concurrent WatchJob streams on one job: every stream gets every event
// Usage: bench_service [--upload_mb=500] [--latency_jobs=30] [--watchers=200]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "server/service/server.h"
#include "tests/e2e/model_gen.h"

namespace v1 = compress::v1;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A valid safetensors file: one float32 tensor "inputs" of `mb` MiB.
void WriteSafetensors(const std::string& path, int64_t mb) {
  int64_t rows = mb * 1024 * 1024 / 4 / 1024;
  int64_t bytes = rows * 1024 * 4;
  std::string header = absl::StrCat(R"({"inputs":{"dtype":"F32","shape":[)", rows,
                                    R"(,1024],"data_offsets":[0,)", bytes, "]}}");
  while (header.size() % 8 != 0) header += ' ';
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  std::string block(1 << 20, '\0');
  for (int64_t i = 0; i < bytes; i += static_cast<int64_t>(block.size())) {
    for (size_t j = 0; j < block.size(); j += 4096) block[j] = static_cast<char>(i >> 20);
    out.write(block.data(), static_cast<std::streamsize>(std::min<int64_t>(block.size(), bytes - i)));
  }
}

int Flag(int argc, char** argv, const std::string& name, int def) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--" + name + "=")) {
      int v;
      if (absl::SimpleAtoi(a.substr(name.size() + 3), &v)) return v;
    }
  }
  return def;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * (v.size() - 1) + 0.5)];
}

}  // namespace

int main(int argc, char** argv) {
  const int upload_mb = Flag(argc, argv, "upload_mb", 500);
  const int latency_jobs = Flag(argc, argv, "latency_jobs", 30);
  const int watchers = Flag(argc, argv, "watchers", 200);
  std::string work = std::filesystem::temp_directory_path() / "compressd-bench";
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(work);

  compress::service::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.data_dir = work + "/data";
  options.max_dataset_bytes = int64_t{upload_mb + 16} << 20;
  auto server = compress::service::Server::Create(options);
  if (!server.ok()) {
    fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  compress::client::Client::Options copts;
  copts.address = absl::StrCat("127.0.0.1:", (*server)->port());
  auto client = *compress::client::Client::Create(copts);

  printf("| benchmark | result |\n|---|---|\n");

  // 1. Upload throughput vs cat.
  std::string file = work + "/upload.safetensors";
  WriteSafetensors(file, upload_mb);
  double mb = static_cast<double>(std::filesystem::file_size(file)) / 1e6;
  auto t0 = Clock::now();
  int rc = std::system(("cat " + file + " > /dev/null").c_str());
  auto t1 = Clock::now();
  auto uploaded = client->UploadDataset(file, "upload.safetensors");
  auto t2 = Clock::now();
  if (rc != 0 || !uploaded.ok()) {
    fprintf(stderr, "upload failed: %s\n", uploaded.status().ToString().c_str());
    return 1;
  }
  printf("| `cat` %.0f MB to /dev/null (page cache warm) | %.0f MB/s |\n", mb, mb / Seconds(t0, t1));
  printf("| UploadDataset %.0f MB over loopback (client sha256 pass + stream + server fsync/verify) | %.0f MB/s (%.2f s) |\n",
         mb, mb / Seconds(t1, t2), Seconds(t1, t2));
  std::filesystem::remove(file);

  // 2. Submit -> first progress event.
  std::string cnn = std::string(std::getenv("COMPRESS_SOURCE_DIR") ? std::getenv("COMPRESS_SOURCE_DIR") : ".") +
                    "/tests/fixtures/tiny_cnn.pt";
  auto model = client->UploadModel(cnn, "cnn.pt");
  if (!model.ok()) {
    fprintf(stderr, "model: %s\n", model.status().ToString().c_str());
    return 1;
  }
  std::vector<double> latencies;
  for (int i = 0; i < latency_jobs; ++i) {
    v1::SubmitJobRequest req;
    req.mutable_spec()->mutable_inspect()->set_model_id(model->id());
    for (int64_t d : {1, 1, 8, 8}) req.mutable_spec()->mutable_inspect()->add_input_shape(d);
    auto start = Clock::now();
    auto job = client->SubmitJob(req);
    double first = -1;
    client->WatchJob(job->id(), 0, [&](const v1::JobEvent& e) {
      if (first < 0 && e.has_progress()) first = Seconds(start, Clock::now());
    }).IgnoreError();
    latencies.push_back(first * 1e3);
  }
  printf("| submit -> first progress event, %d INSPECT jobs, idle server | p50 %.1f ms, p95 %.1f ms |\n",
         latency_jobs, Percentile(latencies, 0.5), Percentile(latencies, 0.95));

  // 3. Many watchers on one job: queue it behind a slow job so every stream
  //    is connected before its events start.
  std::string slow = work + "/slow.pt";
  compress::testutil::MakeSlowModel(slow, 256, 400);
  auto slow_model = client->UploadModel(slow, "slow.pt");
  v1::SubmitJobRequest blocker;
  blocker.mutable_spec()->mutable_inspect()->set_model_id(slow_model->id());
  for (int64_t d : {256, 256}) blocker.mutable_spec()->mutable_inspect()->add_input_shape(d);
  auto blocking_job = client->SubmitJob(blocker);
  v1::SubmitJobRequest target;
  target.mutable_spec()->mutable_inspect()->set_model_id(model->id());
  for (int64_t d : {1, 1, 8, 8}) target.mutable_spec()->mutable_inspect()->add_input_shape(d);
  auto job = client->SubmitJob(target);
  std::vector<int64_t> counts(watchers, 0);
  std::vector<bool> ordered(watchers, true);
  std::vector<std::thread> threads;
  auto w0 = Clock::now();
  for (int w = 0; w < watchers; ++w) {
    threads.emplace_back([&, w] {
      auto c = *compress::client::Client::Create(copts);  // own channel each
      int64_t last = 0;
      c->WatchJob(job->id(), 0, [&](const v1::JobEvent& e) {
        if (e.sequence() != last + 1) ordered[w] = false;
        last = e.sequence();
        ++counts[w];
      }).IgnoreError();
    });
  }
  for (auto& t : threads) t.join();
  auto w1 = Clock::now();
  auto final_job = client->GetJob(job->id());
  int complete = 0;
  for (int w = 0; w < watchers; ++w) {
    complete += (counts[w] == final_job->last_sequence() && ordered[w]) ? 1 : 0;
  }
  printf("| %d concurrent WatchJob streams on one job (%lld events each) | %d/%d received every event in order, %.2f s wall |\n",
         watchers, static_cast<long long>(final_job->last_sequence()), complete, watchers,
         Seconds(w0, w1));
  (*server)->Drain(absl::Seconds(1));
  std::filesystem::remove_all(work);
  return complete == watchers ? 0 : 1;
}
