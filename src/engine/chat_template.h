// Chat prompt formats. The GGUF's tokenizer.chat_template (Jinja) is matched
// against the known formats by its distinctive markers rather than executed.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace foreshore::engine {

// kQwen3 and kSmolLM3 are ChatML with <think> reasoning blocks; kGemma is
// <start_of_turn>; kPhi3 is <|user|> ... <|end|> (Phi-3/3.5 and Phi-4-mini,
// rendered as llama.cpp renders both).
enum class ChatFormat {
  kChatML,
  kLlama3,
  kLlama2,
  kZephyr,
  kPlain,
  kQwen3,
  kGemma,
  kPhi3,
  kSmolLM3
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

std::string_view chat_format_name(ChatFormat format);
std::optional<ChatFormat> parse_chat_format(std::string_view name);
// The names parse_chat_format accepts, comma-separated, for error messages.
std::string chat_format_names();
// The format a Jinja template implements, or nullopt when none is recognised.
std::optional<ChatFormat> detect_chat_format(std::string_view jinja_template);

// Renders the conversation; with add_generation_prompt the text ends where the
// assistant's reply begins. BOS is not included (the tokenizer adds it).
// enable_thinking false (Qwen3's and SmolLM3's enable_thinking=False) opens
// the reply with an empty <think></think> block, so the model answers
// directly, as their templates do; other formats ignore it. The soft switches
// /think and /no_think in a message are left for the model to follow, as Qwen
// documents. Earlier assistant turns of these formats lose their <think>
// blocks, as the templates drop them.
std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true, bool enable_thinking = true);

// A reply split into its reasoning (the text between a leading <think> and
// its </think>, as Qwen3, SmolLM3 and DeepSeek-R1 write it) and its answer,
// for an API's reasoning_content and content, as llama-server's reasoning
// format does. Both parts lose the whitespace around them; a reply that does
// not open with <think> is all answer, exactly as written.
struct ReasoningSplit {
  std::string reasoning;
  std::string content;
};

// The same split, streamed: push() takes the reply piece by piece as it is
// generated and returns what is new in each part, holding back only what
// could still be a tag or the whitespace that ends a part; finish() returns
// what was held. The concatenated deltas equal split_reasoning() of the whole.
// A reply cut off inside <think> is all reasoning.
class ReasoningStream {
 public:
  ReasoningSplit push(std::string_view piece);
  ReasoningSplit finish();

 private:
  enum class State { kStart, kReasoning, kAfterReasoning, kContent };
  void emit_reasoning(std::string_view text, ReasoningSplit& out);
  State state_ = State::kStart;
  std::string held_;           // undecided text: a possible tag
  std::string pending_space_;  // whitespace inside the reasoning, kept until text follows
  bool reasoning_started_ = false;
};

ReasoningSplit split_reasoning(std::string_view reply);

// For a reply given as the texts of its tokens, the index of the first one of
// its answer: past the piece that completes </think> and the whitespace after
// it; 0 when the reply does not open with <think>; all of them when the block
// never closes. What the answer's logprobs start at.
size_t first_answer_piece(std::span<const std::string> pieces);

}  // namespace foreshore::engine
