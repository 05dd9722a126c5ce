// Tokenizer: special-token splitting, dispatch to the SentencePiece or
// byte-level BPE model, and decoding.
#include "engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>

#include "engine/tokenizer_internal.h"

namespace foreshore::engine {
namespace {

using tokenizer_internal::BpeModel;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::SpmModel;
using tokenizer_internal::TokenIndex;

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // "▁"

// Texts llama.cpp treats as end of generation whatever the metadata says:
// chat models often end turns with a token other than their eos.
constexpr std::array<std::string_view, 12> kEndOfGenerationTexts = {
    "<|eot_id|>",    "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",        "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>",   "_<EOT>",     "<|end_of_text|>", "<end_of_utterance>",
};

// Byte-wise trie of the texts of control, unknown and user-defined tokens,
// for leftmost-longest matching in the input.
class SpecialMatcher {
 public:
  void add(std::string_view text, TokenId id, bool always) {
    if (text.empty()) return;
    first_bytes_[static_cast<uint8_t>(text[0])] = true;
    int32_t node = 0;
    for (char c : text) {
      const uint64_t key = edge_key(node, c);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, static_cast<int32_t>(nodes_.size())).first;
        nodes_.emplace_back();
      }
      node = it->second;
    }
    nodes_[node] = Node{id, always};
  }

  // Longest matchable token starting at text[pos], as {id, length}; {-1, 0} when none.
  std::pair<TokenId, size_t> match(std::string_view text, size_t pos, bool parse_special) const {
    if (!first_bytes_[static_cast<uint8_t>(text[pos])]) return {-1, 0};
    std::pair<TokenId, size_t> best{-1, 0};
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto it = edges_.find(edge_key(node, text[i]));
      if (it == edges_.end()) break;
      node = it->second;
      const Node& n = nodes_[node];
      if (n.id >= 0 && (parse_special || n.always)) best = {n.id, i + 1 - pos};
    }
    return best;
  }

 private:
  struct Node {
    TokenId id = -1;
    bool always = false;  // matched even when the caller does not parse special tokens
  };
  static uint64_t edge_key(int32_t node, char c) {
    return (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
  }

  std::vector<Node> nodes_{1};
  std::unordered_map<uint64_t, int32_t> edges_;
  std::array<bool, 256> first_bytes_{};
};

bool is_byte_piece_text(std::string_view text) {
  const auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
  };
  return text.size() == 6 && text.substr(0, 3) == "<0x" && hex(text[3]) && hex(text[4]) &&
         text[5] == '>';
}

std::string spm_piece(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text.substr(i, kSpmSpace.size()) == kSpmSpace) {
      out += ' ';
      i += kSpmSpace.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

Error invalid(const std::string& message) {
  return make_error(ErrorKind::kInvalidArgument, "tokenizer vocabulary: " + message);
}

}  // namespace

namespace tokenizer_internal {

// Vocabularies such as DeepSeek's repeat byte symbols as user-defined tokens;
// byte-level BPE needs the originals, hence first wins.
TokenIndex::TokenIndex(const std::vector<std::string>& tokens) : tokens_(&tokens) {
  size_t capacity = 16;
  while (capacity < tokens.size() * 2) capacity *= 2;
  slots_.resize(capacity);
  mask_ = capacity - 1;
  for (size_t id = 0; id < tokens.size(); ++id) {
    const uint64_t h = hash(tokens[id]);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id < 0) {
        slot = Slot{static_cast<uint32_t>(h >> 32), static_cast<TokenId>(id)};
        break;
      }
      if (tokens[slot.id] == tokens[id]) break;
    }
  }
}

MergeTable::MergeTable(size_t expected) {
  size_t capacity = 16;
  while (capacity < expected * 2) capacity *= 2;
  slots_.assign(capacity, Slot{kEmpty, Merge{}});
  mask_ = capacity - 1;
}

void MergeTable::add(int32_t left, int32_t right, Merge merge) {
  const uint64_t key = pair_key(left, right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& slot = slots_[i];
    if (slot.key == kEmpty) {
      slot = Slot{key, merge};
      return;
    }
    if (slot.key == key) return;
  }
}

}  // namespace tokenizer_internal

struct Tokenizer::Impl {
  Vocabulary vocab;
  bool spm = false;
  // Vocabulary kinds, filled in where absent and adjusted as llama.cpp does
  // (end-of-generation texts become control tokens, <0xXX> pieces are bytes).
  std::vector<TokenKind> kinds;
  std::optional<TokenIndex> ids;
  // What each token renders as; control and unknown tokens hold their text,
  // shown only on request.
  std::vector<std::string> pieces;
  std::vector<bool> end_of_generation;
  SpecialMatcher specials;
  std::optional<SpmModel> spm_model;
  std::unique_ptr<BpeModel> bpe_model;
  PreTokenizer pre;

  void encode_text(std::string_view raw, bool after_special, std::string& scratch,
                   std::vector<std::string_view>& words, std::vector<TokenId>& out) const {
    if (spm) {
      scratch.clear();
      // SentencePiece's dummy prefix: a word at the start reads like one after a space.
      if (vocab.add_space_prefix && after_special) scratch += kSpmSpace;
      for (char c : raw) {
        if (c == ' ') {
          scratch += kSpmSpace;
        } else {
          scratch += c;
        }
      }
      spm_model->encode(scratch, out);
      return;
    }
    words.clear();
    pre.split(raw, words);
    bpe_model->encode(words, out);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

Result<std::shared_ptr<const Tokenizer>> Tokenizer::create(Vocabulary vocab) {
  auto impl = std::make_unique<Impl>();
  const size_t n = vocab.tokens.size();
  if (vocab.model == "llama") {
    impl->spm = true;
  } else if (vocab.model != "gpt2") {
    return make_error(ErrorKind::kUnsupported,
                      "tokenizer model '" + vocab.model +
                          "' is not supported (only 'llama' SentencePiece and 'gpt2' byte-level "
                          "BPE; e.g. 'bert' WordPiece is not)");
  }
  if (n == 0) return invalid("no tokens");
  if (n > static_cast<size_t>(std::numeric_limits<TokenId>::max())) {
    return invalid("more tokens than token ids can number");
  }
  if (impl->spm ? vocab.scores.size() != n : !vocab.scores.empty() && vocab.scores.size() != n) {
    return invalid(std::to_string(vocab.scores.size()) + " scores for " + std::to_string(n) +
                   " tokens");
  }
  if (!vocab.kinds.empty() && vocab.kinds.size() != n) {
    return invalid(std::to_string(vocab.kinds.size()) + " token kinds for " + std::to_string(n) +
                   " tokens");
  }
  for (auto [name, id] :
       {std::pair{"bos", vocab.bos}, std::pair{"eos", vocab.eos}, std::pair{"eot", vocab.eot},
        std::pair{"unknown", vocab.unknown}, std::pair{"padding", vocab.padding}}) {
    if (id < -1 || id >= static_cast<TokenId>(n)) {
      return invalid(std::string(name) + " id " + std::to_string(id) + " is outside the " +
                     std::to_string(n) + " tokens");
    }
  }
  if (!impl->spm && tokenizer_internal::is_llama3_pre(vocab.pre)) vocab.ignore_merges = true;
  impl->vocab = std::move(vocab);
  Impl& m = *impl;
  const Vocabulary& v = m.vocab;

  m.kinds = v.kinds.empty() ? std::vector<TokenKind>(n, TokenKind::kNormal) : v.kinds;
  m.ids.emplace(v.tokens);

  m.end_of_generation.assign(n, false);
  for (TokenId id : {v.eos, v.eot}) {
    if (id >= 0) m.end_of_generation[id] = true;
  }
  for (std::string_view text : kEndOfGenerationTexts) {
    const TokenId id = m.ids->find(text);
    if (id < 0) continue;
    m.end_of_generation[id] = true;
    m.kinds[id] = TokenKind::kControl;
  }

  m.pieces.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = v.tokens[i];
    TokenKind& kind = m.kinds[i];
    if (m.spm && (kind == TokenKind::kNormal || kind == TokenKind::kUndefined) &&
        is_byte_piece_text(text)) {
      kind = TokenKind::kByte;
    }
    switch (kind) {
      case TokenKind::kControl:
      case TokenKind::kUnknown:
        m.specials.add(text, static_cast<TokenId>(i), false);
        m.pieces[i] = text;
        break;
      case TokenKind::kUserDefined:
        // Added tokens are split off before the model sees the text, as
        // Hugging Face tokenizers do with added (non-special) tokens.
        m.specials.add(text, static_cast<TokenId>(i), true);
        m.pieces[i] = text;
        break;
      case TokenKind::kUnused:
        break;
      case TokenKind::kByte:
        if (m.spm && is_byte_piece_text(text)) {
          m.pieces[i] =
              std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
        } else {
          m.pieces[i] = m.spm ? text : tokenizer_internal::byte_level_decode(text);
        }
        break;
      case TokenKind::kNormal:
      case TokenKind::kUndefined:
        m.pieces[i] = m.spm ? spm_piece(text) : tokenizer_internal::byte_level_decode(text);
        break;
    }
  }

  if (m.spm) {
    m.spm_model.emplace(v, *m.ids, m.kinds);
  } else {
    FSH_ASSIGN_OR_RETURN(m.pre, PreTokenizer::create(v.pre));
    FSH_ASSIGN_OR_RETURN(m.bpe_model, BpeModel::create(v, *m.ids, m.kinds));
  }
  return std::shared_ptr<const Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && m.vocab.add_bos && m.vocab.bos >= 0) out.push_back(m.vocab.bos);

  std::string scratch;
  std::vector<std::string_view> words;
  bool after_special = true;
  size_t start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto [id, length] = m.specials.match(text, pos, parse_special);
    if (id < 0) {
      ++pos;
      continue;
    }
    if (pos > start) {
      m.encode_text(text.substr(start, pos - start), after_special, scratch, words, out);
    }
    out.push_back(id);
    after_special = true;
    pos += length;
    start = pos;
  }
  if (start < text.size()) m.encode_text(text.substr(start), after_special, scratch, words, out);

  if (add_special && m.vocab.add_eos && m.vocab.eos >= 0) out.push_back(m.vocab.eos);
  return out;
}

std::string_view Tokenizer::token_to_piece(TokenId id, bool render_special) const {
  const Impl& m = *impl_;
  if (id < 0 || id >= vocab_size()) return {};
  const TokenKind kind = m.kinds[id];
  if (!render_special && (kind == TokenKind::kControl || kind == TokenKind::kUnknown)) return {};
  return m.pieces[id];
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool render_special) const {
  const Impl& m = *impl_;
  std::string out;
  // Undo SentencePiece's dummy prefix: the first text starts without its space.
  bool strip_space = m.spm && m.vocab.add_space_prefix;
  for (TokenId id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const TokenKind kind = m.kinds[id];
    if (!render_special && (kind == TokenKind::kControl || kind == TokenKind::kUnknown)) continue;
    std::string_view piece = m.pieces[id];
    if (piece.empty()) continue;
    if (strip_space && piece.front() == ' ') piece.remove_prefix(1);
    strip_space = false;
    out += piece;
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->vocab.tokens.size());
}
TokenId Tokenizer::bos() const {
  return impl_->vocab.bos;
}
TokenId Tokenizer::eos() const {
  return impl_->vocab.eos;
}

bool Tokenizer::is_end_of_generation(TokenId id) const {
  return id >= 0 && id < vocab_size() && impl_->end_of_generation[id];
}

TokenId Tokenizer::find_token(std::string_view text) const {
  return impl_->ids->find(text);
}

const Vocabulary& Tokenizer::vocabulary() const {
  return impl_->vocab;
}

}  // namespace foreshore::engine
