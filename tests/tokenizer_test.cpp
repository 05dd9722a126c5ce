// Tokenizer tests: llama.cpp's reference vectors for every vocabulary type we
// implement, round trips, special tokens, byte fallback, real model
// vocabularies, vocabulary errors, and speed on long or hostile input.
#include "engine/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "engine/gguf.h"

namespace foreshore::engine {
namespace {

namespace fs = std::filesystem;

const fs::path kDataDir = fs::path(FSH_SHARED_DATA_DIR);
const fs::path kVectorDir = kDataDir / "tokenizer-tests";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's byte-to-code-point table, written independently of the library's.
std::string gpt2_encode(std::string_view bytes) {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next++;
      if (cp < 0x80) {
        t[b] = std::string(1, static_cast<char>(cp));
      } else {
        t[b] = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      }
    }
    return t;
  }();
  std::string out;
  for (char c : bytes) out += table[static_cast<uint8_t>(c)];
  return out;
}

std::string base64_decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else {
      break;  // padding
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

Result<Vocabulary> gguf_vocabulary(const fs::path& path) {
  FSH_ASSIGN_OR_RETURN(auto file, GgufFile::open(path.string()));
  return Vocabulary::from_gguf(*file);
}

// Llama 3.2's vocabulary in GPT-2 file format (encoder.json + vocab.bpe).
Vocabulary llama3_vocabulary() {
  const fs::path dir = kVectorDir / "llama3-bpe";
  const auto encoder = nlohmann::json::parse(read_file(dir / "encoder.json"));
  Vocabulary v;
  v.model = "gpt2";
  v.pre = "llama-bpe";
  v.ignore_merges = true;
  v.add_bos = false;
  v.tokens.resize(encoder.size());
  for (const auto& [text, id] : encoder.items()) v.tokens.at(id.get<size_t>()) = text;
  std::istringstream merges(read_file(dir / "vocab.bpe"));
  std::string line;
  while (std::getline(merges, line)) {
    if (!line.empty() && line[0] != '#') v.merges.push_back(line);
  }
  return v;
}

// Qwen's tiktoken ranks, turned into a GPT-2 style vocabulary: each token's
// merge is found by running BPE over its bytes with the ranks below its own.
Vocabulary qwen2_vocabulary() {
  std::vector<std::string> by_rank;
  std::unordered_map<std::string, int> rank_of;
  std::istringstream lines(read_file(kVectorDir / "qwen2-bpe" / "qwen.tiktoken"));
  std::string line;
  while (std::getline(lines, line)) {
    const size_t space = line.find(' ');
    if (space == std::string::npos) continue;
    const int rank = std::stoi(line.substr(space + 1));
    std::string bytes = base64_decode(std::string_view(line).substr(0, space));
    if (static_cast<int>(by_rank.size()) <= rank) by_rank.resize(rank + 1);
    by_rank[rank] = bytes;
    rank_of.emplace(std::move(bytes), rank);
  }
  Vocabulary v;
  v.model = "gpt2";
  v.pre = "qwen2";
  v.add_bos = false;
  for (size_t rank = 0; rank < by_rank.size(); ++rank) {
    const std::string& bytes = by_rank[rank];
    v.tokens.push_back(gpt2_encode(bytes));
    if (bytes.size() < 2) continue;
    std::vector<std::string> parts;
    for (char c : bytes) parts.emplace_back(1, c);
    while (parts.size() > 2) {
      int best = -1;
      int best_rank = static_cast<int>(rank);
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        const auto it = rank_of.find(parts[i] + parts[i + 1]);
        if (it != rank_of.end() && it->second < best_rank) {
          best_rank = it->second;
          best = static_cast<int>(i);
        }
      }
      if (best < 0) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + best + 1);
    }
    if (parts.size() == 2) v.merges.push_back(gpt2_encode(parts[0]) + " " + gpt2_encode(parts[1]));
  }
  return v;
}

fs::path gguf_path(const std::string& name) {
  return kVectorDir / ("ggml-vocab-" + name + ".gguf");
}

fs::path vectors_path(const std::string& name) {
  if (name == "llama-bpe") return kVectorDir / "llama3-bpe" / "ggml-vocab-llama-bpe.gguf";
  if (name == "qwen2") return kVectorDir / "qwen2-bpe" / "ggml-vocab-qwen2.gguf";
  return gguf_path(name);
}

// Tokenizers are costly to build (up to 280k merges); each is built once.
std::shared_ptr<const Tokenizer> tokenizer_for(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const Tokenizer>> cache;
  if (auto it = cache.find(name); it != cache.end()) return it->second;
  Vocabulary vocab;
  if (name == "llama-bpe") {
    vocab = llama3_vocabulary();
  } else if (name == "qwen2") {
    vocab = qwen2_vocabulary();
  } else {
    const fs::path path = name == "stories260K" || name == "llama-2-tiny-random"
                              ? kDataDir / "models" / (name + ".gguf")
                              : gguf_path(name);
    auto loaded = gguf_vocabulary(path);
    EXPECT_TRUE(loaded.ok()) << loaded.error().message;
    if (!loaded.ok()) return nullptr;
    vocab = std::move(loaded).value();
  }
  auto tokenizer = Tokenizer::create(std::move(vocab));
  EXPECT_TRUE(tokenizer.ok()) << name << ": " << tokenizer.error().message;
  if (!tokenizer.ok()) return nullptr;
  return cache[name] = *tokenizer;
}

struct Vectors {
  std::vector<std::string> inputs;
  std::vector<std::vector<TokenId>> expected;
};

// As llama.cpp's test-tokenizer-0: inputs end with "\n__ggml_vocab_test__\n",
// the .out file has one line of ids per input.
Vectors read_vectors(const fs::path& base) {
  Vectors v;
  const std::string separator = "\n__ggml_vocab_test__\n";
  const std::string text = read_file(base.string() + ".inp");
  size_t start = 0;
  for (size_t pos; (pos = text.find(separator, start)) != std::string::npos;
       start = pos + separator.size()) {
    v.inputs.push_back(text.substr(start, pos - start));
  }
  std::istringstream out(read_file(base.string() + ".out"));
  std::string line;
  while (std::getline(out, line)) {
    std::istringstream ids(line);
    std::vector<TokenId>& row = v.expected.emplace_back();
    for (TokenId id; ids >> id;) row.push_back(id);
  }
  return v;
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 60)) {
    const auto b = static_cast<uint8_t>(c);
    if (b >= 0x20 && b < 0x7F) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02X", b);
      out += hex;
    }
  }
  return out;
}

std::string join(const std::vector<TokenId>& ids) {
  std::string out;
  for (TokenId id : ids) {
    if (!out.empty()) out += ' ';
    out += std::to_string(id);
  }
  return out;
}

// Vocabularies with llama.cpp test vectors; bert-bge (WordPiece) is skipped below.
const std::vector<std::string> kVectorVocabs = {
    "llama-spm",      "phi-3",  "gpt-2",     "llama-bpe", "qwen2", "deepseek-llm",
    "deepseek-coder", "falcon", "starcoder", "refact",    "mpt",
};

class ReferenceVectors : public testing::TestWithParam<std::string> {};

TEST_P(ReferenceVectors, ReproduceLlamaCppIdsExactly) {
  const std::string& name = GetParam();
  auto tokenizer = tokenizer_for(name);
  ASSERT_NE(tokenizer, nullptr);
  const Vectors v = read_vectors(vectors_path(name));
  ASSERT_EQ(v.inputs.size(), v.expected.size());
  ASSERT_GT(v.inputs.size(), 40u);
  size_t passed = 0;
  for (size_t i = 0; i < v.inputs.size(); ++i) {
    const auto got = tokenizer->encode(v.inputs[i], false, false);
    if (got == v.expected[i]) {
      ++passed;
    } else {
      ADD_FAILURE() << name << " vector " << i << " \"" << printable(v.inputs[i])
                    << "\"\n  expected: " << join(v.expected[i]) << "\n  got:      " << join(got);
    }
  }
  std::cout << "[          ] " << name << ": " << passed << "/" << v.inputs.size() << " vectors\n";
  EXPECT_EQ(passed, v.inputs.size());
}

TEST_P(ReferenceVectors, DecodeRoundTripsEveryInput) {
  const std::string& name = GetParam();
  auto tokenizer = tokenizer_for(name);
  ASSERT_NE(tokenizer, nullptr);
  for (const std::string& input : read_vectors(vectors_path(name)).inputs) {
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(input, false, false)), input)
        << name << ": \"" << printable(input) << "\"";
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(input, true, false)), input) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, ReferenceVectors, testing::ValuesIn(kVectorVocabs),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(ReferenceVectorsSkipped, BertBgeWordPiece) {
  auto vocab = gguf_vocabulary(gguf_path("bert-bge"));
  ASSERT_TRUE(vocab.ok()) << vocab.error().message;
  EXPECT_EQ(vocab->model, "bert");
  auto tokenizer = Tokenizer::create(std::move(vocab).value());
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.error().kind, ErrorKind::kUnsupported);
  GTEST_SKIP() << "bert-bge uses WordPiece (tokenizer.ggml.model 'bert'), which the edge "
                  "engine does not implement: "
               << tokenizer.error().message;
}

std::string mixed_text(size_t size) {
  const std::string sample =
      "The quick brown fox jumps over the lazy dog. Numbers: 3.14159, 2024-05-01, 1,000,000.\n"
      "int main() { return std::accumulate(v.begin(), v.end(), 0); }  // C++\n"
      "Ünïcödé: naïve café, Grüße, 日本語のテキスト, 한국어, Ελληνικά, русский текст "
      "🦙🚀\n"
      "    indented\tline with\ttabs and    spaces\r\n";
  std::string text;
  while (text.size() < size) text += sample;
  text.resize(size);
  while (!text.empty() && (static_cast<uint8_t>(text.back()) & 0xC0) == 0x80) text.pop_back();
  return text;
}

// Whether every byte has a plain token, so that any byte string round-trips.
// Several byte-level vocabularies lack the bytes that never occur in UTF-8
// (DeepSeek has them only as user-defined characters), some lack control bytes.
bool has_complete_byte_alphabet(const Tokenizer& tokenizer) {
  const Vocabulary& v = tokenizer.vocabulary();
  for (int b = 0; b < 256; ++b) {
    std::string text;
    if (v.model == "llama") {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      text = name;
    } else {
      text = gpt2_encode(std::string(1, static_cast<char>(b)));
    }
    const TokenId id = tokenizer.find_token(text);
    if (id < 0) return false;
    if (v.model == "gpt2" && !v.kinds.empty() && v.kinds[id] != TokenKind::kNormal) return false;
  }
  return true;
}

void expect_round_trip(const Tokenizer& tokenizer, const std::string& name,
                       const std::string& input) {
  const auto ids = tokenizer.encode(input, false, true);
  for (TokenId id : ids) ASSERT_TRUE(id >= 0 && id < tokenizer.vocab_size()) << name;
  const std::string decoded = tokenizer.decode(ids);
  const auto diff = std::mismatch(decoded.begin(), decoded.end(), input.begin(), input.end());
  EXPECT_TRUE(decoded == input) << name << ": decoded text differs from byte "
                                << (diff.first - decoded.begin()) << " on: \""
                                << printable(decoded.substr(diff.first - decoded.begin())) << "\"";
}

TEST(Tokenizer, HostileBytesRoundTripOnEveryVocabulary) {
  std::mt19937 rng(1234);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
  // U+2581 is how SentencePiece writes a space, so it cannot survive a round trip there.
  for (size_t i; (i = bytes.find("\xE2\x96\x81")) != std::string::npos;) bytes[i] = 'x';
  const std::vector<std::string> invalid = {bytes,
                                            "\xF0\x9F",
                                            "\xC3",
                                            "a\xFF\xFE"
                                            "b",
                                            "\x80\x80 \x80",
                                            "\xE5 \xE3\xAF"};
  const std::vector<std::string> valid = {std::string("\0\0a\0", 4), mixed_text(4096),
                                          "\xC3\xBC"
                                          "ber",
                                          "  \n\n\t x"};
  for (const std::string& name : kVectorVocabs) {
    auto tokenizer = tokenizer_for(name);
    ASSERT_NE(tokenizer, nullptr);
    for (const std::string& input : valid) expect_round_trip(*tokenizer, name, input);
    const bool complete = has_complete_byte_alphabet(*tokenizer);
    if (name == "gpt-2" || name == "llama-bpe" || name == "qwen2" || name == "llama-spm") {
      EXPECT_TRUE(complete) << name;
    }
    for (const std::string& input : invalid) {
      if (complete) {
        expect_round_trip(*tokenizer, name, input);
      } else {
        for (TokenId id : tokenizer->encode(input, true, true)) {
          ASSERT_TRUE(id >= 0 && id < tokenizer->vocab_size()) << name;
        }
      }
    }
  }
}

// Processor time, not wall time: the suite must not fail on a loaded machine.
double encode_ms(const Tokenizer& tokenizer, const std::string& text, bool parse_special = false) {
  const std::clock_t start = std::clock();
  const auto ids = tokenizer.encode(text, true, parse_special);
  const std::clock_t stop = std::clock();
  EXPECT_LE(ids.size(), text.size() + 2);
  return 1000.0 * static_cast<double>(stop - start) / CLOCKS_PER_SEC;
}

// Quadratic work on 64 KiB would take seconds; linear work takes milliseconds.
// The bound is loose so that sanitizer and debug builds pass too.
TEST(Tokenizer, LongAndRepetitiveInputsStayFast) {
  const size_t n = 64 * 1024;
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"mixed", mixed_text(n)},
      {"letters", std::string(n, 'a')},
      {"spaces", std::string(n, ' ')},
      {"spaces then symbol", std::string(n, ' ') + "\xE2\x98\x83"},
      {"newlines", std::string(n, '\n')},
      {"digits", std::string(n, '7')},
      {"punctuation", std::string(n, '!')},
      {"NULs", std::string(n, '\0')},
      {"invalid UTF-8", std::string(n, '\xFF')},
      {"brackets", std::string(n, '<')},
  };
  for (const std::string& name : kVectorVocabs) {
    auto tokenizer = tokenizer_for(name);
    ASSERT_NE(tokenizer, nullptr);
    double slowest = 0;
    std::string slowest_input;
    for (const auto& [what, text] : inputs) {
      const double ms = encode_ms(*tokenizer, text, true);
      EXPECT_LT(ms, 1000.0) << name << " on 64 KiB of " << what;
      if (ms > slowest) {
        slowest = ms;
        slowest_input = what;
      }
    }
    std::cout << "[          ] " << name << ": slowest 64 KiB input (" << slowest_input << ") took "
              << slowest << " ms\n";
  }
}

// Real prompts (Arena-Hard questions as JSON lines): words repeat only as
// they do in practice, so per-call word caching does not flatter the figure.
TEST(Tokenizer, RealPromptsOf64KiBTokenizeInMilliseconds) {
  std::string text = read_file(kDataDir / "router-data" / "arena-hard-v0.1" / "question.jsonl")
                         .substr(0, 64 * 1024);
  while (!text.empty() && (static_cast<uint8_t>(text.back()) & 0xC0) == 0x80) text.pop_back();
  if (!text.empty() && static_cast<uint8_t>(text.back()) >= 0xC0) text.pop_back();
  ASSERT_GT(text.size(), 60000u);
  for (const std::string name : {"llama-spm", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm"}) {
    auto tokenizer = tokenizer_for(name);
    ASSERT_NE(tokenizer, nullptr);
    double best = 1e9;
    for (int i = 0; i < 3; ++i) best = std::min(best, encode_ms(*tokenizer, text));
    std::cout << "[          ] " << name << ": 64 KiB of prompts in " << best << " ms\n";
    EXPECT_LT(best, 250.0) << name;
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text, false, false)), text) << name;
  }
}

// GPT-NeoX's file has no vectors and no tokenizer.ggml.pre ("default" then);
// it must still load, and the common test inputs must round-trip.
TEST(Tokenizer, GptNeoxWithoutPreTokenizerName) {
  auto vocab = gguf_vocabulary(gguf_path("gpt-neox"));
  ASSERT_TRUE(vocab.ok()) << vocab.error().message;
  EXPECT_EQ(vocab->pre, "default");
  auto tokenizer = Tokenizer::create(std::move(vocab).value());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  for (const std::string& input : read_vectors(vectors_path("gpt-2")).inputs) {
    expect_round_trip(**tokenizer, "gpt-neox", input);
  }
}

// One tokenizer serves concurrent requests.
TEST(Tokenizer, ConcurrentEncodesAgree) {
  auto spm = tokenizer_for("llama-spm");
  auto bpe = tokenizer_for("qwen2");
  ASSERT_NE(spm, nullptr);
  ASSERT_NE(bpe, nullptr);
  const std::vector<std::string> inputs = read_vectors(vectors_path("qwen2")).inputs;
  std::vector<std::vector<TokenId>> expected;
  for (const std::string& input : inputs) {
    expected.push_back(spm->encode(input, true, true));
    expected.push_back(bpe->encode(input, true, true));
  }
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < inputs.size(); ++i) {
          mismatches[t] += spm->encode(inputs[i], true, true) != expected[2 * i];
          mismatches[t] += bpe->encode(inputs[i], true, true) != expected[2 * i + 1];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(Tokenizer, SpecialTokensAreParsedOnlyWhenAsked) {
  auto gpt2 = tokenizer_for("gpt-2");
  ASSERT_NE(gpt2, nullptr);
  const TokenId eot = gpt2->find_token("<|endoftext|>");
  ASSERT_EQ(eot, 50256);
  EXPECT_TRUE(gpt2->is_end_of_generation(eot));
  const auto parsed = gpt2->encode("Hello<|endoftext|> world", false, true);
  std::vector<TokenId> expected = gpt2->encode("Hello", false, false);
  expected.push_back(eot);
  for (TokenId id : gpt2->encode(" world", false, false)) expected.push_back(id);
  EXPECT_EQ(parsed, expected);
  const auto literal = gpt2->encode("Hello<|endoftext|> world", false, false);
  EXPECT_EQ(std::count(literal.begin(), literal.end(), eot), 0);
  EXPECT_EQ(gpt2->decode(literal), "Hello<|endoftext|> world");
  EXPECT_EQ(gpt2->decode(parsed), "Hello world");
  EXPECT_EQ(gpt2->decode(parsed, true), "Hello<|endoftext|> world");
  EXPECT_EQ(gpt2->token_to_piece(eot), "");
  EXPECT_EQ(gpt2->token_to_piece(eot, true), "<|endoftext|>");
}

TEST(Tokenizer, SentencePieceChatTokensAndSpacePrefix) {
  auto phi3 = tokenizer_for("phi-3");
  ASSERT_NE(phi3, nullptr);
  const TokenId user = phi3->find_token("<|user|>");
  const TokenId end = phi3->find_token("<|end|>");
  const TokenId assistant = phi3->find_token("<|assistant|>");
  ASSERT_GE(user, 0);
  ASSERT_GE(end, 0);
  ASSERT_GE(assistant, 0);
  EXPECT_TRUE(phi3->is_end_of_generation(end));
  EXPECT_TRUE(phi3->is_end_of_generation(phi3->eos()));
  const auto ids = phi3->encode("<|user|>Hi<|end|><|assistant|>", true, true);
  // As llama.cpp: text after a special token gets SentencePiece's space prefix.
  const std::vector<TokenId> expected = {phi3->bos(), user, phi3->find_token("\xE2\x96\x81Hi"), end,
                                         assistant};
  EXPECT_EQ(ids, expected);
  const auto literal = phi3->encode("<|user|>", false, false);
  EXPECT_EQ(std::count(literal.begin(), literal.end(), user), 0);
}

TEST(Tokenizer, UserDefinedTokensMatchWithoutParseSpecial) {
  auto mpt = tokenizer_for("mpt");
  ASSERT_NE(mpt, nullptr);
  const TokenId three_spaces = mpt->find_token("   ");
  ASSERT_GE(three_spaces, 0);
  const auto ids = mpt->encode("a   b", false, false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), three_spaces), ids.end()) << join(ids);
  EXPECT_EQ(mpt->decode(ids), "a   b");
}

// A small byte-level vocabulary: the 256 byte symbols plus a few specials.
Vocabulary tiny_bpe_vocabulary() {
  Vocabulary v;
  v.model = "gpt2";
  v.pre = "gpt2";
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(gpt2_encode(std::string(1, static_cast<char>(b))));
    v.kinds.push_back(TokenKind::kNormal);
  }
  v.merges = {"a b", "ab c"};
  for (const char* t : {"ab", "abc"}) {
    v.tokens.push_back(t);
    v.kinds.push_back(TokenKind::kNormal);
  }
  v.tokens.push_back("<x>");  // 258
  v.kinds.push_back(TokenKind::kControl);
  v.tokens.push_back("<x><y>");  // 259
  v.kinds.push_back(TokenKind::kControl);
  v.tokens.push_back("<u>");  // 260
  v.kinds.push_back(TokenKind::kUserDefined);
  v.bos = 258;
  v.add_bos = true;
  return v;
}

TEST(Tokenizer, SpecialTokensMatchLeftmostLongest) {
  auto tokenizer = Tokenizer::create(tiny_bpe_vocabulary());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  const Tokenizer& t = **tokenizer;
  // Byte tokens are numbered by byte value.
  const TokenId one = '1';
  const TokenId two = '2';
  const TokenId three = '3';
  EXPECT_EQ(t.encode("1<x><y>2<x>3<u>", false, true),
            (std::vector<TokenId>{one, 259, two, 258, three, 260}));
  const auto literal = t.encode("1<x><y>2<u>", false, false);
  EXPECT_EQ(literal.back(), 260);
  EXPECT_EQ(std::count(literal.begin(), literal.end(), 258), 0);
  EXPECT_EQ(t.encode("abc", true, false), (std::vector<TokenId>{258, 257}));
  EXPECT_EQ(t.encode("ab", false, false), (std::vector<TokenId>{256}));
}

// A small SentencePiece vocabulary: control tokens, byte pieces, scored pieces.
Vocabulary tiny_spm_vocabulary() {
  Vocabulary v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.kinds = {TokenKind::kUnknown, TokenKind::kControl, TokenKind::kControl};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    v.tokens.push_back(name);
    v.kinds.push_back(TokenKind::kByte);
  }
  v.scores.assign(v.tokens.size(), 0.0f);
  const std::vector<std::pair<std::string, float>> pieces = {{"\xE2\x96\x81", -1},
                                                             {"a", -2},
                                                             {"b", -2},
                                                             {"c", -2},
                                                             {"ab", -5},
                                                             {"bc", -3},
                                                             {"\xE2\x96\x81"
                                                              "a",
                                                              -4}};
  for (const auto& [text, score] : pieces) {
    v.tokens.push_back(text);
    v.scores.push_back(score);
    v.kinds.push_back(TokenKind::kNormal);
  }
  v.bos = 1;
  v.eos = 2;
  v.unknown = 0;
  v.add_space_prefix = false;
  return v;
}

TEST(Tokenizer, SentencePieceMergesByScoreAndFallsBackToBytes) {
  auto tokenizer = Tokenizer::create(tiny_spm_vocabulary());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  const Tokenizer& t = **tokenizer;
  const TokenId a = t.find_token("a");
  const TokenId bc = t.find_token("bc");
  // "bc" outscores "ab", so "abc" is a + bc, not ab + c.
  EXPECT_EQ(t.encode("abc", false, false), (std::vector<TokenId>{a, bc}));
  // 'é' is no piece: its two UTF-8 bytes come out as byte tokens.
  const auto ids = t.encode("a\xC3\xA9", false, false);
  EXPECT_EQ(ids, (std::vector<TokenId>{a, t.find_token("<0xC3>"), t.find_token("<0xA9>")}));
  EXPECT_EQ(t.decode(ids), "a\xC3\xA9");
  EXPECT_EQ(t.token_to_piece(t.find_token("<0x0A>")), "\n");
  EXPECT_EQ(t.decode(t.encode(" a b", true, false)), " a b");
  EXPECT_EQ(t.token_to_piece(t.find_token("\xE2\x96\x81"
                                          "a")),
            " a");
}

TEST(Tokenizer, LlamaVocabularyFallsBackToBytes) {
  auto llama = tokenizer_for("llama-spm");
  ASSERT_NE(llama, nullptr);
  // U+1D11E (musical G clef) is not among Llama 2's pieces.
  const auto ids = llama->encode("\xF0\x9D\x84\x9E", false, false);
  const std::vector<TokenId> expected = {llama->find_token("\xE2\x96\x81"),
                                         llama->find_token("<0xF0>"), llama->find_token("<0x9D>"),
                                         llama->find_token("<0x84>"), llama->find_token("<0x9E>")};
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(llama->decode(ids), "\xF0\x9D\x84\x9E");
}

TEST(Tokenizer, Stories260KVocabulary) {
  auto tokenizer = tokenizer_for("stories260K");
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  EXPECT_EQ(tokenizer->bos(), 1);
  EXPECT_EQ(tokenizer->eos(), 2);
  EXPECT_TRUE(tokenizer->is_end_of_generation(2));
  const auto greedy =
      nlohmann::json::parse(read_file(kDataDir / "models" / "stories260K.greedy.json"));
  const auto generated = greedy["generated_token_ids"].get<std::vector<TokenId>>();
  const auto text = greedy["text"].get<std::string>();
  EXPECT_EQ(tokenizer->decode(generated), text);
  const auto ids = tokenizer->encode(text, true, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tokenizer->decode(ids), text);
  // The model wrote its story in the tokenizer's own segmentation.
  EXPECT_EQ(std::vector<TokenId>(ids.begin() + 1, ids.end()), generated);
}

TEST(Tokenizer, Llama2TinyRandomVocabulary) {
  auto tokenizer = tokenizer_for("llama-2-tiny-random");
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 32000);
  EXPECT_EQ(tokenizer->encode("Hello world", true, false), (std::vector<TokenId>{1, 15043, 3186}));
  // The full Llama 2 vocabulary: the llama-spm vectors hold for it too.
  const Vectors v = read_vectors(vectors_path("llama-spm"));
  for (size_t i = 0; i < v.inputs.size(); ++i) {
    EXPECT_EQ(tokenizer->encode(v.inputs[i], false, false), v.expected[i]) << i;
  }
  EXPECT_EQ(tokenizer->decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(tokenizer->decode({1, 15043, 3186, 2}, true), "<s> Hello world</s>");
}

TEST(Tokenizer, TokenToPieceOutOfRangeIsEmpty) {
  auto gpt2 = tokenizer_for("gpt-2");
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->token_to_piece(-1), "");
  EXPECT_EQ(gpt2->token_to_piece(gpt2->vocab_size()), "");
  EXPECT_EQ(gpt2->decode({-5, 1 << 30}), "");
  EXPECT_EQ(gpt2->find_token("no such token"), -1);
  EXPECT_FALSE(gpt2->is_end_of_generation(-1));
}

// GGUF metadata for a three-token SentencePiece vocabulary, to break one key at a time.
GgufWriter minimal_gguf() {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array({"<unk>", "<s>", "</s>", "a"}));
  w.set("tokenizer.ggml.scores", GgufValue::f32_array({0, 0, 0, -1}));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array({2, 3, 3, 1}));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  return w;
}

Result<Vocabulary> vocabulary_of(const GgufWriter& w) {
  const std::vector<uint8_t> bytes = w.to_bytes();
  FSH_ASSIGN_OR_RETURN(auto file, GgufFile::parse(bytes, "test.gguf"));
  return Vocabulary::from_gguf(*file);
}

TEST(VocabularyFromGguf, ReadsKeys) {
  GgufWriter w = minimal_gguf();
  w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(0xFFFFFFFFu));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  auto v = vocabulary_of(w);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->model, "llama");
  EXPECT_EQ(v->tokens.size(), 4u);
  EXPECT_EQ(v->kinds[1], TokenKind::kControl);
  EXPECT_EQ(v->bos, 1);
  EXPECT_EQ(v->eos, 2);
  EXPECT_EQ(v->unknown, 0);
  EXPECT_EQ(v->padding, -1);
  EXPECT_FALSE(v->add_bos);
  EXPECT_TRUE(v->add_space_prefix);
}

void expect_error(const GgufWriter& w, ErrorKind kind, const std::string& mentions) {
  auto v = vocabulary_of(w);
  ASSERT_FALSE(v.ok()) << "expected an error mentioning " << mentions;
  EXPECT_EQ(v.error().kind, kind) << v.error().message;
  EXPECT_NE(v.error().message.find(mentions), std::string::npos) << v.error().message;
}

TEST(VocabularyFromGguf, RejectsMissingAndInconsistentKeys) {
  GgufWriter no_model;
  no_model.set("tokenizer.ggml.tokens", GgufValue::string_array({"a"}));
  expect_error(no_model, ErrorKind::kNotFound, "tokenizer.ggml.model");

  GgufWriter no_tokens;
  no_tokens.set("tokenizer.ggml.model", GgufValue::string("llama"));
  expect_error(no_tokens, ErrorKind::kNotFound, "tokenizer.ggml.tokens");

  GgufWriter short_scores = minimal_gguf();
  short_scores.set("tokenizer.ggml.scores", GgufValue::f32_array({0, 0}));
  expect_error(short_scores, ErrorKind::kCorrupt, "tokenizer.ggml.scores");

  GgufWriter long_types = minimal_gguf();
  long_types.set("tokenizer.ggml.token_type", GgufValue::i32_array({1, 1, 1, 1, 1}));
  expect_error(long_types, ErrorKind::kCorrupt, "tokenizer.ggml.token_type");

  GgufWriter bad_type = minimal_gguf();
  bad_type.set("tokenizer.ggml.token_type", GgufValue::i32_array({1, 1, 9, 1}));
  expect_error(bad_type, ErrorKind::kCorrupt, "tokenizer.ggml.token_type");

  GgufWriter bos_out_of_range = minimal_gguf();
  bos_out_of_range.set("tokenizer.ggml.bos_token_id", GgufValue::u32(4));
  expect_error(bos_out_of_range, ErrorKind::kCorrupt, "tokenizer.ggml.bos_token_id");

  GgufWriter tokens_not_strings = minimal_gguf();
  tokens_not_strings.set("tokenizer.ggml.tokens", GgufValue::i32_array({1, 2, 3, 4}));
  expect_error(tokens_not_strings, ErrorKind::kCorrupt, "tokenizer.ggml.tokens");

  GgufWriter bpe_without_merges = minimal_gguf();
  bpe_without_merges.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  expect_error(bpe_without_merges, ErrorKind::kNotFound, "tokenizer.ggml.merges");

  GgufWriter spm_without_scores;
  spm_without_scores.set("tokenizer.ggml.model", GgufValue::string("llama"));
  spm_without_scores.set("tokenizer.ggml.tokens", GgufValue::string_array({"a"}));
  expect_error(spm_without_scores, ErrorKind::kNotFound, "tokenizer.ggml.scores");
}

TEST(TokenizerCreate, RejectsUnusableVocabularies) {
  Vocabulary unknown_pre = tiny_bpe_vocabulary();
  unknown_pre.pre = "no-such-pre-tokenizer";
  auto t = Tokenizer::create(unknown_pre);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().kind, ErrorKind::kUnsupported);
  EXPECT_NE(t.error().message.find("no-such-pre-tokenizer"), std::string::npos);

  Vocabulary bad_merge = tiny_bpe_vocabulary();
  bad_merge.merges.push_back("nospace");
  EXPECT_FALSE(Tokenizer::create(bad_merge).ok());

  Vocabulary bad_bos = tiny_spm_vocabulary();
  bad_bos.bos = static_cast<TokenId>(bad_bos.tokens.size());
  EXPECT_EQ(Tokenizer::create(bad_bos).error().kind, ErrorKind::kInvalidArgument);

  Vocabulary no_scores = tiny_spm_vocabulary();
  no_scores.scores.clear();
  EXPECT_EQ(Tokenizer::create(no_scores).error().kind, ErrorKind::kInvalidArgument);

  Vocabulary empty;
  empty.model = "gpt2";
  EXPECT_FALSE(Tokenizer::create(empty).ok());

  Vocabulary llama3_style = tiny_bpe_vocabulary();
  llama3_style.pre = "llama-bpe";
  auto llama3 = Tokenizer::create(llama3_style);
  ASSERT_TRUE(llama3.ok()) << llama3.error().message;
  EXPECT_TRUE((*llama3)->vocabulary().ignore_merges);
}

}  // namespace
}  // namespace foreshore::engine
