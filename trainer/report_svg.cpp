#include "trainer/report_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace condensa::trainer {

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

constexpr double kWidth = 560, kHeight = 250;
constexpr double kLeft = 64, kRight = 12, kTop = 28, kBottom = 34;

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// A short label for an axis tick or tooltip: 3 significant digits.
std::string label(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (v == 0) return "0";
  if (a >= 1e5 || a < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.2e", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

// About `n` round tick values covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int n) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

struct Scale {
  double lo, hi, px_lo, px_hi;
  double operator()(double v) const {
    return hi > lo ? px_lo + (v - lo) / (hi - lo) * (px_hi - px_lo) : (px_lo + px_hi) / 2;
  }
};

std::string svg_open(double w, double h, const std::string& title) {
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(w) << "\" height=\"" << num(h)
     << "\" viewBox=\"0 0 " << num(w) << " " << num(h) << "\" role=\"img\">"
     << "<title>" << html_escape(title) << "</title>"
     << "<text x=\"" << num(kLeft) << "\" y=\"18\" class=\"chart-title\">" << html_escape(title)
     << "</text>";
  return os.str();
}

}  // namespace

std::string line_chart(const std::string& title,
                       const std::vector<ChartSeries>& series,
                       bool log_y) {
  auto y_of = [&](double v) { return log_y ? std::log10(v) : v; };
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : series) {
    for (const auto& [x, v] : s.points) {
      if (!std::isfinite(v) || (log_y && v <= 0)) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y_of(v)), y_hi = std::max(y_hi, y_of(v));
    }
  }
  std::ostringstream os;
  os << svg_open(kWidth, kHeight, title);
  if (!std::isfinite(x_lo)) {
    os << "<text x=\"" << num(kWidth / 2) << "\" y=\"" << num(kHeight / 2)
       << "\" text-anchor=\"middle\" class=\"axis\">no data</text></svg>";
    return os.str();
  }
  const double pad = y_hi > y_lo ? 0.05 * (y_hi - y_lo) : (y_lo != 0 ? 0.05 * std::fabs(y_lo) : 1);
  y_lo -= pad, y_hi += pad;
  if (x_hi == x_lo) x_lo -= 1, x_hi += 1;
  const Scale sx{x_lo, x_hi, kLeft, kWidth - kRight};
  const Scale sy{y_lo, y_hi, kHeight - kBottom, kTop};
  // Axes and grid.
  os << "<g class=\"axis\">";
  std::vector<double> y_ticks = nice_ticks(y_lo, y_hi, 5);
  if (log_y && std::floor(y_hi) - std::ceil(y_lo) >= 1) {  // whole decades when there are two
    y_ticks.clear();
    for (double t = std::ceil(y_lo); t <= std::floor(y_hi); t += 1) y_ticks.push_back(t);
  }
  for (double t : y_ticks) {
    const double y = sy(t);
    os << "<line x1=\"" << num(kLeft) << "\" x2=\"" << num(kWidth - kRight) << "\" y1=\"" << num(y)
       << "\" y2=\"" << num(y) << "\" class=\"grid\"/>"
       << "<text x=\"" << num(kLeft - 6) << "\" y=\"" << num(y + 4) << "\" text-anchor=\"end\">"
       << label(log_y ? std::pow(10.0, t) : t) << "</text>";
  }
  for (double t : nice_ticks(x_lo, x_hi, 6)) {
    os << "<text x=\"" << num(sx(t)) << "\" y=\"" << num(kHeight - kBottom + 16)
       << "\" text-anchor=\"middle\">" << label(t) << "</text>";
  }
  os << "<text x=\"" << num(kWidth - kRight) << "\" y=\"" << num(kHeight - 4)
     << "\" text-anchor=\"end\">step</text>";
  os << "<rect x=\"" << num(kLeft) << "\" y=\"" << num(kTop) << "\" width=\""
     << num(kWidth - kLeft - kRight) << "\" height=\"" << num(kHeight - kTop - kBottom)
     << "\" class=\"frame\"/></g>";
  // Lines, markers and the legend.
  double legend_x = kWidth - kRight - 8;
  for (auto it = series.rbegin(); it != series.rend(); ++it) {
    const auto& s = *it;
    std::ostringstream path, marks;
    size_t n = 0;
    for (const auto& [x, v] : s.points) {
      if (!std::isfinite(v) || (log_y && v <= 0)) continue;
      path << (n++ == 0 ? "M" : " L") << num(sx(x)) << " " << num(sy(y_of(v)));
      if (s.markers) {
        marks << "<circle cx=\"" << num(sx(x)) << "\" cy=\"" << num(sy(y_of(v)))
              << "\" r=\"3\" fill=\"" << s.color << "\"><title>" << html_escape(s.name) << " step "
              << label(x) << ": " << label(v) << "</title></circle>";
      }
    }
    if (n == 0) continue;
    os << "<path d=\"" << path.str() << "\" fill=\"none\" stroke=\"" << s.color
       << "\" stroke-width=\"1.6\"><title>" << html_escape(s.name) << "</title></path>"
       << marks.str();
    const double w = 7.0 * static_cast<double>(s.name.size()) + 18;
    legend_x -= w;
    os << "<rect x=\"" << num(legend_x) << "\" y=\"" << num(kTop + 6) << "\" width=\"10\" "
       << "height=\"10\" fill=\"" << s.color << "\"/><text x=\"" << num(legend_x + 14) << "\" y=\""
       << num(kTop + 15) << "\" class=\"legend\">" << html_escape(s.name) << "</text>";
  }
  os << "</svg>";
  return os.str();
}

std::string load_color(double ratio) {
  // log2 ratio clamped to [-2, 2] -> t in [-1, 1]; white at 0, blue below, red above.
  double t = ratio > 0 ? std::log2(ratio) / 2 : -1.0;
  t = std::clamp(t, -1.0, 1.0);
  const double to[3] = {t < 0 ? 33.0 : 178.0, t < 0 ? 102.0 : 24.0, t < 0 ? 172.0 : 43.0};
  const double a = std::fabs(t);
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x",
                static_cast<int>(std::lround(247 + (to[0] - 247) * a)),
                static_cast<int>(std::lround(247 + (to[1] - 247) * a)),
                static_cast<int>(std::lround(247 + (to[2] - 247) * a)));
  return buf;
}

std::string load_heatmap(const HeatmapInput& in, size_t max_columns) {
  const size_t num_steps = in.steps.size();
  const size_t num_experts = num_steps > 0 ? in.counts[0].size() : 0;
  // Consecutive logged steps share a column when there are more than max_columns.
  const size_t per_column = std::max<size_t>(1, (num_steps + max_columns - 1) / max_columns);
  const size_t columns = (num_steps + per_column - 1) / per_column;
  const double plot_w = 720, cell_w = columns > 0 ? plot_w / static_cast<double>(columns) : 0;
  const double cell_h = std::clamp(320.0 / std::max<size_t>(num_experts, 1), 2.0, 16.0);
  const double left = 64, top = 28;
  const double plot_h = cell_h * static_cast<double>(num_experts);
  const double width = left + plot_w + 110, height = top + plot_h + 40;
  std::ostringstream os;
  os << svg_open(width, height, in.title);
  const bool tooltips = columns * num_experts <= 6000;
  for (size_t c = 0; c < columns; ++c) {
    const size_t s0 = c * per_column, s1 = std::min(num_steps, s0 + per_column);
    std::vector<double> sum(num_experts, 0.0);
    double total = 0;
    for (size_t s = s0; s < s1; ++s) {
      for (size_t e = 0; e < num_experts; ++e) {
        sum[e] += static_cast<double>(in.counts[s][e]);
        total += static_cast<double>(in.counts[s][e]);
      }
    }
    const double mean = total / static_cast<double>(std::max<size_t>(num_experts, 1));
    for (size_t e = 0; e < num_experts; ++e) {
      const double ratio = mean > 0 ? sum[e] / mean : 1.0;
      os << "<rect x=\"" << num(left + cell_w * c) << "\" y=\"" << num(top + cell_h * e)
         << "\" width=\"" << num(cell_w + 0.3) << "\" height=\"" << num(cell_h + 0.3)
         << "\" fill=\"" << load_color(ratio) << "\">";
      if (tooltips) {
        os << "<title>step " << in.steps[s0]
           << (s1 - s0 > 1 ? "-" + std::to_string(in.steps[s1 - 1]) : "") << ", expert " << e
           << ": " << static_cast<int64_t>(sum[e]) << " tokens (" << label(ratio)
           << "x mean)</title>";
      }
      os << "</rect>";
    }
  }
  // Axes: expert rows on the left, steps below, the color legend on the right.
  os << "<g class=\"axis\">";
  const size_t row_every = std::max<size_t>(1, static_cast<size_t>(std::ceil(12.0 / cell_h)));
  for (size_t e = 0; e < num_experts; e += row_every) {
    os << "<text x=\"" << num(left - 6) << "\" y=\"" << num(top + cell_h * (e + 0.5) + 4)
       << "\" text-anchor=\"end\">" << e << "</text>";
  }
  os << "<text x=\"4\" y=\"" << num(top - 6) << "\">expert</text>";
  if (columns > 0) {
    const size_t col_every = std::max<size_t>(1, columns / 8);
    for (size_t c = 0; c < columns; c += col_every) {
      os << "<text x=\"" << num(left + cell_w * (c + 0.5)) << "\" y=\"" << num(top + plot_h + 16)
         << "\" text-anchor=\"middle\">" << in.steps[c * per_column] << "</text>";
    }
  }
  os << "<text x=\"" << num(left + plot_w) << "\" y=\"" << num(top + plot_h + 32)
     << "\" text-anchor=\"end\">step"
     << (per_column > 1 ? " (" + std::to_string(per_column) + " logged steps per column)" : "")
     << "</text>";
  const double lx = left + plot_w + 24;
  const double ratios[] = {4, 2, 1, 0.5, 0.25};
  for (size_t i = 0; i < 5; ++i) {
    const double y = top + 18.0 * static_cast<double>(i);
    os << "<rect x=\"" << num(lx) << "\" y=\"" << num(y) << "\" width=\"14\" height=\"14\" "
       << "fill=\"" << load_color(ratios[i]) << "\" class=\"swatch\"/><text x=\"" << num(lx + 20)
       << "\" y=\"" << num(y + 11) << "\">" << label(ratios[i]) << "x mean</text>";
  }
  os << "</g></svg>";
  return os.str();
}

}  // namespace condensa::trainer
