// `foreshore bench`: prompt-processing and generation speed of any GGUF
// file, measured the way llama.cpp's llama-bench measures it (random tokens,
// one warm-up run, the mean and spread of tokens/s over repetitions), so the
// two can be compared on the same file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cli/commands.h"
#include "engine/engine.h"
#include "engine/kernels.h"

namespace foreshore::cli {
namespace {

struct BenchOptions {
  std::vector<std::string> models;
  // Test sizes, each measured (llama-bench's -p and -n lists); 0 skips.
  std::vector<int32_t> prompt_tokens{512};
  std::vector<int32_t> generated_tokens{128};
  std::vector<int32_t> threads{0};
  int32_t repetitions = 5;
  bool json = false;
  // Sequence counts for the continuous-batching test; empty: not run.
  std::vector<int32_t> parallel;
  // Tokens already in the context when a test starts (llama-bench's -d).
  std::vector<int32_t> depths{0};
  std::string kv_type = "f16";  // how the KV cache stores keys and values
  engine::TensorType kv = engine::TensorType::kF16;
};

struct FileFacts {
  std::string type;  // the matrix type holding most of the weight bytes
  uint64_t bytes = 0;
  uint64_t parameters = 0;
};

FileFacts file_facts(const engine::GgufFile& file) {
  FileFacts f;
  std::map<uint32_t, uint64_t> bytes_by_type;
  for (const auto& t : file.tensors()) {
    f.bytes += t.byte_size;
    f.parameters += t.element_count;
    if (t.dims.size() >= 2) bytes_by_type[t.type] += t.byte_size;
  }
  const auto dominant =
      std::max_element(bytes_by_type.begin(), bytes_by_type.end(),
                       [](const auto& a, const auto& b) { return a.second < b.second; });
  f.type = dominant != bytes_by_type.end() ? engine::tensor_type_name(dominant->first) : "-";
  return f;
}

struct Measurement {
  std::string test;  // "pp512", "tg128"
  int32_t prompt = 0;
  int32_t generated = 0;
  std::vector<double> tokens_per_second;
  int32_t depth = 0;  // tokens in the context before the test
  // Continuous batching (--parallel): sequences decoded together, and the
  // mean time from the start to each one's first token (prompts loaded one
  // after another, as a scheduler that admits them together would).
  int32_t parallel = 0;
  std::vector<double> ttft_ms;
  double mean_ttft_ms() const {
    double s = 0.0;
    for (double v : ttft_ms) s += v;
    return ttft_ms.empty() ? 0.0 : s / static_cast<double>(ttft_ms.size());
  }
  double mean() const {
    double s = 0.0;
    for (double v : tokens_per_second) s += v;
    return tokens_per_second.empty() ? 0.0 : s / static_cast<double>(tokens_per_second.size());
  }
  double stddev() const {
    if (tokens_per_second.size() < 2) return 0.0;
    const double m = mean();
    double s = 0.0;
    for (double v : tokens_per_second) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(tokens_per_second.size() - 1));
  }
};

// Tokens drawn uniformly from the vocabulary: speed does not depend on which
// tokens run, and llama-bench does the same.
std::vector<engine::TokenId> random_tokens(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<engine::TokenId> pick(0, vocab - 1);
  std::vector<engine::TokenId> t(static_cast<size_t>(n));
  for (auto& v : t) v = pick(rng);
  return t;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Each timed run starts from the context's first `depth` positions, filled
// once before the runs.
Status time_prompt(engine::InferenceContext& ctx, engine::ThreadPool& pool, int32_t depth,
                   std::span<const engine::TokenId> tokens, double* seconds) {
  ctx.truncate(depth);
  const auto start = std::chrono::steady_clock::now();
  auto logits = ctx.evaluate(tokens, pool);
  *seconds = seconds_since(start);
  return logits.ok() ? Status::Ok() : Status(logits.error());
}

Status time_generation(engine::InferenceContext& ctx, engine::ThreadPool& pool, int32_t depth,
                       std::span<const engine::TokenId> tokens, double* seconds) {
  ctx.truncate(depth);
  const auto start = std::chrono::steady_clock::now();
  for (const engine::TokenId& t : tokens) {
    auto logits = ctx.evaluate(std::span<const engine::TokenId>(&t, 1), pool);
    if (!logits.ok()) return logits.error();
  }
  *seconds = seconds_since(start);
  return Status::Ok();
}

// The positions a test needs must fit the KV budget. Past the model's
// trained context they are measured with a warning, as llama-bench measures
// them: the speed there is real, the model's outputs are not meant to be.
Status check_fits(const engine::Model& model, const engine::ContextOptions& copts) {
  const int64_t fits =
      static_cast<int64_t>(copts.kv_memory_budget / model.kv_bytes_per_token(copts.kv_type));
  if (copts.context_length > fits) {
    return make_error(ErrorKind::kInvalidArgument,
                      "the test needs " + std::to_string(copts.context_length) +
                          " positions, but the KV cache budget of this model holds " +
                          std::to_string(fits) + "; lower -p, -n or -d");
  }
  const int64_t trained = model.config().context_length;
  if (copts.context_length > trained) {
    std::fprintf(stderr,
                 "foreshore bench: warning: the test reaches position %lld, beyond the %lld "
                 "positions model '%s' was trained for; measured anyway (as llama-bench does), "
                 "but its outputs there are not what the model was trained to give\n",
                 static_cast<long long>(copts.context_length), static_cast<long long>(trained),
                 model.config().name.c_str());
  }
  return Status::Ok();
}

int32_t largest(const std::vector<int32_t>& counts) {
  return counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
}

Result<std::vector<Measurement>> measure(const std::shared_ptr<const engine::Model>& model,
                                         const BenchOptions& o, int32_t depth,
                                         engine::ThreadPool& pool) {
  const int32_t prompt_max = largest(o.prompt_tokens);
  engine::ContextOptions copts;
  copts.context_length = depth + std::max(prompt_max, largest(o.generated_tokens));
  copts.max_batch = std::max(1, std::min(std::max(prompt_max, depth), 512));
  copts.kv_type = o.kv;
  FSH_TRY_STATUS(check_fits(*model, copts));
  FSH_ASSIGN_OR_RETURN(auto ctx, engine::InferenceContext::create(model, copts));
  const int32_t vocab = model->config().vocab_size;
  if (depth > 0) {
    const auto filled = ctx->evaluate(random_tokens(depth, vocab, 4242), pool);
    if (!filled.ok()) return filled.error();
  }
  std::vector<Measurement> out;
  using Timer = Status (*)(engine::InferenceContext&, engine::ThreadPool&, int32_t,
                           std::span<const engine::TokenId>, double*);
  struct Test {
    int32_t tokens;
    const char* prefix;
    Timer timer;
    int32_t Measurement::*count;  // which of n_prompt / n_gen the test sets
  };
  std::vector<Test> tests;
  for (int32_t n : o.prompt_tokens) tests.push_back({n, "pp", time_prompt, &Measurement::prompt});
  for (int32_t n : o.generated_tokens) {
    tests.push_back({n, "tg", time_generation, &Measurement::generated});
  }
  // Back to `depth` before each run; a model with convolution state (lfm2)
  // cannot go back, so its depth is filled again (untimed).
  const auto rewind = [&]() -> Status {
    ctx->truncate(depth);
    if (ctx->position() == depth) return Status::Ok();
    const auto filled = ctx->evaluate(random_tokens(depth, vocab, 4242), pool);
    return filled.ok() ? Status::Ok() : Status(filled.error());
  };
  for (const auto& test : tests) {
    if (test.tokens <= 0) continue;
    Measurement m;
    m.test = test.prefix + std::to_string(test.tokens);
    if (depth > 0) m.test += " @ d" + std::to_string(depth);
    m.depth = depth;
    m.*test.count = test.tokens;
    double seconds = 0.0;
    // The first run warms caches and pages the weights in; it is not counted.
    for (int32_t rep = 0; rep <= o.repetitions; ++rep) {
      const auto tokens = random_tokens(test.tokens, vocab, static_cast<uint32_t>(rep + 1));
      if (depth > 0) FSH_TRY_STATUS(rewind());
      FSH_TRY_STATUS(test.timer(*ctx, pool, depth, tokens, &seconds));
      if (rep > 0) m.tokens_per_second.push_back(test.tokens / std::max(seconds, 1e-9));
    }
    out.push_back(std::move(m));
  }
  return out;
}

// N sequences: each loads a prompt of -p tokens, then all generate -n tokens
// together, one batched step per token (as llama-batched-bench measures).
// Samples are aggregate generation tokens/s (all sequences together).
Result<Measurement> measure_parallel(const std::shared_ptr<const engine::Model>& model,
                                     const BenchOptions& o, int32_t sequences,
                                     int32_t prompt_tokens, int32_t generated_tokens,
                                     engine::ThreadPool& pool) {
  engine::ContextOptions copts;
  copts.context_length = std::max(1, prompt_tokens) + generated_tokens;
  copts.max_batch = std::max(1, std::min(prompt_tokens, 512));
  copts.kv_type = o.kv;
  FSH_TRY_STATUS(check_fits(*model, copts));
  std::vector<std::unique_ptr<engine::InferenceContext>> contexts;
  for (int32_t i = 0; i < sequences; ++i) {
    FSH_ASSIGN_OR_RETURN(auto ctx, engine::InferenceContext::create(model, copts));
    contexts.push_back(std::move(ctx));
  }
  FSH_ASSIGN_OR_RETURN(auto decoder, engine::BatchDecoder::create(model, sequences));
  const int32_t vocab = model->config().vocab_size;
  Measurement m;
  m.test = "pp" + std::to_string(prompt_tokens) + "+tg" + std::to_string(generated_tokens);
  m.prompt = prompt_tokens;
  m.generated = generated_tokens;
  m.parallel = sequences;
  std::vector<engine::BatchEntry> entries(static_cast<size_t>(sequences));
  std::vector<engine::TokenId> next(static_cast<size_t>(sequences));
  for (int32_t rep = 0; rep <= o.repetitions; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    double ttft_sum = 0.0;
    for (int32_t i = 0; i < sequences; ++i) {
      auto& ctx = *contexts[static_cast<size_t>(i)];
      ctx.truncate(0);
      const auto prompt =
          random_tokens(std::max(1, prompt_tokens), vocab, static_cast<uint32_t>(rep * 997 + i));
      if (auto logits = ctx.evaluate(prompt, pool); !logits.ok()) return logits.error();
      ttft_sum += seconds_since(start) * 1000.0;
    }
    const auto tokens =
        random_tokens(generated_tokens * sequences, vocab, static_cast<uint32_t>(rep + 7));
    const auto decode_start = std::chrono::steady_clock::now();
    for (int32_t step = 0; step < generated_tokens; ++step) {
      for (int32_t i = 0; i < sequences; ++i) {
        next[static_cast<size_t>(i)] = tokens[static_cast<size_t>(step * sequences + i)];
        entries[static_cast<size_t>(i)] = {contexts[static_cast<size_t>(i)].get(),
                                           {&next[static_cast<size_t>(i)], 1}};
      }
      FSH_TRY_STATUS(decoder->decode(entries, pool));
    }
    const double seconds = seconds_since(decode_start);
    if (rep == 0) continue;  // warm-up
    m.tokens_per_second.push_back(static_cast<double>(generated_tokens) * sequences /
                                  std::max(seconds, 1e-9));
    m.ttft_ms.push_back(ttft_sum / sequences);
  }
  return m;
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

int bench(BenchOptions o) {
  if (largest(o.prompt_tokens) == 0 && largest(o.generated_tokens) == 0) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "-p 0 and -n 0 turn both tests off; give -p or -n a positive count"));
  }
  if (!o.parallel.empty() && largest(o.generated_tokens) == 0) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "--parallel measures batched generation; give -n a positive count"));
  }
  const auto kv = engine::parse_tensor_type(o.kv_type);
  if (!kv || (*kv != engine::TensorType::kF16 && *kv != engine::TensorType::kF32 &&
              *kv != engine::TensorType::kQ8_0)) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "--kv-type " + o.kv_type + ": use f16 (the default), q8_0 or f32"));
  }
  o.kv = *kv;
  if (!o.parallel.empty() && (o.depths.size() != 1 || o.depths.front() != 0)) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "-d sets the context depth of the pp/tg tests; --parallel starts "
                           "every sequence empty, so give one or the other"));
  }
  // Every model loads before anything is measured, so a bad name fails at once.
  std::vector<std::pair<std::string, std::shared_ptr<const engine::Model>>> models;
  for (const auto& name : o.models) {
    auto path = engine::resolve_model_path(name);
    if (!path.ok()) return fail(path.error());
    auto model = engine::Model::load(*path);
    if (!model.ok()) return fail(model.error());
    models.emplace_back(*path, *model);
  }
  nlohmann::json results = nlohmann::json::array();
  if (!o.json && o.parallel.empty()) {
    std::printf("| model | size | params | type | cpu | threads | test | t/s |\n");
    std::printf("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |\n");
  } else if (!o.json) {
    std::printf(
        "| model | type | threads | test | n_parallel | aggregate t/s | per-stream t/s | "
        "vs 1 | TTFT ms |\n");
    std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  }
  // The kernels' instruction-set level: A/B runs (--cpu-level) differ only here.
  const std::string cpu(engine::cpu_level_name(engine::cpu_level()));
  for (const auto& [path, model] : models) {
    const std::string file = std::filesystem::path(path).filename().string();
    const FileFacts facts = file_facts(model->file());
    for (int32_t threads : o.threads) {
      engine::ThreadPool pool(threads);
      double single_stream = 0.0;
      // Every -p x -n pair for every sequence count, as llama-batched-bench.
      std::vector<std::tuple<int32_t, int32_t, int32_t>> runs;
      for (int32_t p : o.prompt_tokens) {
        for (int32_t n : o.generated_tokens) {
          if (n <= 0) continue;
          for (int32_t sequences : o.parallel) runs.emplace_back(p, n, sequences);
        }
      }
      for (const auto& [prompt_tokens, generated_tokens, sequences] : runs) {
        if (sequences == o.parallel.front()) single_stream = 0.0;  // a new -p x -n pair
        auto m = measure_parallel(model, o, sequences, prompt_tokens, generated_tokens, pool);
        if (!m.ok()) return fail(m.error());
        const double aggregate = m->mean();
        if (sequences == 1) single_stream = aggregate;
        if (o.json) {
          results.push_back({{"model", file},
                             {"file", path},
                             {"type", facts.type},
                             {"size_bytes", facts.bytes},
                             {"params", facts.parameters},
                             {"cpu_level", cpu},
                             {"threads", pool.size()},
                             {"test", m->test},
                             {"n_prompt", m->prompt},
                             {"n_gen", m->generated},
                             {"n_parallel", sequences},
                             {"type_k", o.kv_type},
                             {"type_v", o.kv_type},
                             {"avg_ts", aggregate / sequences},
                             {"stddev_ts", m->stddev() / sequences},
                             {"aggregate_ts", aggregate},
                             {"samples_ts", m->tokens_per_second},
                             {"ttft_ms", m->mean_ttft_ms()}});
        } else {
          std::printf("| %s | %s | %d | %s | %d | %.2f ± %.2f | %.2f | %s | %.1f |\n", file.c_str(),
                      facts.type.c_str(), pool.size(), m->test.c_str(), sequences, aggregate,
                      m->stddev(), aggregate / sequences,
                      single_stream > 0.0
                          ? (std::to_string(aggregate / single_stream).substr(0, 4) + "x").c_str()
                          : "-",
                      m->mean_ttft_ms());
          std::fflush(stdout);
        }
      }
      if (!o.parallel.empty()) continue;
      std::vector<Measurement> measured;
      for (int32_t depth : o.depths) {
        auto at_depth = measure(model, o, depth, pool);
        if (!at_depth.ok()) return fail(at_depth.error());
        measured.insert(measured.end(), at_depth->begin(), at_depth->end());
      }
      for (const Measurement& m : measured) {
        if (o.json) {
          results.push_back({{"model", file},
                             {"file", path},
                             {"type", facts.type},
                             {"size_bytes", facts.bytes},
                             {"params", facts.parameters},
                             {"cpu_level", cpu},
                             {"threads", pool.size()},
                             {"test", m.test},
                             {"n_prompt", m.prompt},
                             {"n_gen", m.generated},
                             {"n_depth", m.depth},
                             {"type_k", o.kv_type},
                             {"type_v", o.kv_type},
                             {"avg_ts", m.mean()},
                             {"stddev_ts", m.stddev()},
                             {"samples_ts", m.tokens_per_second}});
        } else {
          std::printf("| %s | %s | %.2f M | %s | %s | %d | %s | %.2f ± %.2f |\n", file.c_str(),
                      mib(facts.bytes).c_str(), static_cast<double>(facts.parameters) / 1e6,
                      facts.type.c_str(), cpu.c_str(), pool.size(), m.test.c_str(), m.mean(),
                      m.stddev());
          std::fflush(stdout);
        }
      }
    }
  }
  if (o.json) std::printf("%s\n", results.dump(2).c_str());
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto opts = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Measure prompt-processing and generation tokens/s of GGUF models, as llama-bench does");
  cmd->add_option("-m,--model", opts->models,
                  "GGUF file, or model name on FORESHORE_MODEL_PATH (repeatable)")
      ->required();
  cmd->add_option("-p,--n-prompt", opts->prompt_tokens,
                  "Prompt tokens processed as one prompt, in steps of up to 512 (ppN; 0 skips "
                  "the test); comma-separated sizes are each measured")
      ->delimiter(',')
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", opts->generated_tokens,
                  "Tokens generated one at a time from an empty context (tgN; 0 skips the test); "
                  "comma-separated sizes are each measured")
      ->delimiter(',')
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option("-t,--threads", opts->threads,
                  "Thread counts to measure, comma-separated (0: one per core)")
      ->delimiter(',')
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("-r,--repetitions", opts->repetitions,
                  "Timed runs of each test, after one untimed warm-up run")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--parallel", opts->parallel,
                  "Instead of pp/tg: N sequences, comma-separated counts, each loading a -p "
                  "prompt and then generating -n tokens together in batched steps (continuous "
                  "batching, as llama-batched-bench measures); reports aggregate and per-stream "
                  "t/s and time to first token")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  cmd->add_option("-d,--n-depth", opts->depths,
                  "Tokens already in the context when each pp/tg test starts, comma-separated "
                  "(as llama-bench's -d: decode speed at a filled context)")
      ->delimiter(',')
      ->check(CLI::Range(0, 1 << 17))
      ->capture_default_str();
  cmd->add_option("--kv-type", opts->kv_type,
                  "How the KV cache stores keys and values: f16 (as llama-bench's default), q8_0 "
                  "(about half of f16; as llama-bench -ctk q8_0 -ctv q8_0) or f32")
      ->capture_default_str();
  cmd->add_flag("--json", opts->json,
                "Print a JSON array (field names as llama-bench -o json: avg_ts, stddev_ts, "
                "samples_ts, n_prompt, n_gen, n_depth, type_k, type_v; with --parallel also "
                "n_parallel, aggregate_ts, ttft_ms, avg_ts being per stream) instead of the table");
  cmd->footer(
      "Examples:\n"
      "  foreshore bench -m stories260K\n"
      "  foreshore bench -m model-q4_0.gguf -m model-q8_0.gguf -p 128,512 -n 32 -t 1,2\n"
      "  foreshore bench -m model-q4_k_m.gguf --parallel 1,2,4,8 -p 64 -n 32\n"
      "  foreshore bench -m model-q4_0.gguf -p 0 -n 32 -d 0,512,2048 --kv-type q8_0\n"
      "Weights are memory-mapped; the warm-up run pages them in. Tokens are drawn at\n"
      "random from the vocabulary. t/s is the mean over the repetitions, ± their standard\n"
      "deviation. bench/llama_cpp_compare.sh runs this and llama-bench on the same files.");
  on_run(cmd, [opts] { return bench(*opts); });
}

}  // namespace foreshore::cli
