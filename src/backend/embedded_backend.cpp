// The edge tier: one GGUF model in-process, shared by a few KV-cache slots.
//
// engine::generate() runs a whole request, calling evaluate() inside, so there
// is no point between two forward steps where another request could take its
// turn on the shared (non-reentrant) thread pool. Requests therefore run one at
// a time, first come first served, from a bounded queue. The slots still pay
// off: each keeps the KV cache of a recent conversation, and a request goes to
// the slot that already holds the longest prefix of its prompt.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>

#include "backend/backend_kinds.h"
#include "common/json_text.h"
#include "engine/engine.h"

namespace foreshore::backend {
namespace {

using Clock = std::chrono::steady_clock;
using engine::TokenId;

// How often a queued request looks at its cancellation flag, which nobody signals.
constexpr auto kQueuePollInterval = std::chrono::milliseconds(20);
// Default completion length when the request gives none: long enough for an
// answer, short enough that a forgotten max_tokens cannot hold the edge for minutes.
constexpr int32_t kDefaultMaxTokens = 512;
constexpr int32_t kMaxTopLogprobs = 20;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// {"reasoning_content": text}: the message or delta field that carries a
// reasoning model's <think> text, as llama-server and OpenAI-compatible
// reasoning APIs name it.
std::string reasoning_json(std::string_view text) {
  std::string out = "{\"reasoning_content\":";
  append_json_string(out, text);
  return out + "}";
}

bool is_cancelled(const BackendRequest& request) {
  return request.cancelled && request.cancelled->load();
}

// Hands out turns on the engine one at a time, in arrival order, to at most
// `max_waiting` queued requests. A finished turn passes straight to the head
// of the queue and wakes only that request: waking every waiter to let one
// through costs O(waiters) per turn, which under a burst of hundreds of
// queued requests took more CPU than the engine itself.
class TurnQueue {
 public:
  enum class Outcome { kAdmitted, kFull, kDeadline, kCancelled };

  explicit TurnQueue(size_t max_waiting) : max_waiting_(max_waiting) {}

  Outcome enter(const BackendRequest& request, size_t& ahead) {
    std::unique_lock lock(mu_);
    ahead = waiting_.size() + (busy_ ? 1 : 0);
    if (!busy_ && waiting_.empty()) {
      busy_ = true;
      return Outcome::kAdmitted;
    }
    if (waiting_.size() >= max_waiting_) return Outcome::kFull;
    Waiter me;
    waiting_.push_back(&me);
    for (;;) {
      if (me.admitted) return Outcome::kAdmitted;
      const auto now = Clock::now();
      const bool expired = request.deadline && now >= *request.deadline;
      if (expired || is_cancelled(request)) {
        waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &me));
        return expired ? Outcome::kDeadline : Outcome::kCancelled;
      }
      auto wake = now + kQueuePollInterval;
      if (request.deadline) wake = std::min(wake, *request.deadline);
      me.cv.wait_until(lock, wake);
    }
  }

  // Takes the engine only when nobody holds or waits for it.
  bool try_enter() {
    std::lock_guard lock(mu_);
    if (busy_ || !waiting_.empty()) return false;
    busy_ = true;
    return true;
  }

  int32_t depth() {
    std::lock_guard lock(mu_);
    return static_cast<int32_t>(waiting_.size()) + (busy_ ? 1 : 0);
  }

  void leave() {
    std::lock_guard lock(mu_);
    if (waiting_.empty()) {
      busy_ = false;
      return;
    }
    Waiter* next = waiting_.front();  // the turn stays busy: it is handed over
    waiting_.pop_front();
    next->admitted = true;
    next->cv.notify_one();
  }

 private:
  struct Waiter {
    std::condition_variable cv;
    bool admitted = false;
  };

  std::mutex mu_;
  std::deque<Waiter*> waiting_;
  bool busy_ = false;
  const size_t max_waiting_;
};

class Turn {
 public:
  explicit Turn(TurnQueue& queue) : queue_(queue) {}
  ~Turn() { queue_.leave(); }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

 private:
  TurnQueue& queue_;
};

size_t common_prefix(const std::vector<TokenId>& a, const std::vector<TokenId>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// What the tier runs right now: a model and the KV-cache slots over it. Memory
// pressure replaces it with a smaller one and recovery puts the full one back;
// a request keeps the one it started on until it ends.
struct Deployment {
  std::shared_ptr<const engine::Model> model;
  engine::ChatFormat format = engine::ChatFormat::kPlain;
  std::string model_name;
  std::vector<std::unique_ptr<engine::InferenceContext>> slots;
  std::vector<uint64_t> last_used;
  uint64_t use_clock = 0;
  bool low_memory_model = false;

  int32_t context_length() const { return slots.front()->context_length(); }
};

std::string model_name(const std::string& configured) {
  const std::filesystem::path path(configured);
  return path.extension() == ".gguf" ? path.stem().string() : path.filename().string();
}

Result<engine::ChatFormat> choose_chat_format(const TierConfig& config, const engine::Model& model);

// Loads a model (unless given) and sets up `slot_count` slots of at most
// `context_length` tokens (0: the configured/model context).
Result<std::shared_ptr<Deployment>> deploy(const TierConfig& config, const std::string& model_ref,
                                           std::shared_ptr<const engine::Model> model,
                                           int32_t slot_count, int32_t context_length) {
  const std::string tier = "tier '" + config.name + "': ";
  auto d = std::make_shared<Deployment>();
  if (!model) {
    auto path = engine::resolve_model_path(model_ref);
    if (!path.ok()) return make_error(path.error().kind, tier + path.error().message);
    auto loaded = engine::Model::load(*path);
    if (!loaded.ok()) return make_error(loaded.error().kind, tier + loaded.error().message);
    model = std::move(loaded).value();
  }
  d->model = std::move(model);
  d->model_name = model_name(model_ref);
  FSH_ASSIGN_OR_RETURN(d->format, choose_chat_format(config, *d->model));

  engine::ContextOptions options;
  options.context_length = context_length;
  options.kv_memory_budget = (static_cast<uint64_t>(config.kv_memory_mb) << 20) /
                             static_cast<uint64_t>(config.max_concurrency);
  for (int32_t i = 0; i < slot_count; ++i) {
    auto context = engine::InferenceContext::create(d->model, options);
    if (!context.ok()) {
      return make_error(context.error().kind,
                        tier + "cannot set up " + std::to_string(config.max_concurrency) +
                            " slots in kv_memory_mb " + std::to_string(config.kv_memory_mb) +
                            " (each gets an equal share): " + context.error().message +
                            "; raise kv_memory_mb, lower context_length or max_concurrency");
    }
    d->slots.push_back(std::move(context).value());
  }
  d->last_used.assign(d->slots.size(), 0);
  return d;
}

class EmbeddedBackend final : public Backend {
 public:
  EmbeddedBackend(TierConfig config, std::shared_ptr<Deployment> full)
      : config_(std::move(config)),
        pool_(config_.threads),
        turns_(static_cast<size_t>(config_.max_queue)),
        full_context_(full->context_length()),
        deployment_(std::move(full)) {
    info_.name = config_.name;
    info_.kind = "embedded";
    info_.placement = config_.placement;
    info_.model = deployment_->model_name;
    info_.model_version = deployment_->model->version();
    info_.context_length = full_context_;
  }

  const BackendInfo& info() const override { return info_; }

  std::optional<int32_t> count_prompt_tokens(const BackendRequest& request) const override {
    auto tokens = tokenize(*current(), request);
    if (!tokens.ok()) return std::nullopt;
    return static_cast<int32_t>(tokens->size());
  }

  int32_t queued_requests() const override { return turns_.depth(); }

  std::string adapt_to_memory_pressure(int level) override {
    wanted_level_.store(level, std::memory_order_release);
    // When the engine is idle, act now; otherwise the next request to get
    // its turn does, after the running one has finished.
    if (!turns_.try_enter()) return {};
    Turn turn(turns_);
    return apply_memory_level();
  }

  Result<Completion> generate(const BackendRequest& request, const DeltaSink& on_delta) override {
    const auto start = Clock::now();
    if (!request.remote_only.edge_unsupported.empty()) {
      return make_error(ErrorKind::kInvalidArgument,
                        where() + ": the request uses " + request.remote_only.edge_unsupported +
                            ", which the embedded engine does not support; send it to a cloud "
                            "tier");
    }
    // Tokenized before queueing so that a malformed request fails at once.
    std::shared_ptr<Deployment> deployment = current();
    FSH_ASSIGN_OR_RETURN(std::vector<TokenId> prompt, tokenize(*deployment, request));

    size_t ahead = 0;
    switch (turns_.enter(request, ahead)) {
      case TurnQueue::Outcome::kAdmitted:
        break;
      case TurnQueue::Outcome::kFull:
        return make_error(ErrorKind::kResourceExhausted,
                          where() + ": busy with " + std::to_string(ahead) +
                              " requests running or queued (max_queue " +
                              std::to_string(config_.max_queue) +
                              "); retry later or raise max_queue");
      case TurnQueue::Outcome::kDeadline:
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": the deadline passed after " +
                              std::to_string(static_cast<int64_t>(ms_since(start))) +
                              " ms in the queue behind " + std::to_string(ahead) +
                              " requests; allow more time or send fewer requests to this tier");
      case TurnQueue::Outcome::kCancelled:
        return cancelled_completion(start);
    }
    Turn turn(turns_);
    if (std::string change = apply_memory_level(); !change.empty()) {
      std::fprintf(stderr, "%s\n", change.c_str());
    }
    if (std::shared_ptr<Deployment> now = current(); now != deployment) {
      deployment = std::move(now);
      FSH_ASSIGN_OR_RETURN(prompt, tokenize(*deployment, request));
    }
    FSH_ASSIGN_OR_RETURN(engine::GenerationRequest gen,
                         to_engine_request(*deployment, request, std::move(prompt)));
    const double queued_ms = ms_since(start);
    if (request.deadline && Clock::now() >= *request.deadline) {
      return make_error(ErrorKind::kDeadlineExceeded,
                        where() + ": the deadline passed before generation could start");
    }

    // Text the caller accepted; generate() keeps producing text it may have
    // refused, so this, not result.text, is the answer. Models that reason in
    // <think> blocks (Qwen3, SmolLM3) have that text sent apart, as
    // reasoning_content (as llama-server does), so it is not the answer.
    std::string accepted;
    std::string reasoning;
    const bool thinks = deployment->format == engine::ChatFormat::kQwen3 ||
                        deployment->format == engine::ChatFormat::kSmolLM3;
    engine::ReasoningStream reasoning_stream;
    bool refused = false;
    bool deadline_hit = false;
    const auto deliver = [&](const engine::ReasoningSplit& part,
                             const engine::SampledToken* token) {
      if (on_delta && (!part.content.empty() || !part.reasoning.empty() || token != nullptr)) {
        Delta delta;
        delta.text = part.content;
        if (!part.reasoning.empty()) delta.other = reasoning_json(part.reasoning);
        // The engine reports only the token that completed this text; tokens
        // held back with it (partial UTF-8, a possible stop string) are in the
        // final completion's logprobs.
        // Reasoning is not the answer, so its tokens carry no logprobs.
        if (request.params.logprobs && token != nullptr && (!thinks || !part.content.empty()))
          delta.logprobs.push_back(to_logprob(deployment->model->tokenizer(), *token));
        if (!on_delta(delta)) return false;
      }
      accepted += part.content;
      reasoning += part.reasoning;
      return true;
    };
    const auto sink = [&](std::string_view text, const engine::SampledToken& token) {
      if (refused) return false;
      if (request.deadline && Clock::now() >= *request.deadline) deadline_hit = true;
      if (deadline_hit || is_cancelled(request)) {
        refused = true;
        return false;
      }
      const engine::ReasoningSplit part =
          thinks ? reasoning_stream.push(text) : engine::ReasoningSplit{{}, std::string(text)};
      if (!deliver(part, &token)) {
        refused = true;
        return false;
      }
      return true;
    };

    engine::InferenceContext& context = pick_slot(*deployment, gen.prompt);
    auto result = engine::generate(context, pool_, gen, sink);
    if (!result.ok()) {
      return make_error(result.error().kind, where() + ": " + result.error().message);
    }
    if (thinks && !refused && !deliver(reasoning_stream.finish(), nullptr)) refused = true;
    if (deadline_hit && accepted.empty() && reasoning.empty()) {
      return make_error(ErrorKind::kDeadlineExceeded,
                        where() + ": the deadline passed before the first token (prompt of " +
                            std::to_string(result->prompt_tokens) +
                            " tokens); allow more time or shorten the prompt");
    }

    Completion completion;
    completion.text = std::move(accepted);
    if (!reasoning.empty()) completion.message_other = reasoning_json(reasoning);
    completion.finish_reason =
        refused ? "cancelled" : std::string(engine::finish_reason_name(result->finish_reason));
    completion.usage.prompt_tokens = result->prompt_tokens;
    completion.usage.completion_tokens = result->generated_tokens;
    completion.usage.cached_prompt_tokens = result->reused_prompt_tokens;
    if (request.params.logprobs) {
      completion.logprobs.reserve(result->tokens.size());
      for (const auto& token : result->tokens)
        completion.logprobs.push_back(to_logprob(deployment->model->tokenizer(), token));
      // The answer's tokens only: cascade confidence measures the answer, and
      // a reply that is all reasoning has none, so it escalates.
      if (thinks) {
        std::vector<std::string> pieces;
        pieces.reserve(completion.logprobs.size());
        for (const auto& t : completion.logprobs) pieces.push_back(t.token);
        completion.logprobs.erase(
            completion.logprobs.begin(),
            completion.logprobs.begin() +
                static_cast<std::ptrdiff_t>(engine::first_answer_piece(pieces)));
      }
    }
    completion.model = deployment->model_name;
    completion.model_version = deployment->model->version();
    completion.time_to_first_token_ms = queued_ms + result->time_to_first_token_seconds * 1000.0;
    completion.total_ms = ms_since(start);
    return completion;
  }

 private:
  std::shared_ptr<Deployment> current() const {
    std::lock_guard lock(deployment_mu_);
    return deployment_;
  }

  // Called with the turn held. Level 0 runs the configured model with every
  // slot; level 1 keeps one slot (the others' caches are only a speed-up);
  // level 2 and up also cut the context to a quarter and switch to the
  // low_memory_model when one is configured.
  std::string apply_memory_level() {
    const int level = wanted_level_.load(std::memory_order_acquire);
    if (level == applied_level_) return {};
    std::shared_ptr<Deployment> now = current();
    const bool use_small = level >= 2 && !config_.low_memory_model.empty();
    const int32_t slot_count = level >= 1 ? 1 : config_.max_concurrency;
    const int32_t context =
        level >= 2 ? std::max<int32_t>(kMinPressureContext, full_context_ / 4) : full_context_;
    const std::string& model_ref = use_small ? config_.low_memory_model : config_.model;
    std::shared_ptr<const engine::Model> model;
    if (use_small == now->low_memory_model) model = now->model;
    // Release the current slots first: their KV memory is what we are short of.
    {
      std::lock_guard lock(deployment_mu_);
      deployment_->slots.resize(1);
      deployment_->last_used.resize(1);
    }
    now.reset();
    auto next = deploy(config_, model_ref, std::move(model), slot_count, context);
    if (!next.ok()) {
      // Not retried on every request; the next level change tries again.
      applied_level_ = level;
      return "tier '" + config_.name + "': memory pressure " + std::to_string(level) +
             ": could not switch (" + next.error().message + "); keeping the current model";
    }
    (*next)->low_memory_model = use_small;
    const std::string what = "tier '" + config_.name + "': memory pressure level " +
                             std::to_string(level) + ": serving " + (*next)->model_name + " with " +
                             std::to_string((*next)->slots.size()) + " slot(s) of " +
                             std::to_string((*next)->context_length()) + " tokens";
    {
      std::lock_guard lock(deployment_mu_);
      deployment_ = std::move(next).value();
    }
    applied_level_ = level;
    return what;
  }

  std::string where() const { return "tier '" + config_.name + "' (model " + info_.model + ")"; }
  std::string where(const Deployment& d) const {
    return "tier '" + config_.name + "' (model " + d.model_name + ")";
  }

  Completion cancelled_completion(Clock::time_point start) const {
    Completion completion;
    completion.finish_reason = "cancelled";
    completion.model = info_.model;
    completion.model_version = info_.model_version;
    completion.total_ms = ms_since(start);
    return completion;
  }

  Result<std::vector<TokenId>> tokenize(const Deployment& d, const BackendRequest& request) const {
    const engine::Tokenizer& tokenizer = d.model->tokenizer();
    // User text in a legacy prompt is data: control-token texts in it stay text.
    if (request.prompt) return tokenizer.encode(*request.prompt, true, false);
    if (request.messages.empty()) {
      return make_error(ErrorKind::kInvalidArgument,
                        where() + ": the request has neither messages nor a prompt");
    }
    std::vector<engine::ChatMessage> messages;
    messages.reserve(request.messages.size());
    for (const auto& m : request.messages) messages.push_back({m.role, m.content});
    const std::string text =
        engine::render_chat(d.format, messages, true, request.params.enable_thinking.value_or(true));
    // Chat formats mark turns with control tokens, which must parse as such.
    return tokenizer.encode(text, true, d.format != engine::ChatFormat::kPlain);
  }

  Result<engine::GenerationRequest> to_engine_request(const Deployment& d,
                                                      const BackendRequest& request,
                                                      std::vector<TokenId> prompt) const {
    const GenerationParams& p = request.params;
    const int32_t context_length = d.context_length();
    if (static_cast<int64_t>(prompt.size()) >= context_length) {
      const bool shrunk = context_length < full_context_;
      return make_error(ErrorKind::kResourceExhausted,
                        where(d) + ": the prompt is " + std::to_string(prompt.size()) +
                            " tokens but the context holds " + std::to_string(context_length) +
                            (shrunk ? " while device memory is under pressure (normally " +
                                          std::to_string(full_context_) + ")"
                                    : std::string()) +
                            " (prompt and completion together); shorten the conversation or "
                            "route it to a tier with a longer context");
    }
    if (p.max_tokens && *p.max_tokens <= 0) {
      return make_error(
          ErrorKind::kInvalidArgument,
          where() + ": max_tokens is " + std::to_string(*p.max_tokens) + "; it must be at least 1");
    }
    if (p.temperature && !(*p.temperature >= 0.0f)) {
      return make_error(ErrorKind::kInvalidArgument,
                        where() + ": temperature must be 0 or more (0 is greedy)");
    }
    if (p.top_p && !(*p.top_p > 0.0f && *p.top_p <= 1.0f)) {
      return make_error(ErrorKind::kInvalidArgument, where() + ": top_p must be in (0, 1]");
    }
    if (p.logprobs && (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs)) {
      return make_error(ErrorKind::kInvalidArgument,
                        where() + ": top_logprobs is " + std::to_string(p.top_logprobs) +
                            "; it must be between 0 and " + std::to_string(kMaxTopLogprobs));
    }

    engine::GenerationRequest gen;
    const int32_t room = context_length - static_cast<int32_t>(prompt.size());
    gen.max_tokens =
        p.max_tokens ? std::min(*p.max_tokens, room) : std::min(kDefaultMaxTokens, room);
    gen.prompt = std::move(prompt);
    gen.stop = p.stop;
    gen.json_object = p.json_object;
    // OpenAI's defaults, so that a client sees the same behaviour on every tier:
    // plain temperature-1 sampling, no top-k, min-p or penalties.
    engine::SamplingParams& s = gen.sampling;
    s.temperature = p.temperature.value_or(1.0f);
    s.top_p = p.top_p.value_or(1.0f);
    s.top_k = p.top_k.value_or(0);
    s.min_p = p.min_p.value_or(0.0f);
    s.repeat_penalty = p.repeat_penalty.value_or(1.0f);
    s.presence_penalty = p.presence_penalty.value_or(0.0f);
    s.frequency_penalty = p.frequency_penalty.value_or(0.0f);
    s.seed = p.seed ? *p.seed : std::random_device{}();
    s.top_logprobs = p.logprobs ? p.top_logprobs : 0;
    return gen;
  }

  // Called with the turn held, so every slot is free. A slot whose cache is
  // mostly a prefix of the prompt holds this conversation's earlier turns and
  // is reused; otherwise the least recently used cache is replaced, rather
  // than another conversation's that merely shares BOS or a system prompt.
  engine::InferenceContext& pick_slot(Deployment& d, const std::vector<TokenId>& prompt) {
    size_t best = 0;
    size_t best_prefix = 0;
    for (size_t i = 0; i < d.slots.size(); ++i) {
      const auto& cached = d.slots[i]->cached_tokens();
      const size_t prefix = common_prefix(cached, prompt);
      if (prefix > best_prefix && prefix * 2 >= cached.size()) {
        best = i;
        best_prefix = prefix;
      }
    }
    if (best_prefix == 0) {
      best = static_cast<size_t>(std::min_element(d.last_used.begin(), d.last_used.end()) -
                                 d.last_used.begin());
    }
    d.last_used[best] = ++d.use_clock;
    return *d.slots[best];
  }

  static TokenLogprob to_logprob(const engine::Tokenizer& tokenizer,
                                 const engine::SampledToken& token) {
    TokenLogprob out;
    out.token = tokenizer.token_to_piece(token.id);
    out.logprob = token.logprob;
    out.entropy = token.entropy;
    out.top.reserve(token.top.size());
    for (const auto& alt : token.top)
      out.top.emplace_back(std::string(tokenizer.token_to_piece(alt.id)), alt.logprob);
    return out;
  }

  // The smallest context a pressured tier shrinks to: below it few prompts fit.
  static constexpr int32_t kMinPressureContext = 256;

  const TierConfig config_;
  BackendInfo info_;
  engine::ThreadPool pool_;
  mutable TurnQueue turns_;
  const int32_t full_context_;
  std::atomic<int> wanted_level_{0};
  int applied_level_ = 0;  // touched only with the turn held
  mutable std::mutex deployment_mu_;
  std::shared_ptr<Deployment> deployment_;
};

Result<engine::ChatFormat> choose_chat_format(const TierConfig& config,
                                              const engine::Model& model) {
  if (!config.chat_format.empty()) {
    if (auto format = engine::parse_chat_format(config.chat_format)) return *format;
    return make_error(ErrorKind::kInvalidArgument,
                      "tier '" + config.name + "': chat_format '" + config.chat_format +
                          "' is not known; use one of " + engine::chat_format_names());
  }
  if (auto jinja = model.file().get_string("tokenizer.chat_template")) {
    if (auto format = engine::detect_chat_format(*jinja)) return *format;
  }
  // Base models have no template and continue plain text.
  return engine::ChatFormat::kPlain;
}

}  // namespace

Result<std::shared_ptr<Backend>> create_embedded_backend(const TierConfig& config) {
  if (!config.low_memory_model.empty()) {
    // Found now, loaded when pressure first asks for it.
    if (auto path = engine::resolve_model_path(config.low_memory_model); !path.ok()) {
      return make_error(path.error().kind,
                        "tier '" + config.name + "': low_memory_model: " + path.error().message);
    }
  }
  FSH_ASSIGN_OR_RETURN(
      std::shared_ptr<Deployment> full,
      deploy(config, config.model, nullptr, config.max_concurrency, config.context_length));
  return std::shared_ptr<Backend>(std::make_shared<EmbeddedBackend>(config, std::move(full)));
}

}  // namespace foreshore::backend
