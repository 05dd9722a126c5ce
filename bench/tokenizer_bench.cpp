// Tokenizer encode throughput (bytes/s) on a few KB of mixed text, for a
// SentencePiece vocabulary (Llama 2) and a byte-level BPE one (GPT-2).
#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <string>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

namespace {

using foreshore::engine::GgufFile;
using foreshore::engine::Tokenizer;
using foreshore::engine::Vocabulary;

// Prose, code, numbers, markup and several scripts, without repetition, so
// that per-call word caching cannot flatter the figures.
constexpr const char* kMixedText = R"TEXT(
The committee met on Tuesday, 14 March 2023, to review the quarterly figures. Revenue grew by 7.3%
year over year (from $1,204,331 to $1,292,247), while operating costs fell slightly. Ms. O'Brien
asked whether the new warehouse in Rotterdam would open before the autumn; nobody could say for sure.
"We'll know more after the inspection," replied the facilities manager, who'd just returned from site.

def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals; returns them sorted by start."""
    result: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if result and start <= result[-1][1]:
            result[-1] = (result[-1][0], max(result[-1][1], end))
        else:
            result.append((start, end))
    return result

template <typename T>
std::optional<T> parse_number(std::string_view s) {
  T value{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

<table class="results"><tr><th>Run</th><th>Latency (ms)</th></tr><tr><td>p50</td><td>0.42</td></tr>
<tr><td>p99</td><td>3.17</td></tr></table>

SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC LIMIT 25;

Der schnelle braune Fuchs springt über den faulen Hund. Größere Änderungen folgen im Frühjahr.
Le cœur a ses raisons que la raison ne connaît point ; c'était déjà l'été à Montréal.
El niño comió paella en Valencia mientras llovía sobre la ciudad.
Быстрая коричневая лиса прыгает через ленивую собаку, а потом убегает в лес.
Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.
敏捷的棕色狐狸跳过了懒狗。今天的天气非常好，我们去公园散步吧。
素早い茶色の狐がのろまな犬を飛び越える。東京は今日も晴れです。
빠른 갈색 여우가 게으른 개를 뛰어넘습니다. 서울의 날씨가 좋네요.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।
الثعلب البني السريع يقفز فوق الكلب الكسول.
Emoji and symbols: 🦙🚀✨ → ≤ ≥ ≠ ∑ ∫ √ π ≈ 3.14159; ✅ done, ❌ failed, ⚠️ warning.

{"id": "req-7f3a9c", "model": "edge-small", "messages": [{"role": "user", "content": "Summarise
the attached report in three bullet points."}], "temperature": 0.2, "max_tokens": 256, "stream": true}

    Indented block with	tabs	and    runs of   spaces,
	mixed line endings\r\nand trailing whitespace   
Version 2.14.0-rc.3 fixes CVE-2024-31337; see https://example.org/security/advisories?id=31337#details.
Contact: support@example.com, +1 (555) 010-2299, or visit 221B Baker Street, London NW1 6XE.
)TEXT";

std::shared_ptr<const Tokenizer> load(const std::string& vocab_file) {
  const std::string path = std::string(FSH_SHARED_DATA_DIR) + "/tokenizer-tests/" + vocab_file;
  auto file = GgufFile::open(path);
  if (!file.ok()) return nullptr;
  auto vocab = Vocabulary::from_gguf(**file);
  if (!vocab.ok()) return nullptr;
  auto tokenizer = Tokenizer::create(std::move(vocab).value());
  return tokenizer.ok() ? *tokenizer : nullptr;
}

void run_encode(benchmark::State& state, const std::string& vocab_file) {
  static std::map<std::string, std::shared_ptr<const Tokenizer>> cache;
  auto& tokenizer = cache[vocab_file];
  if (!tokenizer) tokenizer = load(vocab_file);
  if (!tokenizer) {
    state.SkipWithError(("cannot load " + vocab_file).c_str());
    return;
  }
  const std::string text(kMixedText);
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tokenizer->encode(text, true, false);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["bytes"] = static_cast<double>(text.size());
}

void BM_EncodeSentencePiece(benchmark::State& state) {
  run_encode(state, "ggml-vocab-llama-spm.gguf");
}
void BM_EncodeByteLevelBpe(benchmark::State& state) {
  run_encode(state, "ggml-vocab-gpt-2.gguf");
}
void BM_EncodeByteLevelBpeStarcoder(benchmark::State& state) {
  run_encode(state, "ggml-vocab-starcoder.gguf");
}

BENCHMARK(BM_EncodeSentencePiece);
BENCHMARK(BM_EncodeByteLevelBpe);
BENCHMARK(BM_EncodeByteLevelBpeStarcoder);

}  // namespace

BENCHMARK_MAIN();
