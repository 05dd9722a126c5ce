// SentencePiece-style BPE over scored pieces, as llama.cpp's SPM tokenizer.
#include <algorithm>
#include <cstdio>

#include "engine/tokenizer_internal.h"

namespace foreshore::engine::tokenizer_internal {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁"

// Whether the "▁" at text[at] follows a character other than "▁".
bool starts_word(std::string_view text, size_t at) {
  return at > 0 && (at < kSpace.size() || text.substr(at - kSpace.size(), kSpace.size()) != kSpace);
}

bool has_inner_space(std::string_view text) {
  for (size_t at = text.find(kSpace, 1); at != std::string_view::npos;
       at = text.find(kSpace, at + 1)) {
    if (starts_word(text, at)) return true;
  }
  return false;
}

}  // namespace

struct SpmModel::Symbol {
  TokenId id;  // -1 for a character that is no piece
  int32_t prev;
  int32_t next;
  uint32_t begin;
  uint32_t size;  // 0 once merged into its left neighbour
};

struct SpmModel::Bigram {
  float score;
  int32_t left;
  int32_t right;
  uint32_t size;  // bytes of both sides when queued; differs once either side grew
  TokenId id;
};

struct SpmModel::Scratch {
  std::vector<Symbol> symbols;
  std::vector<Bigram> queue;  // a heap: highest score first, then the leftmost pair
};

SpmModel::SpmModel(const Vocabulary& vocab, const TokenIndex& ids,
                   const std::vector<TokenKind>& kinds)
    : vocab_(vocab), ids_(ids), kinds_(kinds), merges_(0) {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    TokenId id = ids.find(name);
    if (id < 0) {
      // Some vocabularies hold the raw byte instead of a <0xXX> piece.
      const char raw = static_cast<char>(b);
      id = ids.find(std::string_view(&raw, 1));
    }
    byte_tokens_[b] = id < 0 ? vocab.unknown : id;
  }
  for (int c = 0; c < 128; ++c) {
    const char ch = static_cast<char>(c);
    ascii_pieces_[c] = mergeable_token(std::string_view(&ch, 1));
  }
  words_are_independent_ = true;
  std::vector<std::array<TokenId, 3>> splits;  // left, right, merged
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    const std::string_view text = vocab.tokens[i];
    const auto id = static_cast<TokenId>(i);
    if (mergeable_token(text) != id) continue;
    if (has_inner_space(text)) words_are_independent_ = false;
    for (size_t split = utf8_char_length(text, 0); split < text.size();
         split += utf8_char_length(text, split)) {
      const TokenId left = mergeable_token(text.substr(0, split));
      const TokenId right = left < 0 ? -1 : mergeable_token(text.substr(split));
      if (right >= 0) splits.push_back({left, right, id});
    }
  }
  merges_ = MergeTable(splits.size());
  for (const auto& [left, right, id] : splits) merges_.add(left, right, MergeTable::Merge{0, id});
}

TokenId SpmModel::mergeable_token(std::string_view text) const {
  const TokenId id = ids_.find(text);
  if (id < 0) return -1;
  switch (kinds_[id]) {
    case TokenKind::kNormal:
    case TokenKind::kUserDefined:
    case TokenKind::kUndefined:
      return id;
    default:
      return -1;
  }
}

void SpmModel::encode(std::string_view text, std::vector<TokenId>& out) const {
  Scratch scratch;
  if (!words_are_independent_) {
    encode_segment(text, scratch, out);
    return;
  }
  WordCache cache;
  const auto encode_word = [&](std::string_view word) {
    if (word.size() > WordCache::kMaxWordBytes) {
      encode_segment(word, scratch, out);
    } else if (!cache.append(word, out)) {
      const size_t first = out.size();
      encode_segment(word, scratch, out);
      cache.store(word, out.data() + first, out.size() - first);
    }
  };
  size_t start = 0;
  for (size_t at = text.find(kSpace, 1); at != std::string_view::npos;
       at = text.find(kSpace, at + 1)) {
    if (starts_word(text, at)) {
      encode_word(text.substr(start, at - start));
      start = at;
    }
  }
  encode_word(text.substr(start));
}

void SpmModel::encode_segment(std::string_view text, Scratch& scratch,
                              std::vector<TokenId>& out) const {
  if (text.empty()) return;
  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.clear();
  for (size_t offset = 0; offset < text.size();) {
    const size_t len = utf8_char_length(text, offset);
    const auto index = static_cast<int32_t>(symbols.size());
    const auto lead = static_cast<uint8_t>(text[offset]);
    const TokenId id =
        lead < 0x80 ? ascii_pieces_[lead] : mergeable_token(text.substr(offset, len));
    symbols.push_back(Symbol{id, index - 1, offset + len == text.size() ? -1 : index + 1,
                             static_cast<uint32_t>(offset), static_cast<uint32_t>(len)});
    offset += len;
  }

  std::vector<Bigram>& queue = scratch.queue;
  queue.clear();
  const auto lower_priority = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  const auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = symbols[left].size + symbols[right].size;
    TokenId id = -1;
    if (symbols[left].id >= 0 && symbols[right].id >= 0) {
      const MergeTable::Merge* merge = merges_.find(symbols[left].id, symbols[right].id);
      if (merge != nullptr) id = merge->result;
    } else {
      // A character that is no piece may still start or end one.
      id = mergeable_token(text.substr(symbols[left].begin, size));
    }
    if (id < 0) return;
    queue.push_back(Bigram{vocab_.scores[id], left, right, size, id});
    std::push_heap(queue.begin(), queue.end(), lower_priority);
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_pair(i - 1, i);

  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), lower_priority);
    const Bigram bigram = queue.back();
    queue.pop_back();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    if (left.size == 0 || right.size == 0 || left.size + right.size != bigram.size) continue;
    left.id = bigram.id;
    left.size += right.size;
    right.size = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    try_pair(left.prev, bigram.left);
    try_pair(bigram.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    // Every merged symbol is a piece; only single characters can be unknown.
    if (symbols[i].id >= 0) {
      out.push_back(symbols[i].id);
      continue;
    }
    for (char c : text.substr(symbols[i].begin, symbols[i].size)) {
      const TokenId byte = byte_tokens_[static_cast<uint8_t>(c)];
      if (byte >= 0) out.push_back(byte);
    }
  }
}

}  // namespace foreshore::engine::tokenizer_internal
