// The SVG charts of job artifacts: what ScatterSvg draws (the QUANTIZE
// frontier chart) and where, checked against pixel positions worked out by
// hand from the layout the header promises (shared axes spanning the data).
#include "server/pipeline/svg.h"

#include <cmath>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::pipeline {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ScatterSvgTest, DrawsEverySeriesWithALegend) {
  Series frontier;
  frontier.name = "frontier";
  frontier.x = {100, 200, 400};
  frontier.y = {10, 1, 0.01};
  frontier.line = true;
  Series chosen;
  chosen.name = "chosen <4 bits>";
  chosen.x = {200};
  chosen.y = {1};
  chosen.labels = {"4.00 bits"};
  chosen.radius = 7;
  Axes axes;
  axes.title = "t";
  axes.log_y = true;
  const std::string svg = ScatterSvg({frontier, chosen}, axes);
  EXPECT_THAT(svg, HasSubstr("<polyline"));
  EXPECT_THAT(svg, HasSubstr("chosen &lt;4 bits&gt;"));
  EXPECT_THAT(svg, HasSubstr("4.00 bits"));
  EXPECT_THAT(svg, HasSubstr("1e-2"));  // log ticks span the data's decades
  EXPECT_THAT(svg, HasSubstr("1e1"));
  EXPECT_EQ(svg.rfind("</svg>\n"), svg.size() - 7);
}

// The QUANTIZE report's chart: a 30-point frontier, the chosen point on it
// and two baselines. Every series shares one pair of axes, so the chosen
// point must be drawn exactly on the frontier's 11th vertex.
//
// Layout (svg.cc): 760x460, plot area from x = 75 (width 760-75-170 = 515)
// and y = 35 (height 460-35-50 = 375). x spans the data padded by 5%: data
// 8000..51500, pad 2175, so 5825..53675. log y spans whole decades around
// the data (10^1 .. 10^-3.35), so 1e-4..1e1. Hence
//   px(x) = 75 + (x - 5825) / 47850 * 515
//   py(y) = 410 - (log10(y) + 4) / 5 * 375
// chosen  (23000, 10^-0.5): 75 + 17175/47850*515 = 259.86, 410 - 0.7*375 = 147.5
// uniform (24000, 0.5):     270.62, 410 - (3.69897/5)*375 = 132.58
// no_hess (23000, 0.2):     259.86, 410 - (3.30103/5)*375 = 162.42
// frontier[0]  (8000, 10):          98.40, 35.0 (top edge)
// frontier[29] (51500, 10^-3.35):  566.60, 410 - (0.65/5)*375 = 361.25
TEST(ScatterSvgTest, SharedAxesPlacePointsWhereTheScalesSay) {
  Series frontier;
  frontier.name = "frontier";
  frontier.line = true;
  frontier.radius = 2;
  for (int i = 0; i < 30; ++i) {
    frontier.x.push_back(8000 + i * 1500);
    frontier.y.push_back(std::pow(10.0, 1 - i * 0.15));
  }
  Series chosen;
  chosen.name = "chosen";
  chosen.color = "#d62728";
  chosen.radius = 7;
  chosen.x = {8000 + 10 * 1500};
  chosen.y = {std::pow(10.0, 1 - 10 * 0.15)};
  chosen.labels = {"4.00 bits"};
  Series uniform;
  uniform.name = "uniform";
  uniform.color = "#2ca02c";
  uniform.radius = 5;
  uniform.x = {24000};
  uniform.y = {0.5};
  Series no_hessian;
  no_hessian.name = "no_hessian";
  no_hessian.color = "#9467bd";
  no_hessian.radius = 5;
  no_hessian.x = {23000};
  no_hessian.y = {0.2};
  Axes axes;
  axes.title = "Mixed-precision frontier";
  axes.log_y = true;
  const std::string svg = ScatterSvg({frontier, chosen, uniform, no_hessian}, axes);

  EXPECT_THAT(svg, HasSubstr("<circle cx=\"259.9\" cy=\"147.5\" r=\"7.0\" fill=\"#d62728\""));
  EXPECT_THAT(svg, HasSubstr("<circle cx=\"270.6\" cy=\"132.6\" r=\"5.0\" fill=\"#2ca02c\""));
  EXPECT_THAT(svg, HasSubstr("<circle cx=\"259.9\" cy=\"162.4\" r=\"5.0\" fill=\"#9467bd\""));
  // The chosen point's label sits right of and above its marker (r + 3, r + 2).
  EXPECT_THAT(svg, HasSubstr("<text x=\"269.9\" y=\"138.5\" font-size=\"11\">4.00 bits</text>"));

  // One polyline (only the frontier has line = true), through all 30 points
  // in order, with the chosen point as its 11th vertex.
  const size_t poly = svg.find("<polyline");
  ASSERT_NE(poly, std::string::npos);
  EXPECT_EQ(svg.find("<polyline", poly + 1), std::string::npos);
  const size_t begin = svg.find("points=\"", poly) + 8;
  const std::string points = svg.substr(begin, svg.find('"', begin) - begin);
  std::vector<std::string> vertices;
  for (size_t at = 0, next; at < points.size(); at = next + 1) {
    next = points.find(' ', at);
    if (next == std::string::npos) next = points.size();
    if (next > at) vertices.push_back(points.substr(at, next - at));
  }
  ASSERT_EQ(vertices.size(), 30u);
  EXPECT_EQ(vertices[0], "98.4,35.0");
  EXPECT_EQ(vertices[10], "259.9,147.5");
  // 361.25 sits on a rounding tie of "%.1f": compare the number.
  ASSERT_EQ(vertices[29].substr(0, 6), "566.6,");
  EXPECT_NEAR(std::stod(vertices[29].substr(6)), 361.25, 0.051);

  // y ticks at every decade 1e-4..1e1, and no further; x ticks at the
  // padded ends, in compact form.
  for (const char* tick : {">1e-4<", ">1e-3<", ">1e-2<", ">1e-1<", ">1e0<", ">1e1<"}) {
    EXPECT_THAT(svg, HasSubstr(tick));
  }
  EXPECT_THAT(svg, Not(HasSubstr(">1e-5<")));
  EXPECT_THAT(svg, Not(HasSubstr(">1e2<")));
  EXPECT_THAT(svg, HasSubstr(">5825<"));
  EXPECT_THAT(svg, HasSubstr(">53.7k<"));

  // Legend right of the plot (x = 75 + 515 + 25), one row per named series
  // every 18 px from y = 35 + 10 (+4 for the text baseline), in order.
  EXPECT_THAT(svg, HasSubstr("<text x=\"615\" y=\"49\">frontier</text>"));
  EXPECT_THAT(svg, HasSubstr("<text x=\"615\" y=\"67\">chosen</text>"));
  EXPECT_THAT(svg, HasSubstr("<text x=\"615\" y=\"85\">uniform</text>"));
  EXPECT_THAT(svg, HasSubstr("<text x=\"615\" y=\"103\">no_hessian</text>"));
}

}  // namespace
}  // namespace compress::pipeline
