// Tokenizers read from a GGUF vocabulary: SentencePiece-style (`llama`) and
// byte-level BPE (`gpt2`) with the model's pre-tokenizer (`llama-bpe`,
// `qwen2`, `smollm`, `gpt2`, ...).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/gguf.h"

namespace foreshore::engine {

using TokenId = int32_t;

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenKind : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Everything a tokenizer needs, as stored under tokenizer.ggml.* in GGUF.
// Tests may also build one from other vocabulary formats.
struct Vocabulary {
  std::string model;  // "llama" (SentencePiece) or "gpt2" (byte-level BPE)
  std::string
      pre;  // pre-tokenizer name for gpt2: "llama-bpe", "qwen2", "smollm", "gpt2", "default"
  std::vector<std::string> tokens;
  std::vector<float> scores;        // may be empty for BPE
  std::vector<TokenKind> kinds;     // may be empty: all normal
  std::vector<std::string> merges;  // "a b" pairs for BPE, in rank order
  TokenId bos = -1;
  TokenId eos = -1;
  TokenId eot = -1;
  TokenId unknown = -1;
  TokenId padding = -1;
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = true;  // SentencePiece: prepend "▁"
  bool ignore_merges = false;    // BPE: a pre-token found whole in the vocab is one token (Llama 3)

  // Reads tokenizer.ggml.*; missing required keys (model, tokens, scores for
  // "llama", merges for "gpt2") and inconsistent ones (array lengths, token
  // types, ids outside the vocabulary) are errors naming the file and key.
  static Result<Vocabulary> from_gguf(const GgufFile& file);
};

class Tokenizer {
 public:
  // Errors: kUnsupported for other models (e.g. "bert" WordPiece) and unknown
  // pre-tokenizer names, kInvalidArgument for inconsistent vocabularies.
  // Llama 3 pre-tokenizer names ("llama-bpe", ...) imply ignore_merges.
  static Result<std::shared_ptr<const Tokenizer>> create(Vocabulary vocab);
  ~Tokenizer();

  // Text to ids. add_bos follows the vocabulary's add_bos when true;
  // parse_special recognises control/user-defined token texts such as
  // "<|eot_id|>" inside the text (true for chat templates, false for user data).
  // Matching is leftmost-longest. User-defined (added) tokens are recognised
  // even without parse_special, as Hugging Face tokenizers and llama.cpp do.
  // Any bytes are accepted (invalid UTF-8, NULs); nothing is lost where the
  // vocabulary has a token for every byte.
  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const;

  // Bytes of one token as it appears in output text (SentencePiece "▁" becomes
  // a space, byte tokens "<0x0A>" become the byte, BPE bytes are unmapped).
  // Control tokens render as empty unless render_special. The view lives as
  // long as the tokenizer: generation looks pieces up per token and per
  // candidate (JSON mode) without copying them.
  std::string_view token_to_piece(TokenId id, bool render_special = false) const;
  // The pieces concatenated; for SentencePiece vocabularies with
  // add_space_prefix, the space encode() put in front of the text is removed
  // from the first piece, so decode(encode(text)) == text. Ids outside the
  // vocabulary are skipped.
  std::string decode(const std::vector<TokenId>& ids, bool render_special = false) const;

  int32_t vocab_size() const;
  TokenId bos() const;
  TokenId eos() const;
  // True for ids that end generation (eos, eot, <|im_end|>, <|end_of_text|>, ...).
  bool is_end_of_generation(TokenId id) const;
  // Looks up a token by its exact text (e.g. "<|im_end|>"); -1 when absent.
  TokenId find_token(std::string_view text) const;
  const Vocabulary& vocabulary() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreshore::engine
