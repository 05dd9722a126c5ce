#include "engine/chat_template.h"

#include <array>
#include <utility>

namespace foreshore::engine {
namespace {

constexpr std::array<std::pair<ChatFormat, std::string_view>, 5> kNames{{
    {ChatFormat::kChatML, "chatml"},
    {ChatFormat::kLlama3, "llama3"},
    {ChatFormat::kLlama2, "llama2"},
    {ChatFormat::kZephyr, "zephyr"},
    {ChatFormat::kPlain, "plain"},
}};

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

}  // namespace

std::string_view chat_format_name(ChatFormat format) {
  for (const auto& [f, name] : kNames) {
    if (f == format) return name;
  }
  return "plain";
}

std::optional<ChatFormat> parse_chat_format(std::string_view name) {
  for (const auto& [f, n] : kNames) {
    if (n == name) return f;
  }
  return std::nullopt;
}

std::optional<ChatFormat> detect_chat_format(std::string_view t) {
  if (t.empty()) return std::nullopt;
  if (contains(t, "<|im_start|>")) return ChatFormat::kChatML;
  if (contains(t, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (contains(t, "<|user|>") && contains(t, "<|assistant|>")) return ChatFormat::kZephyr;
  if (contains(t, "[INST]")) return ChatFormat::kLlama2;
  return std::nullopt;
}

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  std::string out;
  switch (format) {
    case ChatFormat::kChatML:
      for (const auto& m : messages) {
        out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatFormat::kLlama3:
      for (const auto& m : messages) {
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::kLlama2: {
      // Llama 2 folds the system prompt into the first user turn.
      std::string system;
      bool first_turn = true;
      for (const auto& m : messages) {
        if (m.role == "system") {
          system = m.content;
        } else if (m.role == "user") {
          if (!first_turn) out += "<s>";
          out += "[INST] ";
          if (!system.empty()) {
            out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
            system.clear();
          }
          out += m.content + " [/INST]";
          first_turn = false;
        } else {
          out += " " + m.content + " </s>";
        }
      }
      break;
    }
    case ChatFormat::kZephyr:
      for (const auto& m : messages) out += "<|" + m.role + "|>\n" + m.content + "</s>\n";
      if (add_generation_prompt) out += "<|assistant|>\n";
      break;
    case ChatFormat::kPlain:
      // Base models (TinyStories) continue text; role labels would only confuse them.
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i > 0) out += "\n";
        out += messages[i].content;
      }
      break;
  }
  return out;
}

}  // namespace foreshore::engine
