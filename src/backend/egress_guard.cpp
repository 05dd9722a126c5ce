#include "backend/egress_guard.h"

#include <cctype>
#include <deque>
#include <utility>
#include <vector>

#include "common/utf8.h"

namespace foreshore::backend {
namespace {

// Reads JSON text once, front to back, appending what a detector must see to
// the arena: a hand-written walk because it runs on every body sent to a
// cloud (nlohmann's SAX reader alone took most of the 20 us budget at 4 KiB).
// Each entry ends with '\0', which no detector matches across, so the arena
// is also one text holding them all.
class StringWalker {
 public:
  StringWalker(std::string_view text, int max_depth, int strings_deep, std::string& arena,
               std::vector<std::pair<size_t, size_t>>& spans,
               const EgressClearance* cleared = nullptr)
      : t_(text),
        max_depth_(max_depth),
        strings_deep_(strings_deep),
        arena_(arena),
        spans_(spans),
        cleared_(cleared) {}

  // How many strings were left out because `cleared` vouched for them.
  size_t skipped() const { return skipped_; }

  bool run(std::string& why) {
    skip_space();
    if (!value(0)) {
      why = why_.empty() ? "the text is not valid JSON (at byte " + std::to_string(i_) + ")" : why_;
      return false;
    }
    skip_space();
    if (i_ != t_.size()) {
      why = "the text is not valid JSON (trailing bytes at " + std::to_string(i_) + ")";
      return false;
    }
    return true;
  }

 private:
  static constexpr int kMaxStringsDeep = 4;

  void skip_space() {
    while (i_ < t_.size() &&
           (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) {
      ++i_;
    }
  }
  bool value(int depth) {
    if (i_ >= t_.size()) return false;
    switch (t_[i_]) {
      case '{':
      case '[':
        return container(depth + 1);
      case '"': {
        std::string& s = scratch(depth, 1);
        if (!string(s)) return false;
        entry({}, s);
        return true;
      }
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      default:
        return number({});
    }
  }
  bool container(int depth) {
    if (depth > max_depth_) {
      why_ = "the text nests deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    const bool object = t_[i_++] == '{';
    const char close = object ? '}' : ']';
    skip_space();
    if (i_ < t_.size() && t_[i_] == close) {
      ++i_;
      return true;
    }
    for (;;) {
      skip_space();
      if (object) {
        std::string& key = scratch(depth, 0);
        if (i_ >= t_.size() || t_[i_] != '"' || !string(key)) return false;
        skip_space();
        if (i_ >= t_.size() || t_[i_++] != ':') return false;
        skip_space();
        if (!keyed_value(key, depth)) return false;
      } else if (!value(depth)) {
        return false;
      }
      skip_space();
      if (i_ >= t_.size()) return false;
      const char c = t_[i_++];
      if (c == close) return true;
      if (c != ',') return false;
    }
  }
  // A scalar under a key is one entry "key: value", so a secret keeps the
  // name that marks it; a key over a container stands alone.
  bool keyed_value(const std::string& key, int depth) {
    if (i_ >= t_.size()) return false;
    const char c = t_[i_];
    if (c == '"') {
      std::string& s = scratch(depth, 1);
      if (!string(s)) return false;
      entry(key, s);
      return true;
    }
    if (c == '{' || c == '[' || c == 't' || c == 'f' || c == 'n') {
      entry({}, key);
      return value(depth);
    }
    return number(key);
  }
  bool literal(std::string_view word) {
    if (t_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool number(const std::string& key) {
    const size_t from = i_;
    while (i_ < t_.size() && (std::isdigit(static_cast<unsigned char>(t_[i_])) || t_[i_] == '-' ||
                              t_[i_] == '+' || t_[i_] == '.' || t_[i_] == 'e' || t_[i_] == 'E')) {
      ++i_;
    }
    if (i_ == from) return false;
    entry(key, t_.substr(from, i_ - from));
    return true;
  }
  // Unescapes the string at i_ into out.
  bool string(std::string& out) {
    out.clear();
    ++i_;  // the opening quote
    for (;;) {
      size_t run = i_;
      while (run < t_.size() && t_[run] != '"' && t_[run] != '\\' &&
             static_cast<unsigned char>(t_[run]) >= 0x20) {
        ++run;
      }
      out.append(t_.data() + i_, run - i_);
      i_ = run;
      if (i_ >= t_.size() || static_cast<unsigned char>(t_[i_]) < 0x20) return false;
      if (t_[i_++] == '"') return true;
      if (i_ >= t_.size()) return false;
      const char e = t_[i_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00 && t_.substr(i_, 2) == "\\u") {
            i_ += 2;
            uint32_t low = 0;
            if (!hex4(low)) return false;
            cp = low >= 0xDC00 && low < 0xE000 ? 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                                               : 0xFFFD;
          } else if (cp >= 0xD800 && cp < 0xE000) {
            cp = 0xFFFD;
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return false;
      }
    }
  }
  bool hex4(uint32_t& v) {
    if (i_ + 4 > t_.size()) return false;
    for (int k = 0; k < 4; ++k) {
      const char c = t_[i_++];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) return false;
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return true;
  }
  void entry(std::string_view key, std::string_view v) {
    if (key.empty() && v.empty()) return;
    if (is_cleared(key, v)) {
      ++skipped_;
      embedded(v);
      return;
    }
    const size_t at = arena_.size();
    if (!key.empty()) {
      arena_.append(key);
      if (!v.empty()) arena_.append(": ");
    }
    arena_.append(v);
    spans_.emplace_back(at, arena_.size() - at);
    arena_ += '\0';
    embedded(v);
  }
  // A message content or prompt the router already scanned, byte for byte.
  // The body holds them in the router's order, so the next one is tried
  // first; a miss searches them all.
  bool is_cleared(std::string_view key, std::string_view v) {
    if (cleared_ == nullptr || strings_deep_ != 0 || v.empty() ||
        (key != "content" && key != "prompt")) {
      return false;
    }
    const std::vector<std::string>& texts = cleared_->texts;
    if (next_cleared_ < texts.size() && texts[next_cleared_] == v) {
      ++next_cleared_;
      return true;
    }
    for (size_t k = 0; k < texts.size(); ++k) {
      if (texts[k] == v) {
        next_cleared_ = k + 1;
        return true;
      }
    }
    return false;
  }
  // JSON inside a string (tool-call arguments are one) is read too, so that
  // what it escapes is seen unescaped; at most a few strings deep. Text that
  // is not JSON after all was already added as it is.
  void embedded(std::string_view v) {
    size_t k = 0;
    while (k < v.size() && (v[k] == ' ' || v[k] == '\n' || v[k] == '\t' || v[k] == '\r')) ++k;
    if (k == v.size() || (v[k] != '{' && v[k] != '[') || strings_deep_ >= kMaxStringsDeep) return;
    const std::string text(v);  // v may point into a buffer the inner walk reuses
    std::string ignored;
    StringWalker inner(text, max_depth_, strings_deep_ + 1, arena_, spans_);
    (void)inner.run(ignored);  // what it read before a problem still counts
  }
  // Reusable buffers, a key's and a value's per depth, so that strings do
  // not allocate once grown. A deque: growing it moves no buffer a caller
  // still holds.
  std::string& scratch(int depth, int which) {
    const size_t at = static_cast<size_t>(depth) * 2 + static_cast<size_t>(which);
    if (scratch_.size() <= at) scratch_.resize(at + 1);
    return scratch_[at];
  }

  std::string_view t_;
  size_t i_ = 0;
  int max_depth_;
  int strings_deep_;
  std::string& arena_;
  std::vector<std::pair<size_t, size_t>>& spans_;
  std::string why_;
  std::deque<std::string> scratch_;
  const EgressClearance* cleared_;
  size_t next_cleared_ = 0;
  size_t skipped_ = 0;
};

}  // namespace

bool collect_json_strings(std::string_view json_text, int max_depth, std::string& arena,
                          std::vector<std::string_view>& out, std::string& why) {
  arena.clear();
  thread_local std::vector<std::pair<size_t, size_t>> spans;
  spans.clear();
  StringWalker walker(json_text, max_depth, 0, arena, spans);
  if (!walker.run(why)) return false;
  out.reserve(out.size() + spans.size());
  for (const auto& [at, n] : spans) out.emplace_back(arena.data() + at, n);
  return true;
}

void EgressGuard::set_policy(EgressPolicy policy) {
  auto next = std::make_shared<const EgressPolicy>(std::move(policy));
  std::lock_guard lock(mu_);
  policy_ = std::move(next);
}

Status EgressGuard::check(std::string_view tier, std::string_view body,
                          const EgressClearance* cleared) const {
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
  if (body.size() > limits_.max_bytes) {
    return refuse("the body is " + std::to_string(body.size()) +
                  " bytes, above the guard's limit of " + std::to_string(limits_.max_bytes));
  }
  thread_local std::string arena;
  thread_local std::vector<std::pair<size_t, size_t>> spans;
  arena.clear();
  spans.clear();
  std::string why;
  StringWalker walker(body, limits_.max_depth, 0, arena, spans, cleared);
  if (!walker.run(why)) {
    return refuse(why + "; a body that cannot be scanned completely is never sent");
  }
  // One text: entries end with '\0', which no detector matches across.
  const std::string_view joined(arena);
  why = (*policy)(tier, std::span<const std::string_view>(&joined, 1),
                  walker.skipped() > 0 ? cleared : nullptr);
  if (!why.empty()) return refuse(why);
  return Status::Ok();
}

}  // namespace foreshore::backend
