// Defaults and allowed values that the engine, spec validation
// (server/pipeline/validate.cc) and compressctl's help all read, so that a
// change here changes every one of them. Header-only, in util (which the
// client may include; the engine it may not, DESIGN.md §2).
#ifndef COMPRESS_UTIL_DEFAULTS_H_
#define COMPRESS_UTIL_DEFAULTS_H_

#include <array>
#include <cstdint>
#include <string>

namespace compress::defaults {

// Calibration: the first kCalibrationSamples examples, in batches of
// kCalibrationBatch (a spec's 0 means these).
inline constexpr int64_t kCalibrationSamples = 256;
inline constexpr int64_t kCalibrationBatch = 64;

// Quantized weight widths are kMinBits..kMaxBits; 16 and 32 mean float
// (a pin may keep a layer in float).
inline constexpr int kMinBits = 2;
inline constexpr int kMaxBits = 8;
inline constexpr std::array<int, 4> kCandidateBits = {2, 3, 4, 8};
// The budget of a QUANTIZE job that names none (and is not accuracy-bounded).
inline constexpr double kAverageBits = 4;
inline constexpr bool IsQuantizedBits(int bits) { return bits >= kMinBits && bits <= kMaxBits; }
inline constexpr bool IsPinBits(int bits) {
  return IsQuantizedBits(bits) || bits == 16 || bits == 32;
}

// Group-wise quantization: columns per group.
inline constexpr std::array<int64_t, 3> kGroupSizes = {32, 64, 128};
inline constexpr int64_t kGroupSize = 128;
inline constexpr bool IsGroupSize(int64_t size) {
  for (int64_t g : kGroupSizes) {
    if (g == size) return true;
  }
  return false;
}

// "32, 64 or 128", for error messages and help texts.
inline std::string GroupSizesText() {
  std::string text;
  for (size_t i = 0; i < kGroupSizes.size(); ++i) {
    if (i > 0) text += i + 1 == kGroupSizes.size() ? " or " : ", ";
    text += std::to_string(kGroupSizes[i]);
  }
  return text;
}

// Pruning recovery (distillation fine-tuning) per round.
inline constexpr int kRecoverySteps = 100;
inline constexpr double kRecoveryLearningRate = 1e-4;

// Debian's dataset-fashion-mnist installs the IDX files here.
inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

}  // namespace compress::defaults

#endif  // COMPRESS_UTIL_DEFAULTS_H_
