#include "server/pipeline/svg.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace compress::pipeline {
namespace {

std::string Escape(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

// The x and y axis titles, then the closing tag.
void AppendAxisLabelsAndClose(const Axes& axes, int left, int top, int pw, int ph, int h,
                              std::string* svg) {
  absl::StrAppendFormat(svg, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                        left + pw / 2, h - 10, Escape(axes.x_label));
  absl::StrAppendFormat(svg,
                        "<text x=\"15\" y=\"%d\" transform=\"rotate(-90 15 %d)\" "
                        "text-anchor=\"middle\">%s</text>\n</svg>\n",
                        top + ph / 2, top + ph / 2, Escape(axes.y_label));
}

// Maps values to [0, 1] linearly or by log10.
struct Scale {
  double lo, hi;
  bool log;
  double operator()(double v) const {
    if (log) v = std::log10(std::max(v, std::pow(10.0, lo)));
    return hi > lo ? (v - lo) / (hi - lo) : 0.5;
  }
};

Scale MakeScale(const std::vector<double>& values, bool log) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) {
    if (!std::isfinite(v)) continue;
    if (log) {
      if (v <= 0) continue;
      v = std::log10(v);
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (!log) lo = std::min(lo, 0.0);
  return {lo, hi, log};
}

std::string Tick(double v, bool log) {
  return log ? absl::StrFormat("1e%.0f", v) : absl::StrFormat("%.3g", v);
}

std::string Header(int w, int h, const Axes& axes) {
  return absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">%s</text>\n",
      w, h, w / 2, Escape(axes.title));
}

}  // namespace

std::string LinePlotSvg(const std::vector<double>& x, const std::vector<double>& y,
                        const Axes& axes) {
  const int w = 720, h = 420, left = 70, right = 20, top = 35, bottom = 50;
  const int pw = w - left - right, ph = h - top - bottom;
  Scale sx = MakeScale(x, false), sy = MakeScale(y, axes.log_y);
  sx.lo = x.empty() ? 0 : *std::min_element(x.begin(), x.end());
  std::string svg = Header(w, h, axes);
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                        "stroke=\"#444\"/>\n",
                        left, top, pw, ph);
  for (int i = 0; i <= 4; ++i) {
    double fy = i / 4.0;
    double vy = sy.lo + fy * (sy.hi - sy.lo);
    double vx = sx.lo + fy * (sx.hi - sx.lo);
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                          left - 5, top + ph - fy * ph + 4, Tick(vy, axes.log_y));
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                          left + fy * pw, top + ph + 18, Tick(vx, false));
  }
  std::string points;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    if (!std::isfinite(y[i])) continue;
    absl::StrAppendFormat(&points, "%.1f,%.1f ", left + sx(x[i]) * pw, top + ph - sy(y[i]) * ph);
  }
  absl::StrAppendFormat(&svg,
                        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" "
                        "points=\"%s\"/>\n",
                        points);
  for (const Mark& m : axes.marks) {
    if (!std::isfinite(m.x) || m.x < sx.lo || m.x > sx.hi) continue;
    const double px = left + sx(m.x) * pw;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\"%s/>\n",
                          px, top, px, top + ph, Escape(m.color),
                          m.dashed ? " stroke-dasharray=\"4 3\"" : "");
    absl::StrAppendFormat(&svg,
                          "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" fill=\"%s\" "
                          "transform=\"rotate(-90 %.1f %d)\">%s</text>\n",
                          px - 2, top + 4, Escape(m.color), px - 2, top + 4, Escape(m.label));
  }
  AppendAxisLabelsAndClose(axes, left, top, pw, ph, h, &svg);
  return svg;
}

std::string BarChartSvg(const std::vector<std::string>& labels, const std::vector<double>& values,
                        const Axes& axes) {
  const int bar = 18, left = 220, right = 90, top = 35, bottom = 40, w = 760;
  const int n = static_cast<int>(std::min(labels.size(), values.size()));
  const int h = top + bottom + n * bar;
  const int pw = w - left - right;
  Scale s = MakeScale(values, axes.log_y);
  if (axes.log_y) s.lo = std::floor(s.lo) - (s.hi - s.lo < 1 ? 1 : 0);
  std::string svg = Header(w, h, axes);
  for (int i = 0; i < n; ++i) {
    double len = std::max(1.0, s(values[i]) * pw);
    int y = top + i * bar;
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
                          left - 6, y + bar - 5, Escape(labels[i].empty() ? "(root)" : labels[i]));
    absl::StrAppendFormat(&svg,
                          "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" "
                          "fill=\"#1f77b4\"/>\n",
                          left, y + 2, len, bar - 4);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%d\">%.3g</text>\n", left + len + 4,
                          y + bar - 5, values[i]);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n</svg>\n",
                        left + pw / 2, h - 12, Escape(axes.x_label));
  return svg;
}

namespace {

// Spans [lo, hi] padded by 5% (linear) or to whole decades (log).
Scale SpanScale(const std::vector<double>& values, bool log) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) {
    if (!std::isfinite(v) || (log && v <= 0)) continue;
    if (log) v = std::log10(v);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) return {0, 1, log};
  if (log) return {std::floor(lo), std::max(std::ceil(hi), std::floor(lo) + 1), log};
  double pad = hi > lo ? 0.05 * (hi - lo) : std::max(1.0, 0.05 * std::abs(lo));
  return {lo - pad, hi + pad, log};
}

// Compact tick text for large counts such as bytes: 139018 -> "139k".
std::string CompactTick(double v) {
  double a = std::abs(v);
  if (a >= 1e9) return absl::StrFormat("%.3gG", v / 1e9);
  if (a >= 1e6) return absl::StrFormat("%.3gM", v / 1e6);
  if (a >= 1e4) return absl::StrFormat("%.3gk", v / 1e3);
  if (a >= 100) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.3g", v);
}

}  // namespace

std::string ScatterSvg(const std::vector<Series>& series, const Axes& axes) {
  const int w = 760, h = 460, left = 75, right = 170, top = 35, bottom = 50;
  const int pw = w - left - right, ph = h - top - bottom;
  std::vector<double> xs, ys;
  for (const Series& s : series) {
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
        xs.push_back(s.x[i]);
        ys.push_back(s.y[i]);
      }
    }
  }
  const Scale sx = SpanScale(xs, false), sy = SpanScale(ys, axes.log_y);
  auto px = [&](double v) { return left + sx(v) * pw; };
  auto py = [&](double v) { return top + ph - sy(v) * ph; };
  std::string svg = Header(w, h, axes);
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                        "stroke=\"#444\"/>\n",
                        left, top, pw, ph);
  const int y_ticks = axes.log_y ? static_cast<int>(sy.hi - sy.lo) : 4;
  for (int i = 0; i <= y_ticks; ++i) {
    double f = static_cast<double>(i) / y_ticks;
    absl::StrAppendFormat(
        &svg, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", left - 5,
        top + ph - f * ph + 4,
        axes.log_y ? Tick(sy.lo + i, true) : Tick(sy.lo + f * (sy.hi - sy.lo), false));
  }
  for (int i = 0; i <= 4; ++i) {
    double f = i / 4.0;
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                          left + f * pw, top + ph + 18, CompactTick(sx.lo + f * (sx.hi - sx.lo)));
  }
  int legend_y = top + 10;
  for (const Series& s : series) {
    std::string points;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      absl::StrAppendFormat(&points, "%.1f,%.1f ", px(s.x[i]), py(s.y[i]));
      if (s.radius > 0) {
        absl::StrAppendFormat(&svg,
                              "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" "
                              "fill-opacity=\"0.8\"/>\n",
                              px(s.x[i]), py(s.y[i]), s.radius, Escape(s.color));
      }
      if (i < s.labels.size() && !s.labels[i].empty()) {
        absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">%s</text>\n",
                              px(s.x[i]) + s.radius + 3, py(s.y[i]) - s.radius - 2,
                              Escape(s.labels[i]));
      }
    }
    if (s.line && !points.empty()) {
      absl::StrAppendFormat(&svg,
                            "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" "
                            "points=\"%s\"/>\n",
                            Escape(s.color), points);
    }
    if (!s.name.empty()) {
      absl::StrAppendFormat(&svg,
                            "<circle cx=\"%d\" cy=\"%d\" r=\"5\" fill=\"%s\"/>\n"
                            "<text x=\"%d\" y=\"%d\">%s</text>\n",
                            left + pw + 15, legend_y, Escape(s.color), left + pw + 25, legend_y + 4,
                            Escape(s.name));
      legend_y += 18;
    }
  }
  AppendAxisLabelsAndClose(axes, left, top, pw, ph, h, &svg);
  return svg;
}

}  // namespace compress::pipeline
