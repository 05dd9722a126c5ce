// The edge tier: one GGUF model in-process, serving up to max_concurrency
// requests at once by continuous batching.
//
// One scheduler thread owns the engine. Each step it runs, in one batched
// forward pass (engine::BatchDecoder), the next token of every running
// sequence and a chunk of at most one loading prompt, so a long prompt loads
// between decode steps instead of freezing the others. New requests join at
// the next step from a bounded FIFO queue; a cancelled one (client gone,
// deadline) leaves within one step. Each request's thread streams the text
// its sequence produced, so a slow client never holds up the engine.
//
// Each sequence runs on a KV-cache slot; a finished request's slot keeps its
// cache, and a request goes to the free slot that already holds the longest
// prefix of its prompt (a conversation's earlier turns). The slots' caches
// take their memory in blocks from one pool of kv_memory_mb: a request holds
// blocks for its prompt and max_tokens from admission on, so a running
// sequence never runs out; when the pool is short, idle slots' kept prefixes
// are given back first, then the request waits (first in line) for running
// ones to end.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "backend/backend_kinds.h"
#include "engine/engine.h"

namespace foreshore::backend {
namespace {

using Clock = std::chrono::steady_clock;
using engine::TokenId;

// How often a waiting request looks at its cancellation flag and deadline,
// which nobody signals.
constexpr auto kPollInterval = std::chrono::milliseconds(20);
// Prompt tokens one step loads beside the running sequences' decode tokens.
// A step costs about as much as reading the weights plus this many tokens of
// prompt work, so this bounds how long a long prompt delays everyone else's
// next token, while 32 rows still keep the batched prompt kernels efficient.
constexpr int32_t kPrefillChunk = 32;
// Default completion length when the request gives none: long enough for an
// answer, short enough that a forgotten max_tokens cannot hold the edge for minutes.
// Documented in docs/API.md and docs/CONFIG.md; change them with it.
constexpr int32_t kDefaultMaxTokens = 512;
constexpr int32_t kMaxTopLogprobs = 20;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// {"reasoning_content": text}: the message or delta field that carries a
// reasoning model's <think> text, as llama-server and OpenAI-compatible
// reasoning APIs name it.
PassThroughJson reasoning_json(std::string_view text) {
  return PassThroughJson::of(nlohmann::json{{"reasoning_content", text}});
}

bool is_cancelled(const BackendRequest& request) {
  return request.cancelled && request.cancelled->load();
}

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
  std::vector<bool> in_use;  // a request holds the slot (scheduler's mutex)
  std::vector<uint64_t> last_used;
  std::unique_ptr<engine::BatchDecoder> decoder;
  uint64_t use_clock = 0;
  bool low_memory_model = false;

  int32_t context_length() const { return slots.front()->context_length(); }
};

std::string model_name(const std::string& configured) {
  const std::filesystem::path path(configured);
  return path.extension() == ".gguf" ? path.stem().string() : path.filename().string();
}

// create_embedded_backend() is called only for tiers of this kind.
const EmbeddedTierSettings& embedded_settings(const TierConfig& config) {
  return std::get<EmbeddedTierSettings>(config.settings);
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
  options.kv_type = embedded_settings(config).kv_cache_type == "q8_0" ? engine::TensorType::kQ8_0
                                                                      : engine::TensorType::kF16;
  if (context_length > d->model->config().context_length) {
    std::fprintf(stderr,
                 "%swarning: context_length %d exceeds the %d tokens model %s was trained on; "
                 "serving %d as configured, but output may degrade past %d tokens\n",
                 tier.c_str(), context_length, d->model->config().context_length,
                 d->model_name.c_str(), context_length, d->model->config().context_length);
  }
  const int64_t kv_memory_mb = embedded_settings(config).kv_memory_mb;
  auto kv_pool =
      engine::KvPool::create(*d->model, options.kv_type, static_cast<uint64_t>(kv_memory_mb) << 20);
  if (!kv_pool.ok()) {
    return make_error(kv_pool.error().kind, tier + "kv_memory_mb " + std::to_string(kv_memory_mb) +
                                                ": " + kv_pool.error().message);
  }
  options.kv_pool = std::move(kv_pool).value();
  for (int32_t i = 0; i < slot_count; ++i) {
    auto context = engine::InferenceContext::create(d->model, options);
    if (!context.ok()) {
      // The engine says what to change; this says where each setting lives.
      return make_error(context.error().kind,
                        tier + "cannot set up its KV cache in kv_memory_mb " +
                            std::to_string(kv_memory_mb) + ": " + context.error().message +
                            " (the pool's budget is tiers." + config.name +
                            ".kv_memory_mb in a --config file; the context is -c or tiers." +
                            config.name + ".context_length)");
    }
    d->slots.push_back(std::move(context).value());
  }
  d->last_used.assign(d->slots.size(), 0);
  d->in_use.assign(d->slots.size(), false);
  auto decoder = engine::BatchDecoder::create(d->model, slot_count + kPrefillChunk);
  if (!decoder.ok()) return make_error(decoder.error().kind, tier + decoder.error().message);
  d->decoder = std::move(decoder).value();
  return d;
}

// One request from its arrival to its last delta. The request's thread
// fills it in and waits on `cv`; the scheduler admits it, runs its
// generation and hands over the text; both under the scheduler's mutex.
struct Job {
  const BackendRequest* request = nullptr;  // its thread waits until the job is done
  std::shared_ptr<Deployment> deployment;   // tokenized for this one
  engine::GenerationRequest gen;
  Clock::time_point start;
  std::condition_variable cv;
  // Set by the scheduler.
  bool admitted = false;
  double queued_ms = 0.0;
  std::optional<size_t> slot;  // held from admission to release
  std::unique_ptr<engine::Generation> generation;
  struct Piece {
    std::string text;
    engine::SampledToken token;
  };
  std::deque<Piece> pieces;  // produced, not yet streamed
  bool done = false;
  std::optional<Error> error;
  engine::GenerationResult result;
  bool deadline_hit = false;
  bool waited_for_memory = false;  // was put back in line for want of KV blocks
  // Set by the request's thread: stop generating (client gone, delta refused).
  bool stop = false;
};

class EmbeddedBackend final : public Backend {
 public:
  EmbeddedBackend(TierConfig config, std::shared_ptr<Deployment> full)
      : config_(std::move(config)),
        pool_(embedded_settings(config_).threads),
        full_context_(full->context_length()),
        deployment_(std::move(full)) {
    info_.name = config_.name;
    info_.kind = TierKind::kEmbedded;
    info_.placement = config_.placement;
    info_.model = deployment_->model_name;
    info_.model_version = deployment_->model->version();
    info_.context_length = full_context_;
    scheduler_ = std::thread([this] { schedule(); });
  }

  ~EmbeddedBackend() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    wake_.notify_one();
    scheduler_.join();
  }

  const BackendInfo& info() const override { return info_; }

  std::optional<int32_t> count_prompt_tokens(const BackendRequest& request) const override {
    auto tokens = tokenize(*current(), request);
    if (!tokens.ok()) return std::nullopt;
    return static_cast<int32_t>(tokens->size());
  }

  int32_t queued_requests() const override {
    std::lock_guard lock(mu_);
    return active_ + static_cast<int32_t>(waiting_.size());
  }

  std::string adapt_to_memory_pressure(int level) override {
    std::lock_guard lock(mu_);
    wanted_level_ = level;
    // When the engine is idle, act now; otherwise the scheduler does once
    // the running requests have finished, admitting no new ones meanwhile.
    if (active_ > 0 || !waiting_.empty()) {
      wake_.notify_one();
      return {};
    }
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
    Job job;
    job.request = &request;
    job.start = start;
    job.deployment = current();
    FSH_ASSIGN_OR_RETURN(std::vector<TokenId> prompt, tokenize(*job.deployment, request));
    FSH_ASSIGN_OR_RETURN(job.gen, to_engine_request(*job.deployment, request, std::move(prompt)));
    if (is_cancelled(request)) return cancelled_completion(start);
    if (request.deadline && start >= *request.deadline) {
      return make_error(ErrorKind::kDeadlineExceeded,
                        where() + ": the deadline passed before generation could start");
    }

    std::unique_lock lock(mu_);
    if (waiting_.size() >= static_cast<size_t>(config_.max_queue) &&
        !(waiting_.empty() && active_ < static_cast<int32_t>(job.deployment->slots.size()))) {
      return make_error(ErrorKind::kResourceExhausted,
                        where() + ": busy with " +
                            std::to_string(active_ + static_cast<int32_t>(waiting_.size())) +
                            " requests running or queued (max_queue " +
                            std::to_string(config_.max_queue) +
                            "); retry later or raise max_queue");
    }
    waiting_.push_back(&job);
    const size_t ahead = static_cast<size_t>(active_) + waiting_.size() - 1;
    wake_.notify_one();

    // Text the caller accepted; the engine keeps producing text it may have
    // refused, so this, not the result's text, is the answer. Models that
    // reason in <think> blocks (Qwen3, SmolLM3) have that text sent apart, as
    // reasoning_content (as llama-server does), so it is not the answer.
    std::string accepted;
    std::string reasoning;
    const std::shared_ptr<Deployment>& deployment = job.deployment;
    const bool thinks = deployment->format == engine::ChatFormat::kQwen3 ||
                        deployment->format == engine::ChatFormat::kSmolLM3;
    engine::ReasoningStream reasoning_stream;
    bool refused = false;
    // Tokens whose text reached the caller. The engine may run ahead of a
    // stream it is then told to stop: what it made past this point was never
    // delivered, so a cancelled answer neither reports nor counts it.
    int32_t delivered_tokens = 0;
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

    // Streams what the scheduler produced until the job is done; gives up
    // waiting in the queue at the deadline or on cancellation.
    for (;;) {
      while (!job.pieces.empty()) {
        Job::Piece piece = std::move(job.pieces.front());
        job.pieces.pop_front();
        if (refused) continue;
        lock.unlock();
        const bool expired = request.deadline && Clock::now() >= *request.deadline;
        bool keep = !expired && !is_cancelled(request);
        if (keep) {
          const engine::ReasoningSplit part =
              thinks ? reasoning_stream.push(piece.text)
                     : engine::ReasoningSplit{{}, std::move(piece.text)};
          keep = deliver(part, &piece.token);
          if (keep) ++delivered_tokens;
        }
        lock.lock();
        if (!keep) {
          refused = true;
          job.deadline_hit = job.deadline_hit || expired;
          job.stop = true;
        }
      }
      if (job.done) break;
      const auto now = Clock::now();
      const bool expired = request.deadline && now >= *request.deadline;
      if (!job.admitted && (expired || is_cancelled(request))) {
        waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &job));
        lock.unlock();
        if (!expired) return cancelled_completion(start);
        return make_error(ErrorKind::kDeadlineExceeded,
                          where() + ": the deadline passed after " +
                              std::to_string(static_cast<int64_t>(ms_since(start))) +
                              " ms in the queue behind " + std::to_string(ahead) +
                              " requests; allow more time or send fewer requests to this tier");
      }
      if (job.admitted && (expired || is_cancelled(request)) && !job.stop) {
        job.stop = true;
        job.deadline_hit = expired;
        refused = true;
      }
      auto wake = now + kPollInterval;
      if (request.deadline && *request.deadline > now) wake = std::min(wake, *request.deadline);
      job.cv.wait_until(lock, wake);
    }
    // The slot is the request's until its text is streamed: a client that
    // reads slowly holds its place as it always has.
    release(job);
    lock.unlock();

    if (job.error) return make_error(job.error->kind, where() + ": " + job.error->message);
    if (job.deadline_hit || job.stop) refused = true;
    const engine::GenerationResult& result = job.result;
    if (thinks && !refused && !deliver(reasoning_stream.finish(), nullptr)) refused = true;
    if (job.deadline_hit && accepted.empty() && reasoning.empty()) {
      return make_error(ErrorKind::kDeadlineExceeded,
                        where() + ": the deadline passed before the first token (prompt of " +
                            std::to_string(result.prompt_tokens) +
                            " tokens); allow more time or shorten the prompt");
    }

    Completion completion;
    completion.text = std::move(accepted);
    if (!reasoning.empty()) completion.message_other = reasoning_json(reasoning);
    completion.finish_reason =
        refused ? "cancelled" : std::string(engine::finish_reason_name(result.finish_reason));
    completion.usage.prompt_tokens = result.prompt_tokens;
    completion.usage.completion_tokens =
        refused ? std::min(result.generated_tokens, delivered_tokens) : result.generated_tokens;
    completion.usage.cached_prompt_tokens = result.reused_prompt_tokens;
    if (request.params.logprobs) {
      const size_t reported =
          refused ? std::min(result.tokens.size(), static_cast<size_t>(delivered_tokens))
                  : result.tokens.size();
      completion.logprobs.reserve(reported);
      for (size_t t = 0; t < reported; ++t)
        completion.logprobs.push_back(to_logprob(deployment->model->tokenizer(), result.tokens[t]));
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
    completion.time_to_first_token_ms = job.queued_ms + result.time_to_first_token_seconds * 1000.0;
    completion.total_ms = ms_since(start);
    return completion;
  }

  std::optional<EdgeLoad> load() const override {
    std::lock_guard lock(mu_);
    EdgeLoad l = stats_;
    l.running = active_;
    l.queued = static_cast<int32_t>(waiting_.size());
    l.queued_prompt_tokens = 0;
    for (const Job* j : waiting_)
      l.queued_prompt_tokens += static_cast<int64_t>(j->gen.prompt.size());
    l.slots = static_cast<int32_t>(deployment_->slots.size());
    const engine::KvPool& kv = deployment_->slots.front()->kv_pool();
    l.kv_blocks_total = kv.blocks_total();
    l.kv_blocks_used = kv.blocks_used();
    l.kv_block_tokens = engine::KvPool::kBlockTokens;
    return l;
  }

 private:
  // --- the scheduler thread

  void schedule() {
    std::unique_lock lock(mu_);
    std::vector<Job*> running;  // generating, in admission order
    std::vector<engine::BatchEntry> entries;
    std::vector<Job*> owners;
    bool last_step_short_prefill = false;
    for (;;) {
      if (wanted_level_ != applied_level_ && active_ == 0) {
        if (std::string change = apply_memory_level(); !change.empty()) {
          std::fprintf(stderr, "%s\n", change.c_str());
        }
      }
      // New requests wait while a memory level change waits for the engine
      // to empty.
      while (wanted_level_ == applied_level_ && !waiting_.empty() &&
             active_ < static_cast<int32_t>(current()->slots.size())) {
        Job* job = waiting_.front();
        waiting_.pop_front();
        const Admission admission = admit(*job);
        if (admission == Admission::kStarted) running.push_back(job);
        // First in line until running sequences give KV memory back.
        if (admission == Admission::kWaitsForMemory) break;
      }
      if (running.empty()) {
        if (stopping_) return;
        wake_.wait(lock);
        continue;
      }
      // Cancelled or late sequences leave before the step.
      for (Job* job : running) {
        const BackendRequest& r = *job->request;
        const bool expired = r.deadline && Clock::now() >= *r.deadline;
        if (job->stop || expired || is_cancelled(r)) {
          job->deadline_hit = job->deadline_hit || expired;
          job->stop = true;
          job->generation->cancel();
        }
      }
      // Every running sequence's next token, then one chunk of the oldest
      // loading prompt (chunked prefill). A prompt that finishes loading in
      // one chunk runs alone instead, so a short request's first token does
      // not wait for a step of every running decode: the others lose one
      // step to it, and never two in a row.
      entries.clear();
      owners.clear();
      bool prefilling = false;
      if (!last_step_short_prefill) {
        for (Job* job : running) {
          const engine::Generation& g = *job->generation;
          const int32_t left = g.prompt_tokens_left();
          if (g.finished() || left == 0 || left > kPrefillChunk) continue;
          entries.push_back({&g.context(), g.next_input(kPrefillChunk)});
          owners.push_back(job);
          prefilling = true;
          break;
        }
      }
      last_step_short_prefill = prefilling && running.size() > 1;
      for (Job* job : running) {
        if (last_step_short_prefill) break;
        const engine::Generation& g = *job->generation;
        if (g.finished()) continue;
        const bool loads = g.prompt_tokens_left() > 0;
        if (loads && prefilling) continue;
        const auto input = g.next_input(loads ? kPrefillChunk : 1);
        if (input.empty()) continue;
        prefilling = prefilling || loads;
        entries.push_back({&g.context(), input});
        owners.push_back(job);
      }
      int64_t step_tokens = 0;
      if (!entries.empty()) {
        std::shared_ptr<Deployment> d = running.front()->deployment;
        lock.unlock();
        const auto step_start = Clock::now();
        Status status = d->decoder->decode(entries, pool_);
        const double step_ms = ms_since(step_start);
        if (status.ok()) {
          for (size_t i = 0; i < entries.size(); ++i) {
            owners[i]->generation->advance(static_cast<int32_t>(entries[i].tokens.size()));
            step_tokens += static_cast<int64_t>(entries[i].tokens.size());
          }
        }
        lock.lock();
        record_step(step_ms, static_cast<int32_t>(entries.size()), step_tokens, prefilling);
        if (!status.ok()) {
          // Cannot happen for checked requests; fail them all rather than spin.
          for (Job* job : owners) {
            job->error = status.error();
            job->generation->cancel();
          }
        }
      }
      std::erase_if(running, [&](Job* job) {
        if (!job->generation->finished()) return false;
        job->result = job->generation->take_result();
        job->generation.reset();
        // The slot keeps its cached prefix; the rest of its reservation is free.
        job->deployment->slots[*job->slot]->release_unused_kv();
        job->done = true;
        job->cv.notify_one();
        return true;
      });
    }
  }

  enum class Admission { kStarted, kFailed, kWaitsForMemory };

  // Takes a slot, holds KV memory for the whole request and starts its
  // generation. kFailed: the job is done with its error; kWaitsForMemory: it
  // is back at the head of the queue. Called with mu_ held.
  Admission admit(Job& job) {
    job.admitted = true;
    job.queued_ms = ms_since(job.start);
    ++active_;
    std::shared_ptr<Deployment> d = current();
    if (d != job.deployment) {
      // Memory pressure changed the model or context while it waited.
      job.deployment = d;
      auto prompt = tokenize(*d, *job.request);
      auto gen = prompt.ok() ? to_engine_request(*d, *job.request, std::move(prompt).value())
                             : Result<engine::GenerationRequest>(prompt.error());
      if (!gen.ok()) return fail(job, gen.error());
      job.gen = std::move(gen).value();
    }
    job.slot = pick_slot(*d, job.gen.prompt);
    d->in_use[*job.slot] = true;
    const int32_t positions = static_cast<int32_t>(job.gen.prompt.size()) + job.gen.max_tokens;
    if (Status held = hold_kv(*d, *job.slot, positions); !held.ok()) {
      if (active_ > 1) {
        d->in_use[*job.slot] = false;
        job.slot.reset();
        job.admitted = false;
        --active_;
        if (!job.waited_for_memory) ++stats_.kv_waits;
        job.waited_for_memory = true;
        waiting_.push_front(&job);
        return Admission::kWaitsForMemory;
      }
      const engine::KvPool& pool = d->slots[*job.slot]->kv_pool();
      return fail(job, make_error(ErrorKind::kResourceExhausted,
                                  "the request needs KV memory for " + std::to_string(positions) +
                                      " tokens (prompt and max_tokens), more than the whole pool "
                                      "of kv_memory_mb " +
                                      std::to_string(embedded_settings(config_).kv_memory_mb) +
                                      " holds (" + std::to_string(pool.capacity_tokens()) +
                                      " tokens); lower max_tokens, shorten the prompt or raise "
                                      "kv_memory_mb"));
    }
    Job* self = &job;
    auto sink = [this, self](std::string_view text, const engine::SampledToken& token) {
      std::lock_guard lock(mu_);
      self->pieces.push_back({std::string(text), token});
      self->cv.notify_one();
      return !self->stop;
    };
    auto generation = engine::Generation::start(*d->slots[*job.slot], job.gen, sink);
    if (!generation.ok()) return fail(job, generation.error());
    job.generation = std::move(generation).value();
    job.cv.notify_one();
    ++stats_.admitted;
    if (job.generation->result().reused_prompt_tokens > 0) ++stats_.prefix_hits;
    return Admission::kStarted;
  }

  Admission fail(Job& job, const Error& error) {
    job.error = error;
    job.done = true;
    job.cv.notify_one();
    return Admission::kFailed;
  }

  // Holds KV blocks for `positions` positions on `slot`, giving back idle
  // slots' kept prefixes (least recently used first) while the pool is short.
  // A running sequence's blocks are never touched. Called with mu_ held.
  Status hold_kv(Deployment& d, size_t slot, int32_t positions) {
    Status held = d.slots[slot]->reserve(positions);
    while (!held.ok()) {
      std::optional<size_t> victim;
      for (size_t i = 0; i < d.slots.size(); ++i) {
        if (i == slot || d.in_use[i] || d.slots[i]->kv_blocks_held() == 0) continue;
        if (!victim || d.last_used[i] < d.last_used[*victim]) victim = i;
      }
      if (!victim) break;
      d.slots[*victim]->truncate(0);
      d.slots[*victim]->release_unused_kv();
      ++stats_.kv_prefix_evictions;
      held = d.slots[slot]->reserve(positions);
    }
    return held;
  }

  // The request's thread is done with its job. Called with mu_ held.
  void release(Job& job) {
    if (!job.admitted) return;
    if (job.slot) job.deployment->in_use[*job.slot] = false;
    --active_;
    wake_.notify_one();
  }

  void record_step(double step_ms, int32_t sequences, int64_t tokens, bool prefill) {
    ++stats_.steps;
    stats_.step_ms_total += step_ms;
    stats_.tokens_total += tokens;
    stats_.last_step_ms = step_ms;
    if (!prefill) {
      // Decode-only steps: the per-token latency running sequences see, as a
      // moving average that follows load changes within a few dozen steps.
      constexpr double kWeight = 0.05;
      stats_.decode_step_ms = stats_.decode_step_ms == 0.0
                                  ? step_ms
                                  : (1 - kWeight) * stats_.decode_step_ms + kWeight * step_ms;
      stats_.decode_batch = sequences;
    } else {
      const double per_token = step_ms / static_cast<double>(std::max<int64_t>(tokens, 1));
      stats_.prefill_ms_per_token = stats_.prefill_ms_per_token == 0.0
                                        ? per_token
                                        : 0.9 * stats_.prefill_ms_per_token + 0.1 * per_token;
    }
    for (size_t i = 0; i < EdgeLoad::kStepBuckets.size(); ++i) {
      if (step_ms <= EdgeLoad::kStepBuckets[i]) ++stats_.step_buckets[i];
    }
  }

  std::shared_ptr<Deployment> current() const {
    std::lock_guard lock(deployment_mu_);
    return deployment_;
  }

  // Called with mu_ held and no request holding a slot. Level 0 runs the configured model with
  // every slot; level 1 keeps one slot (the others' caches are only a speed-up); level 2 and up
  // also cut the context to a quarter and switch to the low_memory_model when one is configured.
  std::string apply_memory_level() {
    const int level = wanted_level_;
    if (level == applied_level_) return {};
    std::shared_ptr<Deployment> now = current();
    const std::string& low_memory_model = embedded_settings(config_).low_memory_model;
    const bool use_small = level >= 2 && !low_memory_model.empty();
    const int32_t slot_count = level >= 1 ? 1 : config_.max_concurrency;
    const int32_t context =
        level >= 2 ? std::max<int32_t>(kMinPressureContext, full_context_ / 4) : full_context_;
    const std::string& model_ref = use_small ? low_memory_model : config_.model;
    std::shared_ptr<const engine::Model> model;
    if (use_small == now->low_memory_model) model = now->model;
    // Release the current slots first: their KV memory is what we are short of.
    {
      std::lock_guard lock(deployment_mu_);
      deployment_->slots.resize(1);
      deployment_->last_used.resize(1);
      deployment_->in_use.resize(1);
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
    const std::string text = engine::render_chat(d.format, messages, true,
                                                 request.params.enable_thinking.value_or(true));
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
    // OpenAI's range: 0 keeps only the most likely token (the sampler's top_p).
    if (p.top_p && !(*p.top_p >= 0.0f && *p.top_p <= 1.0f)) {
      return make_error(ErrorKind::kInvalidArgument,
                        where() +
                            ": top_p must be between 0 and 1 (0 keeps only the most "
                            "likely token, 1 keeps all)");
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

  // Called with mu_ held and a free slot. A free slot whose cache is mostly
  // a prefix of the prompt holds this conversation's earlier turns and is
  // reused; otherwise the least recently used free cache is replaced, rather
  // than another conversation's that merely shares BOS or a system prompt.
  size_t pick_slot(Deployment& d, const std::vector<TokenId>& prompt) {
    size_t best = d.slots.size();
    size_t best_prefix = 0;
    for (size_t i = 0; i < d.slots.size(); ++i) {
      if (d.in_use[i]) continue;
      const auto& cached = d.slots[i]->cached_tokens();
      const size_t prefix = common_prefix(cached, prompt);
      if (prefix > best_prefix && prefix * 2 >= cached.size()) {
        best = i;
        best_prefix = prefix;
      }
    }
    if (best_prefix == 0) {
      for (size_t i = 0; i < d.slots.size(); ++i) {
        if (!d.in_use[i] && (best == d.slots.size() || d.last_used[i] < d.last_used[best]))
          best = i;
      }
    }
    d.last_used[best] = ++d.use_clock;
    return best;
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
  engine::ThreadPool pool_;  // the scheduler thread's
  const int32_t full_context_;
  mutable std::mutex deployment_mu_;  // taken after mu_, never before
  std::shared_ptr<Deployment> deployment_;
  // The scheduler's state; jobs' fields are under it too.
  mutable std::mutex mu_;
  std::condition_variable wake_;  // work for the scheduler
  std::deque<Job*> waiting_;      // arrival order
  int32_t active_ = 0;            // jobs holding a slot
  bool stopping_ = false;
  int wanted_level_ = 0;
  int applied_level_ = 0;
  EdgeLoad stats_;
  std::thread scheduler_;  // last: started once everything above is ready
};

Result<engine::ChatFormat> choose_chat_format(const TierConfig& config,
                                              const engine::Model& model) {
  const std::string& chat_format = embedded_settings(config).chat_format;
  if (!chat_format.empty()) {
    if (auto format = engine::parse_chat_format(chat_format)) return *format;
    return make_error(ErrorKind::kInvalidArgument, "tier '" + config.name + "': chat_format '" +
                                                       chat_format + "' is not known; use one of " +
                                                       engine::chat_format_names());
  }
  if (auto jinja = model.file().get_string("tokenizer.chat_template")) {
    if (auto format = engine::detect_chat_format(*jinja)) return *format;
  }
  // Base models have no template and continue plain text.
  return engine::ChatFormat::kPlain;
}

}  // namespace

Result<std::shared_ptr<Backend>> create_embedded_backend(const TierConfig& config) {
  const EmbeddedTierSettings& settings = embedded_settings(config);
  if (!settings.low_memory_model.empty()) {
    // Found now, loaded when pressure first asks for it.
    if (auto path = engine::resolve_model_path(settings.low_memory_model); !path.ok()) {
      return make_error(path.error().kind,
                        "tier '" + config.name + "': low_memory_model: " + path.error().message);
    }
  }
  FSH_ASSIGN_OR_RETURN(
      std::shared_ptr<Deployment> full,
      deploy(config, config.model, nullptr, config.max_concurrency, settings.context_length));
  return std::shared_ptr<Backend>(std::make_shared<EmbeddedBackend>(config, std::move(full)));
}

}  // namespace foreshore::backend
