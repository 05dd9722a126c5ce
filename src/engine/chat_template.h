// Chat prompt formats. The GGUF's tokenizer.chat_template (Jinja) is matched
// against the known formats by its distinctive markers rather than executed.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace foreshore::engine {

enum class ChatFormat { kChatML, kLlama3, kLlama2, kZephyr, kPlain };

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

std::string_view chat_format_name(ChatFormat format);
std::optional<ChatFormat> parse_chat_format(std::string_view name);
// The format a Jinja template implements, or nullopt when none is recognised.
std::optional<ChatFormat> detect_chat_format(std::string_view jinja_template);

// Renders the conversation; with add_generation_prompt the text ends where the
// assistant's reply begins. BOS is not included (the tokenizer adds it).
std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true);

}  // namespace foreshore::engine
