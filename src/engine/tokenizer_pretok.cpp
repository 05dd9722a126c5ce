// Pre-tokenizers of byte-level BPE vocabularies, by tokenizer.ggml.pre name.
// The expressions are those of the models' Hugging Face tokenizers, as
// llama.cpp lists them; PCRE2 in UTF+UCP mode gives \p{L}, \p{N}, \p{P} and
// look-ahead the same meaning as the original (Oniguruma) expressions.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/tokenizer_internal.h"

namespace foreshore::engine::tokenizer_internal {
namespace {

constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";

// Contractions spelled out instead of (?i:...) so that only ASCII letters fold.
constexpr std::string_view kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr std::string_view kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// DeepSeek LLM spells out its letter ranges instead of using \p{L}.
constexpr std::string_view kDeepseekLlmLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
constexpr std::string_view kDeepseekLlmPunct =
    R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";
constexpr std::string_view kCjk = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

struct PreTokenizerSpec {
  std::vector<std::string_view> names;
  std::vector<std::string_view> patterns;
};

const std::vector<PreTokenizerSpec>& specs() {
  static const std::vector<PreTokenizerSpec> kSpecs = {
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
        "dbrx", "smaug-bpe"},
       {kLlama3}},
      {{"qwen2", "qwen2.5", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"}, {kQwen2}},
      {{"gpt2", "gpt-2", "mpt", "olmo", "jais", "phi-2", "roberta-bpe", "jina-es", "jina-de",
        "jina-v2-es", "jina-v2-de", "jina-v2-code"},
       {kGpt2}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}},
      {{"deepseek-llm"},
       {R"([\r\n])", kDeepseekLlmLetters, kDeepseekLlmPunct, R"(\s+$)", kCjk, R"(\p{N}+)"}},
      {{"deepseek-coder"}, {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}},
      {{"default", ""}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
  };
  return kSpecs;
}

struct MatchData {
  MatchData() : data(pcre2_match_data_create(1, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* data;
};

}  // namespace

bool is_llama3_pre(std::string_view pre) {
  for (std::string_view name :
       {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}) {
    if (pre == name) return true;
  }
  return false;
}

struct PreTokenizer::Pattern {
  explicit Pattern(pcre2_code* c) : code(c) {}
  ~Pattern() { pcre2_code_free(code); }
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  // Appends the matches of this pattern in `piece`, and the unmatched text
  // between them, as pieces.
  void split(std::string_view piece, pcre2_match_data* match,
             std::vector<std::string_view>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t offset = 0;
    size_t kept = 0;  // end of the last piece appended
    while (offset < piece.size()) {
      int rc = pcre2_match(code, subject, piece.size(), offset, 0, match, nullptr);
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
        // The JIT's stack is small; the interpreter keeps its frames on the heap.
        rc = pcre2_match(code, subject, piece.size(), offset, PCRE2_NO_JIT, match, nullptr);
      }
      // No match, or a resource limit hit on hostile input: the rest stays one piece.
      if (rc < 0) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const size_t begin = ovector[0];
      const size_t end = ovector[1];
      if (end <= begin) {
        offset = begin + utf8_char_length(piece, begin);
        continue;
      }
      if (begin > kept) out.push_back(piece.substr(kept, begin - kept));
      out.push_back(piece.substr(begin, end - begin));
      kept = offset = end;
    }
    if (kept < piece.size()) out.push_back(piece.substr(kept));
  }

  pcre2_code* code;
};

Result<PreTokenizer> PreTokenizer::create(std::string_view name) {
  for (const PreTokenizerSpec& spec : specs()) {
    bool named = false;
    for (std::string_view n : spec.names) named = named || n == name;
    if (!named) continue;
    PreTokenizer result;
    for (std::string_view source : spec.patterns) {
      int error = 0;
      PCRE2_SIZE error_offset = 0;
      pcre2_code* code =
          pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY,
                        &error, &error_offset, nullptr);
      if (code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof(message));
        return make_error(ErrorKind::kInternal, "pre-tokenizer '" + std::string(name) +
                                                    "': expression \"" + std::string(source) +
                                                    "\" does not compile at offset " +
                                                    std::to_string(error_offset) + ": " +
                                                    reinterpret_cast<const char*>(message));
      }
      // Without JIT (unsupported CPU, no executable memory) matching still works, slower.
      (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
      result.patterns_.push_back(std::make_shared<const Pattern>(code));
    }
    return result;
  }
  return make_error(ErrorKind::kUnsupported,
                    "unknown BPE pre-tokenizer '" + std::string(name) +
                        "' (tokenizer.ggml.pre); known: llama-bpe, qwen2, smollm, gpt2, default, "
                        "deepseek-llm, deepseek-coder, falcon, starcoder, refact, mpt and aliases");
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  MatchData match;
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  for (const auto& pattern : patterns_) {
    next.clear();
    for (std::string_view piece : pieces) pattern->split(piece, match.data, next);
    pieces.swap(next);
  }
  out.insert(out.end(), pieces.begin(), pieces.end());
}

}  // namespace foreshore::engine::tokenizer_internal
