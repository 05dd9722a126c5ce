// `foreshore run`: generate text with the embedded engine from the terminal.
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <random>
#include <string>

#include "cli/commands.h"
#include "engine/engine.h"

namespace foreshore::cli {
namespace {

struct RunOptions {
  std::string model = "stories260K";
  std::string prompt;
  std::string system;
  std::string chat_format;
  bool chat = false;
  bool raw = false;
  bool show_logprobs = false;
  bool json_object = false;
  int32_t max_tokens = 256;
  int32_t threads = 0;
  int32_t context = 0;
  std::string kv_type = "f16";
  // -1: a random seed (llama.cpp's convention), printed to stderr.
  int64_t seed = static_cast<int64_t>(engine::SamplingParams{}.seed);
  engine::SamplingParams sampling;
};

constexpr int64_t kMaxSeed = 4294967295;  // 2^32 - 1, as llama.cpp's seeds

// --seed takes -1 or 0..2^32-1; CLI11 would wrap -1 and saturate 2^64 into
// the same fixed seed.
const CLI::Validator kSeed(
    [](std::string& value) -> std::string {
      int64_t v = 0;
      const char* end = value.data() + value.size();
      const auto [rest, ec] = std::from_chars(value.data(), end, v);
      if (ec != std::errc() || rest != end || v < -1 || v > kMaxSeed) {
        return "'" + value + "' is not -1 (a random seed) or a whole number from 0 to " +
               std::to_string(kMaxSeed);
      }
      return "";
    },
    "-1 or 0-" + std::to_string(kMaxSeed), "SEED");

void print_speed(const engine::GenerationResult& r) {
  const int32_t evaluated = r.prompt_tokens - r.reused_prompt_tokens;
  std::fprintf(stderr,
               "\n[prompt: %d tokens (%d reused) in %.1f ms, %.1f tok/s | generation: %d tokens "
               "in %.1f ms, %.1f tok/s | finish: %s]\n",
               r.prompt_tokens, r.reused_prompt_tokens, r.prompt_seconds * 1e3,
               r.prompt_seconds > 0 ? evaluated / r.prompt_seconds : 0.0, r.generated_tokens,
               r.generation_seconds * 1e3,
               r.generation_seconds > 0 ? r.generated_tokens / r.generation_seconds : 0.0,
               std::string(engine::finish_reason_name(r.finish_reason)).c_str());
}

int run(const RunOptions& o) {
  auto path = engine::resolve_model_path(o.model);
  if (!path.ok()) return fail(path.error());
  auto model = engine::Model::load(*path);
  if (!model.ok()) return fail(model.error());
  const auto& cfg = (*model)->config();
  engine::ContextOptions copts;
  copts.context_length = o.context;
  const auto kv = engine::parse_tensor_type(o.kv_type);
  if (!kv || (*kv != engine::TensorType::kF16 && *kv != engine::TensorType::kF32 &&
              *kv != engine::TensorType::kQ8_0)) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "--kv-type " + o.kv_type + ": use f16 (the default), q8_0 or f32"));
  }
  copts.kv_type = *kv;
  // The context asked for gets the KV memory it needs.
  copts.kv_memory_budget =
      std::max(copts.kv_memory_budget,
               (*model)->kv_bytes_per_token(copts.kv_type) * static_cast<uint64_t>(o.context));
  if (o.context > cfg.context_length) {
    std::fprintf(stderr,
                 "warning: -c %d exceeds the %d tokens model %s was trained on; running with %d "
                 "as asked, but output may degrade past %d tokens\n",
                 o.context, cfg.context_length, cfg.name.c_str(), o.context, cfg.context_length);
  }
  auto ctx = engine::InferenceContext::create(*model, copts);
  if (!ctx.ok()) return fail(ctx.error());
  engine::ThreadPool pool(o.threads);
  const engine::Tokenizer& tok = (*model)->tokenizer();
  std::fprintf(stderr, "[model %s (%s, %d layers, %d ctx, %d threads)]\n", cfg.name.c_str(),
               cfg.architecture.c_str(), cfg.layer_count, (*ctx)->context_length(), pool.size());

  engine::ChatFormat format = engine::ChatFormat::kPlain;
  if (!o.chat_format.empty()) {
    auto f = engine::parse_chat_format(o.chat_format);
    if (!f) {
      return fail(make_error(ErrorKind::kInvalidArgument, "--chat-format '" + o.chat_format +
                                                              "' is unknown; use one of " +
                                                              engine::chat_format_names()));
    }
    format = *f;
  } else if (auto t = (*model)->file().get_string("tokenizer.chat_template")) {
    format = engine::detect_chat_format(*t).value_or(engine::ChatFormat::kPlain);
  }

  auto stream = [&](std::string_view text, const engine::SampledToken& t) {
    if (o.show_logprobs) {
      std::printf("%.*s[%.2f]", static_cast<int>(text.size()), text.data(), t.logprob);
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
    }
    std::fflush(stdout);
    return true;
  };

  engine::GenerationRequest req;
  req.sampling = o.sampling;
  if (o.seed == -1) {
    req.sampling.seed = std::random_device{}();
    std::fprintf(stderr, "[seed %llu]\n", static_cast<unsigned long long>(req.sampling.seed));
  } else {
    req.sampling.seed = static_cast<uint64_t>(o.seed);
  }
  req.max_tokens = o.max_tokens;
  req.json_object = o.json_object;
  if (!o.chat) {
    const std::string text =
        o.raw ? o.prompt : engine::render_chat(format, {{"user", o.prompt}}, true);
    req.prompt = tok.encode(text, true, !o.raw);
    const bool echoed = format == engine::ChatFormat::kPlain && !o.prompt.empty();
    if (echoed) std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    auto r = engine::generate(**ctx, pool, req, stream);
    if (!r.ok()) {
      // The echoed prompt's line ends, so the error starts a line of its own.
      if (echoed) {
        std::fputc('\n', stdout);
        std::fflush(stdout);
      }
      return fail(r.error());
    }
    print_speed(*r);
    return 0;
  }

  std::vector<engine::ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  std::string line;
  std::fprintf(stderr, "[chat format %s; type a message, an empty line or Ctrl-D ends]\n",
               std::string(engine::chat_format_name(format)).c_str());
  // A conversation that outgrows the context loses its oldest exchanges (the
  // system message stays), as Ollama truncates old turns, rather than ending
  // the session: the prompt must leave room for a reply of -n tokens, or of
  // a quarter of the context when -n is larger or unlimited.
  const int32_t n_ctx = (*ctx)->context_length();
  const int32_t reply_room =
      std::max(1, o.max_tokens > 0 ? std::min(o.max_tokens, n_ctx / 4) : n_ctx / 4);
  const size_t first_turn = o.system.empty() ? 0 : 1;
  while (true) {
    std::fputs("> ", stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    history.push_back({"user", line});
    req.prompt = tok.encode(engine::render_chat(format, history, true), true, true);
    size_t dropped = 0;
    while (static_cast<int64_t>(req.prompt.size()) + reply_room > n_ctx &&
           history.size() > first_turn + 1) {
      // The oldest user message and the reply to it.
      const size_t n = history[first_turn + 1].role == "assistant" ? 2 : 1;
      history.erase(history.begin() + static_cast<std::ptrdiff_t>(first_turn),
                    history.begin() + static_cast<std::ptrdiff_t>(first_turn + n));
      dropped += n;
      req.prompt = tok.encode(engine::render_chat(format, history, true), true, true);
    }
    if (dropped > 0) {
      std::fprintf(stderr,
                   "[the conversation outgrew the context of %d tokens: the oldest %zu "
                   "message%s were dropped, %zu kept; raise -c to keep more]\n",
                   n_ctx, dropped, dropped == 1 ? "" : "s", history.size());
    }
    if (static_cast<int64_t>(req.prompt.size()) >= n_ctx) {
      std::fprintf(stderr,
                   "error: this message makes a prompt of %zu tokens, more than the context of "
                   "%d holds even alone; it was dropped, the session goes on (send a shorter "
                   "one, or raise -c)\n",
                   req.prompt.size(), n_ctx);
      history.pop_back();
      continue;
    }
    auto r = engine::generate(**ctx, pool, req, stream);
    if (!r.ok()) return fail(r.error());
    print_speed(*r);
    history.push_back({"assistant", r->text});
  }
  return 0;
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text with the embedded edge engine");
  cmd->add_option("-m,--model", opts->model, "GGUF file, or model name on FORESHORE_MODEL_PATH")
      ->capture_default_str();
  CLI::Option* prompt_opt = cmd->add_option(
      "-p,--prompt", opts->prompt, "Prompt text (default: read stdin when it is not a terminal)");
  CLI::Option* chat_opt = cmd->add_flag("--chat", opts->chat, "Interactive conversation on stdin");
  // A prompt given with --chat would be ignored: the conversation is read
  // from stdin (--system sets its system message).
  prompt_opt->excludes(chat_opt);
  cmd->add_option("--system", opts->system, "System message for --chat");
  cmd->add_option("--chat-format", opts->chat_format,
                  "chatml, llama3, llama2, zephyr, plain, qwen3, gemma, phi3 or smollm3 (default: "
                  "detected from the model)");
  cmd->add_flag("--raw", opts->raw, "Feed the prompt as is: no chat template, no special tokens");
  cmd->add_flag("--json-object", opts->json_object,
                "JSON mode: keep the output to one JSON object and stop when it closes (as the "
                "API's response_format json_object)");
  cmd->add_option("-n,--max-tokens", opts->max_tokens, "Tokens to generate (<= 0: until done)")
      ->capture_default_str();
  // The API's ranges (docs/API.md), so that a value the gateway refuses is
  // refused here too rather than run as something else.
  cmd->add_option("--temp", opts->sampling.temperature, "Temperature; 0 is greedy")
      ->check(number_range(0.0, 2.0))
      ->capture_default_str();
  cmd->add_option("--top-k", opts->sampling.top_k, "Top-k (0: off)")
      ->check(kNonNegative)
      ->capture_default_str();
  cmd->add_option("--top-p", opts->sampling.top_p, "Top-p (1: off)")
      ->check(number_range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--min-p", opts->sampling.min_p, "Min-p (0: off)")
      ->check(number_range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--presence-penalty", opts->sampling.presence_penalty,
                  "Subtracted from the logit of every token already generated (0: off)")
      ->check(number_range(-2.0, 2.0));
  cmd->add_option("--frequency-penalty", opts->sampling.frequency_penalty,
                  "Subtracted per time a token was generated (0: off)")
      ->check(number_range(-2.0, 2.0));
  cmd->add_option("--repeat-penalty", opts->sampling.repeat_penalty, "Repetition penalty (1: off)")
      ->check(number_range(0.01, 10.0))
      ->capture_default_str();
  cmd->add_option("--seed", opts->seed, "Random seed, 0 to 4294967295; -1 draws one (printed)")
      ->check(kSeed)
      ->capture_default_str();
  cmd->add_option("-t,--threads", opts->threads, "Threads (0: one per core)")
      ->check(kThreadCount)
      ->capture_default_str();
  cmd->add_option("--kv-type", opts->kv_type,
                  "How the KV cache stores keys and values: f16, q8_0 (about half of f16's "
                  "memory) or f32")
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size", opts->context, "Context length (0: the model's)")
      ->check(kNonNegative)
      ->capture_default_str();
  cmd->add_flag("--show-logprobs", opts->show_logprobs, "Print each token's log-probability");
  cmd->footer(
      "Examples:\n"
      "  foreshore run -p \"Once upon a time\" --temp 0\n"
      "  echo \"Once upon a time\" | foreshore run -n 32\n"
      "  foreshore run -m ./models/SmolLM2-135M-Instruct-Q8_0.gguf --chat\n"
      "Speed (prompt and generation tokens/s) is printed to stderr at the end.");
  on_run(cmd, [opts, prompt_opt] {
    if (!opts->chat && prompt_opt->count() > 0 && opts->prompt.empty()) {
      throw CLI::ValidationError("--prompt", "-p is empty: give the prompt's text, or use --chat");
    }
    if (!opts->chat && prompt_opt->count() == 0) {
      if (::isatty(STDIN_FILENO) == 1) {
        throw CLI::ValidationError("--prompt",
                                   "give a prompt with -p TEXT or on stdin, or use --chat");
      }
      opts->prompt.assign(std::istreambuf_iterator<char>(std::cin), {});
      if (opts->prompt.empty()) {
        throw CLI::ValidationError("--prompt",
                                   "stdin was empty: give a prompt with -p TEXT or on stdin");
      }
    }
    return run(*opts);
  });
}

}  // namespace foreshore::cli
