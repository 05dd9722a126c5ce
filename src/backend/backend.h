// Tiers that generate text: the embedded edge engine and OpenAI-compatible
// HTTP endpoints, behind one streaming interface.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "backend/egress_guard.h"
#include "common/result.h"

namespace foreshore::backend {

enum class Placement { kDevice, kCloud };

// "device" or "cloud": the name config files, headers, metrics and records use.
constexpr std::string_view placement_name(Placement placement) {
  return placement == Placement::kCloud ? "cloud" : "device";
}

// JSON the gateway carries between a client and a remote tier without
// reading it: content parts, tool definitions and calls, fields it does not
// know. It holds one compact JSON value, or nothing; only a parsed value
// makes one, so a tier may splice the text into what it sends as is, and
// the egress guard reads it there like every other byte of the body.
class PassThroughJson {
 public:
  PassThroughJson() = default;  // nothing to pass through

  // The value as compact text; invalid UTF-8 in its strings is replaced
  // (client or upstream text), as the rest of the gateway's output does.
  static PassThroughJson of(const nlohmann::json& value);

  bool empty() const { return text_.empty(); }
  const std::string& text() const { return text_; }

  bool operator==(const PassThroughJson&) const = default;

 private:
  explicit PassThroughJson(std::string text) : text_(std::move(text)) {}

  std::string text_;
};

struct ChatMessage {
  ChatMessage() = default;
  ChatMessage(std::string role_, std::string content_)
      : role(std::move(role_)), content(std::move(content_)) {}

  std::string role;  // system, user, assistant, tool
  std::string content;
  // The content as the client's JSON list of parts, kept when some are not
  // text (images, audio, files), which only remote tiers read; `content`
  // holds the text parts. Empty otherwise.
  PassThroughJson content_parts;
  // Function calling, as OpenAI's wire format carries it; only remote tiers
  // read these. tool_calls is the assistant's calls as a JSON array (empty:
  // none); tool_call_id names the call a tool message answers.
  PassThroughJson tool_calls;
  std::string tool_call_id;
  std::string name;
};

// What a client asked for that only remote tiers read: function calling,
// structured output and every top-level field the gateway does not know,
// passed through as the client sent them (the API layer validated the known
// ones) to remote tiers, so that nothing the client sent is lost on the way.
struct RemoteOnlyFields {
  PassThroughJson tools;        // JSON array of tool definitions; empty: none
  PassThroughJson tool_choice;  // "auto", "none", "required" or {...}; empty: unset
  std::optional<bool> parallel_tool_calls;
  PassThroughJson response_format;  // JSON object; empty: unset
  // The client named its token limit max_completion_tokens, which OpenAI's
  // reasoning models require in place of max_tokens: remote tiers get that name.
  bool limit_named_max_completion_tokens = false;
  // The other top-level fields (logit_bias, reasoning_effort, store, ...), as
  // a JSON object; empty when there are none.
  PassThroughJson other;
  // A feature an answer from the embedded engine would ignore although the
  // answer depends on it ("tools", "response_format json_schema"), so that a
  // remote tier must serve; empty when the edge can.
  std::string edge_unsupported;
  // Fields the embedded engine ignores without the answer's form depending
  // on them (the other fields; tools under tool_choice "none"), comma-
  // separated: an edge answer names them in x-foreshore-ignored-params.
  std::string edge_ignored;
};

// Sampling and output options, as an OpenAI request states them; unset fields
// take the tier's defaults.
struct GenerationParams {
  std::optional<int32_t> max_tokens;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
  std::optional<float> min_p;
  std::optional<float> repeat_penalty;
  std::optional<float> presence_penalty;
  std::optional<float> frequency_penalty;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool logprobs = false;
  int32_t top_logprobs = 0;
  // response_format {"type": "json_object"}: the answer is one JSON object
  // (the embedded engine constrains its sampling to it).
  bool json_object = false;
  // n: how many completions to produce for the prompt. Remote tiers pass it
  // through; the embedded engine produces one (the request marks n > 1 as
  // edge-unsupported so that a cloud tier serves it).
  int32_t choices = 1;
  // chat_template_kwargs.enable_thinking (vLLM's and llama-server's name):
  // false asks a reasoning model (Qwen3, SmolLM3) to answer without a
  // <think> block. Unset: the model's default. Remote tiers get the field as
  // sent.
  std::optional<bool> enable_thinking;
};

struct BackendRequest {
  std::string request_id;
  // Model name to ask the tier for; empty means the tier's configured model.
  std::string model;
  std::vector<ChatMessage> messages;  // chat completions
  std::optional<std::string> prompt;  // legacy completions: raw text, no template
  GenerationParams params;
  RemoteOnlyFields remote_only;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // From the client's latency budget: a remote tier that has sent nothing by
  // then is abandoned (kDeadlineExceeded) so the plan can fall back, and no
  // retry starts after it.
  std::optional<std::chrono::steady_clock::time_point> first_token_deadline;
  // Set by the caller (client disconnect, deadline) to stop the generation.
  std::shared_ptr<std::atomic<bool>> cancelled;
  // What the router already scanned of this request, so that a cloud tier's
  // egress guard reads only the rest; unset: the guard reads everything.
  std::shared_ptr<const EgressClearance> egress_clearance;
};

struct TokenLogprob {
  std::string token;
  float logprob = 0.0f;
  std::optional<float> entropy;  // nats; only the embedded engine reports it
  std::vector<std::pair<std::string, float>> top;
};

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  // Prompt tokens served from a cache (KV prefix reuse; OpenAI's
  // prompt_tokens_details.cached_tokens), included in prompt_tokens.
  int32_t cached_prompt_tokens = 0;
};

// A piece of streamed output.
struct Delta {
  std::string text;
  // Tokens that produced `text`. The embedded tier reports only the last of
  // them when text was held back over several tokens (partial UTF-8, a
  // possible stop string); Completion::logprobs always has every token.
  std::vector<TokenLogprob> logprobs;
  // Fragments of tool calls (OpenAI's delta.tool_calls, a JSON array whose
  // entries carry an index), passed through from a remote tier.
  PassThroughJson tool_calls;
  // The remote tier's other delta fields (reasoning_content, refusal, audio,
  // ...) as a JSON object, passed through; empty when none.
  PassThroughJson other;
  // Which of the n completions (n > 1) this delta belongs to; 0 for the first.
  int32_t choice = 0;
  // Set on the last delta of a completion other than the first: the first
  // one's reason is the Completion's, reported when the whole answer ends.
  std::string finish_reason;
};

struct Completion {
  std::string text;
  std::string finish_reason;  // stop, length, cancelled, tool_calls
  // The tool calls the model made, as a JSON array of {id, type, function:
  // {name, arguments}}; empty when none (remote tiers only).
  PassThroughJson tool_calls;
  // The remote tier's other message fields (reasoning_content, refusal,
  // annotations, ...) as a JSON object, passed through; empty when none.
  PassThroughJson message_other;
  Usage usage;
  std::vector<TokenLogprob> logprobs;  // per generated token when the tier provides them
  std::string model;                   // model that answered, as the tier names it
  std::string model_version;           // weights identity (embedded) or upstream's reported version
  double time_to_first_token_ms = 0.0;
  double total_ms = 0.0;
  // n > 1: the completions after the first, in index order (text,
  // finish_reason, tool_calls, message_other and logprobs are set; usage,
  // model and timings are the first one's, which cover the whole answer).
  std::vector<Completion> more_choices;
};

// Called with each piece of text as it is produced; return false to cancel.
using DeltaSink = std::function<bool(const Delta&)>;

// The kinds of tier: the embedded engine, or an OpenAI-compatible HTTP endpoint.
enum class TierKind { kEmbedded, kOpenAi };

// The name config files, metrics, /v1/models and errors give a kind.
constexpr std::string_view kind_name(TierKind kind) {
  switch (kind) {
    case TierKind::kEmbedded:
      return "embedded";
    case TierKind::kOpenAi:
      return "openai";
  }
  return "unknown";
}

// Pooled connections of an OpenAI-compatible tier unless configured.
inline constexpr int32_t kDefaultRemoteConcurrency = 64;

// What only an embedded tier (a GGUF model run in-process) reads.
struct EmbeddedTierSettings {
  static constexpr TierKind kKind = TierKind::kEmbedded;

  int32_t context_length = 0;  // 0 = model's own
  int64_t kv_memory_mb = 512;  // KV cache budget across slots
  // How the KV cache stores keys and values: f16, or q8_0 (about half of
  // f16's memory; heads must be a multiple of 32 values).
  std::string kv_cache_type = "f16";
  int32_t threads = 0;      // 0 = one per core
  std::string chat_format;  // override of the detected chat format
  // A smaller model (name or path) served instead while device memory
  // pressure is high; empty: keep the configured model, shrink its KV.
  std::string low_memory_model;

  bool operator==(const EmbeddedTierSettings&) const = default;
};

// What only an OpenAI-compatible HTTP tier reads.
struct OpenAiTierSettings {
  static constexpr TierKind kKind = TierKind::kOpenAi;

  std::string endpoint;     // base URL, e.g. https://api.openai.com/v1
  std::string api_key_env;  // environment variable holding the API key; empty: none
  int32_t connect_timeout_ms = 3000;
  int32_t first_byte_timeout_ms = 30000;  // also bounds silence between streamed chunks
  int32_t total_timeout_ms = 120000;
  // The longest a request waits for a pooled connection; then 503 with
  // Retry-After (the upstream is not to blame, so never a 504).
  int32_t pool_wait_timeout_ms = 5000;
  bool verify_tls = true;
  std::string ca_file;  // extra CA bundle for TLS verification

  bool operator==(const OpenAiTierSettings&) const = default;
};

struct TierConfig {
  std::string name;  // tier id used in config, headers and metrics
  Placement placement = Placement::kDevice;
  std::string model;                   // embedded: model name or path; openai: upstream model id
  double price_input_per_mtok = 0.0;   // dollars per million prompt tokens
  double price_output_per_mtok = 0.0;  // dollars per million completion tokens
  int32_t max_concurrency = 4;         // embedded: inference slots; openai: pooled connections
  int32_t max_queue = 64;              // requests allowed to wait for a slot or connection
  // The kind of tier, with what only that kind reads: a key of one kind
  // cannot be set on a tier of the other.
  std::variant<EmbeddedTierSettings, OpenAiTierSettings> settings;

  TierKind kind() const {
    return std::visit([](const auto& s) { return s.kKind; }, settings);
  }
  const EmbeddedTierSettings* embedded() const {
    return std::get_if<EmbeddedTierSettings>(&settings);
  }
  const OpenAiTierSettings* openai() const { return std::get_if<OpenAiTierSettings>(&settings); }

  bool operator==(const TierConfig&) const = default;
};

struct BackendInfo {
  std::string name;
  TierKind kind = TierKind::kEmbedded;
  Placement placement = Placement::kDevice;
  std::string model;
  std::string model_version;
  int32_t context_length = 0;  // 0 when unknown (remote)
};

// What an embedded tier's engine is doing: for /metrics, and for the
// router's prediction of the edge's time to first token under load.
struct EdgeLoad {
  int32_t running = 0;  // requests holding a KV slot (generating or streaming)
  int32_t queued = 0;   // requests waiting for one
  int64_t queued_prompt_tokens = 0;
  int32_t slots = 0;  // KV slots (the most requests that run at once)
  uint64_t admitted = 0;
  uint64_t prefix_hits = 0;  // admitted requests that reused a cached prompt prefix
  uint64_t steps = 0;        // batched forward steps
  double step_ms_total = 0.0;
  double last_step_ms = 0.0;
  int64_t tokens_total = 0;           // prompt and generated tokens run
  double decode_step_ms = 0.0;        // recent decode-only step time (0: none yet)
  int32_t decode_batch = 0;           // sequences in the last decode-only step
  double prefill_ms_per_token = 0.0;  // recent prompt loading cost (0: none yet)
  // The KV cache pool all sequences share (kv_memory_mb), in blocks of
  // kv_block_tokens positions: held by running or cached sequences, and in all.
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int32_t kv_block_tokens = 0;
  uint64_t kv_prefix_evictions = 0;  // idle slots' kept prefixes given back for a request
  uint64_t kv_waits = 0;             // admissions that waited for KV memory
  // Step time histogram: steps that took at most each bound, in ms (cumulative).
  static constexpr std::array<double, 8> kStepBuckets = {5, 10, 25, 50, 100, 250, 500, 1000};
  std::array<uint64_t, kStepBuckets.size()> step_buckets{};
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const BackendInfo& info() const = 0;
  // Generates a completion. When on_delta is set the output is also streamed
  // through it as produced. Errors carry kind, message and upstream status:
  //   kInvalidArgument   the request is unusable (upstream 400/422, bad parameters)
  //   kNotFound          the upstream does not know the model or path (404)
  //   kResourceExhausted prompt exceeds the context, queue full, upstream 429/413
  //   kUnavailable       connection failure, 5xx, rejected API key, stream cut short
  //   kDeadlineExceeded  request deadline or a connect/first-byte/total timeout
  //   kCorrupt           the upstream sent malformed JSON or SSE
  // Cancellation (request.cancelled, or on_delta returning false) is not an
  // error: the completion returns with what was produced and finish_reason
  // "cancelled".
  virtual Result<Completion> generate(const BackendRequest& request, const DeltaSink& on_delta) = 0;
  // Counts prompt tokens as this tier would (embedded only; nullopt for remote tiers).
  virtual std::optional<int32_t> count_prompt_tokens(const BackendRequest&) const {
    return std::nullopt;
  }
  // Device memory pressure changed (0 none, 1 some, 2 high, 3 critical). The
  // embedded tier gives memory back as it rises (fewer cached conversations,
  // a shorter context, then its low_memory_model) and restores itself when it
  // falls; requests already running finish first. Remote tiers ignore it.
  // Returns a one-line account of what changed, empty when nothing did.
  virtual std::string adapt_to_memory_pressure(int /*level*/) { return {}; }
  // Requests running or waiting on this tier now (embedded: holding or
  // waiting for a KV slot); 0 where the tier does not know.
  virtual int32_t queued_requests() const { return 0; }
  // The engine's load (embedded tiers); nullopt for remote tiers.
  virtual std::optional<EdgeLoad> load() const { return std::nullopt; }
  // Requests that gave up waiting for a pooled connection (remote tiers).
  virtual uint64_t pool_wait_timeouts() const { return 0; }
  // Why this tier cannot serve at all (its model failed to load); empty when it can.
  virtual std::string unavailable_reason() const { return {}; }
  // Every body a cloud tier sends passes `guard` first (see egress_guard.h);
  // the gateway installs one on every tier. Device tiers send nothing and
  // ignore it.
  virtual void set_egress_guard(std::shared_ptr<const EgressGuard> /*guard*/) {}
};

// Builds a tier from its configuration (loads the model for embedded tiers).
Result<std::shared_ptr<Backend>> create_backend(const TierConfig& config);

// Stands in for a tier that could not be built (say, its model file is
// missing or corrupt) so that the gateway keeps serving with the others:
// every request fails with kUnavailable and `why`, and the router plans
// around it; a config reload with a fixed model replaces it.
std::shared_ptr<Backend> make_unavailable_backend(const TierConfig& config, const Error& why);

}  // namespace foreshore::backend
