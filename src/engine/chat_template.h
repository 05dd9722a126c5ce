// Chat prompt formats. The GGUF's tokenizer.chat_template (Jinja) is matched
// against the known formats by its distinctive markers rather than executed.
#pragma once

#include <optional>
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

}  // namespace foreshore::engine
