#include "backend/egress_guard.h"

#include <charconv>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

namespace foreshore::backend {
namespace {

using json = nlohmann::json;

// Collects keys, strings and numbers as the parser unescapes them. Offsets
// into one arena rather than one string each: no allocation per value once
// the thread's buffers have grown.
class StringCollector final : public nlohmann::json_sax<json> {
 public:
  StringCollector(std::string& arena, std::vector<std::pair<size_t, size_t>>& spans, int max_depth)
      : arena_(arena), spans_(spans), max_depth_(max_depth) {}

  bool null() override { return add({}); }
  bool boolean(bool) override { return add({}); }
  bool number_integer(number_integer_t v) override { return number(v); }
  bool number_unsigned(number_unsigned_t v) override { return number(v); }
  bool number_float(number_float_t, const string_t& text) override { return value(text); }
  bool string(string_t& s) override { return value(s); }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    flush_key();
    return enter();
  }
  bool key(string_t& k) override {
    flush_key();
    key_.assign(k);
    return true;
  }
  bool end_object() override {
    flush_key();
    return leave();
  }
  bool start_array(std::size_t) override {
    flush_key();
    return enter();
  }
  bool end_array() override { return leave(); }
  bool parse_error(std::size_t at, const std::string&,
                   const nlohmann::detail::exception&) override {
    why = "the body is not valid JSON (at byte " + std::to_string(at) + ")";
    return false;
  }

  std::string why;

 private:
  template <typename Int>
  bool number(Int v) {
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return value(std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
  }
  // A scalar under a key is one entry "key: value": the key was held back for it.
  bool value(std::string_view v) {
    if (key_.empty()) {
      add(v);
    } else {
      spans_.emplace_back(arena_.size(), key_.size() + 2 + v.size());
      arena_.append(key_).append(": ").append(v);
      key_.clear();
    }
    embedded(v);
    return true;
  }
  // JSON inside a string (tool-call arguments are one) is read too, so that
  // what it escapes is seen unescaped. Bounded like the outer document, and
  // at most a few strings deep.
  void embedded(std::string_view v) {
    size_t i = 0;
    while (i < v.size() && (v[i] == ' ' || v[i] == '\n' || v[i] == '\t' || v[i] == '\r')) ++i;
    if (i == v.size() || (v[i] != '{' && v[i] != '[') || strings_deep_ >= kMaxStringsDeep) return;
    const std::string text(v);  // the arena grows below; v may point into it
    StringCollector inner(arena_, spans_, max_depth_ - depth_);
    inner.strings_deep_ = strings_deep_ + 1;
    json::sax_parse(text.begin(), text.end(), &inner);  // not JSON after all: the text was added
  }
  static constexpr int kMaxStringsDeep = 4;
  // A key whose value is an object or array stands alone.
  void flush_key() {
    if (key_.empty()) return;
    spans_.emplace_back(arena_.size(), key_.size());
    arena_.append(key_);
    key_.clear();
  }
  bool add(std::string_view s) {
    flush_key();
    if (s.empty()) return true;
    spans_.emplace_back(arena_.size(), s.size());
    arena_.append(s);
    return true;
  }
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    why = "the body nests deeper than " + std::to_string(max_depth_) + " levels";
    return false;
  }
  bool leave() {
    --depth_;
    return true;
  }

  std::string& arena_;
  std::vector<std::pair<size_t, size_t>>& spans_;
  int max_depth_;
  int depth_ = 0;
  int strings_deep_ = 0;
  std::string key_;
};

}  // namespace

void EgressGuard::set_policy(EgressPolicy policy) {
  auto next = std::make_shared<const EgressPolicy>(std::move(policy));
  std::lock_guard lock(mu_);
  policy_ = std::move(next);
}

bool collect_json_strings(std::string_view json_text, int max_depth, std::string& arena,
                          std::vector<std::string_view>& out, std::string& why) {
  arena.clear();
  thread_local std::vector<std::pair<size_t, size_t>> spans;
  spans.clear();
  StringCollector collector(arena, spans, max_depth);
  if (!json::sax_parse(json_text.begin(), json_text.end(), &collector)) {
    why = collector.why.empty() ? "the text could not be read as JSON" : collector.why;
    return false;
  }
  out.reserve(out.size() + spans.size());
  for (const auto& [at, n] : spans) out.emplace_back(arena.data() + at, n);
  return true;
}

Status EgressGuard::check(std::string_view tier, std::string_view body) const {
  std::shared_ptr<const EgressPolicy> policy;
  {
    std::lock_guard lock(mu_);
    policy = policy_;
  }
  const auto refuse = [&](const std::string& why) {
    return make_error(
        ErrorKind::kPermissionDenied,
        "egress guard: nothing was sent to cloud tier '" + std::string(tier) + "': " + why);
  };
  if (!policy || !*policy) return refuse("no privacy policy is installed");
  thread_local std::string arena;
  thread_local std::vector<std::string_view> views;
  std::string why;
  views.clear();
  if (body.size() > limits_.max_bytes) {
    return refuse("the body is " + std::to_string(body.size()) +
                  " bytes, above the guard's limit of " + std::to_string(limits_.max_bytes));
  }
  if (!collect_json_strings(body, limits_.max_depth, arena, views, why)) {
    return refuse(why + "; a body that cannot be scanned completely is never sent");
  }
  why = (*policy)(tier, views);
  if (!why.empty()) return refuse(why);
  return Status::Ok();
}

}  // namespace foreshore::backend
