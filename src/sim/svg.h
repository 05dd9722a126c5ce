// Small hand-written SVG charts: lines and points on linear or log axes, and
// stacked horizontal bars. Self-contained files, no scripts, no fonts beyond
// the viewer's sans-serif.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace foreshore::sim::svg {

struct Series {
  std::string name;  // legend entry
  std::string color;
  std::vector<std::pair<double, double>> points;
  bool line = true;
  bool markers = false;
  bool dashed = false;
  std::vector<std::string> point_labels;  // drawn beside each marker when given
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_x = false;
  std::optional<std::pair<double, double>> x_range, y_range;  // default: the data's
  std::vector<Series> series;

  // Appends a series and returns it, for whatever else it needs set.
  Series& add(std::string name, std::string color,
              std::vector<std::pair<double, double>> points = {}, bool dashed = false);
};

struct StackedBars {
  std::string title;
  std::vector<std::string> segment_names, segment_colors;
  // Each bar: a label and one value per segment (shares of the bar's whole).
  std::vector<std::pair<std::string, std::vector<double>>> bars;
};

std::string render(const LineChart& chart);
std::string render(const StackedBars& chart);
std::string xml_escape(std::string_view text);

}  // namespace foreshore::sim::svg
