// `foreshore bench`: what it measures and reports (tests, thread counts,
// the file's facts, llama-bench's JSON field names) and its errors. Speeds
// themselves are not asserted, only that they are measured.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <numeric>

#include "engine/engine.h"
#include "engine/kernels.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore {
namespace {

using nlohmann::json;
using testing::run_foreshore;

std::string stories_path() {
  return testing::shared_models_dir() + "/stories260K.gguf";
}

json bench_json(const std::vector<std::string>& args) {
  std::vector<std::string> full{"bench"};
  full.insert(full.end(), args.begin(), args.end());
  full.push_back("--json");
  const auto r = run_foreshore(full);
  EXPECT_EQ(r.status, 0) << r.err;
  return r.status == 0 ? json::parse(r.out) : json::array();
}

TEST(BenchCli, ReportsBothTestsWithTheFilesFacts) {
  const json results =
      bench_json({"-m", stories_path(), "-p", "16", "-n", "8", "-r", "3", "-t", "1"});
  ASSERT_EQ(results.size(), 2u) << results.dump();
  auto file = engine::GgufFile::open(stories_path());
  ASSERT_TRUE(file.ok());
  uint64_t params = 0, bytes = 0;
  for (const auto& t : (*file)->tensors()) {
    params += t.element_count;
    bytes += t.byte_size;
  }
  const char* tests[] = {"pp16", "tg8"};
  for (size_t i = 0; i < 2; ++i) {
    const json& m = results[i];
    SCOPED_TRACE(m.dump());
    EXPECT_EQ(m["test"], tests[i]);
    EXPECT_EQ(m["n_prompt"], i == 0 ? 16 : 0);
    EXPECT_EQ(m["n_gen"], i == 0 ? 0 : 8);
    EXPECT_EQ(m["model"], "stories260K.gguf");
    EXPECT_EQ(m["type"], "F32");
    EXPECT_EQ(m["params"], params);
    EXPECT_EQ(m["size_bytes"], bytes);
    EXPECT_EQ(m["threads"], 1);
    const auto samples = m["samples_ts"].get<std::vector<double>>();
    ASSERT_EQ(samples.size(), 3u);
    for (double s : samples) EXPECT_GT(s, 0.0);
    const double mean = std::accumulate(samples.begin(), samples.end(), 0.0) / 3.0;
    EXPECT_NEAR(m["avg_ts"].get<double>(), mean, 1e-6 * mean);
    EXPECT_GE(m["stddev_ts"].get<double>(), 0.0);
  }
}

// -d fills the context before each test (llama-bench's depth); --kv-type
// chooses the cache's storage; both are named in every row.
TEST(BenchCli, DepthAndKvTypeAreMeasuredAndNamed) {
  const json results = bench_json({"-m", stories_path(), "-p", "8", "-n", "4", "-r", "1", "-t", "1",
                                   "-d", "0,32", "--kv-type", "f32"});
  ASSERT_EQ(results.size(), 4u) << results.dump();
  const char* tests[] = {"pp8", "tg4", "pp8 @ d32", "tg4 @ d32"};
  for (size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE(results[i].dump());
    EXPECT_EQ(results[i]["test"], tests[i]);
    EXPECT_EQ(results[i]["n_depth"], i < 2 ? 0 : 32);
    EXPECT_EQ(results[i]["type_k"], "f32");
    EXPECT_GT(results[i]["avg_ts"].get<double>(), 0.0);
  }
  // stories260K's heads (8 values) do not split into Q8_0 blocks: a clear error.
  const auto q8 =
      run_foreshore({"bench", "-m", stories_path(), "-p", "8", "-n", "4", "--kv-type", "q8_0"});
  EXPECT_NE(q8.status, 0);
  EXPECT_NE(q8.err.find("multiple of 32"), std::string::npos) << q8.err;
  const auto bad = run_foreshore({"bench", "-m", stories_path(), "--kv-type", "q4_0"});
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("use f16 (the default), q8_0 or f32"), std::string::npos) << bad.err;
}

TEST(BenchCli, EveryThreadCountAndOnlyTheTestsAsked) {
  const json results =
      bench_json({"-m", stories_path(), "-p", "0", "-n", "4", "-r", "1", "-t", "1,2"});
  ASSERT_EQ(results.size(), 2u) << results.dump();
  EXPECT_EQ(results[0]["threads"], 1);
  EXPECT_EQ(results[1]["threads"], 2);
  for (const json& m : results) EXPECT_EQ(m["test"], "tg4");
}

// -p and -n take lists, as llama-bench's do: each size is its own test, and
// --parallel measures every prompt and generation size pair.
TEST(BenchCli, SizeListsMeasureEachSize) {
  const json results =
      bench_json({"-m", stories_path(), "-p", "8,16", "-n", "2,4", "-r", "1", "-t", "1"});
  std::vector<std::string> tests;
  for (const json& m : results) tests.push_back(m["test"]);
  EXPECT_EQ(tests, (std::vector<std::string>{"pp8", "pp16", "tg2", "tg4"})) << results.dump();
  const json parallel = bench_json(
      {"-m", stories_path(), "-p", "4,8", "-n", "2", "-r", "1", "-t", "1", "--parallel", "1,2"});
  std::vector<std::string> pairs;
  for (const json& m : parallel)
    pairs.push_back(m["test"].get<std::string>() + "x" +
                    std::to_string(m["n_parallel"].get<int>()));
  EXPECT_EQ(pairs, (std::vector<std::string>{"pp4+tg2x1", "pp4+tg2x2", "pp8+tg2x1", "pp8+tg2x2"}))
      << parallel.dump();
}

// The reported type is the one holding most of the matrices' bytes: the
// norms stay F32 and the embedding may differ.
TEST(BenchCli, NamesTheDominantMatrixType) {
  engine::SyntheticModelSpec spec;
  spec.matrix_type = engine::TensorType::kQ5_K;
  spec.embedding_type = engine::TensorType::kQ8_0;
  spec.embedding_length = 256;
  spec.feed_forward_length = 512;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(engine::write_synthetic_model(spec, path).ok());
  const json results = bench_json({"-m", path, "-p", "8", "-n", "0", "-r", "1", "-t", "1"});
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["type"], "Q5_K");
  std::filesystem::remove(path);
}

// A context past the model's trained one is measured with a warning, as
// llama-bench measures it, never capped; past the KV budget it is refused.
TEST(BenchCli, PastTheTrainedContextWarnsAndPastTheKvBudgetRefuses) {
  engine::SyntheticModelSpec spec;  // 64 KiB of F32 KV per position: 8,192 fit 512 MiB
  spec.matrix_type = engine::TensorType::kQ8_0;
  spec.embedding_type = engine::TensorType::kQ8_0;
  spec.embedding_length = 128;
  spec.layer_count = 64;
  spec.head_count = 4;
  spec.head_count_kv = 4;
  spec.context_length = 128;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(engine::write_synthetic_model(spec, path).ok());

  const auto past_trained =
      run_foreshore({"bench", "-m", path, "-p", "0", "-n", "4", "-r", "1", "-d", "200", "--json"});
  ASSERT_EQ(past_trained.status, 0) << past_trained.err;
  EXPECT_NE(past_trained.err.find("beyond the 128 positions"), std::string::npos)
      << past_trained.err;
  EXPECT_EQ(json::parse(past_trained.out)[0]["n_depth"], 200) << past_trained.out;

  const auto deep =
      run_foreshore({"bench", "-m", path, "-p", "0", "-n", "4", "-d", "10000", "--kv-type", "f32"});
  EXPECT_EQ(deep.status, 2) << deep.err;
  EXPECT_NE(deep.err.find("lower -p, -n or -d"), std::string::npos) << deep.err;
  const auto too_long =
      run_foreshore({"bench", "-m", path, "-p", "60000", "-n", "0", "--kv-type", "f32"});
  EXPECT_EQ(too_long.status, 2) << too_long.err;
  EXPECT_NE(too_long.err.find("lower -p, -n or -d"), std::string::npos) << too_long.err;
  std::filesystem::remove(path);
}

TEST(BenchCli, TableAndErrors) {
  const auto table =
      run_foreshore({"bench", "-m", stories_path(), "-p", "8", "-n", "4", "-r", "1", "-t", "1"});
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("| stories260K.gguf |"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("| pp8 |"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("| tg4 |"), std::string::npos) << table.out;

  const auto missing = run_foreshore({"bench", "-m", stories_path(), "-m", "no-such-model"});
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.err.find("'no-such-model' not found"), std::string::npos) << missing.err;
  EXPECT_TRUE(missing.out.empty())
      << "nothing is measured before every model loads: " << missing.out;

  const auto nothing = run_foreshore({"bench", "-m", stories_path(), "-p", "0", "-n", "0"});
  EXPECT_EQ(nothing.status, 2);
  EXPECT_NE(nothing.err.find("-p or -n"), std::string::npos) << nothing.err;

  const auto not_gguf = run_foreshore({"bench", "-m", FSH_SOURCE_DIR "/README.md"});
  EXPECT_EQ(not_gguf.status, 1) << not_gguf.err;
  EXPECT_NE(not_gguf.err.find("README.md"), std::string::npos) << not_gguf.err;
}

// --cpu-level (before or after the subcommand) and FORESHORE_CPU_LEVEL pick
// the kernels' level, which the results name; a bad one stops the command.
// --parallel: one row per sequence count, llama-bench's fields plus
// n_parallel, aggregate_ts (all sequences) and ttft_ms; avg_ts per stream.
TEST(BenchCli, ParallelRowsKeepLlamaBenchFields) {
  const auto run = run_foreshore({"bench", "-m", stories_path(), "--parallel", "1,4", "-p", "8",
                                  "-n", "4", "-r", "1", "-t", "1", "--json"});
  ASSERT_EQ(run.status, 0) << run.err;
  const json rows = json::parse(run.out);
  ASSERT_EQ(rows.size(), 2u) << run.out;
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& row = rows[i];
    EXPECT_EQ(row["n_parallel"], i == 0 ? 1 : 4);
    EXPECT_EQ(row["test"], "pp8+tg4");
    EXPECT_EQ(row["n_prompt"], 8);
    EXPECT_EQ(row["n_gen"], 4);
    EXPECT_GT(row["aggregate_ts"].get<double>(), 0.0);
    EXPECT_NEAR(row["avg_ts"].get<double>() * row["n_parallel"].get<double>(),
                row["aggregate_ts"].get<double>(), 1e-6 * row["aggregate_ts"].get<double>());
    EXPECT_GT(row["ttft_ms"].get<double>(), 0.0);
    EXPECT_EQ(row["samples_ts"].size(), 1u);
  }
  const auto table = run_foreshore(
      {"bench", "-m", stories_path(), "--parallel", "2", "-p", "8", "-n", "4", "-r", "1"});
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("| n_parallel | aggregate t/s |"), std::string::npos) << table.out;
}

TEST(BenchCli, CpuLevelFlagAndVariable) {
  const std::vector<std::string> args{"-m", stories_path(), "-p", "0",     "-n", "2", "-r",
                                      "1",  "-t",           "1",  "--json"};
  auto with = [&](std::vector<std::string> front, const std::vector<std::string>& env = {}) {
    front.insert(front.end(), args.begin(), args.end());
    return run_foreshore(front, std::chrono::seconds(120), env);
  };
  for (const auto& run :
       {with({"--cpu-level", "scalar", "bench"}), with({"bench", "--cpu-level", "scalar"}),
        with({"bench"}, {"FORESHORE_CPU_LEVEL=scalar"})}) {
    ASSERT_EQ(run.status, 0) << run.err;
    const json results = json::parse(run.out);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0]["cpu_level"], "scalar");
  }
  // Without either, the best level this CPU has.
  const auto best = with({"bench"}, {"FORESHORE_CPU_LEVEL="});
  ASSERT_EQ(best.status, 0) << best.err;
  EXPECT_EQ(json::parse(best.out)[0]["cpu_level"],
            std::string(engine::cpu_level_name(engine::supported_cpu_levels().back())));

  const auto unknown = with({"bench", "--cpu-level", "sse9"});
  EXPECT_EQ(unknown.status, 2);
  EXPECT_NE(unknown.err.find("--cpu-level=sse9: not a CPU level; use one of scalar"),
            std::string::npos)
      << unknown.err;
  EXPECT_TRUE(unknown.out.empty()) << unknown.out;
  const auto from_env = with({"bench"}, {"FORESHORE_CPU_LEVEL=sse9"});
  EXPECT_EQ(from_env.status, 2);
  EXPECT_NE(from_env.err.find("FORESHORE_CPU_LEVEL=sse9"), std::string::npos) << from_env.err;

  const auto version =
      run_foreshore({"--version"}, std::chrono::seconds(30), {"FORESHORE_CPU_LEVEL=scalar"});
  EXPECT_EQ(version.status, 0);
  EXPECT_NE(version.out.find("kernels: scalar (this CPU: scalar"), std::string::npos)
      << version.out;
}

}  // namespace
}  // namespace foreshore
