#include "engine/chat_template.h"

#include <algorithm>
#include <array>
#include <utility>

namespace foreshore::engine {
namespace {

constexpr std::array<std::pair<ChatFormat, std::string_view>, 9> kNames{{
    {ChatFormat::kChatML, "chatml"},
    {ChatFormat::kLlama3, "llama3"},
    {ChatFormat::kLlama2, "llama2"},
    {ChatFormat::kZephyr, "zephyr"},
    {ChatFormat::kPlain, "plain"},
    {ChatFormat::kQwen3, "qwen3"},
    {ChatFormat::kGemma, "gemma"},
    {ChatFormat::kPhi3, "phi3"},
    {ChatFormat::kSmolLM3, "smollm3"},
}};

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// An assistant turn as the thinking templates keep it in the history: what
// follows its </think>, without the newlines that separate the two.
std::string without_reasoning(const std::string& content) {
  const size_t end = content.rfind("</think>");
  if (end == std::string::npos) return content;
  const size_t start = content.find_first_not_of('\n', end + 8);
  return start == std::string::npos ? std::string() : content.substr(start);
}

// Gemma's template trims each message's surrounding whitespace.
std::string trimmed(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\n\r");
  if (begin == std::string::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t\n\r") - begin + 1);
}

}  // namespace

std::string chat_format_names() {
  std::string out;
  for (const auto& [f, name] : kNames) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

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
  if (contains(t, "<|im_start|>")) {
    // SmolLM3's template writes a "Reasoning Mode" line in its system block;
    // Qwen3's handles <think> blocks; older ChatML models have neither.
    if (contains(t, "Reasoning Mode")) return ChatFormat::kSmolLM3;
    if (contains(t, "<think>")) return ChatFormat::kQwen3;
    return ChatFormat::kChatML;
  }
  if (contains(t, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (contains(t, "<start_of_turn>")) return ChatFormat::kGemma;
  // Phi ends turns with <|end|>, Zephyr with </s>.
  if (contains(t, "<|assistant|>") && contains(t, "<|end|>")) return ChatFormat::kPhi3;
  if (contains(t, "<|user|>") && contains(t, "<|assistant|>")) return ChatFormat::kZephyr;
  if (contains(t, "[INST]")) return ChatFormat::kLlama2;
  return std::nullopt;
}

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, bool enable_thinking) {
  std::string out;
  switch (format) {
    case ChatFormat::kChatML:
      for (const auto& m : messages) {
        out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatFormat::kQwen3:
    case ChatFormat::kSmolLM3:
      for (const auto& m : messages) {
        const std::string content =
            m.role == "assistant" ? without_reasoning(m.content) : m.content;
        out += "<|im_start|>" + m.role + "\n" + content + "<|im_end|>\n";
      }
      if (add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        // Qwen3 closes the empty block with a blank line, SmolLM3 with one newline.
        if (!enable_thinking) {
          out += format == ChatFormat::kQwen3 ? "<think>\n\n</think>\n\n" : "<think>\n\n</think>\n";
        }
      }
      break;
    case ChatFormat::kGemma: {
      // Gemma has no system role: the system prompt opens the first user turn
      // (as Gemma's template and llama.cpp do), and the assistant is "model".
      std::string system;
      for (const auto& m : messages) {
        if (m.role == "system") {
          system += trimmed(m.content);
          continue;
        }
        const std::string role = m.role == "assistant" ? "model" : m.role;
        out += "<start_of_turn>" + role + "\n";
        if (!system.empty() && role != "model") {
          out += system + "\n\n";
          system.clear();
        }
        out += trimmed(m.content) + "<end_of_turn>\n";
      }
      if (add_generation_prompt) out += "<start_of_turn>model\n";
      break;
    }
    case ChatFormat::kPhi3:
      for (const auto& m : messages) out += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
      if (add_generation_prompt) out += "<|assistant|>\n";
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

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

// The length of the longest end of `text` that begins `tag` (and is shorter).
size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n) {
    if (tag.starts_with(text.substr(text.size() - n))) return n;
  }
  return 0;
}

}  // namespace

void ReasoningStream::emit_reasoning(std::string_view text, ReasoningSplit& out) {
  for (char c : text) {
    if (is_space(c)) {
      if (reasoning_started_) pending_space_ += c;
      continue;
    }
    out.reasoning += pending_space_;
    pending_space_.clear();
    out.reasoning += c;
    reasoning_started_ = true;
  }
}

ReasoningSplit ReasoningStream::push(std::string_view piece) {
  ReasoningSplit out;
  held_ += piece;
  bool progress = true;
  while (progress) {
    progress = false;
    switch (state_) {
      case State::kStart: {
        const size_t first = held_.find_first_not_of(" \n\t\r");
        if (first == std::string::npos) return out;  // only whitespace so far
        const std::string_view rest = std::string_view(held_).substr(first);
        if (rest.starts_with(kThinkOpen)) {
          held_.erase(0, first + kThinkOpen.size());
          state_ = State::kReasoning;
          progress = true;
        } else if (rest.size() < kThinkOpen.size() && kThinkOpen.starts_with(rest)) {
          return out;  // may still become <think>
        } else {
          state_ = State::kContent;
          progress = true;
        }
        break;
      }
      case State::kReasoning: {
        const size_t close = held_.find(kThinkClose);
        if (close != std::string::npos) {
          emit_reasoning(std::string_view(held_).substr(0, close), out);
          pending_space_.clear();  // the reasoning ends here: its trailing whitespace goes
          held_.erase(0, close + kThinkClose.size());
          state_ = State::kAfterReasoning;
          progress = true;
        } else {
          const size_t keep = partial_tag_suffix(held_, kThinkClose);
          emit_reasoning(std::string_view(held_).substr(0, held_.size() - keep), out);
          held_.erase(0, held_.size() - keep);
        }
        break;
      }
      case State::kAfterReasoning: {
        const size_t first = held_.find_first_not_of(" \n\t\r");
        if (first == std::string::npos) {
          held_.clear();
        } else {
          held_.erase(0, first);
          state_ = State::kContent;
          progress = true;
        }
        break;
      }
      case State::kContent:
        out.content += held_;
        held_.clear();
        break;
    }
  }
  return out;
}

ReasoningSplit ReasoningStream::finish() {
  ReasoningSplit out;
  if (state_ == State::kStart) {
    out.content = std::move(held_);  // a reply that is only whitespace or "<thi"
  } else if (state_ == State::kReasoning) {
    emit_reasoning(held_, out);
  }
  held_.clear();
  pending_space_.clear();
  return out;
}

ReasoningSplit split_reasoning(std::string_view reply) {
  ReasoningStream stream;
  ReasoningSplit out = stream.push(reply);
  ReasoningSplit rest = stream.finish();
  out.reasoning += rest.reasoning;
  out.content += rest.content;
  return out;
}

size_t first_answer_piece(std::span<const std::string> pieces) {
  std::string text;
  bool opened = false;
  size_t i = 0;
  for (; i < pieces.size(); ++i) {
    text += pieces[i];
    if (!opened) {
      const size_t start = text.find_first_not_of(" \n\t\r");
      if (start == std::string::npos) continue;
      const std::string_view head = std::string_view(text).substr(start);
      if (head.starts_with(kThinkOpen)) {
        opened = true;
      } else if (kThinkOpen.starts_with(head)) {
        continue;
      } else {
        return 0;
      }
    }
    if (text.find(kThinkClose) != std::string::npos) break;
  }
  if (i == pieces.size()) return opened ? pieces.size() : 0;
  for (++i; i < pieces.size(); ++i) {
    if (pieces[i].find_first_not_of(" \n\t\r") != std::string::npos) break;
  }
  return i;
}

}  // namespace foreshore::engine
