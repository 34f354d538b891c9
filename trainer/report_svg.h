// Inline SVG charts for the run report (trainer/report.h): line charts and the expert-load
// heatmap. Each function returns one self-contained <svg> element; no scripts, no fonts or
// styles from outside (the page must render offline).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace condensa::trainer {

struct ChartSeries {
  std::string name;
  std::string color;                              // CSS color, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> points;  // (step, value), steps ascending
  bool markers = false;  // a dot with a tooltip at each point (sparse series: validation)
};

// A line chart of `series` against the step; empty series are left out. `log_y` plots
// positive values on a log10 axis (non-positive values are skipped).
std::string line_chart(const std::string& title,
                       const std::vector<ChartSeries>& series,
                       bool log_y = false);

// Tokens per expert per logged step of one MoE layer as a heatmap: one column per step (or per
// bin of consecutive steps when there are more than `max_columns`), one row per expert; the
// color is the expert's load relative to the mean of its column on a log2 scale (blue: below,
// white: balanced, red: above, clamped at 1/4 and 4x).
struct HeatmapInput {
  std::string title;
  std::vector<int64_t> steps;                // [S]
  std::vector<std::vector<int64_t>> counts;  // [S][E]
};
std::string load_heatmap(const HeatmapInput& in, size_t max_columns = 240);

// The color of load ratio `ratio` (count / mean count) in load_heatmap: "#rrggbb".
std::string load_color(double ratio);

// Text escaped for HTML/SVG content and attribute values.
std::string html_escape(const std::string& s);

}  // namespace condensa::trainer
