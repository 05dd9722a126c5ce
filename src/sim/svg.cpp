#include "sim/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <tuple>

namespace foreshore::sim::svg {
namespace {

constexpr double kW = 760, kH = 480, kLeft = 70, kTop = 40, kBottom = 60, kPlotW = 500;

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Tick label: as few digits as the step needs.
std::string tick_label(double v, double step) {
  char buf[32];
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  std::snprintf(buf, sizeof buf, "%.*f", std::min(decimals, 6), v);
  return buf;
}

// Steps of 1, 2 or 5 times a power of ten, about `count` of them over the range.
std::vector<double> linear_ticks(double lo, double hi, int count, double& step) {
  const double raw = (hi - lo) / std::max(count, 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> ticks;
  for (double decade = std::pow(10.0, std::floor(std::log10(lo))); decade <= hi; decade *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double t = decade * m;
      if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push_back(t);
    }
  }
  return ticks;
}

void legend_entry(std::ostringstream& s, double x, double y, const Series& series) {
  if (series.line) {
    s << "<line x1=\"" << num(x) << "\" y1=\"" << num(y - 4) << "\" x2=\"" << num(x + 22)
      << "\" y2=\"" << num(y - 4) << "\" stroke=\"" << series.color << "\" stroke-width=\"2\""
      << (series.dashed ? " stroke-dasharray=\"6,4\"" : "") << "/>\n";
  }
  if (series.markers) {
    s << "<circle cx=\"" << num(x + 11) << "\" cy=\"" << num(y - 4) << "\" r=\"4\" fill=\""
      << series.color << "\"/>\n";
  }
  s << "<text x=\"" << num(x + 28) << "\" y=\"" << num(y) << "\">" << xml_escape(series.name)
    << "</text>\n";
}

}  // namespace

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
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
      default:
        out += c;
    }
  }
  return out;
}

Series& LineChart::add(std::string name, std::string color,
                       std::vector<std::pair<double, double>> points, bool dashed) {
  Series& s = series.emplace_back();
  s.name = std::move(name);
  s.color = std::move(color);
  s.points = std::move(points);
  s.dashed = dashed;
  return s;
}

std::string render(const LineChart& chart) {
  double x_lo = 1e300, x_hi = -1e300, y_lo = 1e300, y_hi = -1e300;
  for (const auto& series : chart.series) {
    for (const auto& [x, y] : series.points) {
      if (chart.log_x && x <= 0) continue;
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  }
  if (x_lo > x_hi) x_lo = chart.log_x ? 1 : 0, x_hi = chart.log_x ? 10 : 1;
  if (y_lo > y_hi) y_lo = 0, y_hi = 1;
  if (chart.x_range) std::tie(x_lo, x_hi) = *chart.x_range;
  if (chart.y_range) std::tie(y_lo, y_hi) = *chart.y_range;
  if (chart.log_x) {
    x_lo = std::pow(10.0, std::floor(std::log10(x_lo)));
    x_hi = std::pow(10.0, std::ceil(std::log10(x_hi) + 1e-12));
  }
  if (x_hi - x_lo < 1e-12) x_hi = x_lo + 1;
  if (!chart.y_range) {
    const double pad = std::max(0.05 * (y_hi - y_lo), 1e-6);
    y_lo -= pad;
    y_hi += pad;
  }
  // The legend sits right of the plot, as wide as its longest entry needs
  // (about 7 px a character at font-size 12).
  size_t longest = 0;
  for (const auto& series : chart.series) longest = std::max(longest, series.name.size());
  const double width =
      kLeft + kPlotW + std::clamp(60.0 + 7.0 * static_cast<double>(longest), 130.0, 420.0);
  const double plot_w = kPlotW, plot_h = kH - kTop - kBottom;
  auto X = [&](double x) {
    if (chart.log_x) {
      return kLeft +
             (std::log10(x) - std::log10(x_lo)) / (std::log10(x_hi) - std::log10(x_lo)) * plot_w;
    }
    return kLeft + (x - x_lo) / (x_hi - x_lo) * plot_w;
  };
  auto Y = [&](double y) { return kTop + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h; };

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(width) << "\" height=\"" << kH
    << "\" viewBox=\"0 0 " << num(width) << " " << kH
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << num(kLeft + plot_w / 2) << "\" y=\"22\" text-anchor=\"middle\" "
    << "font-size=\"14\">" << xml_escape(chart.title) << "</text>\n";
  double step = 1;
  const std::vector<double> xt =
      chart.log_x ? log_ticks(x_lo, x_hi) : linear_ticks(x_lo, x_hi, 8, step);
  const double x_step = step;
  for (double t : xt) {
    s << "<line x1=\"" << num(X(t)) << "\" y1=\"" << kTop << "\" x2=\"" << num(X(t)) << "\" y2=\""
      << kTop + plot_h << "\" stroke=\"#eee\"/>\n"
      << "<text x=\"" << num(X(t)) << "\" y=\"" << kTop + plot_h + 16
      << "\" text-anchor=\"middle\">" << tick_label(t, chart.log_x ? std::min(t, 1.0) : x_step)
      << "</text>\n";
  }
  for (double t : linear_ticks(y_lo, y_hi, 8, step)) {
    s << "<line x1=\"" << kLeft << "\" y1=\"" << num(Y(t)) << "\" x2=\"" << kLeft + plot_w
      << "\" y2=\"" << num(Y(t)) << "\" stroke=\"#eee\"/>\n"
      << "<text x=\"" << kLeft - 6 << "\" y=\"" << num(Y(t) + 4) << "\" text-anchor=\"end\">"
      << tick_label(t, step) << "</text>\n";
  }
  s << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << plot_w << "\" height=\""
    << plot_h << "\" fill=\"none\" stroke=\"#333\"/>\n"
    << "<text x=\"" << num(kLeft + plot_w / 2) << "\" y=\"" << kH - 18
    << "\" text-anchor=\"middle\">" << xml_escape(chart.x_label) << "</text>\n"
    << "<text transform=\"translate(18," << num(kTop + plot_h / 2)
    << ") rotate(-90)\" text-anchor=\"middle\">" << xml_escape(chart.y_label) << "</text>\n";

  double legend_y = kTop + 14;
  for (const auto& series : chart.series) {
    s << "<g>\n<title>" << xml_escape(series.name) << "</title>\n";
    if (series.line && series.points.size() > 1) {
      s << "<polyline fill=\"none\" stroke=\"" << series.color << "\" stroke-width=\"2\""
        << (series.dashed ? " stroke-dasharray=\"6,4\"" : "") << " points=\"";
      for (const auto& [x, y] : series.points) {
        if (chart.log_x && x <= 0) continue;
        s << num(X(x)) << "," << num(Y(y)) << " ";
      }
      s << "\"/>\n";
    }
    if (series.markers) {
      for (size_t i = 0; i < series.points.size(); ++i) {
        const auto [x, y] = series.points[i];
        if (chart.log_x && x <= 0) continue;
        s << "<circle cx=\"" << num(X(x)) << "\" cy=\"" << num(Y(y)) << "\" r=\"4\" fill=\""
          << series.color << "\"/>\n";
        if (i < series.point_labels.size()) {
          s << "<text x=\"" << num(X(x) + 6) << "\" y=\"" << num(Y(y) - 6) << "\" fill=\""
            << series.color << "\">" << xml_escape(series.point_labels[i]) << "</text>\n";
        }
      }
    }
    s << "</g>\n";
    legend_entry(s, kLeft + plot_w + 14, legend_y, series);
    legend_y += 18;
  }
  s << "</svg>\n";
  return s.str();
}

std::string render(const StackedBars& chart) {
  constexpr double kBarH = 26, kGap = 12, kLabelW = 150;
  const double plot_w = kW - kLabelW - 30;
  const double height = kTop + static_cast<double>(chart.bars.size()) * (kBarH + kGap) + 40 + 36;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << num(height)
    << "\" viewBox=\"0 0 " << kW << " " << num(height)
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << num(kW / 2) << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">"
    << xml_escape(chart.title) << "</text>\n";
  double y = kTop;
  for (const auto& [label, values] : chart.bars) {
    double total = 0;
    for (double v : values) total += std::max(v, 0.0);
    s << "<g>\n<title>" << xml_escape(label) << "</title>\n<text x=\"" << num(kLabelW - 8)
      << "\" y=\"" << num(y + kBarH / 2 + 4) << "\" text-anchor=\"end\">" << xml_escape(label)
      << "</text>\n";
    double x = kLabelW;
    for (size_t i = 0; i < values.size() && i < chart.segment_colors.size(); ++i) {
      const double share = total > 0 ? std::max(values[i], 0.0) / total : 0.0;
      const double w = share * plot_w;
      if (w <= 0) continue;
      s << "<rect x=\"" << num(x) << "\" y=\"" << num(y) << "\" width=\"" << num(w)
        << "\" height=\"" << kBarH << "\" fill=\"" << chart.segment_colors[i] << "\"><title>"
        << xml_escape(chart.segment_names[i]) << ": " << num(share * 100) << "%</title></rect>\n";
      if (w > 34) {
        s << "<text x=\"" << num(x + w / 2) << "\" y=\"" << num(y + kBarH / 2 + 4)
          << "\" text-anchor=\"middle\" fill=\"white\">" << std::lround(share * 100)
          << "%</text>\n";
      }
      x += w;
    }
    s << "</g>\n";
    y += kBarH + kGap;
  }
  // Legend entries flow left to right, wrapping at the plot's edge; about
  // 7 px a character at font-size 12.
  double lx = kLabelW, ly = y + 10;
  for (size_t i = 0; i < chart.segment_names.size() && i < chart.segment_colors.size(); ++i) {
    const double w = 40 + 7.0 * static_cast<double>(chart.segment_names[i].size());
    if (lx + w > kW && lx > kLabelW) {
      lx = kLabelW;
      ly += 18;
    }
    s << "<rect x=\"" << num(lx) << "\" y=\"" << num(ly - 10) << "\" width=\"12\" height=\"12\" "
      << "fill=\"" << chart.segment_colors[i] << "\"/>\n<text x=\"" << num(lx + 18) << "\" y=\""
      << num(ly) << "\">" << xml_escape(chart.segment_names[i]) << "</text>\n";
    lx += w;
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace foreshore::sim::svg
