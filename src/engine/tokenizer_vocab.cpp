// Vocabulary::from_gguf: reads and checks tokenizer.ggml.* metadata.
#include <limits>

#include "engine/tokenizer_internal.h"

namespace foreshore::engine {
namespace {

constexpr std::string_view kPrefix = "tokenizer.ggml.";

std::string where(const GgufFile& file, std::string_view key) {
  return file.origin() + ": " + std::string(kPrefix) + std::string(key);
}

Error corrupt(const GgufFile& file, std::string_view key, const std::string& problem) {
  return make_error(ErrorKind::kCorrupt, where(file, key) + " " + problem);
}

// The array under `key`, or nullptr when absent; an error when it is not an array.
Result<const GgufValue::Array*> find_array(const GgufFile& file, std::string_view key) {
  const GgufValue* value = file.find(std::string(kPrefix) + std::string(key));
  if (value == nullptr) return static_cast<const GgufValue::Array*>(nullptr);
  const GgufValue::Array* array = value->as_array();
  if (array == nullptr) return corrupt(file, key, "is not an array");
  return array;
}

Result<std::vector<std::string>> read_strings(const GgufFile& file, std::string_view key,
                                              const GgufValue::Array& array) {
  std::vector<std::string> out;
  out.reserve(array.items.size());
  for (size_t i = 0; i < array.items.size(); ++i) {
    const std::string* s = array.items[i].as_string();
    if (s == nullptr) return corrupt(file, key, "item " + std::to_string(i) + " is not a string");
    out.push_back(*s);
  }
  return out;
}

// Reads an optional token id. GGUF writers store "none" as -1 or as UINT32_MAX.
Status read_token_id(const GgufFile& file, std::string_view key, size_t n_tokens, TokenId& id) {
  const GgufValue* value = file.find(std::string(kPrefix) + std::string(key));
  if (value == nullptr) return Status::Ok();
  const std::optional<int64_t> v = value->as_int();
  if (!v) return corrupt(file, key, "is not an integer");
  if (*v == -1 || *v == std::numeric_limits<uint32_t>::max()) {
    id = -1;
    return Status::Ok();
  }
  if (*v < 0 || static_cast<uint64_t>(*v) >= n_tokens) {
    return corrupt(file, key,
                   "= " + std::to_string(*v) + " is outside the vocabulary of " +
                       std::to_string(n_tokens) + " tokens");
  }
  id = static_cast<TokenId>(*v);
  return Status::Ok();
}

Status read_flag(const GgufFile& file, std::string_view key, bool& flag) {
  const GgufValue* value = file.find(std::string(kPrefix) + std::string(key));
  if (value == nullptr) return Status::Ok();
  const bool* b = std::get_if<bool>(&value->data);
  if (b == nullptr) return corrupt(file, key, "is not a boolean");
  flag = *b;
  return Status::Ok();
}

}  // namespace

Result<Vocabulary> Vocabulary::from_gguf(const GgufFile& file) {
  Vocabulary vocab;
  const std::optional<std::string> model = file.get_string(std::string(kPrefix) + "model");
  if (!model) {
    return make_error(ErrorKind::kNotFound, where(file, "model") +
                                                " is missing (or not a string): the file has no "
                                                "tokenizer; vocab-less GGUF files need a separate "
                                                "vocabulary");
  }
  vocab.model = *model;
  if (const GgufValue* pre = file.find(std::string(kPrefix) + "pre"); pre != nullptr) {
    if (pre->as_string() == nullptr) return corrupt(file, "pre", "is not a string");
    vocab.pre = *pre->as_string();
  }
  if (vocab.pre.empty()) vocab.pre = "default";

  FSH_ASSIGN_OR_RETURN(const GgufValue::Array* tokens, find_array(file, "tokens"));
  if (tokens == nullptr) {
    return make_error(ErrorKind::kNotFound, where(file, "tokens") + " is missing");
  }
  if (tokens->items.empty()) return corrupt(file, "tokens", "is empty");
  if (tokens->items.size() > static_cast<size_t>(std::numeric_limits<TokenId>::max())) {
    return corrupt(file, "tokens", "has more entries than token ids can number");
  }
  FSH_ASSIGN_OR_RETURN(vocab.tokens, read_strings(file, "tokens", *tokens));
  const size_t n = vocab.tokens.size();
  const std::string count = std::to_string(n);

  FSH_ASSIGN_OR_RETURN(const GgufValue::Array* scores, find_array(file, "scores"));
  if (scores != nullptr) {
    if (scores->items.size() != n) {
      return corrupt(
          file, "scores",
          "has " + std::to_string(scores->items.size()) + " entries for " + count + " tokens");
    }
    vocab.scores.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const std::optional<double> s = scores->items[i].as_float();
      if (!s) return corrupt(file, "scores", "item " + std::to_string(i) + " is not a number");
      vocab.scores.push_back(static_cast<float>(*s));
    }
  } else if (vocab.model == "llama") {
    return make_error(ErrorKind::kNotFound,
                      where(file, "scores") + " is missing; SentencePiece merging needs them");
  }

  FSH_ASSIGN_OR_RETURN(const GgufValue::Array* types, find_array(file, "token_type"));
  if (types != nullptr) {
    if (types->items.size() != n) {
      return corrupt(
          file, "token_type",
          "has " + std::to_string(types->items.size()) + " entries for " + count + " tokens");
    }
    vocab.kinds.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const std::optional<int64_t> t = types->items[i].as_int();
      if (!t || *t < 0 || *t > static_cast<int64_t>(TokenKind::kByte)) {
        return corrupt(file, "token_type",
                       "item " + std::to_string(i) + " is not a token type (0..6)");
      }
      vocab.kinds.push_back(static_cast<TokenKind>(*t));
    }
  }

  FSH_ASSIGN_OR_RETURN(const GgufValue::Array* merges, find_array(file, "merges"));
  if (merges != nullptr) {
    FSH_ASSIGN_OR_RETURN(vocab.merges, read_strings(file, "merges", *merges));
  } else if (vocab.model == "gpt2") {
    return make_error(ErrorKind::kNotFound,
                      where(file, "merges") + " is missing; byte-level BPE needs them");
  }

  // Defaults as llama.cpp assumes them for vocabularies that predate the keys.
  if (vocab.model == "llama") {
    vocab.bos = n > 1 ? 1 : -1;
    vocab.eos = n > 2 ? 2 : -1;
    vocab.unknown = 0;
    vocab.add_bos = true;
    vocab.add_space_prefix = true;
  } else {
    vocab.add_bos = false;
    vocab.add_space_prefix = false;
  }
  FSH_TRY_STATUS(read_token_id(file, "bos_token_id", n, vocab.bos));
  FSH_TRY_STATUS(read_token_id(file, "eos_token_id", n, vocab.eos));
  FSH_TRY_STATUS(read_token_id(file, "eot_token_id", n, vocab.eot));
  FSH_TRY_STATUS(read_token_id(file, "unknown_token_id", n, vocab.unknown));
  FSH_TRY_STATUS(read_token_id(file, "padding_token_id", n, vocab.padding));

  // Llama 3 files often omit add_bos_token; their models expect BOS.
  if (vocab.model == "gpt2" && tokenizer_internal::is_llama3_pre(vocab.pre)) vocab.add_bos = true;
  FSH_TRY_STATUS(read_flag(file, "add_bos_token", vocab.add_bos));
  FSH_TRY_STATUS(read_flag(file, "add_eos_token", vocab.add_eos));
  FSH_TRY_STATUS(read_flag(file, "add_space_prefix", vocab.add_space_prefix));
  return vocab;
}

}  // namespace foreshore::engine
