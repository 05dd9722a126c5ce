#include "training/router_training.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_set>

namespace foreshore::route {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view kRouteLlmWeak = "mistralai/Mixtral-8x7B-Instruct-v0.1";
constexpr std::string_view kRouteLlmStrong = "gpt-4-1106-preview";
constexpr std::string_view kRouterBenchWeak = "mistralai/mixtral-8x7b-chat";
constexpr std::string_view kRouterBenchStrong = "gpt-4-1106-preview";

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "cannot open data file " + path + "; check the path given to --data");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

Outcome outcome_of(double edge, double cloud, bool edge_adequate) {
  if (cloud > edge) return Outcome::kCloudBetter;
  if (edge > cloud) return Outcome::kEdgeBetter;
  return edge_adequate ? Outcome::kBothGood : Outcome::kBothBad;
}

// ---- CSV (RFC 4180: quoted fields, doubled quotes, newlines inside quotes) ----

class CsvReader {
 public:
  explicit CsvReader(std::string_view text) : s_(text) {}
  // False at end of input; `line` is where the row started (1-based).
  bool next(std::vector<std::string>& row, size_t& line) {
    row.clear();
    if (pos_ >= s_.size()) return false;
    line = line_;
    std::string field;
    bool quoted = false;
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (quoted) {
        if (c == '"') {
          if (pos_ < s_.size() && s_[pos_] == '"') {
            field += '"';
            ++pos_;
          } else {
            quoted = false;
          }
        } else {
          if (c == '\n') ++line_;
          field += c;
        }
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        row.push_back(std::move(field));
        field.clear();
      } else if (c == '\n' || c == '\r') {
        if (c == '\r' && pos_ < s_.size() && s_[pos_] == '\n') ++pos_;
        ++line_;
        break;
      } else {
        field += c;
      }
    }
    row.push_back(std::move(field));
    return true;
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  size_t line_ = 1;
};

// 0/1 results as the data sets write them: True/False, 1/0, 1.0/0.0.
std::optional<double> parse_result(std::string_view v) {
  v = trim(v);
  if (v == "True" || v == "true" || v == "TRUE") return 1.0;
  if (v == "False" || v == "false" || v == "FALSE") return 0.0;
  if (v.empty()) return std::nullopt;
  char* end = nullptr;
  const std::string tmp(v);
  const double d = std::strtod(tmp.c_str(), &end);
  if (end != tmp.c_str() + tmp.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

// RouterBench stores prompts as a Python list literal of strings:
// "['Write a python function ...']". Anything else is returned unchanged.
std::string unwrap_python_list(const std::string& text) {
  std::string_view s = trim(text);
  if (s.size() < 4 || s.front() != '[' || s.back() != ']') return text;
  std::string out;
  size_t i = 1;
  bool first = true;
  while (true) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size() - 1) break;
    const char q = s[i];
    if (q != '\'' && q != '"') return text;
    ++i;
    std::string item;
    bool closed = false;
    while (i < s.size()) {
      const char c = s[i++];
      if (c == '\\' && i < s.size()) {
        const char e = s[i++];
        switch (e) {
          case 'n':
            item += '\n';
            break;
          case 't':
            item += '\t';
            break;
          case 'r':
            item += '\r';
            break;
          default:
            item += e;
            break;
        }
      } else if (c == q) {
        closed = true;
        break;
      } else {
        item += c;
      }
    }
    if (!closed) return text;
    if (!first) out += "\n";
    out += item;
    first = false;
  }
  return first ? text : out;
}

std::string subject_from_filename(const std::string& path) {
  std::string stem = fs::path(path).stem().string();
  if (stem.rfind("mmlu_", 0) == 0) return stem.substr(5);
  return stem;
}

struct Filters {
  const DataOptions& options;
  const std::unordered_set<std::string>& contaminated;
  LoadReport& report;

  // True when the row is to be kept; counts why not otherwise.
  bool keep(const std::string& prompt, const std::string& subject) const {
    report.subjects_found.insert(subject);
    if (contaminated.count(std::string(trim(prompt)))) {
      ++report.excluded_contaminated;
      return false;
    }
    const auto& only = options.only_subjects;
    const auto& drop = options.drop_subjects;
    if ((!only.empty() && std::find(only.begin(), only.end(), subject) == only.end()) ||
        std::find(drop.begin(), drop.end(), subject) != drop.end()) {
      ++report.dropped_by_subject;
      return false;
    }
    return true;
  }
};

Status load_csv(const std::string& path, const std::string& text, const DataOptions& options,
                const Filters& filters, std::vector<LabelledPrompt>& out) {
  CsvReader reader(text);
  std::vector<std::string> header, row;
  size_t line = 0;
  if (!reader.next(header, line)) {
    return make_error(ErrorKind::kCorrupt, path + ": empty CSV file; expected a header row");
  }
  auto column = [&](std::string_view name) -> std::optional<size_t> {
    for (size_t i = 0; i < header.size(); ++i) {
      if (trim(header[i]) == name) return i;
    }
    return std::nullopt;
  };
  const auto prompt_col = column("prompt");
  const auto eval_name_col = column("eval_name");
  std::string weak = options.weak_column, strong = options.strong_column;
  if (weak.empty()) weak = eval_name_col ? kRouterBenchWeak : kRouteLlmWeak;
  if (strong.empty()) strong = eval_name_col ? kRouterBenchStrong : kRouteLlmStrong;
  const auto weak_col = column(weak);
  const auto strong_col = column(strong);
  if (!prompt_col || !weak_col || !strong_col) {
    std::string cols;
    for (const auto& h : header) cols += (cols.empty() ? "" : ", ") + h.substr(0, 60);
    return make_error(ErrorKind::kInvalidArgument,
                      path + ": needs columns 'prompt', '" + weak + "' (edge) and '" + strong +
                          "' (cloud); it has: " + cols +
                          ". Name the result columns with --weak-column and --strong-column");
  }
  const std::string file_subject = subject_from_filename(path);
  while (reader.next(row, line)) {
    if (row.size() == 1 && trim(row[0]).empty()) continue;
    if (row.size() != header.size()) {
      return make_error(ErrorKind::kCorrupt, path + ":" + std::to_string(line) + ": row has " +
                                                 std::to_string(row.size()) +
                                                 " fields, the header has " +
                                                 std::to_string(header.size()));
    }
    const auto e = parse_result(row[*weak_col]);
    const auto c = parse_result(row[*strong_col]);
    if (!e || !c) {
      ++filters.report.skipped_unlabelled;
      continue;
    }
    LabelledPrompt p;
    p.prompt = eval_name_col ? unwrap_python_list(row[*prompt_col]) : row[*prompt_col];
    p.subject = eval_name_col ? row[*eval_name_col] : file_subject;
    if (!filters.keep(p.prompt, p.subject)) continue;
    p.edge_quality = *e;
    p.cloud_quality = *c;
    p.outcome = outcome_of(*e, *c, *e >= 0.5);
    out.push_back(std::move(p));
  }
  return Status::Ok();
}

Status load_mt_bench(const std::string& path, const std::string& text, const DataOptions& options,
                     const Filters& filters, std::vector<LabelledPrompt>& out) {
  const std::string qpath = (fs::path(path).parent_path() / "question.jsonl").string();
  auto qtext = read_file(qpath);
  if (!qtext.ok()) {
    return make_error(ErrorKind::kNotFound, path +
                                                ": MT-Bench judgements need question.jsonl "
                                                "beside them for the prompts; " +
                                                qpath + " is missing");
  }
  struct Question {
    std::vector<std::string> turns;
    std::string category;
  };
  std::map<int64_t, Question> questions;
  std::istringstream qs(*qtext);
  std::string line;
  while (std::getline(qs, line)) {
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("question_id") || !j.contains("turns")) continue;
    Question q;
    for (const auto& t : j["turns"]) {
      if (t.is_string()) q.turns.push_back(t.get<std::string>());
    }
    if (j.contains("category") && j["category"].is_string()) q.category = j["category"];
    questions[j["question_id"].get<int64_t>()] = std::move(q);
  }
  // (question, turn) -> (edge score, cloud score); -1 = not judged.
  std::map<std::pair<int64_t, int>, std::pair<double, double>> scores;
  std::istringstream js(text);
  size_t n = 0;
  while (std::getline(js, line)) {
    ++n;
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("question_id") || !j.contains("model") ||
        !j.contains("score") || !j["score"].is_number()) {
      return make_error(ErrorKind::kCorrupt, path + ":" + std::to_string(n) +
                                                 ": not an MT-Bench judgement (needs question_id, "
                                                 "model, score, turn)");
    }
    const std::string model = j["model"].get<std::string>();
    const int turn = j.value("turn", 1);
    auto& s = scores.try_emplace({j["question_id"].get<int64_t>(), turn}, -1.0, -1.0).first->second;
    if (model == options.weak_model) s.first = j["score"].get<double>();
    if (model == options.strong_model) s.second = j["score"].get<double>();
  }
  for (const auto& [key, s] : scores) {
    const auto q = questions.find(key.first);
    if (q == questions.end() || key.second < 1 ||
        static_cast<size_t>(key.second) > q->second.turns.size() || s.first < 0 || s.second < 0) {
      ++filters.report.skipped_unlabelled;
      continue;
    }
    LabelledPrompt p;
    for (int t = 0; t < key.second; ++t) p.prompt += (t ? "\n\n" : "") + q->second.turns[t];
    p.subject = q->second.category;
    // Contamination lists name the first turn; it taints the whole conversation.
    if (!filters.keep(q->second.turns[0], p.subject)) continue;
    p.edge_quality = s.first;
    p.cloud_quality = s.second;
    p.outcome = outcome_of(s.first, s.second, true);
    out.push_back(std::move(p));
  }
  return Status::Ok();
}

// An Arena-Hard judgement folder (arena-bench-v1): question.jsonl with the
// prompts, and model_judgment/<model>.jsonl with a GPT-4 score (1-10) per
// question and model. `root` is the folder holding both.
Status load_arena(const fs::path& root, const DataOptions& options, const Filters& filters,
                  std::vector<LabelledPrompt>& out) {
  const std::string qpath = (root / "question.jsonl").string();
  FSH_ASSIGN_OR_RETURN(std::string qtext, read_file(qpath));
  struct Question {
    std::string prompt;
    std::string category;
    double edge = -1.0, cloud = -1.0;  // -1: not judged
  };
  std::map<std::string, Question> questions;
  std::istringstream qs(qtext);
  std::string line;
  size_t n = 0;
  while (std::getline(qs, line)) {
    ++n;
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("question_id") ||
        !j["question_id"].is_string() || !j.contains("turns") || !j["turns"].is_array() ||
        j["turns"].empty() || !j["turns"][0].is_string()) {
      return make_error(ErrorKind::kCorrupt,
                        qpath + ":" + std::to_string(n) +
                            ": not an Arena-Hard question (needs question_id and turns)");
    }
    Question q;
    q.prompt = j["turns"][0].get<std::string>();
    if (j.contains("category") && j["category"].is_string()) q.category = j["category"];
    questions[j["question_id"].get<std::string>()] = std::move(q);
  }
  std::error_code ec;
  std::vector<fs::path> judgement_files;
  for (const auto& entry : fs::directory_iterator(root / "model_judgment", ec)) {
    if (entry.path().extension() == ".jsonl") judgement_files.push_back(entry.path());
  }
  std::sort(judgement_files.begin(), judgement_files.end());
  for (const auto& f : judgement_files) {
    FSH_ASSIGN_OR_RETURN(std::string text, read_file(f.string()));
    std::istringstream js(text);
    n = 0;
    while (std::getline(js, line)) {
      ++n;
      if (trim(line).empty()) continue;
      const json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("question_id") ||
          !j.contains("model") || !j["model"].is_string()) {
        return make_error(ErrorKind::kCorrupt,
                          f.string() + ":" + std::to_string(n) +
                              ": not an Arena-Hard judgement (needs question_id, model, score)");
      }
      const std::string model = j["model"].get<std::string>();
      if (model != options.weak_model && model != options.strong_model) break;  // another model
      const auto q = questions.find(j["question_id"].get<std::string>());
      // A judgement without a score (the judge's verdict did not parse) labels nothing.
      if (q == questions.end() || !j.contains("score") || !j["score"].is_number()) continue;
      (model == options.weak_model ? q->second.edge : q->second.cloud) = j["score"].get<double>();
    }
  }
  for (auto& [id, q] : questions) {
    if (q.edge < 0 || q.cloud < 0) {
      ++filters.report.skipped_unlabelled;
      continue;
    }
    if (!filters.keep(q.prompt, q.category)) continue;
    LabelledPrompt p;
    p.prompt = std::move(q.prompt);
    p.subject = q.category;
    p.edge_quality = q.edge;
    p.cloud_quality = q.cloud;
    p.outcome = outcome_of(q.edge, q.cloud, true);
    out.push_back(std::move(p));
  }
  return Status::Ok();
}

// A folder of Arena-Hard judgements: question.jsonl beside model_judgment/.
// Given either that folder or its model_judgment/, the folder; else nullopt.
std::optional<fs::path> arena_root(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.filename() == "model_judgment") p = p.parent_path();
  std::error_code ec;
  if (fs::is_directory(p / "model_judgment", ec) && fs::exists(p / "question.jsonl", ec)) return p;
  return std::nullopt;
}

Status load_jsonl(const std::string& path, const std::string& text, const Filters& filters,
                  std::vector<LabelledPrompt>& out) {
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  auto bad = [&](const std::string& what) {
    return make_error(ErrorKind::kCorrupt,
                      path + ":" + std::to_string(n) + ": " + what +
                          "; each line must be {\"prompt\": ..., \"edge_ok\": true|false} or "
                          "{\"prompt\": ..., \"scores\": {\"edge\": x, \"cloud\": y}}");
  };
  while (std::getline(in, line)) {
    ++n;
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
    if (!j.contains("prompt") || !j["prompt"].is_string()) return bad("no string field 'prompt'");
    LabelledPrompt p;
    p.prompt = j["prompt"].get<std::string>();
    if (j.contains("subject") && j["subject"].is_string()) p.subject = j["subject"];
    if (j.contains("edge_perplexity") && j["edge_perplexity"].is_number()) {
      p.edge_perplexity = j["edge_perplexity"].get<double>();
    }
    if (j.contains("scores")) {
      const json& s = j["scores"];
      if (!s.is_object() || !s.contains("edge") || !s.contains("cloud") || !s["edge"].is_number() ||
          !s["cloud"].is_number()) {
        return bad("'scores' needs numbers 'edge' and 'cloud'");
      }
      p.edge_quality = s["edge"].get<double>();
      p.cloud_quality = s["cloud"].get<double>();
      p.outcome = outcome_of(p.edge_quality, p.cloud_quality, true);
    } else if (j.contains("edge_ok") && j["edge_ok"].is_boolean()) {
      // Without the cloud's result, the cloud is taken to be adequate.
      const bool ok = j["edge_ok"].get<bool>();
      const bool cloud_ok =
          j.contains("cloud_ok") && j["cloud_ok"].is_boolean() ? j["cloud_ok"].get<bool>() : true;
      p.edge_quality = ok ? 1.0 : 0.0;
      p.cloud_quality = cloud_ok ? 1.0 : 0.0;
      p.outcome = outcome_of(p.edge_quality, p.cloud_quality, ok);
    } else {
      return bad("no label");
    }
    if (!filters.keep(p.prompt, p.subject)) continue;
    out.push_back(std::move(p));
  }
  return Status::Ok();
}

Status add_contaminated(const std::string& path, std::unordered_set<std::string>& set) {
  FSH_ASSIGN_OR_RETURN(std::string text, read_file(path));
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return make_error(ErrorKind::kCorrupt, path + ":" + std::to_string(n) +
                                                 ": not a JSON object; an exclusion list holds "
                                                 "objects with eval_prompt/train_prompt/prompt");
    }
    for (const char* key : {"eval_prompt", "train_prompt", "prompt"}) {
      if (j.contains(key) && j[key].is_string()) {
        set.insert(std::string(trim(j[key].get<std::string>())));
      }
    }
  }
  return Status::Ok();
}

// The contamination lists that apply to a data file: every
// contaminated_prompts.jsonl in its data tree, not only its own folder's. A
// list names prompts shared by a benchmark and the router's training data
// (RouteLLM's MMLU and MT-Bench lists name Arena prompts), so it must keep
// them out of whatever the model is trained or measured on. The tree is the
// nearest folder named router-data above the file; a file outside one has
// only its own folder's list. Reaching further up would sweep whatever sits
// beside the data (a home or temporary folder, and files other programs are
// writing there) into the exclusions.
std::vector<std::string> contamination_lists_for(const std::string& file) {
  std::error_code ec;
  const fs::path folder = fs::absolute(fs::path(file), ec).parent_path();
  std::optional<fs::path> tree;
  for (fs::path up = folder; !up.empty() && up != up.root_path(); up = up.parent_path()) {
    if (up.filename() == "router-data") {
      tree = up;
      break;
    }
  }
  std::vector<std::string> lists;
  if (const fs::path own = folder / "contaminated_prompts.jsonl"; fs::exists(own, ec)) {
    lists.push_back(own.string());
  }
  if (!tree) return lists;
  constexpr int kMaxDepth = 3;
  for (auto it = fs::recursive_directory_iterator(
           *tree, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it.depth() >= kMaxDepth) it.disable_recursion_pending();
    if (it->path().filename() == "contaminated_prompts.jsonl" && it->is_regular_file(ec) &&
        std::find(lists.begin(), lists.end(), it->path().string()) == lists.end()) {
      lists.push_back(it->path().string());
    }
  }
  return lists;
}

bool is_aux_file(const fs::path& p) {
  const std::string name = p.filename().string();
  return name == "contaminated_prompts.jsonl" || name == "question.jsonl";
}

uint64_t next_random(uint64_t& state) {
  state += 0x9e3779b97f4a7c15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

// Cross-entropy against soft labels; log1p forms stay finite for any logit.
double log_loss(double z, double y) {
  const double log_p = z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z));
  const double log_q = z >= 0 ? -z - std::log1p(std::exp(-z)) : -std::log1p(std::exp(z));
  return -(y * log_p + (1.0 - y) * log_q);
}

// Logistic regression over [bias | dense | hashed], minimized with L-BFGS.
class LogisticProblem {
 public:
  LogisticProblem(const std::vector<ComplexityFeatures>& x, const std::vector<double>& y,
                  size_t buckets, double l2_dense, double l2_hashed)
      : x_(x), y_(y), buckets_(buckets), l2_dense_(l2_dense), l2_hashed_(l2_hashed) {}

  size_t size() const { return 1 + kDenseFeatureCount + buckets_; }

  void margins(const std::vector<double>& theta, std::vector<double>& z) const {
    z.resize(x_.size());
    for (size_t i = 0; i < x_.size(); ++i) {
      double s = theta[0];
      for (int d = 0; d < kDenseFeatureCount; ++d) s += theta[1 + d] * x_[i].dense[d];
      for (const auto& [b, v] : x_[i].hashed) s += theta[1 + kDenseFeatureCount + b] * v;
      z[i] = s;
    }
  }

  double regularizer(const std::vector<double>& theta) const {
    double r = 0.0;
    for (size_t k = 1; k < theta.size(); ++k) {
      r += (k <= static_cast<size_t>(kDenseFeatureCount) ? l2_dense_ : l2_hashed_) * theta[k] *
           theta[k];
    }
    return 0.5 * r;
  }

  double loss(const std::vector<double>& z, const std::vector<double>& theta) const {
    double l = 0.0;
    for (size_t i = 0; i < z.size(); ++i) l += log_loss(z[i], y_[i]);
    return l / static_cast<double>(z.size()) + regularizer(theta);
  }

  void gradient(const std::vector<double>& z, const std::vector<double>& theta,
                std::vector<double>& g) const {
    g.assign(theta.size(), 0.0);
    const double inv_n = 1.0 / static_cast<double>(z.size());
    for (size_t i = 0; i < z.size(); ++i) {
      const double r = (sigmoid(z[i]) - y_[i]) * inv_n;
      g[0] += r;
      for (int d = 0; d < kDenseFeatureCount; ++d) g[1 + d] += r * x_[i].dense[d];
      for (const auto& [b, v] : x_[i].hashed) g[1 + kDenseFeatureCount + b] += r * v;
    }
    for (size_t k = 1; k < theta.size(); ++k) {
      g[k] += (k <= static_cast<size_t>(kDenseFeatureCount) ? l2_dense_ : l2_hashed_) * theta[k];
    }
  }

 private:
  const std::vector<ComplexityFeatures>& x_;
  const std::vector<double>& y_;
  size_t buckets_;
  double l2_dense_, l2_hashed_;
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Minimizes a strictly convex objective; the result does not depend on the
// starting point, only on when the iteration stops.
std::vector<double> minimize_lbfgs(const LogisticProblem& p, int max_iterations,
                                   TrainReport& report) {
  constexpr int kMemory = 10;
  const size_t n = p.size();
  std::vector<double> theta(n, 0.0), z, zd, g, d(n), theta_new(n), z_new, g_new;
  p.margins(theta, z);
  double f = p.loss(z, theta);
  p.gradient(z, theta, g);
  std::vector<std::vector<double>> s_hist, y_hist;
  std::vector<double> rho;
  report.converged = false;
  int it = 0;
  for (; it < max_iterations; ++it) {
    double gmax = 0.0;
    for (double v : g) gmax = std::max(gmax, std::abs(v));
    if (gmax < 1e-7) {
      report.converged = true;
      break;
    }
    // Two-loop recursion for d = -H g.
    d = g;
    std::vector<double> alpha(s_hist.size());
    for (int k = static_cast<int>(s_hist.size()) - 1; k >= 0; --k) {
      alpha[k] = rho[k] * dot(s_hist[k], d);
      for (size_t i = 0; i < n; ++i) d[i] -= alpha[k] * y_hist[k][i];
    }
    const double gamma =
        s_hist.empty() ? 1.0 / std::max(1.0, std::sqrt(dot(g, g)))
                       : dot(s_hist.back(), y_hist.back()) / dot(y_hist.back(), y_hist.back());
    for (double& v : d) v *= gamma;
    for (size_t k = 0; k < s_hist.size(); ++k) {
      const double beta = rho[k] * dot(y_hist[k], d);
      for (size_t i = 0; i < n; ++i) d[i] += s_hist[k][i] * (alpha[k] - beta);
    }
    for (double& v : d) v = -v;
    double slope = dot(g, d);
    if (slope >= 0) {  // not a descent direction: restart from steepest descent
      s_hist.clear();
      y_hist.clear();
      rho.clear();
      for (size_t i = 0; i < n; ++i) d[i] = -g[i] / std::max(1.0, std::sqrt(dot(g, g)));
      slope = dot(g, d);
    }
    // Margins are linear in theta, so each line-search trial costs O(rows).
    p.margins(d, zd);
    double step = 1.0, f_new = f;
    bool accepted = false;
    for (int ls = 0; ls < 40; ++ls) {
      for (size_t i = 0; i < n; ++i) theta_new[i] = theta[i] + step * d[i];
      z_new.resize(z.size());
      for (size_t i = 0; i < z.size(); ++i) z_new[i] = z[i] + step * zd[i];
      f_new = p.loss(z_new, theta_new);
      if (f_new <= f + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
      step *= 0.5;
    }
    if (!accepted) break;
    p.gradient(z_new, theta_new, g_new);
    std::vector<double> s(n), y(n);
    for (size_t i = 0; i < n; ++i) {
      s[i] = theta_new[i] - theta[i];
      y[i] = g_new[i] - g[i];
    }
    const double sy = dot(s, y);
    if (sy > 1e-12) {
      if (static_cast<int>(s_hist.size()) == kMemory) {
        s_hist.erase(s_hist.begin());
        y_hist.erase(y_hist.begin());
        rho.erase(rho.begin());
      }
      s_hist.push_back(std::move(s));
      y_hist.push_back(std::move(y));
      rho.push_back(1.0 / sy);
    }
    const double improvement = f - f_new;
    theta.swap(theta_new);
    z.swap(z_new);
    g.swap(g_new);
    f = f_new;
    if (improvement < 1e-10 * std::max(1.0, std::abs(f))) {
      report.converged = true;
      ++it;
      break;
    }
  }
  report.iterations = it;
  report.final_loss = f;
  return theta;
}

}  // namespace

// ---- data ------------------------------------------------------------------------

Result<std::vector<LabelledPrompt>> load_labelled_prompts(const std::vector<std::string>& paths,
                                                          const DataOptions& options,
                                                          LoadReport* report_out) {
  LoadReport report;
  std::vector<std::string> files;
  for (const auto& path : paths) {
    std::error_code ec;
    if (fs::is_directory(path, ec) && arena_root(path)) {
      files.push_back(path);  // loaded whole, as one data set
    } else if (fs::is_directory(path, ec)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(path, ec)) {
        const auto& p = entry.path();
        const auto ext = p.extension().string();
        if ((ext == ".csv" || ext == ".jsonl") && !is_aux_file(p)) found.push_back(p.string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) {
        return make_error(ErrorKind::kNotFound,
                          "data folder " + path +
                              " holds no .csv or .jsonl data files (subfolders are not "
                              "searched: give the subfolder that holds them to --data)");
      }
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(path, ec)) {
      files.push_back(path);
    } else {
      return make_error(ErrorKind::kNotFound,
                        "data file " + path + " does not exist; check the path given to --data");
    }
  }
  if (files.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "no data files given; pass --data FILE...");
  }
  {
    std::vector<std::string> unique;
    std::set<std::string> seen;
    for (const auto& f : files) {
      std::error_code ec;
      auto canonical = fs::weakly_canonical(f, ec);
      if (seen.insert(ec ? f : canonical.string()).second) {
        unique.push_back(f);
      } else {
        report.duplicate_files.push_back(f);
      }
    }
    files = std::move(unique);
  }
  for (const auto& f : options.exclude_files) {
    std::error_code ec;
    if (!fs::exists(f, ec)) {
      return make_error(ErrorKind::kNotFound, "exclusion list " + f +
                                                  " does not exist; check the path given to "
                                                  "--exclude");
    }
  }

  std::unordered_set<std::string> contaminated;
  std::vector<std::string> exclusion_files = options.exclude_files;
  for (const auto& f : files) {
    for (auto& list : contamination_lists_for(f)) exclusion_files.push_back(std::move(list));
  }
  std::sort(exclusion_files.begin(), exclusion_files.end());
  exclusion_files.erase(std::unique(exclusion_files.begin(), exclusion_files.end()),
                        exclusion_files.end());
  for (const auto& f : exclusion_files) FSH_TRY_STATUS(add_contaminated(f, contaminated));
  report.exclusion_lists = exclusion_files;

  const Filters filters{options, contaminated, report};
  std::vector<LabelledPrompt> rows;
  for (const auto& f : files) {
    if (const auto root = arena_root(f)) {
      FSH_TRY_STATUS(load_arena(*root, options, filters, rows));
      report.files.push_back(f);
      continue;
    }
    FSH_ASSIGN_OR_RETURN(std::string text, read_file(f));
    const std::string ext = fs::path(f).extension().string();
    DataFormat format = options.format;
    if (format == DataFormat::kAuto) {
      if (ext == ".csv") {
        format = DataFormat::kCsv;
      } else if (ext == ".jsonl" || ext == ".json") {
        format = DataFormat::kJsonl;
      } else {
        return make_error(ErrorKind::kInvalidArgument,
                          f + ": cannot tell the format from the extension; pass --format csv "
                              "or --format jsonl");
      }
    }
    if (format == DataFormat::kCsv) {
      FSH_TRY_STATUS(load_csv(f, text, options, filters, rows));
    } else if (fs::path(f).filename() == "judgements.jsonl") {
      FSH_TRY_STATUS(load_mt_bench(f, text, options, filters, rows));
    } else {
      FSH_TRY_STATUS(load_jsonl(f, text, filters, rows));
    }
    report.files.push_back(f);
  }
  report.rows = static_cast<int64_t>(rows.size());
  if (report_out) *report_out = report;
  return rows;
}

const std::vector<std::string>& routellm_mmlu_subjects() {
  static const std::vector<std::string> subjects = {"abstract_algebra",
                                                    "anatomy",
                                                    "business_ethics",
                                                    "clinical_knowledge",
                                                    "college_chemistry",
                                                    "college_computer_science",
                                                    "college_medicine",
                                                    "college_physics",
                                                    "conceptual_physics",
                                                    "econometrics",
                                                    "elementary_mathematics",
                                                    "formal_logic",
                                                    "high_school_biology",
                                                    "high_school_chemistry",
                                                    "high_school_european_history",
                                                    "high_school_geography",
                                                    "high_school_macroeconomics",
                                                    "high_school_mathematics",
                                                    "high_school_physics",
                                                    "high_school_psychology",
                                                    "high_school_us_history",
                                                    "high_school_world_history",
                                                    "human_sexuality",
                                                    "international_law",
                                                    "logical_fallacies",
                                                    "machine_learning",
                                                    "marketing",
                                                    "medical_genetics",
                                                    "moral_disputes",
                                                    "moral_scenarios",
                                                    "philosophy",
                                                    "prehistory",
                                                    "professional_law",
                                                    "professional_medicine",
                                                    "public_relations",
                                                    "security_studies",
                                                    "us_foreign_policy",
                                                    "virology"};
  return subjects;
}

const std::vector<std::string>& default_holdout_subjects() {
  static const std::vector<std::string> holdout = [] {
    std::vector<std::string> v;
    const auto& all = routellm_mmlu_subjects();
    for (size_t i = 3; i < all.size(); i += 4) v.push_back(all[i]);
    return v;
  }();
  return holdout;
}

// ---- labels and training ------------------------------------------------------------

std::string_view label_rule_name(LabelRule rule) {
  switch (rule) {
    case LabelRule::kWeakWrong:
      return "weak-wrong";
    case LabelRule::kCloudWins:
      return "cloud-wins";
    case LabelRule::kGain:
      return "gain";
  }
  return "?";
}

std::optional<LabelRule> parse_label_rule(std::string_view name) {
  for (LabelRule r : {LabelRule::kWeakWrong, LabelRule::kCloudWins, LabelRule::kGain}) {
    if (label_rule_name(r) == name) return r;
  }
  return std::nullopt;
}

double label_for(Outcome outcome, LabelRule rule) {
  switch (rule) {
    case LabelRule::kWeakWrong:
      return outcome == Outcome::kCloudBetter || outcome == Outcome::kBothBad ? 1.0 : 0.0;
    case LabelRule::kCloudWins:
      return outcome == Outcome::kCloudBetter ? 1.0 : 0.0;
    case LabelRule::kGain:
      return outcome == Outcome::kCloudBetter ? 1.0 : outcome == Outcome::kEdgeBetter ? 0.0 : 0.5;
  }
  return 0.0;
}

namespace {

// Fits the logistic model on `rows`; the threshold is left at 0.5.
Result<ComplexityModel> fit(const std::vector<LabelledPrompt>& rows, const TrainOptions& options,
                            TrainReport& report) {
  std::vector<ComplexityFeatures> x;
  x.reserve(rows.size());
  std::vector<double> y;
  y.reserve(rows.size());
  double positives = 0.0;
  for (const auto& r : rows) {
    x.push_back(extract_complexity_features(r.prompt, options.hashing, r.edge_perplexity));
    y.push_back(label_for(r.outcome, options.label));
    positives += y.back();
  }
  if (positives == 0.0 || positives == static_cast<double>(rows.size())) {
    return make_error(ErrorKind::kInvalidArgument,
                      "every training label is the same under the '" +
                          std::string(label_rule_name(options.label)) +
                          "' rule; the data needs prompts the edge gets right and wrong");
  }

  // Standardize dense features so one L2 strength treats them alike.
  DenseVector mean{}, scale{};
  const double n = static_cast<double>(rows.size());
  for (const auto& f : x) {
    for (int d = 0; d < kDenseFeatureCount; ++d) mean[d] += f.dense[d] / n;
  }
  for (const auto& f : x) {
    for (int d = 0; d < kDenseFeatureCount; ++d) {
      scale[d] += (f.dense[d] - mean[d]) * (f.dense[d] - mean[d]) / n;
    }
  }
  for (int d = 0; d < kDenseFeatureCount; ++d) {
    scale[d] = std::sqrt(scale[d]);
    // A constant feature (perplexity when no row has it) keeps weight 0.
    if (scale[d] < 1e-9) scale[d] = 1.0;
  }
  for (auto& f : x) {
    for (int d = 0; d < kDenseFeatureCount; ++d) f.dense[d] = (f.dense[d] - mean[d]) / scale[d];
  }

  const size_t buckets = size_t{1} << options.hashing.bits;
  const LogisticProblem problem(x, y, buckets, options.l2_dense, options.l2_hashed);
  const std::vector<double> theta = minimize_lbfgs(problem, options.max_iterations, report);

  DenseVector weights{};
  for (int d = 0; d < kDenseFeatureCount; ++d) weights[d] = theta[1 + d];
  std::vector<float> hashed(buckets);
  for (size_t b = 0; b < buckets; ++b) {
    hashed[b] = static_cast<float>(theta[1 + kDenseFeatureCount + b]);
  }
  ComplexityModelInfo info = options.info;
  info.label_rule = std::string(label_rule_name(options.label));
  info.rows = static_cast<int64_t>(rows.size());
  info.mean_label = positives / n;
  info.l2_dense = options.l2_dense;
  info.l2_hashed = options.l2_hashed;
  info.target_cloud_share = options.target_cloud_share;
  return ComplexityModel::create(options.hashing, theta[0], weights, mean, scale, std::move(hashed),
                                 0.5, std::move(info));
}

Status check_train_options(const TrainOptions& options) {
  if (options.hashing.bits < kMinHashBits || options.hashing.bits > kMaxHashBits) {
    return make_error(ErrorKind::kInvalidArgument, "--hash-bits must be in [" +
                                                       std::to_string(kMinHashBits) + ", " +
                                                       std::to_string(kMaxHashBits) + "]");
  }
  if (!(options.l2_dense >= 0) || !(options.l2_hashed >= 0)) {
    return make_error(ErrorKind::kInvalidArgument, "L2 strengths must be >= 0");
  }
  if (!(options.target_cloud_share >= 0.0 && options.target_cloud_share <= 1.0)) {
    return make_error(ErrorKind::kInvalidArgument, "--target-cloud-share must be in [0, 1]");
  }
  return Status::Ok();
}

// Scores each row with a model fitted without its fold (plus `extra`, which is
// only ever trained on).
Result<std::vector<double>> out_of_fold_scores(const std::vector<LabelledPrompt>& rows,
                                               const std::vector<int>& fold_of, int folds,
                                               std::span<const LabelledPrompt> extra,
                                               const TrainOptions& options) {
  std::vector<double> scores(rows.size());
  for (int k = 0; k < folds; ++k) {
    std::vector<LabelledPrompt> train_part(extra.begin(), extra.end());
    train_part.reserve(rows.size() + extra.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      if (fold_of[i] != k) train_part.push_back(rows[i]);
    }
    TrainReport fold_report;
    FSH_ASSIGN_OR_RETURN(ComplexityModel fold_model, fit(train_part, options, fold_report));
    for (size_t i = 0; i < rows.size(); ++i) {
      if (fold_of[i] == k) scores[i] = fold_model.score(rows[i].prompt, rows[i].edge_perplexity);
    }
  }
  return scores;
}

}  // namespace

Result<ComplexityModel> train_complexity_model(const std::vector<LabelledPrompt>& rows,
                                               const TrainOptions& options,
                                               TrainReport* report_out) {
  if (rows.size() < 2) {
    return make_error(
        ErrorKind::kInvalidArgument,
        "training needs at least 2 labelled prompts, got " + std::to_string(rows.size()));
  }
  FSH_TRY_STATUS(check_train_options(options));
  TrainReport report;
  FSH_ASSIGN_OR_RETURN(ComplexityModel model, fit(rows, options, report));

  // Scores on the rows a model was fitted to run more extreme than on new
  // prompts, so a threshold set on them sends far less than the target share
  // of new traffic to the cloud. Out-of-fold scores behave like new traffic.
  const size_t n = rows.size();
  const size_t folds = static_cast<size_t>(std::max(0, options.calibration_folds));
  std::vector<double> calibration;
  bool out_of_fold = folds >= 2 && n >= 2 * folds;
  if (out_of_fold) {
    std::vector<int> fold_of(n);
    for (size_t i = 0; i < n; ++i) fold_of[i] = static_cast<int>(i % folds);
    auto scores = out_of_fold_scores(rows, fold_of, static_cast<int>(folds), {}, options);
    // A fold with one label only: fall back to in-sample.
    out_of_fold = scores.ok();
    if (out_of_fold) calibration = std::move(*scores);
  }
  std::vector<double> in_sample(n);
  for (size_t i = 0; i < n; ++i)
    in_sample[i] = model.score(rows[i].prompt, rows[i].edge_perplexity);
  if (!out_of_fold) calibration = in_sample;
  FSH_TRY_STATUS(model.set_threshold(calibrate_threshold(calibration, options.target_cloud_share)));
  report.calibration_folds = out_of_fold ? static_cast<int>(folds) : 0;
  size_t cloud = 0, cloud_cal = 0;
  for (size_t i = 0; i < n; ++i) {
    cloud += model.prefers_cloud(in_sample[i]) ? 1 : 0;
    cloud_cal += model.prefers_cloud(calibration[i]) ? 1 : 0;
  }
  report.train_cloud_share = static_cast<double>(cloud) / static_cast<double>(n);
  report.calibrated_cloud_share = static_cast<double>(cloud_cal) / static_cast<double>(n);
  if (report_out) *report_out = report;
  return model;
}

Result<CrossValidationReport> cross_validate(const std::vector<LabelledPrompt>& rows,
                                             std::span<const LabelledPrompt> extra_training,
                                             const TrainOptions& options,
                                             const CrossValidationOptions& cv) {
  FSH_TRY_STATUS(check_train_options(options));
  if (cv.folds < 2) {
    return make_error(ErrorKind::kInvalidArgument,
                      "cross-validation needs --folds >= 2, got " + std::to_string(cv.folds));
  }
  if (cv.repeats < 1) {
    return make_error(ErrorKind::kInvalidArgument,
                      "cross-validation needs --repeats >= 1, got " + std::to_string(cv.repeats));
  }
  std::vector<std::string> subjects;
  for (const auto& r : rows) {
    if (!r.subject.empty()) subjects.push_back(r.subject);
  }
  std::sort(subjects.begin(), subjects.end());
  subjects.erase(std::unique(subjects.begin(), subjects.end()), subjects.end());
  if (cv.by_subject && subjects.size() < static_cast<size_t>(cv.folds)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "cross-validation by subject needs at least as many subjects as folds (" +
                          std::to_string(cv.folds) + "); the data has " +
                          std::to_string(subjects.size()) +
                          ". Lower --folds, or split by row with --group row");
  }
  if (rows.size() < 2 * static_cast<size_t>(cv.folds)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "cross-validation with " + std::to_string(cv.folds) +
                          " folds needs at least " + std::to_string(2 * cv.folds) + " rows, got " +
                          std::to_string(rows.size()));
  }

  CrossValidationReport report;
  uint64_t state = cv.seed;
  for (int rep = 0; rep < cv.repeats; ++rep) {
    // Shuffled subjects (or rows) dealt round-robin: folds of near-equal
    // subject counts, a different partition per repeat.
    std::vector<size_t> order(cv.by_subject ? subjects.size() : rows.size());
    std::iota(order.begin(), order.end(), size_t{0});
    for (size_t i = order.size(); i > 1; --i)
      std::swap(order[i - 1], order[next_random(state) % i]);
    std::vector<int> fold_of_item(order.size());
    for (size_t j = 0; j < order.size(); ++j)
      fold_of_item[order[j]] = static_cast<int>(j % cv.folds);
    std::vector<int> fold_of(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      if (!cv.by_subject) {
        fold_of[i] = fold_of_item[i];
      } else if (rows[i].subject.empty()) {
        fold_of[i] = static_cast<int>(i % static_cast<size_t>(cv.folds));
      } else {
        const auto it = std::lower_bound(subjects.begin(), subjects.end(), rows[i].subject);
        fold_of[i] = fold_of_item[static_cast<size_t>(it - subjects.begin())];
      }
    }
    FSH_ASSIGN_OR_RETURN(std::vector<double> scores,
                         out_of_fold_scores(rows, fold_of, cv.folds, extra_training, options));

    // The out-of-fold scores of the rows `keep` selects, on their own curve.
    auto evaluate_where = [&](auto keep, int64_t& count) {
      std::vector<LabelledPrompt> part;
      std::vector<double> part_scores;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (!keep(i)) continue;
        part.push_back(rows[i]);
        part_scores.push_back(scores[i]);
      }
      count = static_cast<int64_t>(part.size());
      return evaluate_routing(part_scores, part);
    };

    CrossValidationRepeat result;
    FSH_ASSIGN_OR_RETURN(result.pooled, evaluate_routing(scores, rows));
    result.folds.resize(static_cast<size_t>(cv.folds));
    for (int k = 0; k < cv.folds; ++k) {
      CrossValidationFold& fold = result.folds[static_cast<size_t>(k)];
      if (cv.by_subject) {
        for (size_t j = 0; j < subjects.size(); ++j) {
          if (fold_of_item[j] == k) fold.subjects.push_back(subjects[j]);
        }
      }
      // APGR is undefined where the tiers tie on a fold; that fold has none.
      auto m = evaluate_where([&](size_t i) { return fold_of[i] == k; }, fold.rows);
      if (m.ok()) fold.apgr = m->apgr;
    }

    // Each subject's own curve: what the scores do within a subject, with the
    // subjects' differences taken out. Weighted by each subject's gap.
    double gained = 0.0, gap = 0.0;
    for (const auto& subject : subjects) {
      int64_t count = 0;
      auto m = evaluate_where([&](size_t i) { return rows[i].subject == subject; }, count);
      if (!m.ok()) continue;
      const double w = static_cast<double>(count);
      gained += (m->auc - m->edge_quality) * w;
      gap += (m->cloud_quality - m->edge_quality) * w;
    }
    if (gap > 0.0) result.within_subject_apgr = gained / gap;
    result.scores = std::move(scores);
    result.fold_of = std::move(fold_of);
    report.repeats.push_back(std::move(result));
  }
  double sum = 0.0;
  for (const auto& r : report.repeats) sum += r.pooled.apgr;
  report.mean_apgr = sum / static_cast<double>(report.repeats.size());
  return report;
}

// ---- evaluation -------------------------------------------------------------------

Result<RoutingMetrics> evaluate_routing(std::span<const double> scores,
                                        std::span<const LabelledPrompt> rows) {
  std::vector<TierQuality> quality;
  quality.reserve(rows.size());
  for (const auto& r : rows) quality.push_back({r.edge_quality, r.cloud_quality});
  return evaluate_routing(scores, std::span<const TierQuality>(quality));
}

Result<RandomBaseline> random_baseline(std::span<const LabelledPrompt> rows, int trials,
                                       uint64_t seed) {
  if (trials < 1)
    return make_error(ErrorKind::kInvalidArgument, "random baseline needs trials >= 1");
  std::vector<double> apgr, cpt50, cpt80;
  std::vector<double> scores(rows.size());
  uint64_t state = seed;
  for (int t = 0; t < trials; ++t) {
    // Distinct random scores: a random permutation, so no ties.
    for (size_t i = 0; i < scores.size(); ++i) {
      scores[i] = static_cast<double>(next_random(state) >> 11) * 0x1.0p-53;
    }
    FSH_ASSIGN_OR_RETURN(RoutingMetrics m, evaluate_routing(scores, rows));
    apgr.push_back(m.apgr);
    cpt50.push_back(m.cpt50.value_or(1.0));
    cpt80.push_back(m.cpt80.value_or(1.0));
  }
  auto mean = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  };
  RandomBaseline b;
  b.apgr_mean = mean(apgr);
  b.cpt50_mean = mean(cpt50);
  b.cpt80_mean = mean(cpt80);
  std::sort(apgr.begin(), apgr.end());
  b.apgr_lo = apgr[static_cast<size_t>(0.025 * static_cast<double>(apgr.size() - 1) + 0.5)];
  b.apgr_hi = apgr[static_cast<size_t>(0.975 * static_cast<double>(apgr.size() - 1) + 0.5)];
  return b;
}

Result<RoutingMetrics> oracle_routing(std::span<const LabelledPrompt> rows) {
  std::vector<double> gain(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) gain[i] = rows[i].cloud_quality - rows[i].edge_quality;
  return evaluate_routing(gain, rows);
}

}  // namespace foreshore::route
