// Parts shared by the tokenizer sources; not a public interface.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "engine/tokenizer.h"

namespace foreshore::engine::tokenizer_internal {

// Token texts to ids, in an open-addressing table: encoding looks up many
// candidate texts, most of them absent, and node-based maps spend that time
// on cache misses.
class TokenIndex {
 public:
  // The first of duplicate texts wins.
  explicit TokenIndex(const std::vector<std::string>& tokens);

  TokenId find(std::string_view text) const {
    const uint64_t h = hash(text);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && (*tokens_)[slot.id] == text) return slot.id;
    }
  }

 private:
  struct Slot {
    uint32_t tag = 0;
    TokenId id = -1;
  };
  // Eight bytes per step with a multiply-xorshift mix (splitmix64 constants).
  static uint64_t hash(std::string_view text) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ text.size();
    size_t i = 0;
    for (; i + 8 <= text.size(); i += 8) {
      uint64_t word;
      std::memcpy(&word, text.data() + i, 8);
      h = (h ^ word) * 0xbf58476d1ce4e5b9ull;
      h ^= h >> 31;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, text.data() + i, text.size() - i);
    h = (h ^ tail) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 32);
  }

  const std::vector<std::string>* tokens_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Merges by the ids of their two sides, in open addressing for the same
// reason as TokenIndex.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;    // BPE merge rank; unused by SentencePiece
    int32_t result;  // symbol (token) id of the merged pair
  };

  explicit MergeTable(size_t expected);
  // A pair added twice keeps its first merge.
  void add(int32_t left, int32_t right, Merge merge);

  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pair_key(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot.merge;
      if (slot.key == kEmpty) return nullptr;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are never both -1
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // splitmix64's finalizer: both halves of the pair reach every bit of the slot.
  size_t slot_of(uint64_t key) const {
    uint64_t h = key;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    return static_cast<size_t>(h ^ (h >> 31)) & mask_;
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Token ids of the words already encoded in one call: prompts repeat words,
// and a lookup is cheaper than merging again. Keys view the caller's text.
class WordCache {
 public:
  // Longer words rarely repeat and would only grow the table.
  static constexpr size_t kMaxWordBytes = 48;

  // Appends the ids of `word` to `out` when it was stored before.
  bool append(std::string_view word, std::vector<TokenId>& out) const {
    const auto it = index_.find(word);
    if (it == index_.end()) return false;
    out.insert(out.end(), ids_.begin() + it->second.first,
               ids_.begin() + it->second.first + it->second.second);
    return true;
  }
  void store(std::string_view word, const TokenId* ids, size_t count) {
    index_.emplace(word,
                   std::pair{static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)});
    ids_.insert(ids_.end(), ids, ids + count);
  }

 private:
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> index_;
  std::vector<TokenId> ids_;
};

// Length of the well-formed UTF-8 character at text[pos]; 1 when the bytes
// there do not form one, so that invalid input is handled byte by byte.
inline size_t utf8_char_length(std::string_view text, size_t pos) {
  const auto lead = static_cast<uint8_t>(text[pos]);
  size_t len = 1;
  if ((lead & 0xE0) == 0xC0) {
    len = 2;
  } else if ((lead & 0xF0) == 0xE0) {
    len = 3;
  } else if ((lead & 0xF8) == 0xF0) {
    len = 4;
  }
  if (pos + len > text.size()) return 1;
  for (size_t i = 1; i < len; ++i) {
    if ((static_cast<uint8_t>(text[pos + i]) & 0xC0) != 0x80) return 1;
  }
  return len;
}

// Llama 3 style pre-tokenizer names; their vocabularies emit a pre-token that is
// itself a token whole, before merging (ignore_merges).
bool is_llama3_pre(std::string_view pre);

// GPT-2's byte-level alphabet: every byte stands for one printable code point,
// so that BPE merges can be stored as text.
const std::string& byte_to_unicode(uint8_t byte);
void byte_level_encode(std::string_view bytes, std::string& out);
// Code points outside the alphabet (user-added token texts) pass through as UTF-8.
std::string byte_level_decode(std::string_view text);

// Splits text into pre-tokens with the regular expressions of a named
// byte-level BPE pre-tokenizer, each applied in turn to the pieces the
// previous one produced; text that no expression matches is kept as its own
// piece, so the pieces always cover the input exactly.
class PreTokenizer {
 public:
  static Result<PreTokenizer> create(std::string_view name);
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Pattern;
  std::vector<std::shared_ptr<const Pattern>> patterns_;
};

// SentencePiece BPE: merges adjacent pieces by score, falls back to <0xXX>
// byte tokens for what no piece covers.
class SpmModel {
 public:
  SpmModel(const Vocabulary& vocab, const TokenIndex& ids, const std::vector<TokenKind>& kinds);
  // `text` is already normalised (spaces as "▁").
  void encode(std::string_view text, std::vector<TokenId>& out) const;

 private:
  struct Symbol;
  struct Bigram;
  // Buffers reused across the words of one call.
  struct Scratch;
  TokenId mergeable_token(std::string_view text) const;
  void encode_segment(std::string_view text, Scratch& scratch, std::vector<TokenId>& out) const;

  const Vocabulary& vocab_;
  const TokenIndex& ids_;
  const std::vector<TokenKind>& kinds_;
  std::array<TokenId, 256> byte_tokens_{};
  // Pieces of single ASCII characters, the commonest symbols: -1 when none.
  std::array<TokenId, 128> ascii_pieces_{};
  // Every split of a piece into two pieces, so that merging compares ids
  // instead of hashing text.
  MergeTable merges_;
  // True when no piece holds "▁" after another character, as in SentencePiece
  // vocabularies trained with split_by_whitespace: then no merge crosses the
  // start of a word and each word can be merged on its own, in a small queue.
  bool words_are_independent_ = false;
};

// Byte-level BPE: merges adjacent symbols by merge rank over one pre-token.
class BpeModel {
 public:
  static Result<std::unique_ptr<BpeModel>> create(const Vocabulary& vocab, const TokenIndex& ids,
                                                  const std::vector<TokenKind>& kinds);
  // `words` are raw pre-tokens, not yet byte-level encoded.
  void encode(const std::vector<std::string_view>& words, std::vector<TokenId>& out) const;

 private:
  struct Symbol;
  struct Bigram;
  struct Scratch;
  void encode_word(std::string_view word, Scratch& scratch, std::vector<TokenId>& out) const;
  BpeModel(const Vocabulary& vocab, const TokenIndex& ids, const std::vector<TokenKind>& kinds);
  int32_t intern(std::string_view text);
  void emit_symbol(int32_t symbol, std::string_view raw, std::vector<TokenId>& out) const;

  const Vocabulary& vocab_;
  const TokenIndex& ids_;
  const std::vector<TokenKind>& kinds_;
  // Symbols are token ids, or ids past the vocabulary for merge parts that are
  // not tokens themselves (malformed but tolerated vocabularies).
  std::unordered_map<std::string, int32_t> extra_symbols_;
  MergeTable merges_;
  std::array<int32_t, 256> byte_symbols_{};
  std::array<TokenId, 256> byte_tokens_{};
};

}  // namespace foreshore::engine::tokenizer_internal
