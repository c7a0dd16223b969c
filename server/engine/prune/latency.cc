#include "server/engine/prune/latency.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

constexpr int kWarmup = 2;
constexpr int kMinCalls = 3;
constexpr int kMaxCalls = 50;
constexpr double kBlockSeconds = 0.1;
constexpr int kWidthPoints = 5;

// Index i of the largest grid[i] <= x (clamped) and the weight of grid[i+1].
std::pair<size_t, double> Bracket(const std::vector<int64_t>& grid, int64_t x) {
  if (grid.size() == 1 || x <= grid.front()) return {0, 0.0};
  if (x >= grid.back()) return {grid.size() - 2, 1.0};
  size_t i = std::upper_bound(grid.begin(), grid.end(), x) - grid.begin() - 1;
  return {i, static_cast<double>(x - grid[i]) / static_cast<double>(grid[i + 1] - grid[i])};
}

std::vector<int64_t> HeadGrid(int64_t heads, bool prunable) {
  if (!prunable) return {heads};
  std::vector<int64_t> grid;
  if (heads <= 12) {
    for (int64_t h = 1; h <= heads; ++h) grid.push_back(h);
  } else {
    for (int64_t h = 1; h < heads; h = std::max(h + 1, h * 3 / 2)) grid.push_back(h);
    grid.push_back(heads);
  }
  return grid;
}

std::vector<int64_t> WidthGrid(int64_t hidden, int64_t min_width) {
  min_width = std::clamp<int64_t>(min_width, 1, hidden);
  std::vector<int64_t> grid;
  for (int i = 0; i < kWidthPoints; ++i) {
    grid.push_back(min_width + (hidden - min_width) * i / (kWidthPoints - 1));
  }
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  return grid;
}

}  // namespace

double LatencyTable::Predict(int64_t h, int64_t w) const {
  auto [i, a] = Bracket(heads, h);
  auto [j, b] = Bracket(widths, w);
  const size_t cols = widths.size();
  auto at = [&](size_t r, size_t c) {
    return ms[std::min(r, heads.size() - 1) * cols + std::min(c, cols - 1)];
  };
  return (1 - a) * (1 - b) * at(i, j) + (1 - a) * b * at(i, j + 1) + a * (1 - b) * at(i + 1, j) +
         a * b * at(i + 1, j + 1);
}

namespace {

// Milliseconds of one forward; on CUDA synchronised by copying the output.
double TimeOneCall(torch::jit::Module& module, const ModelInputs& input) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  torch::Tensor out = input.Forward(module).toTensor();
  if (input.first.is_cuda()) out.cpu();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

absl::StatusOr<double> MeasureLatencyMs(torch::jit::Module& module, const ModelInputs& input,
                                        double min_seconds) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> times;
  try {
    c10::InferenceMode guard;
    for (int i = 0; i < kWarmup; ++i) input.Forward(module);
    const auto start = Clock::now();
    while (static_cast<int>(times.size()) < kMaxCalls &&
           (static_cast<int>(times.size()) < kMinCalls ||
            std::chrono::duration<double>(Clock::now() - start).count() < min_seconds)) {
      times.push_back(TimeOneCall(module, input));
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("timing run failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // torch::jit::JITException
    return absl::InvalidArgumentError(absl::StrCat("timing run failed: ", e.what()));
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

absl::StatusOr<TimingComparison> CompareLatency(torch::jit::Module& before,
                                                torch::jit::Module& after,
                                                const ModelInputs& input,
                                                const CancelToken* cancel, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> before_ms, after_ms;
  try {
    c10::InferenceMode guard;
    for (int i = 0; i < kWarmup; ++i) {
      input.Forward(before);
      input.Forward(after);
    }
    const auto start = Clock::now();
    while (static_cast<int>(before_ms.size()) < kMaxCalls &&
           (static_cast<int>(before_ms.size()) < kMinTimingPairs ||
            std::chrono::duration<double>(Clock::now() - start).count() < min_seconds)) {
      if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
      if (before_ms.size() % 2 == 0) {
        before_ms.push_back(TimeOneCall(before, input));
        after_ms.push_back(TimeOneCall(after, input));
      } else {
        after_ms.push_back(TimeOneCall(after, input));
        before_ms.push_back(TimeOneCall(before, input));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("timing run failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // torch::jit::JITException
    return absl::InvalidArgumentError(absl::StrCat("timing run failed: ", e.what()));
  }
  return CompareTimings(before_ms, after_ms);
}

absl::StatusOr<LatencyTable> MeasureBlockLatency(const torch::jit::Module& module,
                                                 const VitStructure& vit, int block,
                                                 int64_t batch, int64_t min_width,
                                                 const CancelToken* cancel) {
  const VitBlock& b = vit.blocks.at(block);
  const VitStructure one = BlockAlone(vit, block);
  torch::jit::Module original = SubmoduleAt(module, b.path);
  const torch::Tensor weight = *original.parameters().begin();
  const torch::Tensor input =
      torch::randn({batch, vit.tokens, vit.dim}, weight.options().requires_grad(false));

  LatencyTable table;
  table.heads = HeadGrid(b.heads, b.prunable_heads);
  table.widths = WidthGrid(b.hidden, min_width);
  for (int64_t h : table.heads) {
    for (int64_t w : table.widths) {
      if (cancel != nullptr) RETURN_IF_ERROR(cancel->Check());
      torch::jit::Module copy = original.clone();
      VitPlan plan = FullPlan(one);
      plan.blocks[0].heads.resize(h);
      plan.blocks[0].neurons.resize(w);
      RETURN_IF_ERROR(ApplyPlan(copy, one, plan).status());
      ASSIGN_OR_RETURN(double ms, MeasureLatencyMs(copy, input, kBlockSeconds));
      table.ms.push_back(ms);
    }
  }
  return table;
}

}  // namespace compress::engine
