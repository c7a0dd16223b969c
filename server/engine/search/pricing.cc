#include "server/engine/search/pricing.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace compress::engine {
namespace {

double StdError(const LayerSensitivityEstimate& l, int b) {
  auto s = l.std_error.find(b);
  return s == l.std_error.end() ? 0 : s->second;
}

// Whether width b perturbs the layer at all (‖δ‖² = 0: nothing to price).
bool Perturbed(const LayerSensitivityEstimate& l, int b) {
  auto e = l.error.find(b);
  return e == l.error.end() || e->second != 0;
}

// Empty when every width's Ω is positive, else why not.
std::string Negative(const LayerSensitivityEstimate& l) {
  for (const auto& [b, omega] : l.omega) {
    if (Perturbed(l, b) && !(omega > 0)) {
      return absl::StrFormat("Ω(%d) = %.4g is not positive", b, omega);
    }
  }
  return "";
}

bool Resolved(const LayerSensitivityEstimate& l, int b, double z) {
  auto it = l.omega.find(b);
  return !Perturbed(l, b) || (it != l.omega.end() && it->second > z * StdError(l, b));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

PricingResult PriceLayers(const std::vector<LayerSensitivityEstimate>& layers, double z) {
  PricingResult r;
  r.layers.resize(layers.size());
  // κ(b) from the layers resolved at every width, else from every layer
  // whose Ω is positive, else 1.
  std::map<int, std::vector<double>> resolved_ratios, positive_ratios;
  std::vector<bool> negative(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSensitivityEstimate& l = layers[i];
    r.layers[i].reason = Negative(l);
    negative[i] = !r.layers[i].reason.empty();
    if (negative[i]) continue;
    bool all_resolved = true;
    for (const auto& [b, omega] : l.omega) all_resolved = all_resolved && Resolved(l, b, z);
    for (const auto& [b, omega] : l.omega) {
      auto e = l.error.find(b);
      if (e == l.error.end() || e->second <= 0) continue;
      positive_ratios[b].push_back(omega / e->second);
      if (all_resolved) resolved_ratios[b].push_back(omega / e->second);
    }
  }
  r.none_resolved = resolved_ratios.empty() && !layers.empty();
  const auto& ratios = resolved_ratios.empty() ? positive_ratios : resolved_ratios;
  auto kappa = [&ratios](int b) {
    auto it = ratios.find(b);
    return it == ratios.end() || it->second.empty() ? 1.0 : Median(it->second);
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSensitivityEstimate& l = layers[i];
    LayerPrice& price = r.layers[i];
    for (const auto& [b, omega] : l.omega) {
      auto e = l.error.find(b);
      const double typical = kappa(b) * (e == l.error.end() ? 0.0 : e->second);
      if (negative[i]) {
        price.price[b] = typical;
      } else if (Resolved(l, b, z)) {
        price.price[b] = omega;
      } else {
        price.price[b] = std::max(omega, typical);
        if (typical > omega && price.reason.empty()) {
          price.reason = absl::StrFormat(
              "Ω(%d) = %.4g is within %.0f standard error%s (%.3g) of 0 and below a typical "
              "layer's %.4g",
              b, omega, z, z == 1 ? "" : "s", StdError(l, b), typical);
        }
      }
      if (price.price[b] != omega) r.curvature[b] = kappa(b);
    }
    price.fallback = !price.reason.empty();
    r.fallback_count += price.fallback;
  }
  return r;
}

WeightedMean MeanAndStdError(const std::vector<std::pair<double, double>>& value_weight) {
  WeightedMean m;
  for (const auto& [v, w] : value_weight) m.mean += w * v;
  const size_t n = value_weight.size();
  if (n < 2) return m;
  double sum = 0;
  for (const auto& [v, w] : value_weight) sum += w * (v - m.mean) * (v - m.mean);
  m.std_error = std::sqrt(sum / static_cast<double>(n - 1));
  return m;
}

}  // namespace compress::engine
