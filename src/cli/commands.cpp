#include "cli/commands.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace foreshore::cli {

int fail(const Error& e) {
  std::cerr << "error: " << e.message << "\n";
  return e.kind == ErrorKind::kInvalidArgument || e.kind == ErrorKind::kNotFound ? 2 : 1;
}

namespace {

// A check that the option's value is a number `test` accepts; `wanted` says
// what it must be.
CLI::Validator number_check(std::function<bool(double)> test, std::string wanted,
                            std::string name) {
  return CLI::Validator(
      [test, wanted](std::string& value) -> std::string {
        double v = 0.0;
        if (!CLI::detail::lexical_cast(value, v)) return "'" + value + "' is not a number";
        if (!test(v)) return "'" + value + "' is not " + wanted;
        return "";
      },
      name, name);
}

}  // namespace

const CLI::Validator kNonNegative =
    number_check([](double v) { return v >= 0.0; }, "0 or more", "NONNEGATIVE");
const CLI::Validator kPositive =
    number_check([](double v) { return v > 0.0; }, "above 0", "POSITIVE");
CLI::Validator number_range(double lo, double hi) {
  const auto text = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string(buf);
  };
  // NaN compares false both ways, so `lo <= v && v <= hi` refuses it
  // (CLI::Range lets it through).
  return number_check([lo, hi](double v) { return lo <= v && v <= hi; },
                      "between " + text(lo) + " and " + text(hi), text(lo) + "-" + text(hi));
}

const CLI::Validator kThreadCount = number_check(
    [](double v) { return v >= 0.0 && v <= engine::kMaxThreads && v == std::floor(v); },
    "a whole number from 0 (one per core) to " + std::to_string(engine::kMaxThreads),
    "0-" + std::to_string(engine::kMaxThreads));

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), size_t{0});
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::optional<std::string> unknown_subcommand_message(const CLI::App& app, int argc,
                                                      const char* const* argv) {
  const CLI::App* current = &app;
  std::string path = app.get_name().empty() ? "foreshore" : app.get_name();
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    // Past the first option the words may be option values, not commands.
    if (arg.starts_with("-")) return std::nullopt;
    const auto subs = current->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) return std::nullopt;
    const auto named = std::find_if(subs.begin(), subs.end(), [&](const CLI::App* s) {
      return s->check_name(std::string(arg));
    });
    if (named != subs.end()) {
      current = *named;
      path += " " + current->get_name();
      continue;
    }
    const CLI::App* nearest = subs.front();
    for (const CLI::App* s : subs) {
      if (edit_distance(arg, s->get_name()) < edit_distance(arg, nearest->get_name())) nearest = s;
    }
    std::string message = "'" + std::string(arg) + "' is not a command of " + path;
    // Far from every name, a guess would mislead more than help.
    if (edit_distance(arg, nearest->get_name()) <= std::max<size_t>(2, arg.size() / 3)) {
      message += "; did you mean '" + nearest->get_name() + "'?";
    }
    message += "\ncommands:";
    for (const CLI::App* s : subs) message += " " + s->get_name();
    message += "\n(" + path + " --help describes each)";
    return message;
  }
  return std::nullopt;
}

}  // namespace foreshore::cli
