// Minimal SVG charts for job artifacts (no plotting library in Debian's C++
// stack fits; these are a few dozen lines each and render in any browser).
#ifndef COMPRESS_PIPELINE_SVG_H_
#define COMPRESS_PIPELINE_SVG_H_

#include <string>
#include <vector>

namespace compress::pipeline {

// A vertical line across the plot at x (LinePlotSvg), labelled at its top.
struct Mark {
  double x = 0;
  std::string label;
  std::string color = "#d62728";
  bool dashed = false;
};

struct Axes {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_y = false;  // non-positive values are clipped to the smallest positive
  std::vector<Mark> marks;  // LinePlotSvg only; marks outside the x range are skipped
};

// A polyline through (x[i], y[i]); x ascending; axes.marks drawn over it.
std::string LinePlotSvg(const std::vector<double>& x, const std::vector<double>& y,
                        const Axes& axes);

// One horizontal bar per label, in the given order.
std::string BarChartSvg(const std::vector<std::string>& labels, const std::vector<double>& values,
                        const Axes& axes);

// One set of points of a ScatterSvg.
struct Series {
  std::string name;  // legend entry; "" = not in the legend
  std::vector<double> x;
  std::vector<double> y;
  std::string color = "#1f77b4";
  bool line = false;                // joins the points in the given order
  double radius = 3;                // marker radius in pixels; 0 = no markers
  std::vector<std::string> labels;  // optional text beside each point
};

// Points (and optional polylines) of several series on shared axes, with a
// legend. Both axes span the data (padded); log_y applies to y only.
// Non-finite points are skipped.
std::string ScatterSvg(const std::vector<Series>& series, const Axes& axes);

}  // namespace compress::pipeline

#endif  // COMPRESS_PIPELINE_SVG_H_
