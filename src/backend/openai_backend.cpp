// Cloud tiers: any server speaking OpenAI's chat-completions wire format
// (OpenAI, vLLM, llama-server, Ollama's /v1, another Foreshore).
//
// Each pooled connection has a watcher thread that enforces the first-byte,
// idle, total and request deadlines and the caller's cancellation by shutting
// the socket down: httplib's own timeouts apply per read, and a blocked read
// cannot otherwise be interrupted.
#include <httplib.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/backend_kinds.h"

namespace foreshore::backend {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr size_t kMaxErrorBody = 64 << 10;  // enough for any error JSON; the rest is dropped
constexpr size_t kMaxBody = 64 << 20;
constexpr size_t kMaxSseLine = 4 << 20;
constexpr size_t kExcerptBytes = 120;
// How often a silent exchange looks at its cancellation flag, which nobody
// signals; deadlines are waited for exactly, and data arriving checks both.
constexpr auto kCancelPoll = std::chrono::milliseconds(20);
// Idle keep-alive connections a cloud tier keeps open (see ConnectionPool).
constexpr size_t kMaxIdleConnections = 32;
// How soon a watcher repeats stop() on an exchange it already stopped.
constexpr auto kStopRepeat = std::chrono::milliseconds(5);

double ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// A short printable excerpt of upstream bytes for error messages.
std::string excerpt(std::string_view bytes) {
  std::string out;
  for (char c : bytes.substr(0, kExcerptBytes)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7F) ? c : '?';
  }
  if (bytes.size() > kExcerptBytes) out += "...";
  return out;
}

// Upstream JSON is untrusted: json::value() throws on a mistyped field, these
// fall back instead.
std::string string_field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

template <typename T>
T number_field(const json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return T{};
  const double value = it->get<double>();
  if constexpr (std::is_integral_v<T>) {
    // Out-of-range float-to-integer conversion is undefined.
    if (!(value >= 0.0)) return T{};
    return value >= static_cast<double>(std::numeric_limits<T>::max())
               ? std::numeric_limits<T>::max()
               : static_cast<T>(value);
  }
  return static_cast<T>(value);
}

enum class StopReason {
  kNone,
  kCancelled,
  kDeadline,
  kTotalTimeout,
  kFirstByteTimeout,
  kIdleTimeout
};

// Limits of one exchange, shared by the requesting thread and the watcher.
struct Watch {
  Clock::time_point start;
  Clock::time_point first_byte_by;
  Clock::time_point total_by;
  std::optional<Clock::time_point> deadline;
  Clock::duration idle_limit{};
  const std::atomic<bool>* cancelled = nullptr;
  std::atomic<bool> got_first_byte{false};
  std::atomic<Clock::rep> last_byte{0};
  std::atomic<StopReason> reason{StopReason::kNone};

  void on_bytes() {
    last_byte.store(Clock::now().time_since_epoch().count());
    got_first_byte.store(true);
  }

  // Records why the exchange must stop, the first reason found winning;
  // returns whether it must.
  bool trip() {
    const auto now = Clock::now();
    StopReason r = StopReason::kNone;
    if (cancelled != nullptr && cancelled->load()) {
      r = StopReason::kCancelled;
    } else if (deadline && now >= *deadline) {
      r = StopReason::kDeadline;
    } else if (now >= total_by) {
      r = StopReason::kTotalTimeout;
    } else if (!got_first_byte.load()) {
      if (now >= first_byte_by) r = StopReason::kFirstByteTimeout;
    } else if (now - Clock::time_point(Clock::duration(last_byte.load())) >= idle_limit) {
      r = StopReason::kIdleTimeout;
    }
    if (r == StopReason::kNone) return reason.load() != StopReason::kNone;
    StopReason expected = StopReason::kNone;
    reason.compare_exchange_strong(expected, r);
    return true;
  }

  // When trip() next needs a look.
  Clock::time_point next_check() const {
    const auto now = Clock::now();
    if (reason.load() != StopReason::kNone) return now + kStopRepeat;
    auto next = std::min(now + kCancelPoll, total_by);
    if (deadline) next = std::min(next, *deadline);
    if (!got_first_byte.load()) return std::min(next, first_byte_by);
    return std::min(next, Clock::time_point(Clock::duration(last_byte.load())) + idle_limit);
  }
};

// One keep-alive connection and the thread that interrupts it.
class Connection {
 public:
  explicit Connection(std::unique_ptr<httplib::Client> client)
      : client_(std::move(client)), thread_([this] { watch_loop(); }) {}

  ~Connection() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  httplib::Client& client() { return *client_; }

  void arm(Watch* watch) {
    {
      std::lock_guard lock(mu_);
      watch_ = watch;
    }
    cv_.notify_all();
  }

  void disarm() {
    std::lock_guard lock(mu_);
    watch_ = nullptr;
  }

 private:
  void watch_loop() {
    std::unique_lock lock(mu_);
    while (!closing_) {
      if (watch_ == nullptr) {
        cv_.wait(lock);
        continue;
      }
      // stop() is repeated while the exchange lasts: one issued before httplib
      // opens the socket has nothing to shut down yet.
      if (watch_->trip()) client_->stop();
      cv_.wait_until(lock, watch_->next_check());
    }
  }

  std::unique_ptr<httplib::Client> client_;
  std::mutex mu_;
  std::condition_variable cv_;
  Watch* watch_ = nullptr;
  bool closing_ = false;
  std::thread thread_;  // last: it starts running in the constructor
};

// Up to `capacity` connections, reused most-recently-released first so that
// light traffic keeps one warm connection instead of cycling through many.
// At most kMaxIdleConnections stay open while idle (as nginx's upstream
// `keepalive`): a burst of 512 requests would otherwise leave 512 sockets and
// watcher threads behind for the life of the process.
class ConnectionPool {
 public:
  using Factory = std::function<std::unique_ptr<httplib::Client>()>;

  ConnectionPool(size_t capacity, size_t max_waiting, Factory factory)
      : capacity_(capacity), max_waiting_(max_waiting), factory_(std::move(factory)) {}

  enum class Outcome { kAcquired, kFull, kTimedOut, kCancelled };

  Outcome acquire(Clock::time_point until, const std::atomic<bool>* cancelled, Connection*& out) {
    std::unique_lock lock(mu_);
    if (idle_.empty() && all_.size() >= capacity_ && waiting_ >= max_waiting_)
      return Outcome::kFull;
    ++waiting_;
    for (;;) {
      if (!idle_.empty()) {
        out = idle_.back();
        idle_.pop_back();
        break;
      }
      if (all_.size() < capacity_) {
        all_.push_back(std::make_unique<Connection>(factory_()));
        out = all_.back().get();
        break;
      }
      if (cancelled != nullptr && cancelled->load()) {
        --waiting_;
        return Outcome::kCancelled;
      }
      const auto now = Clock::now();
      if (now >= until) {
        --waiting_;
        return Outcome::kTimedOut;
      }
      cv_.wait_until(lock, std::min(until, now + kCancelPoll));
    }
    --waiting_;
    return Outcome::kAcquired;
  }

  void release(Connection* connection) {
    std::unique_ptr<Connection> surplus;
    {
      std::lock_guard lock(mu_);
      if (idle_.size() < kMaxIdleConnections || waiting_ > 0) {
        idle_.push_back(connection);
      } else {
        const auto it = std::find_if(all_.begin(), all_.end(),
                                     [&](const auto& c) { return c.get() == connection; });
        surplus = std::move(*it);
        all_.erase(it);
      }
    }
    cv_.notify_one();
  }  // a surplus connection closes here, outside the lock: its watcher thread is joined

 private:
  const size_t capacity_;
  const size_t max_waiting_;
  const Factory factory_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Connection>> all_;
  std::vector<Connection*> idle_;
  size_t waiting_ = 0;
};

class Lease {
 public:
  Lease(ConnectionPool& pool, Connection* connection) : pool_(pool), connection_(connection) {}
  ~Lease() { pool_.release(connection_); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

 private:
  ConnectionPool& pool_;
  Connection* connection_;
};

// Seconds from a Retry-After value: delta-seconds or an HTTP-date.
double parse_retry_after(const std::string& value) {
  if (value.empty()) return 0.0;
  char* end = nullptr;
  const double seconds = std::strtod(value.c_str(), &end);
  if (end != value.c_str() && *end == '\0') return std::max(0.0, seconds);
  std::tm tm{};
  if (strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return 0.0;
  const double delta = std::difftime(timegm(&tm), std::time(nullptr));
  return std::max(0.0, delta);
}

double retry_after_seconds(const httplib::Headers& headers) {
  // Some providers give milliseconds, which is finer than Retry-After.
  if (auto it = headers.find("retry-after-ms"); it != headers.end()) {
    char* end = nullptr;
    const double ms = std::strtod(it->second.c_str(), &end);
    if (end != it->second.c_str() && *end == '\0' && ms >= 0) return ms / 1000.0;
  }
  if (auto it = headers.find("Retry-After"); it != headers.end()) {
    return parse_retry_after(it->second);
  }
  return 0.0;
}

// The message an upstream put in its error body, in the shapes servers use:
// OpenAI/vLLM {"error":{"message":..}}, {"error":".."}, FastAPI {"detail":..}.
std::string upstream_error_message(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_object()) {
    if (auto e = j.find("error"); e != j.end()) {
      if (e->is_string()) return e->get<std::string>();
      if (e->is_object()) {
        if (auto m = e->find("message"); m != e->end() && m->is_string())
          return m->get<std::string>();
      }
    }
    for (const char* key : {"detail", "message"}) {
      if (auto m = j.find(key); m != j.end() && m->is_string()) return m->get<std::string>();
    }
  }
  return body.empty() ? std::string("(empty body)") : excerpt(body);
}

// A string field of an OpenAI error body's "error" object ("code", "param"),
// or empty.
std::string upstream_error_field(const std::string& body, const char* field) {
  const json j = json::parse(body, nullptr, false);
  if (!j.is_object()) return {};
  const auto e = j.find("error");
  if (e == j.end() || !e->is_object()) return {};
  const auto value = e->find(field);
  return value != e->end() && value->is_string() ? value->get<std::string>() : std::string();
}

std::vector<std::pair<std::string, float>> parse_top(const json& items) {
  std::vector<std::pair<std::string, float>> top;
  if (!items.is_array()) return top;
  for (const auto& alt : items) {
    if (!alt.is_object()) continue;
    top.emplace_back(string_field(alt, "token"), number_field<float>(alt, "logprob"));
  }
  return top;
}

// logprobs of a choice, in the chat shape ({"content": [{token, logprob,
// top_logprobs}]}) or the legacy completions one ({tokens, token_logprobs,
// top_logprobs: [{token: logprob}]}).
std::vector<TokenLogprob> parse_logprobs(const json& choice) {
  std::vector<TokenLogprob> out;
  const auto lp = choice.find("logprobs");
  if (lp == choice.end() || !lp->is_object()) return out;
  if (auto content = lp->find("content"); content != lp->end() && content->is_array()) {
    for (const auto& item : *content) {
      if (!item.is_object()) continue;
      TokenLogprob t;
      t.token = string_field(item, "token");
      t.logprob = number_field<float>(item, "logprob");
      if (auto top = item.find("top_logprobs"); top != item.end()) t.top = parse_top(*top);
      out.push_back(std::move(t));
    }
    return out;
  }
  const auto tokens = lp->find("tokens");
  const auto values = lp->find("token_logprobs");
  if (tokens == lp->end() || values == lp->end() || !tokens->is_array() || !values->is_array()) {
    return out;
  }
  const auto tops = lp->find("top_logprobs");
  for (size_t i = 0; i < tokens->size() && i < values->size(); ++i) {
    TokenLogprob t;
    if ((*tokens)[i].is_string()) t.token = (*tokens)[i].get<std::string>();
    if ((*values)[i].is_number()) t.logprob = (*values)[i].get<float>();
    if (tops != lp->end() && tops->is_array() && i < tops->size() && (*tops)[i].is_object()) {
      for (const auto& [token, value] : (*tops)[i].items()) {
        if (value.is_number()) t.top.emplace_back(token, value.get<float>());
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

// Splits a byte stream into server-sent events and hands each event's data on.
class SseReader {
 public:
  using OnData = std::function<bool(std::string_view data, size_t at)>;
  using OnError = std::function<bool(std::string_view data)>;

  SseReader(OnData on_data, OnError on_error)
      : on_data_(std::move(on_data)), on_error_(std::move(on_error)) {}

  // Returns false to stop reading; `problem` then says why, unless a callback stopped it.
  bool feed(std::string_view bytes) {
    while (!bytes.empty()) {
      const size_t nl = bytes.find('\n');
      if (nl == std::string_view::npos) {
        line_ += bytes;
        offset_ += bytes.size();
        if (line_.size() > kMaxSseLine) {
          problem = "a line longer than " + std::to_string(kMaxSseLine) + " bytes";
          problem_at = offset_ - line_.size();
          return false;
        }
        return true;
      }
      line_ += bytes.substr(0, nl);
      offset_ += nl + 1;
      bytes.remove_prefix(nl + 1);
      const size_t at = offset_ - line_.size() - 1;
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();
      const bool go_on = process_line(at);
      line_.clear();
      if (!go_on) return false;
    }
    return true;
  }

  // At the end of the stream: a last event not followed by a blank line still counts.
  bool finish() {
    if (!line_.empty()) {
      if (!process_line(offset_ - line_.size())) return false;
      line_.clear();
    }
    return dispatch();
  }

  size_t bytes() const { return offset_; }

  std::string problem;
  size_t problem_at = 0;

 private:
  bool process_line(size_t at) {
    if (line_.empty()) return dispatch();
    if (line_.front() == ':') return true;  // comment, often a keep-alive ping
    const size_t colon = line_.find(':');
    const std::string_view field = std::string_view(line_).substr(0, colon);
    std::string_view value;
    if (colon != std::string::npos) {
      value = std::string_view(line_).substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
      if (!has_data_) data_at_ = at;
      if (has_data_) data_ += '\n';
      data_ += value;
      has_data_ = true;
      return true;
    }
    // llama-server reports failures mid-stream as an `error:` field.
    if (field == "error") return on_error_(value);
    if (field == "event" || field == "id" || field == "retry") return true;
    problem = "expected an SSE field (data:, event:, id:, retry: or a :comment) but got '" +
              excerpt(line_) + "'";
    problem_at = at;
    return false;
  }

  bool dispatch() {
    if (!has_data_) return true;
    has_data_ = false;
    const bool go_on = on_data_(data_, data_at_);
    data_.clear();
    return go_on;
  }

  OnData on_data_;
  OnError on_error_;
  std::string line_;
  std::string data_;
  bool has_data_ = false;
  size_t data_at_ = 0;
  size_t offset_ = 0;
};

// JSON as compact text; invalid UTF-8 (client or upstream text) is replaced
// rather than thrown on.
std::string compact(const json& v) {
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The members of an upstream's message or delta other than those the
// gateway writes itself (role, content, tool_calls), as a JSON object, so
// that reasoning_content, refusal, annotations and the like reach the
// client; empty when there are none.
PassThroughJson other_members(const json& message) {
  json other = json::object();
  for (const auto& [key, value] : message.items()) {
    if (key == "role" || key == "content" || key == "tool_calls" || value.is_null()) continue;
    other[key] = value;
  }
  return other.empty() ? PassThroughJson() : PassThroughJson::of(other);
}

// A passed-through value, to place in a body being built.
json value_of(const PassThroughJson& passed) {
  return json::parse(passed.text(), nullptr, false);
}

// Streamed tool calls arrive in fragments that name their call by index: the
// first brings id, type and function name, later ones add pieces of
// function.arguments. Joined here into the calls a non-streamed answer has.
class ToolCallAssembly {
 public:
  // False for a fragment without an index, or past the limits on calls and
  // argument bytes (an upstream could otherwise grow this without bound).
  bool add(const json& fragments) {
    for (const json& f : fragments) {
      if (!f.is_object()) return false;
      auto index = f.find("index");
      if (index == f.end() || !index->is_number_integer()) return false;
      const int64_t i = index->get<int64_t>();
      size_t at = 0;
      while (at < indexes_.size() && indexes_[at] != i) ++at;
      if (at == indexes_.size()) {
        if (indexes_.size() >= kMaxCalls) return false;
        indexes_.push_back(i);
        calls_.push_back(
            {{"id", ""}, {"type", "function"}, {"function", {{"name", ""}, {"arguments", ""}}}});
      }
      json& call = calls_[at];
      if (auto id = f.find("id"); id != f.end() && id->is_string()) call["id"] = *id;
      if (auto type = f.find("type"); type != f.end() && type->is_string()) call["type"] = *type;
      auto fn = f.find("function");
      if (fn == f.end() || !fn->is_object()) continue;
      // Appended in place: a call can come in many thousands of pieces.
      if (auto name = fn->find("name"); name != fn->end() && name->is_string()) {
        call["function"]["name"].get_ref<std::string&>() += name->get_ref<const std::string&>();
      }
      if (auto args = fn->find("arguments"); args != fn->end() && args->is_string()) {
        const std::string& piece = args->get_ref<const std::string&>();
        bytes_ += piece.size();
        if (bytes_ > kMaxArgumentBytes) return false;
        call["function"]["arguments"].get_ref<std::string&>() += piece;
      }
    }
    return true;
  }
  bool empty() const { return calls_.empty(); }
  PassThroughJson dump() const { return PassThroughJson::of(calls_); }

  // A non-streamed answer's tool calls as the one fragment list a stream of
  // it would have carried.
  static PassThroughJson as_fragments(const PassThroughJson& calls) {
    if (calls.empty()) return {};
    json list = value_of(calls);
    if (!list.is_array()) return {};
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].is_object()) list[i]["index"] = i;
    }
    return PassThroughJson::of(list);
  }

 private:
  static constexpr size_t kMaxCalls = 128;
  static constexpr size_t kMaxArgumentBytes = 16 << 20;
  std::vector<int64_t> indexes_;
  json calls_ = json::array();
  size_t bytes_ = 0;
};

// State of one request/response exchange with the upstream.
struct Exchange {
  const DeltaSink* on_delta = nullptr;
  bool streaming = false;
  int32_t choices = 1;  // n asked for
  bool legacy = false;  // /completions rather than /chat/completions

  int status = 0;
  httplib::Headers headers;
  bool event_stream = false;  // the upstream really answered with SSE
  std::string body;           // the whole body when not SSE (capped for errors)
  size_t body_bytes = 0;
  std::optional<Error> failure;  // found while reading: malformed data, upstream error event
  bool refused = false;          // on_delta returned false

  Completion completion;
  ToolCallAssembly tool_calls;  // streamed fragments, joined
  std::string reported_model;
  std::string reported_version;
  bool saw_done = false;
  bool saw_usage = false;
  int32_t content_chunks = 0;
  std::optional<Clock::time_point> first_token_at;
};

class OpenAiBackend final : public Backend {
 public:
  OpenAiBackend(TierConfig config, EndpointUrl url, std::string api_key)
      : config_(std::move(config)),
        settings_(std::get<OpenAiTierSettings>(config_.settings)),
        url_(std::move(url)),
        api_key_(std::move(api_key)),
        pool_(static_cast<size_t>(config_.max_concurrency), static_cast<size_t>(config_.max_queue),
              [this] { return make_client(); }) {
    BackendInfo info;
    info.name = config_.name;
    info.kind = TierKind::kOpenAi;
    info.placement = config_.placement;
    info.model = config_.model;
    info.model_version = config_.model;
    publish(std::move(info));
  }

  const BackendInfo& info() const override { return *info_.load(); }

  uint64_t pool_wait_timeouts() const override {
    return pool_wait_timeouts_.load(std::memory_order_relaxed);
  }

  void set_egress_guard(std::shared_ptr<const EgressGuard> guard) override {
    std::lock_guard lock(guard_mu_);
    guard_ = std::move(guard);
  }

  Result<Completion> generate(const BackendRequest& request, const DeltaSink& on_delta) override {
    Watch watch;
    watch.start = Clock::now();
    watch.first_byte_by = watch.start + std::chrono::milliseconds(settings_.first_byte_timeout_ms);
    const bool budget_binds =
        request.first_token_deadline && *request.first_token_deadline < watch.first_byte_by;
    if (budget_binds) watch.first_byte_by = *request.first_token_deadline;
    watch.total_by = watch.start + std::chrono::milliseconds(settings_.total_timeout_ms);
    watch.idle_limit = std::chrono::milliseconds(settings_.first_byte_timeout_ms);
    watch.deadline = request.deadline;
    watch.cancelled = request.cancelled.get();

    Exchange ex;
    ex.on_delta = &on_delta;
    ex.streaming = static_cast<bool>(on_delta);
    ex.legacy = request.prompt.has_value();
    ex.choices = request.params.choices;
    std::string body = request_body(request, ex.streaming, ex.legacy);
    if (config_.placement == Placement::kCloud) {
      std::shared_ptr<const EgressGuard> guard;
      {
        std::lock_guard lock(guard_mu_);
        guard = guard_;
      }
      if (guard) FSH_TRY_STATUS(guard->check(config_.name, body, request.egress_clearance.get()));
    }

    // The wait for a connection has its own limit and does not count against
    // the upstream's first-byte timeout: a busy pool is ours, not its fault.
    Connection* connection = nullptr;
    auto wait_until = Clock::now() + std::chrono::milliseconds(settings_.pool_wait_timeout_ms);
    if (request.deadline) wait_until = std::min(wait_until, *request.deadline);
    if (request.first_token_deadline)
      wait_until = std::min(wait_until, *request.first_token_deadline);
    switch (pool_.acquire(wait_until, watch.cancelled, connection)) {
      case ConnectionPool::Outcome::kAcquired:
        break;
      case ConnectionPool::Outcome::kFull:
        return make_error(ErrorKind::kResourceExhausted,
                          where() + ": all " + std::to_string(config_.max_concurrency) +
                              " connections are busy and " + std::to_string(config_.max_queue) +
                              " requests already wait; retry later or raise max_concurrency");
      case ConnectionPool::Outcome::kTimedOut: {
        pool_wait_timeouts_.fetch_add(1, std::memory_order_relaxed);
        Error e = make_error(ErrorKind::kUnavailable,
                             where() + ": all " + std::to_string(config_.max_concurrency) +
                                 " pooled connections stayed busy for " +
                                 std::to_string(settings_.pool_wait_timeout_ms) +
                                 " ms; retry shortly, or raise max_concurrency or "
                                 "timeouts.pool_wait_ms");
        e.retry_after_seconds = 1.0;
        return e;
      }
      case ConnectionPool::Outcome::kCancelled: {
        Exchange none;
        return cancelled(none, watch.start);
      }
    }
    watch.start = Clock::now();
    watch.first_byte_by = watch.start + std::chrono::milliseconds(settings_.first_byte_timeout_ms);
    if (budget_binds)
      watch.first_byte_by = std::min(watch.first_byte_by, *request.first_token_deadline);
    watch.total_by = watch.start + std::chrono::milliseconds(settings_.total_timeout_ms);
    Lease lease(pool_, connection);

    httplib::Request req;
    req.method = "POST";
    req.path = url_.base_path + (ex.legacy ? "/completions" : "/chat/completions");
    req.body = std::move(body);
    req.set_header("Content-Type", "application/json");
    req.set_header("Accept", ex.streaming ? "text/event-stream" : "application/json");
    // Compression would make proxies and servers buffer the stream.
    if (ex.streaming) req.set_header("Accept-Encoding", "identity");
    if (!api_key_.empty()) req.set_header("Authorization", "Bearer " + api_key_);
    if (!request.request_id.empty()) req.set_header("X-Request-Id", request.request_id);

    SseReader sse([&](std::string_view data, size_t at) { return on_sse_data(ex, data, at); },
                  [&](std::string_view data) { return on_sse_error(ex, data); });
    req.response_handler = [&](const httplib::Response& res) {
      watch.on_bytes();
      ex.status = res.status;
      ex.headers = res.headers;
      ex.event_stream = res.get_header_value("Content-Type").find("text/event-stream") == 0;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      watch.on_bytes();
      ex.body_bytes += n;
      if (ex.status < 200 || ex.status >= 300) {
        ex.body.append(data, std::min(n, kMaxErrorBody - std::min(kMaxErrorBody, ex.body.size())));
        return ex.body.size() < kMaxErrorBody;
      }
      if (watch.trip()) return false;
      if (ex.event_stream) {
        if (sse.feed(std::string_view(data, n))) return true;
        if (!sse.problem.empty()) ex.failure = malformed_sse(sse.problem_at, sse.problem);
        return false;
      }
      if (ex.body.size() + n > kMaxBody) {
        ex.failure = make_error(ErrorKind::kCorrupt,
                                where() + ": upstream sent a body larger than " +
                                    std::to_string(kMaxBody >> 20) + " MiB; refusing to read it");
        return false;
      }
      ex.body.append(data, n);
      return true;
    };

    httplib::Response res;
    auto transport = httplib::Error::Success;
    connection->arm(&watch);
    const bool sent = connection->client().send(req, res, transport);
    connection->disarm();

    if (ex.failure) return *ex.failure;
    const bool error_status = ex.status != 0 && (ex.status < 200 || ex.status >= 300);
    // A watcher may trip just as a complete exchange ends; only an unfinished
    // one is judged by why it stopped.
    if (!sent) {
      const StopReason reason = watch.reason.load();
      if (reason == StopReason::kCancelled || ex.refused) return cancelled(ex, watch.start);
      if (reason != StopReason::kNone) return timeout_error(ex, watch, budget_binds);
      if (error_status) return status_error(ex);
      return transport_error(ex, transport, connection->client());
    }
    if (error_status) return status_error(ex);
    if (!ex.event_stream) {
      FSH_TRY_STATUS(parse_body(ex));
      // The upstream ignored "stream": hand the whole answer over as one delta.
      if (ex.streaming &&
          (!ex.completion.text.empty() || !ex.completion.logprobs.empty() ||
           !ex.completion.tool_calls.empty() || !ex.completion.message_other.empty())) {
        Delta whole;
        whole.text = ex.completion.text;
        whole.logprobs = ex.completion.logprobs;
        whole.tool_calls = ToolCallAssembly::as_fragments(ex.completion.tool_calls);
        whole.other = ex.completion.message_other;
        if (!on_delta(whole)) return cancelled(ex, watch.start);
      }
      for (size_t i = 0; ex.streaming && i < ex.completion.more_choices.size(); ++i) {
        const Completion& more = ex.completion.more_choices[i];
        Delta whole;
        whole.choice = static_cast<int32_t>(i + 1);
        whole.text = more.text;
        whole.logprobs = more.logprobs;
        whole.tool_calls = ToolCallAssembly::as_fragments(more.tool_calls);
        whole.other = more.message_other;
        whole.finish_reason = more.finish_reason.empty() ? "stop" : more.finish_reason;
        if (!on_delta(whole)) return cancelled(ex, watch.start);
      }
      return finish(ex, watch.start);
    }
    if (!sse.finish()) {
      if (ex.failure) return *ex.failure;
      if (!sse.problem.empty()) return malformed_sse(sse.problem_at, sse.problem);
      return cancelled(ex, watch.start);
    }
    if (!ex.saw_done && ex.completion.finish_reason.empty()) {
      return make_error(ErrorKind::kUnavailable,
                        where() + ": the upstream ended the stream after " +
                            std::to_string(ex.body_bytes) +
                            " bytes without a finish_reason or [DONE]; the answer is incomplete");
    }
    return finish(ex, watch.start);
  }

 private:
  std::string where() const { return "tier '" + config_.name + "' (" + settings_.endpoint + ")"; }

  void publish(BackendInfo info) {
    std::lock_guard lock(info_mu_);
    infos_.push_back(std::move(info));
    info_.store(&infos_.back());
  }

  // info() hands out references, so a snapshot is never changed or freed once
  // published; a new one is added only when the upstream's version changes.
  void note_version(const std::string& version) {
    if (version.empty() || version == info_.load()->model_version) return;
    std::lock_guard lock(info_mu_);
    if (version == infos_.back().model_version) return;
    BackendInfo info = infos_.back();
    info.model_version = version;
    infos_.push_back(std::move(info));
    info_.store(&infos_.back());
  }

  std::unique_ptr<httplib::Client> make_client() const {
    auto client = std::make_unique<httplib::Client>(url_.origin());
    client->set_keep_alive(true);
    client->set_tcp_nodelay(true);
    client->set_connection_timeout(std::chrono::milliseconds(settings_.connect_timeout_ms));
    // The watcher enforces the real limits; these only bound a single socket
    // operation in case the watcher's stop() comes too late to matter.
    client->set_read_timeout(std::chrono::milliseconds(settings_.total_timeout_ms));
    client->set_write_timeout(std::chrono::milliseconds(settings_.total_timeout_ms));
    if (url_.scheme == "https") {
      client->enable_server_certificate_verification(settings_.verify_tls);
      if (!settings_.ca_file.empty()) {
        // A store of our own, so that the extra CA adds to the system's
        // (httplib also loads the default paths into it).
        X509_STORE* store = X509_STORE_new();
        if (store != nullptr && X509_STORE_load_file(store, settings_.ca_file.c_str()) == 1) {
          client->set_ca_cert_store(store);
        } else {
          X509_STORE_free(store);
        }
      }
    }
    return client;
  }

  std::string request_body(const BackendRequest& request, bool stream, bool legacy) const {
    const GenerationParams& p = request.params;
    // The client's fields the gateway does not read go first; those it reads
    // are set from what it parsed.
    json body =
        request.remote_only.other.empty() ? json::object() : value_of(request.remote_only.other);
    if (!body.is_object()) body = json::object();
    body["model"] = request.model.empty() ? config_.model : request.model;
    if (legacy) {
      body["prompt"] = *request.prompt;
    } else {
      json messages = json::array();
      for (const auto& m : request.messages) {
        json message = {{"role", m.role}, {"content", m.content}};
        if (!m.content_parts.empty()) {
          message["content"] = value_of(m.content_parts);
        }
        if (!m.name.empty()) message["name"] = m.name;
        if (!m.tool_call_id.empty()) message["tool_call_id"] = m.tool_call_id;
        if (!m.tool_calls.empty()) {
          message["tool_calls"] = value_of(m.tool_calls);
          if (m.content.empty() && m.content_parts.empty()) message["content"] = nullptr;
        }
        messages.push_back(std::move(message));
      }
      body["messages"] = std::move(messages);
      const RemoteOnlyFields& t = request.remote_only;
      if (!t.tools.empty()) body["tools"] = value_of(t.tools);
      if (!t.tool_choice.empty()) body["tool_choice"] = value_of(t.tool_choice);
      if (t.parallel_tool_calls) body["parallel_tool_calls"] = *t.parallel_tool_calls;
      if (!t.response_format.empty()) {
        body["response_format"] = value_of(t.response_format);
      }
    }
    if (p.max_tokens) {
      const bool completion_name = request.remote_only.limit_named_max_completion_tokens;
      body[completion_name ? "max_completion_tokens" : "max_tokens"] = *p.max_tokens;
    }
    if (p.temperature) body["temperature"] = *p.temperature;
    if (p.top_p) body["top_p"] = *p.top_p;
    if (p.presence_penalty) body["presence_penalty"] = *p.presence_penalty;
    if (p.frequency_penalty) body["frequency_penalty"] = *p.frequency_penalty;
    if (p.seed) body["seed"] = *p.seed;
    if (p.choices > 1) body["n"] = p.choices;
    // Not in OpenAI's API, but vLLM, llama-server and Foreshore take them
    // under these names; sent only when the client asked for them.
    if (p.top_k) body["top_k"] = *p.top_k;
    if (p.min_p) body["min_p"] = *p.min_p;
    if (!p.stop.empty()) body["stop"] = p.stop;
    if (p.logprobs) {
      if (legacy) {
        body["logprobs"] = p.top_logprobs;
      } else {
        body["logprobs"] = true;
        if (p.top_logprobs > 0) body["top_logprobs"] = p.top_logprobs;
      }
    }
    if (stream) {
      body["stream"] = true;
      body["stream_options"] = {{"include_usage", true}};
    }
    return compact(body);
  }

  Error malformed_sse(size_t at, const std::string& problem) const {
    return make_error(ErrorKind::kCorrupt, where() + ": upstream sent malformed SSE at byte " +
                                               std::to_string(at) + ": " + problem);
  }

  // Reads what every response carries: model, version, usage.
  void note_metadata(Exchange& ex, const json& j) {
    if (auto m = j.find("model"); m != j.end() && m->is_string())
      ex.reported_model = m->get<std::string>();
    // Another Foreshore says which weights answered.
    if (auto fsh = j.find("foreshore"); fsh != j.end() && fsh->is_object()) {
      if (auto v = fsh->find("model_version"); v != fsh->end() && v->is_string()) {
        ex.reported_version = v->get<std::string>();
      }
    }
    if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
      ex.completion.usage.prompt_tokens = number_field<int32_t>(*u, "prompt_tokens");
      ex.completion.usage.completion_tokens = number_field<int32_t>(*u, "completion_tokens");
      if (auto d = u->find("prompt_tokens_details"); d != u->end() && d->is_object()) {
        ex.completion.usage.cached_prompt_tokens = number_field<int32_t>(*d, "cached_tokens");
      }
      ex.saw_usage = true;
    }
  }

  bool on_sse_error(Exchange& ex, std::string_view data) {
    ex.failure = make_error(
        ErrorKind::kUnavailable,
        where() + ": the upstream failed mid-stream: " + upstream_error_message(std::string(data)));
    return false;
  }

  bool on_sse_data(Exchange& ex, std::string_view data, size_t at) {
    if (ex.saw_done) return true;
    if (data == "[DONE]") {
      ex.saw_done = true;
      return true;
    }
    const json j = json::parse(data, nullptr, false);
    if (!j.is_object()) {
      ex.failure = malformed_sse(at, "event data is not a JSON object: '" + excerpt(data) + "'");
      return false;
    }
    if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
      return on_sse_error(ex, data);
    }
    note_metadata(ex, j);
    const auto choices = j.find("choices");
    if (choices == j.end()) return true;  // e.g. the usage-only final chunk
    if (!choices->is_array()) {
      ex.failure = malformed_sse(at, "'choices' is not an array: '" + excerpt(data) + "'");
      return false;
    }
    for (size_t i = 0; i < choices->size(); ++i) {
      const json& choice = (*choices)[i];
      if (!choice.is_object()) continue;
      const size_t index = choice_index(choice, i);
      const bool delivered = index == 0 ? on_first_choice_chunk(ex, choice, data, at)
                                        : on_more_choice_chunk(ex, choice, index);
      if (!delivered) return false;
    }
    return true;
  }

  // One streamed choice's delta: text, tool-call fragments (compact JSON),
  // other fields, logprobs and finish_reason.
  static Delta read_delta(const json& choice, bool legacy) {
    Delta delta;
    if (legacy) {
      if (auto t = choice.find("text"); t != choice.end() && t->is_string())
        delta.text = t->get<std::string>();
    } else if (auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
      if (auto c = d->find("content"); c != d->end() && c->is_string())
        delta.text = c->get<std::string>();
      if (auto t = d->find("tool_calls"); t != d->end() && t->is_array() && !t->empty()) {
        delta.tool_calls = PassThroughJson::of(*t);
      }
      delta.other = other_members(*d);
    }
    delta.logprobs = parse_logprobs(choice);
    if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string()) {
      delta.finish_reason = f->get<std::string>();
    }
    return delta;
  }

  bool on_first_choice_chunk(Exchange& ex, const json& choice, std::string_view data, size_t at) {
    Delta delta = read_delta(choice, ex.legacy);
    if (!delta.tool_calls.empty() && !ex.tool_calls.add(choice.at("delta").at("tool_calls"))) {
      ex.failure = malformed_sse(at,
                                 "a tool-call fragment has no usable index or is too "
                                 "large: '" +
                                     excerpt(data) + "'");
      return false;
    }
    // The first choice's reason is the Completion's, reported when the answer ends.
    if (!delta.finish_reason.empty()) ex.completion.finish_reason = std::move(delta.finish_reason);
    delta.finish_reason.clear();
    const bool output = !delta.text.empty() || !delta.tool_calls.empty() || !delta.other.empty();
    if (!output && delta.logprobs.empty()) return true;
    if (output) {
      ++ex.content_chunks;
      if (!ex.first_token_at) ex.first_token_at = Clock::now();
    }
    ex.completion.text += delta.text;
    ex.completion.logprobs.insert(ex.completion.logprobs.end(), delta.logprobs.begin(),
                                  delta.logprobs.end());
    if (!(*ex.on_delta)(delta)) {
      ex.refused = true;
      return false;
    }
    return true;
  }

  // A chunk of choice `index` > 0 (n > 1): passed on with its index, its
  // text kept for the record; its finish_reason travels with its last delta.
  bool on_more_choice_chunk(Exchange& ex, const json& choice, size_t index) {
    Completion* more = more_choice(ex, index);
    if (more == nullptr) return true;
    Delta delta = read_delta(choice, ex.legacy);
    delta.choice = static_cast<int32_t>(index);
    if (!delta.finish_reason.empty()) more->finish_reason = delta.finish_reason;
    if (delta.text.empty() && delta.tool_calls.empty() && delta.other.empty() &&
        delta.logprobs.empty() && delta.finish_reason.empty()) {
      return true;
    }
    more->text += delta.text;
    more->logprobs.insert(more->logprobs.end(), delta.logprobs.begin(), delta.logprobs.end());
    if (!(*ex.on_delta)(delta)) {
      ex.refused = true;
      return false;
    }
    return true;
  }

  Status parse_body(Exchange& ex) {
    const json j = json::parse(ex.body, nullptr, false);
    if (!j.is_object()) {
      return make_error(ErrorKind::kCorrupt,
                        where() + ": upstream answered " + std::to_string(ex.status) +
                            " with a body that is not JSON (" + std::to_string(ex.body.size()) +
                            " bytes): '" + excerpt(ex.body) + "'");
    }
    const auto choices = j.find("choices");
    if (choices == j.end() || !choices->is_array() || choices->empty() ||
        !(*choices)[0].is_object()) {
      return make_error(ErrorKind::kCorrupt,
                        where() + ": upstream's answer has no choices: '" + excerpt(ex.body) + "'");
    }
    note_metadata(ex, j);
    for (size_t i = 0; i < choices->size(); ++i) {
      const json& choice = (*choices)[i];
      if (!choice.is_object()) continue;
      const size_t index = choice_index(choice, i);
      if (index == 0) {
        read_choice(choice, ex.legacy, ex.completion);
      } else if (Completion* more = more_choice(ex, index)) {
        read_choice(choice, ex.legacy, *more);
      }
    }
    ex.first_token_at = Clock::now();
    return Status::Ok();
  }

  // The index a choice states, else its position (servers that omit it).
  static size_t choice_index(const json& choice, size_t position) {
    const auto i = choice.find("index");
    return i != choice.end() && i->is_number_unsigned() ? i->get<size_t>() : position;
  }

  // The completion for choice `index` > 0 of an n > 1 answer; null for an
  // index beyond what was asked (such a choice is dropped, not trusted).
  Completion* more_choice(Exchange& ex, size_t index) const {
    if (index >= static_cast<size_t>(std::max(ex.choices, 1))) return nullptr;
    if (ex.completion.more_choices.size() < index) ex.completion.more_choices.resize(index);
    return &ex.completion.more_choices[index - 1];
  }

  static void read_choice(const json& choice, bool legacy, Completion& out) {
    if (legacy) {
      if (auto t = choice.find("text"); t != choice.end() && t->is_string()) {
        out.text = t->get<std::string>();
      }
    } else if (auto m = choice.find("message"); m != choice.end() && m->is_object()) {
      if (auto c = m->find("content"); c != m->end() && c->is_string()) {
        out.text = c->get<std::string>();
      }
      if (auto t = m->find("tool_calls"); t != m->end() && t->is_array() && !t->empty()) {
        out.tool_calls = PassThroughJson::of(*t);
      }
      out.message_other = other_members(*m);
    }
    out.logprobs = parse_logprobs(choice);
    if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string()) {
      out.finish_reason = f->get<std::string>();
    }
  }

  Completion cancelled(Exchange& ex, Clock::time_point start) {
    ex.completion.finish_reason = "cancelled";
    return finish(ex, start);
  }

  Completion finish(Exchange& ex, Clock::time_point start) {
    const auto now = Clock::now();
    Completion& c = ex.completion;
    if (!ex.tool_calls.empty()) c.tool_calls = ex.tool_calls.dump();
    if (c.finish_reason.empty()) c.finish_reason = "stop";
    for (Completion& more : c.more_choices) {
      if (more.finish_reason.empty()) more.finish_reason = "stop";
    }
    if (!ex.saw_usage) {
      // Servers that ignore stream_options send no usage; OpenAI-style streams
      // carry one token per content chunk, the best count left.
      c.usage.completion_tokens =
          c.logprobs.empty() ? ex.content_chunks : static_cast<int32_t>(c.logprobs.size());
    }
    if (auto v = ex.headers.find("x-foreshore-model-version"); v != ex.headers.end()) {
      ex.reported_version = v->second;
    }
    c.model = ex.reported_model.empty() ? config_.model : ex.reported_model;
    c.model_version = !ex.reported_version.empty() ? ex.reported_version : c.model;
    if (!ex.reported_model.empty() || !ex.reported_version.empty()) note_version(c.model_version);
    c.time_to_first_token_ms = ms_between(start, ex.first_token_at.value_or(now));
    c.total_ms = ms_between(start, now);
    return std::move(c);
  }

  Error timeout_error(const Exchange& ex, const Watch& watch, bool budget_binds) const {
    const std::string got = " (" + std::to_string(ex.body_bytes) + " bytes received)";
    switch (watch.reason.load()) {
      case StopReason::kDeadline:
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": the request's deadline passed" + got);
      case StopReason::kTotalTimeout:
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": no complete answer within timeouts.total_ms " +
                              std::to_string(settings_.total_timeout_ms) + got);
      case StopReason::kFirstByteTimeout:
        if (budget_binds) {
          return make_error(ErrorKind::kDeadlineExceeded,
                            where() +
                                ": no first token within the request's latency budget "
                                "(x-foreshore-latency-budget-ms)");
        }
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": no response within timeouts.first_byte_ms " +
                              std::to_string(settings_.first_byte_timeout_ms) +
                              "; the upstream is overloaded or unreachable");
      case StopReason::kIdleTimeout:
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": the upstream went silent for timeouts.first_byte_ms " +
                              std::to_string(settings_.first_byte_timeout_ms) + " mid-answer" +
                              got);
      case StopReason::kNone:
      case StopReason::kCancelled:
        break;
    }
    return make_error(ErrorKind::kInternal, where() + ": timeout_error called without a timeout");
  }

  Error status_error(const Exchange& ex) const {
    const std::string message = upstream_error_message(ex.body);
    const std::string code = upstream_error_field(ex.body, "code");
    ErrorKind kind = ErrorKind::kInvalidArgument;
    std::string advice;
    if (ex.status == 429) {
      kind = ErrorKind::kResourceExhausted;
      advice = "; the upstream is rate limiting this tier";
    } else if (ex.status >= 500) {
      kind = ErrorKind::kUnavailable;
    } else if (ex.status == 401 || ex.status == 403) {
      kind = ErrorKind::kUnavailable;
      advice = settings_.api_key_env.empty()
                   ? "; the upstream wants an API key: set api_key_env for this tier"
                   : "; check the API key in $" + settings_.api_key_env;
    } else if (ex.status == 404) {
      kind = ErrorKind::kNotFound;
      advice =
          "; check the endpoint path and that the upstream serves model '" + config_.model + "'";
    } else if (ex.status == 408) {
      kind = ErrorKind::kDeadlineExceeded;
    } else if (ex.status == 413 || code == "context_length_exceeded") {
      kind = ErrorKind::kResourceExhausted;
    } else if (ex.status < 400) {
      kind = ErrorKind::kUnavailable;
      advice = "; redirects are not followed: put the final URL in endpoint";
    }
    Error error = make_error(kind, where() + ": upstream answered HTTP " +
                                       std::to_string(ex.status) + ": " + message + advice);
    error.upstream_status = ex.status;
    error.retry_after_seconds = retry_after_seconds(ex.headers);
    error.upstream_code = code;
    error.upstream_param = upstream_error_field(ex.body, "param");
    return error;
  }

  Error transport_error(const Exchange& ex, httplib::Error transport,
                        const httplib::Client& client) const {
    const std::string what = httplib::to_string(transport);
    if (ex.status != 0) {
      return make_error(ErrorKind::kUnavailable, where() + ": the connection died mid-" +
                                                     (ex.event_stream ? "stream" : "answer") +
                                                     " after " + std::to_string(ex.body_bytes) +
                                                     " bytes (" + what +
                                                     "); the answer is incomplete");
    }
    switch (transport) {
      case httplib::Error::ConnectionTimeout:
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": could not connect within timeouts.connect_ms " +
                              std::to_string(settings_.connect_timeout_ms));
      case httplib::Error::Connection:
        return make_error(ErrorKind::kUnavailable, where() + ": could not connect to " + url_.host +
                                                       ":" + std::to_string(url_.port) +
                                                       "; is the upstream running?");
      case httplib::Error::SSLServerVerification:
        return make_error(
            ErrorKind::kUnavailable,
            where() + ": the TLS certificate of " + url_.host + " failed verification (" +
                X509_verify_cert_error_string(client.get_openssl_verify_result()) +
                "); set ca_file to the CA that signed it (verify_tls: false only for testing)");
      case httplib::Error::SSLConnection:
        return make_error(ErrorKind::kUnavailable,
                          where() + ": the TLS handshake with " + url_.host + " failed");
      default:
        return make_error(ErrorKind::kUnavailable,
                          where() + ": the exchange failed before any response (" + what + ")");
    }
  }

  const TierConfig config_;
  const OpenAiTierSettings& settings_;  // config_'s
  const EndpointUrl url_;
  const std::string api_key_;
  std::mutex info_mu_;
  mutable std::mutex guard_mu_;
  std::shared_ptr<const EgressGuard> guard_;
  std::deque<BackendInfo> infos_;  // deque: published elements never move
  std::atomic<const BackendInfo*> info_{nullptr};
  ConnectionPool pool_;
  std::atomic<uint64_t> pool_wait_timeouts_{0};
};

}  // namespace

std::string EndpointUrl::origin() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return scheme + "://" + (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<EndpointUrl> parse_endpoint_url(const std::string& url) {
  const auto bad = [&](const std::string& problem) {
    return make_error(
        ErrorKind::kInvalidArgument,
        "'" + url + "' is not a usable base URL: " + problem +
            " (expected http(s)://host[:port][/path], e.g. https://api.openai.com/v1)");
  };
  EndpointUrl out;
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return bad("no scheme");
  out.scheme = url.substr(0, scheme_end);
  if (out.scheme != "http" && out.scheme != "https") return bad("scheme must be http or https");
  std::string_view rest = std::string_view(url).substr(scheme_end + 3);
  const size_t slash = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (path.find_first_of("?#") != std::string_view::npos)
    return bad("query or fragment not allowed");
  if (authority.find('@') != std::string_view::npos) {
    return bad("credentials in the URL are not allowed; use api_key_env");
  }
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unclosed '[' in an IPv6 host");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("unexpected text after the IPv6 host");
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (out.host.empty()) return bad("no host");
  out.port = out.scheme == "https" ? 443 : 80;
  if (!port_text.empty() || authority.find(':') != std::string_view::npos) {
    int port = 0;
    const auto [end, ec] =
        std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 ||
        port > 65535) {
      return bad("port must be a number from 1 to 65535");
    }
    out.port = port;
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  out.base_path = std::string(path);
  return out;
}

Result<std::shared_ptr<Backend>> create_openai_backend(const TierConfig& config) {
  const OpenAiTierSettings& settings = std::get<OpenAiTierSettings>(config.settings);
  const std::string tier = "tier '" + config.name + "': ";
  auto url = parse_endpoint_url(settings.endpoint);
  if (!url.ok()) return make_error(url.error().kind, tier + "endpoint " + url.error().message);
  std::string api_key;
  if (!settings.api_key_env.empty()) {
    const char* value = std::getenv(settings.api_key_env.c_str());
    if (value == nullptr || *value == '\0') {
      return make_error(ErrorKind::kInvalidArgument,
                        tier + "api_key_env names the environment variable " +
                            settings.api_key_env + ", which is " +
                            (value == nullptr ? "not set" : "empty") +
                            "; export the API key in it, or remove api_key_env if the upstream "
                            "needs no key");
    }
    api_key = value;
  }
  if (!settings.ca_file.empty()) {
    X509_STORE* store = X509_STORE_new();
    const bool loaded =
        store != nullptr && X509_STORE_load_file(store, settings.ca_file.c_str()) == 1;
    X509_STORE_free(store);
    if (!loaded) {
      ERR_clear_error();
      return make_error(ErrorKind::kInvalidArgument,
                        tier + "ca_file '" + settings.ca_file +
                            "' could not be read as PEM certificates; give a CA bundle file");
    }
  }
  return std::shared_ptr<Backend>(
      std::make_shared<OpenAiBackend>(config, std::move(url).value(), std::move(api_key)));
}

}  // namespace foreshore::backend
