// What the bit-allocation search charges a layer for each width: its
// sensitivity Ω when the calibration data resolve it, else a fallback that
// is never "free" (plain C++, no LibTorch).
//
// Ω_i(b) estimates the loss change that rounding layer i to b bits causes
// (½δᵀHδ, or Tr(H)/n·‖δ‖²). On a model away from a minimum (untrained, early
// stopped, a fine-tuning checkpoint) H is indefinite and Ω can be negative;
// with few probes or calibration examples it can be noise. A search that
// takes such an Ω at face value prices the layer as free, or as a gain, and
// spends the budget elsewhere: on an untrained ViT 11 of 14 layers went to 2
// bits and the model had 2.7x the output error of uniform 4-bit rounding.
//
// The rule (README "Sensitivity hygiene"); SE is the standard error of Ω
// over calibration folds (quadratic Ω), or the Hutchinson standard error of
// the trace times ‖δ‖² (trace Ω); κ(b) is the median of Ω(b)/‖δ(b)‖² over
// the layers resolved at every width (Ω(b) > z·SE(b)), else over the
// layers with positive Ω, else 1: a typical curvature along a rounding
// direction.
// - Negative: Ω(b) ≤ 0 at some width with a non-zero δ. The quadratic model
//   says rounding helps, which it does not; the layer is priced by
//   κ(b)·‖δ(b)‖² at every width.
// - Unresolved at b: 0 < Ω(b) ≤ z·SE(b) (z = 1). The price is
//   max(Ω(b), κ(b)·‖δ(b)‖²): noise can make a layer look cheap, never free.
// - Otherwise the price is Ω(b).
// A layer whose price differs from Ω somewhere is a "fallback" layer, with
// the reason. With no resolved and no positive layer the search is the
// no-Hessian one (κ = 1, prices ‖δ‖²).
#ifndef COMPRESS_ENGINE_SEARCH_PRICING_H_
#define COMPRESS_ENGINE_SEARCH_PRICING_H_

#include <map>
#include <string>
#include <vector>

namespace compress::engine {

inline constexpr double kResolvedZ = 1.0;

// One layer's estimates per candidate width.
struct LayerSensitivityEstimate {
  std::map<int, double> omega;      // Ω(b)
  std::map<int, double> std_error;  // SE of Ω(b); 0 = exact
  std::map<int, double> error;      // ‖δ(b)‖²
};

struct LayerPrice {
  std::map<int, double> price;  // what the search charges at each width
  bool fallback = false;        // some price is not Ω
  std::string reason;           // why, when fallback: "Ω(2) = -0.31 is not positive"
};

struct PricingResult {
  std::vector<LayerPrice> layers;  // in the estimates' order
  std::map<int, double> curvature;  // κ(b), at the widths some fallback used
  int fallback_count = 0;
  bool none_resolved = false;  // κ did not come from resolved layers
};

// Applies the rule above. Widths are those of each layer's `omega`.
PricingResult PriceLayers(const std::vector<LayerSensitivityEstimate>& layers,
                          double z = kResolvedZ);

// Mean and standard error of values v_i with weights w_i (Σ w = 1), from
// n >= 2 values: SE² = Σ w_i (v_i − mean)² / (n − 1), which for equal
// weights is the sample variance over n. n < 2: SE 0.
struct WeightedMean {
  double mean = 0;
  double std_error = 0;
};
WeightedMean MeanAndStdError(const std::vector<std::pair<double, double>>& value_weight);

}  // namespace compress::engine

#endif  // COMPRESS_ENGINE_SEARCH_PRICING_H_
