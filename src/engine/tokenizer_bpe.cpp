// Byte-level BPE (GPT-2 style): the byte alphabet and rank-ordered merging.
#include <algorithm>

#include "common/utf8.h"
#include "engine/tokenizer_internal.h"

namespace foreshore::engine::tokenizer_internal {
namespace {

struct ByteAlphabet {
  std::array<std::string, 256> encoded;
  // Code points of the alphabet are all below 512.
  std::array<int16_t, 512> decoded;

  ByteAlphabet() {
    decoded.fill(-1);
    uint32_t next_unprintable = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const uint32_t cp = printable ? b : next_unprintable++;
      append_utf8(encoded[b], cp);
      decoded[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet kAlphabet;
  return kAlphabet;
}

}  // namespace

// A pending merge of two adjacent symbols; stale once either side changed.
struct BpeModel::Bigram {
  int32_t rank;
  int32_t left;
  int32_t right;
  int32_t left_symbol;
  int32_t right_symbol;
  int32_t result;
};

struct BpeModel::Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t begin;  // byte range in the raw word
  uint32_t end;
};

struct BpeModel::Scratch {
  std::vector<Symbol> symbols;
  std::vector<Bigram> queue;  // a heap: lowest rank first, then the leftmost pair
  std::string encoded;
};

const std::string& byte_to_unicode(uint8_t byte) {
  return alphabet().encoded[byte];
}

void byte_level_encode(std::string_view bytes, std::string& out) {
  const auto& table = alphabet().encoded;
  for (char c : bytes) out += table[static_cast<uint8_t>(c)];
}

std::string byte_level_decode(std::string_view text) {
  const auto& table = alphabet().decoded;
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<uint8_t>(text[i]);
    const size_t len = utf8_char_length(text, i);
    uint32_t cp = lead;
    if (len == 2) {
      cp = ((lead & 0x1Fu) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3Fu);
    } else if (len > 2) {
      cp = 0x110000;  // beyond the alphabet: copied through
    }
    if (cp < table.size() && table[cp] >= 0) {
      out += static_cast<char>(table[cp]);
    } else {
      out.append(text.substr(i, len));
    }
    i += len;
  }
  return out;
}

BpeModel::BpeModel(const Vocabulary& vocab, const TokenIndex& ids,
                   const std::vector<TokenKind>& kinds)
    : vocab_(vocab), ids_(ids), kinds_(kinds), merges_(vocab.merges.size()) {}

int32_t BpeModel::intern(std::string_view text) {
  if (const TokenId id = ids_.find(text); id >= 0) return id;
  const auto next = static_cast<int32_t>(vocab_.tokens.size() + extra_symbols_.size());
  return extra_symbols_.emplace(std::string(text), next).first->second;
}

Result<std::unique_ptr<BpeModel>> BpeModel::create(const Vocabulary& vocab, const TokenIndex& ids,
                                                   const std::vector<TokenKind>& kinds) {
  std::unique_ptr<BpeModel> model(new BpeModel(vocab, ids, kinds));
  std::string joined;
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& merge = vocab.merges[rank];
    // The first character may itself be a space in user-added merges.
    const size_t split = merge.find(' ', 1);
    if (split == std::string::npos || split + 1 >= merge.size()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "tokenizer vocabulary: BPE merge #" + std::to_string(rank) + " \"" + merge +
                            "\" is not two symbols separated by a space");
    }
    const std::string_view left(merge.data(), split);
    const std::string_view right(merge.data() + split + 1, merge.size() - split - 1);
    joined.assign(left);
    joined.append(right);
    const int32_t l = model->intern(left);
    const int32_t r = model->intern(right);
    const int32_t result = model->intern(joined);
    model->merges_.add(l, r, MergeTable::Merge{static_cast<int32_t>(rank), result});
  }
  for (int b = 0; b < 256; ++b) {
    const std::string& text = byte_to_unicode(static_cast<uint8_t>(b));
    model->byte_symbols_[b] = model->intern(text);
    // A byte outside the vocabulary's alphabet is dropped, as llama.cpp does:
    // these vocabularies' unknown id is usually <|endoftext|>.
    model->byte_tokens_[b] = ids.find(text);
  }
  return model;
}

void BpeModel::emit_symbol(int32_t symbol, std::string_view raw, std::vector<TokenId>& out) const {
  if (symbol < static_cast<int32_t>(vocab_.tokens.size())) {
    out.push_back(symbol);
    return;
  }
  for (char c : raw) {
    const TokenId id = byte_tokens_[static_cast<uint8_t>(c)];
    if (id >= 0) out.push_back(id);
  }
}

void BpeModel::encode(const std::vector<std::string_view>& words, std::vector<TokenId>& out) const {
  Scratch scratch;
  WordCache cache;
  for (std::string_view word : words) {
    if (word.size() > WordCache::kMaxWordBytes) {
      encode_word(word, scratch, out);
    } else if (!cache.append(word, out)) {
      const size_t first = out.size();
      encode_word(word, scratch, out);
      cache.store(word, out.data() + first, out.size() - first);
    }
  }
}

void BpeModel::encode_word(std::string_view word, Scratch& scratch,
                           std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (vocab_.ignore_merges) {
    scratch.encoded.clear();
    byte_level_encode(word, scratch.encoded);
    const TokenId id = ids_.find(scratch.encoded);
    if (id >= 0 && kinds_[id] != TokenKind::kControl) {
      out.push_back(id);
      return;
    }
  }
  if (word.size() == 1) {
    emit_symbol(byte_symbols_[static_cast<uint8_t>(word[0])], word, out);
    return;
  }

  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.resize(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const auto n = static_cast<int32_t>(i);
    symbols[i] = Symbol{byte_symbols_[static_cast<uint8_t>(word[i])], n - 1,
                        i + 1 == word.size() ? -1 : n + 1, static_cast<uint32_t>(i),
                        static_cast<uint32_t>(i + 1)};
  }
  std::vector<Bigram>& queue = scratch.queue;
  queue.clear();
  // Lowest rank first; among equal ranks the leftmost pair, as reference BPE does.
  const auto lower_priority = [](const Bigram& a, const Bigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  const auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const MergeTable::Merge* merge = merges_.find(symbols[left].id, symbols[right].id);
    if (merge == nullptr) return;
    queue.push_back(
        Bigram{merge->rank, left, right, symbols[left].id, symbols[right].id, merge->result});
    std::push_heap(queue.begin(), queue.end(), lower_priority);
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_pair(i - 1, i);

  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), lower_priority);
    const Bigram bigram = queue.back();
    queue.pop_back();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    // Merged symbols are emptied; a pair whose sides grew since it was queued is stale.
    if (left.begin == left.end || right.begin == right.end || left.id != bigram.left_symbol ||
        right.id != bigram.right_symbol) {
      continue;
    }
    left.id = bigram.result;
    left.end = right.end;
    left.next = right.next;
    right.begin = right.end;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    try_pair(left.prev, bigram.left);
    try_pair(bigram.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    emit_symbol(s.id, word.substr(s.begin, s.end - s.begin), out);
  }
}

}  // namespace foreshore::engine::tokenizer_internal
