#include "backend/backend.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "backend/backend_kinds.h"
#include "engine/engine.h"
#include "support/fault_server.h"

namespace foreshore::backend {
namespace {

using nlohmann::json;
using testing::FaultMode;
using testing::FaultServer;
using namespace std::chrono_literals;

const std::string kModels = std::string(FSH_SHARED_DATA_DIR) + "/models";

void use_shared_models() {
  ::setenv("FORESHORE_MODEL_PATH", kModels.c_str(), 1);
}

// The kind-specific settings of a tier the test has given that kind.
EmbeddedTierSettings& embedded_of(TierConfig& c) {
  return std::get<EmbeddedTierSettings>(c.settings);
}
OpenAiTierSettings& openai_of(TierConfig& c) {
  return std::get<OpenAiTierSettings>(c.settings);
}

BackendRequest chat(const std::string& text) {
  BackendRequest r;
  r.messages = {{"user", text}};
  return r;
}

BackendRequest greedy_prompt(const std::string& prompt, int32_t max_tokens) {
  BackendRequest r;
  r.prompt = prompt;
  r.params.temperature = 0.0f;
  r.params.max_tokens = max_tokens;
  return r;
}

// Lets a test hold a generation mid-stream until it says go.
class Gate {
 public:
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// ---------------------------------------------------------------- create_backend

TEST(CreateBackend, ErrorsNameTheTierAndTheField) {
  TierConfig c;
  c.name = "edge";
  c.model = "";
  auto r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(r.error().message.find("tier 'edge' (kind 'embedded')"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("model is empty"), std::string::npos) << r.error().message;

  c.settings = OpenAiTierSettings{};
  c.name = "cloud";
  c.model = "gpt";
  openai_of(c).endpoint = "ftp://example.com/v1";
  r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("tier 'cloud'"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("endpoint"), std::string::npos) << r.error().message;

  openai_of(c).endpoint = "http://127.0.0.1:1/v1";
  c.max_concurrency = 0;
  r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("max_concurrency"), std::string::npos) << r.error().message;
}

TEST(CreateBackend, MissingModelIsNotFound) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "no-such-model";
  auto r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kNotFound);
  EXPECT_NE(r.error().message.find("tier 'edge'"), std::string::npos) << r.error().message;
}

TEST(CreateBackend, UnknownChatFormatIsRejected) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  embedded_of(c).chat_format = "klingon";
  auto r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("chat_format 'klingon'"), std::string::npos)
      << r.error().message;
}

// enable_thinking false opens the reply with an empty <think></think> block
// on a reasoning format (as Qwen3's template does), so the prompt grows by
// it; unset keeps the model's default.
TEST(CreateBackend, EnableThinkingFalseClosesTheThinkBlockUpFront) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  embedded_of(c).chat_format = "qwen3";
  auto backend = create_backend(c);
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  BackendRequest r;
  r.messages = {{"user", "Tell me a story"}};
  const auto thinking = (*backend)->count_prompt_tokens(r);
  r.params.enable_thinking = false;
  const auto direct = (*backend)->count_prompt_tokens(r);
  ASSERT_TRUE(thinking && direct);
  EXPECT_GT(*direct, *thinking);
  r.params.enable_thinking = true;
  EXPECT_EQ((*backend)->count_prompt_tokens(r), thinking);
}

TEST(CreateBackend, ApiKeyVariableMustBeSet) {
  ::unsetenv("FSH_BACKEND_TEST_UNSET_KEY");
  TierConfig c;
  c.name = "cloud";
  c.settings = OpenAiTierSettings{};
  c.model = "gpt";
  openai_of(c).endpoint = "http://127.0.0.1:1/v1";
  openai_of(c).api_key_env = "FSH_BACKEND_TEST_UNSET_KEY";
  auto r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("FSH_BACKEND_TEST_UNSET_KEY"), std::string::npos)
      << r.error().message;
  ::setenv("FSH_BACKEND_TEST_UNSET_KEY", "", 1);
  r = create_backend(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("empty"), std::string::npos) << r.error().message;
}

// ---------------------------------------------------------------- pass-through JSON

TEST(PassThroughJson, HoldsOneCompactValueOrNothing) {
  EXPECT_TRUE(PassThroughJson().empty());
  EXPECT_EQ(PassThroughJson().text(), "");
  const PassThroughJson tools =
      PassThroughJson::of(json::parse(R"([ {"type": "function", "function": {"name": "f"}} ])"));
  EXPECT_FALSE(tools.empty());
  EXPECT_EQ(tools.text(), R"([{"function":{"name":"f"},"type":"function"}])");
  EXPECT_EQ(PassThroughJson::of(json("none")).text(), R"("none")");
  EXPECT_EQ(tools, PassThroughJson::of(json::parse(tools.text())));
  // Invalid UTF-8 in a string is replaced, never thrown on nor passed on.
  const std::string broken = "a\xff";
  EXPECT_EQ(PassThroughJson::of(json{{"k", broken}}).text(), "{\"k\":\"a\xef\xbf\xbd\"}");
}

TEST(EndpointUrl, Parses) {
  auto u = parse_endpoint_url("https://api.openai.com/v1/");
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_EQ(u->scheme, "https");
  EXPECT_EQ(u->host, "api.openai.com");
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->base_path, "/v1");
  EXPECT_EQ(u->origin(), "https://api.openai.com:443");

  u = parse_endpoint_url("http://[::1]:8080");
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->base_path, "");
  EXPECT_EQ(u->origin(), "http://[::1]:8080");

  for (const char* bad : {"localhost:8080", "http://", "http://host:0", "http://host:99999/v1",
                          "http://host:x", "http://u:p@host/v1", "http://host/v1?x=1"}) {
    EXPECT_FALSE(parse_endpoint_url(bad).ok()) << bad;
  }
}

// ---------------------------------------------------------------- embedded

class EmbeddedBackendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    use_shared_models();
    TierConfig c;
    c.name = "edge";
    c.settings = EmbeddedTierSettings{};
    c.model = "stories260K";
    c.max_concurrency = 3;
    embedded_of(c).kv_memory_mb = 64;
    embedded_of(c).threads = 2;
    auto created = create_backend(c);
    ASSERT_TRUE(created.ok()) << created.error().message;
    backend_ = new std::shared_ptr<Backend>(std::move(created).value());
  }
  static void TearDownTestSuite() {
    delete backend_;
    backend_ = nullptr;
  }

  Backend& backend() { return **backend_; }

  static std::shared_ptr<Backend>* backend_;
};

std::shared_ptr<Backend>* EmbeddedBackendTest::backend_ = nullptr;

TEST_F(EmbeddedBackendTest, Info) {
  const BackendInfo& info = backend().info();
  EXPECT_EQ(info.name, "edge");
  EXPECT_EQ(info.kind, backend::TierKind::kEmbedded);
  EXPECT_EQ(info.model, "stories260K");
  auto path = engine::resolve_model_path("stories260K");
  ASSERT_TRUE(path.ok());
  auto model = engine::Model::load(*path);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(info.model_version, (*model)->version());
  EXPECT_GT(info.context_length, 0);
}

TEST_F(EmbeddedBackendTest, GreedyMatchesTheReferenceAndRepeats) {
  std::ifstream in(kModels + "/stories260K.greedy.json");
  ASSERT_TRUE(in.good());
  const std::string reference = json::parse(in).at("text").get<std::string>();

  // An empty prompt is just BOS, as the reference was produced.
  auto a = backend().generate(greedy_prompt("", 40), {});
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->finish_reason, "length");
  EXPECT_EQ(a->usage.completion_tokens, 40);
  EXPECT_EQ(a->usage.prompt_tokens, 1);
  std::string text = a->text;
  text.erase(0, text.find_first_not_of(' '));
  ASSERT_GT(text.size(), 40u);
  EXPECT_EQ(reference.substr(0, text.size()), text);
  EXPECT_EQ(a->model, "stories260K");
  EXPECT_EQ(a->model_version, backend().info().model_version);

  auto b = backend().generate(greedy_prompt("", 40), {});
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(a->text, b->text);
}

// Greedy stories260K repeats itself ("Lily ... Lily"); a frequency penalty
// reaches the sampler and spreads the words.
TEST_F(EmbeddedBackendTest, PresenceAndFrequencyPenaltiesApply) {
  const auto distinct = [](const std::vector<TokenLogprob>& tokens) {
    std::set<std::string> seen;
    for (const auto& t : tokens) seen.insert(t.token);
    return seen.size();
  };
  BackendRequest req = greedy_prompt("Once upon a time", 60);
  req.params.logprobs = true;
  auto plain = backend().generate(req, {});
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  req.params.frequency_penalty = 2.0f;
  req.params.presence_penalty = 2.0f;
  auto penalised = backend().generate(req, {});
  ASSERT_TRUE(penalised.ok()) << penalised.error().message;
  EXPECT_NE(plain->text, penalised->text);
  EXPECT_GT(distinct(penalised->logprobs), distinct(plain->logprobs)) << plain->text << "\n"
                                                                      << penalised->text;
}

TEST_F(EmbeddedBackendTest, StreamedDeltasConcatenateToTheText) {
  auto plain = backend().generate(greedy_prompt("Once upon a time", 50), {});
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  std::string streamed;
  int deltas = 0;
  auto r = backend().generate(greedy_prompt("Once upon a time", 50), [&](const Delta& d) {
    streamed += d.text;
    ++deltas;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(streamed, r->text);
  EXPECT_EQ(r->text, plain->text);
  EXPECT_GT(deltas, 10);
  EXPECT_GE(r->total_ms, r->time_to_first_token_ms);
}

TEST_F(EmbeddedBackendTest, LogprobsHaveEntropyAndAlternatives) {
  BackendRequest req = greedy_prompt("Once upon a time", 12);
  req.params.logprobs = true;
  req.params.top_logprobs = 3;
  std::vector<TokenLogprob> streamed;
  auto r = backend().generate(req, [&](const Delta& d) {
    streamed.insert(streamed.end(), d.logprobs.begin(), d.logprobs.end());
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->logprobs.size(), static_cast<size_t>(r->usage.completion_tokens));
  EXPECT_FALSE(streamed.empty());
  std::string joined;
  for (const auto& t : r->logprobs) {
    joined += t.token;
    EXPECT_LE(t.logprob, 0.0f);
    ASSERT_TRUE(t.entropy.has_value());
    EXPECT_GE(*t.entropy, 0.0f);
    ASSERT_EQ(t.top.size(), 3u);
    // Greedy picks the most likely token.
    EXPECT_EQ(t.top[0].first, t.token);
    EXPECT_FLOAT_EQ(t.top[0].second, t.logprob);
    EXPECT_GE(t.top[0].second, t.top[1].second);
    EXPECT_GE(t.top[1].second, t.top[2].second);
  }
  EXPECT_EQ(joined, r->text);

  auto none = backend().generate(greedy_prompt("Once upon a time", 5), {});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->logprobs.empty());
}

TEST_F(EmbeddedBackendTest, StopStringEndsTheTextBeforeIt) {
  auto full = backend().generate(greedy_prompt("Once upon a time", 60), {});
  ASSERT_TRUE(full.ok()) << full.error().message;
  const size_t at = full->text.find(' ', 10);
  ASSERT_NE(at, std::string::npos);
  const std::string stop = full->text.substr(at, 4);

  BackendRequest req = greedy_prompt("Once upon a time", 60);
  req.params.stop = {stop};
  std::string streamed;
  auto r = backend().generate(req, [&](const Delta& d) {
    streamed += d.text;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "stop");
  EXPECT_EQ(r->text, full->text.substr(0, full->text.find(stop)));
  EXPECT_EQ(streamed, r->text);
}

TEST_F(EmbeddedBackendTest, MaxTokensFinishesWithLength) {
  auto r = backend().generate(greedy_prompt("Once upon a time", 7), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "length");
  EXPECT_EQ(r->usage.completion_tokens, 7);

  BackendRequest bad = greedy_prompt("x", 0);
  auto e = backend().generate(bad, {});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().kind, ErrorKind::kInvalidArgument);
}

// Without max_tokens the edge stops at 512 tokens (docs/API.md says so).
TEST_F(EmbeddedBackendTest, DefaultMaxTokensIsTheDocumentedOne) {
  BackendRequest r = greedy_prompt("Once upon a time", 1);
  r.params.max_tokens.reset();
  auto c = backend().generate(r, {});
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_LE(c->usage.completion_tokens, 512);
  if (c->finish_reason == "length") {
    EXPECT_EQ(c->usage.completion_tokens, 512);
  }
}

TEST_F(EmbeddedBackendTest, RefusingADeltaCancels) {
  std::string streamed;
  int calls = 0;
  auto r = backend().generate(greedy_prompt("Once upon a time", 100), [&](const Delta& d) {
    if (++calls > 3) return false;
    streamed += d.text;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_EQ(r->text, streamed);
  EXPECT_LT(r->usage.completion_tokens, 100);
}

TEST_F(EmbeddedBackendTest, CancelledFlagStopsGeneration) {
  BackendRequest req = greedy_prompt("Once upon a time", 100);
  req.cancelled = std::make_shared<std::atomic<bool>>(false);
  int calls = 0;
  auto r = backend().generate(req, [&](const Delta&) {
    if (++calls == 2) req.cancelled->store(true);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_EQ(calls, 2);

  // Cancelled before it starts: nothing generated.
  auto early = backend().generate(req, {});
  ASSERT_TRUE(early.ok()) << early.error().message;
  EXPECT_EQ(early->finish_reason, "cancelled");
  EXPECT_TRUE(early->text.empty());
}

TEST_F(EmbeddedBackendTest, PassedDeadlineIsAnError) {
  BackendRequest req = greedy_prompt("Once upon a time", 20);
  req.deadline = std::chrono::steady_clock::now() - std::chrono::milliseconds(1);
  auto r = backend().generate(req, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kDeadlineExceeded);
  EXPECT_NE(r.error().message.find("tier 'edge'"), std::string::npos) << r.error().message;
}

TEST_F(EmbeddedBackendTest, ContextOverflowIsResourceExhausted) {
  std::string huge;
  for (int i = 0; i < 3000; ++i) huge += "the cat sat on the mat. ";
  auto r = backend().generate(chat(huge), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(r.error().message.find("context holds"), std::string::npos) << r.error().message;
}

// Memory pressure: the tier gives memory back as the level rises and restores
// itself when it falls, and a request always runs on one whole deployment.
TEST(EmbeddedBackendMemoryPressure, ShrinksSwitchesModelAndRecovers) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  embedded_of(c).low_memory_model = "llama-2-tiny-random";
  c.max_concurrency = 2;
  embedded_of(c).kv_memory_mb = 64;
  embedded_of(c).threads = 1;
  auto created = create_backend(c);
  ASSERT_TRUE(created.ok()) << created.error().message;
  Backend& edge = **created;
  const int32_t full_context = edge.info().context_length;

  auto run = [&](const std::string& prompt) {
    auto r = edge.generate(greedy_prompt(prompt, 5), {});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? r->model : std::string("error");
  };
  EXPECT_EQ(run("Once upon a time"), "stories260K");

  // Level 1 keeps the model (one slot); the engine is idle, so it acts at once.
  std::string change = edge.adapt_to_memory_pressure(1);
  EXPECT_NE(change.find("1 slot(s)"), std::string::npos) << change;
  EXPECT_EQ(run("Once upon a time"), "stories260K");

  change = edge.adapt_to_memory_pressure(2);
  EXPECT_NE(change.find("llama-2-tiny-random"), std::string::npos) << change;
  EXPECT_EQ(run("Once upon a time"), "llama-2-tiny-random");
  // A prompt that fits the full context but not the shrunk one fails cleanly.
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "the cat sat. ";
  auto overflow = edge.generate(chat(long_prompt), {});
  ASSERT_FALSE(overflow.ok());
  EXPECT_EQ(overflow.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(overflow.error().message.find("under pressure"), std::string::npos)
      << overflow.error().message;

  change = edge.adapt_to_memory_pressure(0);
  EXPECT_NE(change.find("stories260K"), std::string::npos) << change;
  EXPECT_EQ(run("Once upon a time"), "stories260K");
  EXPECT_EQ(edge.info().context_length, full_context);
  EXPECT_TRUE(edge.adapt_to_memory_pressure(0).empty());  // nothing left to change
}

TEST(EmbeddedBackendMemoryPressure, MissingLowMemoryModelFailsAtCreation) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  embedded_of(c).low_memory_model = "no-such-small-model";
  auto created = create_backend(c);
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.error().message.find("low_memory_model"), std::string::npos)
      << created.error().message;
}

TEST(UnavailableBackend, AnswersEveryRequestWithTheReason) {
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "broken.gguf";
  auto b = make_unavailable_backend(c, make_error(ErrorKind::kCorrupt, "truncated at byte 12"));
  EXPECT_NE(b->unavailable_reason().find("truncated at byte 12"), std::string::npos);
  auto r = b->generate(chat("hello"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(r.error().message.find("tier 'edge'"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("SIGHUP"), std::string::npos) << r.error().message;
}

TEST_F(EmbeddedBackendTest, CountsPromptTokensAsGenerateDoes) {
  BackendRequest req = chat("Tom had a red ball.");
  req.params.temperature = 0.0f;
  req.params.max_tokens = 3;
  const auto counted = backend().count_prompt_tokens(req);
  ASSERT_TRUE(counted.has_value());
  auto r = backend().generate(req, {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*counted, r->usage.prompt_tokens);
  EXPECT_GT(*counted, 3);
}

TEST_F(EmbeddedBackendTest, ConcurrentRequestsMatchSequentialOnes) {
  const std::vector<std::string> prompts = {"Once upon a time", "Lily saw a dog", "The sun was hot",
                                            "Tom and Sam went", "A little bird",  "The big tree"};
  std::vector<std::string> sequential;
  for (const auto& p : prompts) {
    auto r = backend().generate(greedy_prompt(p, 30), {});
    ASSERT_TRUE(r.ok()) << r.error().message;
    sequential.push_back(r->text);
  }
  std::vector<std::future<Result<Completion>>> running;
  for (int round = 0; round < 2; ++round) {
    for (const auto& p : prompts) {
      running.push_back(std::async(std::launch::async, [&, p] {
        return backend().generate(greedy_prompt(p, 30), [](const Delta&) { return true; });
      }));
    }
  }
  for (size_t i = 0; i < running.size(); ++i) {
    auto r = running[i].get();
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->text, sequential[i % prompts.size()]) << prompts[i % prompts.size()];
  }
}

TEST_F(EmbeddedBackendTest, ConversationReusesItsSlotsCache) {
  BackendRequest a1 = chat("Lily went to the park with her mom.");
  a1.params.temperature = 0.0f;
  a1.params.max_tokens = 8;
  auto ra1 = backend().generate(a1, {});
  ASSERT_TRUE(ra1.ok()) << ra1.error().message;

  // Other conversations in between occupy the remaining slots.
  for (const char* other : {"Tom had a big red truck.", "The cat was very sleepy."}) {
    BackendRequest b = chat(other);
    b.params.temperature = 0.0f;
    b.params.max_tokens = 8;
    ASSERT_TRUE(backend().generate(b, {}).ok());
  }

  BackendRequest a2 = a1;
  a2.messages.push_back({"assistant", ra1->text});
  a2.messages.push_back({"user", "What did they see?"});
  auto ra2 = backend().generate(a2, {});
  ASSERT_TRUE(ra2.ok()) << ra2.error().message;
  // Everything of the first turn but the token at the boundary is reused.
  EXPECT_GE(ra2->usage.cached_prompt_tokens, ra1->usage.prompt_tokens - 1);
  EXPECT_LT(ra2->usage.cached_prompt_tokens, ra2->usage.prompt_tokens);
}

std::shared_ptr<Backend> small_edge(int32_t max_queue) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  c.max_concurrency = 1;
  c.max_queue = max_queue;
  embedded_of(c).kv_memory_mb = 16;
  auto created = create_backend(c);
  EXPECT_TRUE(created.ok()) << created.error().message;
  return created.ok() ? *created : nullptr;
}

// Starts a generation that stops at its first delta until `release` opens.
std::future<Result<Completion>> hold(Backend& backend, Gate& holding, Gate& release) {
  auto running = std::async(std::launch::async, [&] {
    bool once = false;
    return backend.generate(greedy_prompt("Once upon a time", 20), [&](const Delta&) {
      if (!once) {
        once = true;
        holding.open();
        release.wait();
      }
      return true;
    });
  });
  holding.wait();
  return running;
}

// The edge tier's slots share one KV pool (kv_memory_mb). A request holds
// blocks for its prompt and max_tokens from the start: when running ones hold
// the pool, the next waits (and then runs as it would alone); when idle
// slots' kept prefixes hold it, they are given back first.
TEST(EmbeddedBackendKvPool, RequestsWaitForMemoryAndIdlePrefixesGiveWayFirst) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  c.max_concurrency = 5;
  embedded_of(c).kv_memory_mb = 1;
  embedded_of(c).threads = 1;
  auto created = create_backend(c);
  ASSERT_TRUE(created.ok()) << created.error().message;
  Backend& edge = **created;
  const EdgeLoad empty = *edge.load();
  ASSERT_GT(empty.kv_block_tokens, 0);
  EXPECT_EQ(empty.kv_blocks_used, 0);
  const int64_t total = empty.kv_blocks_total;
  const int32_t block = empty.kv_block_tokens;
  // Requests that each hold a quarter of the pool: four fit, a fifth does
  // not. The four hold it by their prompts, which stay cached however soon
  // their generations end.
  const int64_t per_request = total / 4;
  const int32_t max_tokens = static_cast<int32_t>(per_request) * block - 16;
  ASSERT_LT(max_tokens + 16, edge.info().context_length) << "the pool is too large for this test";
  // A prompt of more than `tokens` tokens, its own from the first one on.
  auto long_request = [&](int tag, int64_t tokens) {
    std::string prompt = std::to_string(tag);
    BackendRequest request = greedy_prompt(prompt, 4);
    while (edge.count_prompt_tokens(request).value_or(0) <= tokens) {
      prompt += " Lily saw a big dog.";
      request = greedy_prompt(prompt, 4);
    }
    return request;
  };

  BackendRequest fifth = greedy_prompt("The big tree", max_tokens);
  auto alone = edge.generate(fifth, {});
  ASSERT_TRUE(alone.ok()) << alone.error().message;

  Gate holding[4], release;
  std::vector<std::future<Result<Completion>>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(std::async(std::launch::async, [&, i] {
      bool once = false;
      return edge.generate(long_request(i, (per_request - 1) * block), [&, i](const Delta&) {
        if (!once) {
          once = true;
          holding[i].open();
          release.wait();
        }
        return true;
      });
    }));
    holding[i].wait();
  }
  auto waiting = std::async(std::launch::async, [&] { return edge.generate(fifth, {}); });
  for (int i = 0; i < 500 && edge.load()->kv_waits == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(edge.load()->kv_waits, 1u);  // one request waited, however many steps
  EXPECT_EQ(waiting.wait_for(0ms), std::future_status::timeout);
  release.open();
  for (auto& h : held) ASSERT_TRUE(h.get().ok());
  auto waited = waiting.get();
  ASSERT_TRUE(waited.ok()) << waited.error().message;
  EXPECT_EQ(waited->text, alone->text);

  // Idle slots keep their conversations' prefixes: long prompts make four
  // of them hold more than the pool can spare for one more request.
  const uint64_t evictions = edge.load()->kv_prefix_evictions;
  for (int i = 10; i < 14; ++i) {
    ASSERT_TRUE(edge.generate(long_request(i, (per_request - 2) * block), {}).ok());
  }
  const EdgeLoad kept = *edge.load();
  EXPECT_EQ(kept.running, 0);
  ASSERT_GT(kept.kv_blocks_used, total - per_request);
  auto fresh = edge.generate(fifth, {});
  ASSERT_TRUE(fresh.ok()) << fresh.error().message;
  EXPECT_EQ(fresh->text, alone->text);
  EXPECT_GT(edge.load()->kv_prefix_evictions, evictions);
  EXPECT_EQ(edge.load()->kv_waits, kept.kv_waits);
}

// kv_cache_type q8_0 needs heads of a multiple of 32 values: stories260K's
// have 8, so the tier refuses to load and says why.
TEST(EmbeddedBackendKvPool, Q8_0CacheNeedsHeadsOfBlocks) {
  use_shared_models();
  TierConfig c;
  c.name = "edge";
  c.settings = EmbeddedTierSettings{};
  c.model = "stories260K";
  embedded_of(c).kv_cache_type = "q8_0";
  auto created = create_backend(c);
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.error().message.find("multiple of 32"), std::string::npos)
      << created.error().message;
  EXPECT_NE(created.error().message.find("tier 'edge'"), std::string::npos)
      << created.error().message;
}

TEST(EmbeddedBackendQueue, FullQueueIsRejectedAtOnce) {
  auto backend = small_edge(0);
  ASSERT_NE(backend, nullptr);
  Gate holding, release;
  auto first = hold(*backend, holding, release);
  auto rejected = backend->generate(greedy_prompt("Tom", 5), {});
  release.open();
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(rejected.error().message.find("max_queue"), std::string::npos)
      << rejected.error().message;
  auto r = first.get();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "length");
}

TEST(EmbeddedBackendQueue, QueuedRequestsWaitOrGiveUpAtTheirDeadline) {
  auto backend = small_edge(4);
  ASSERT_NE(backend, nullptr);
  Gate holding, release;
  auto first = hold(*backend, holding, release);

  BackendRequest hurried = greedy_prompt("Lily", 5);
  hurried.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  auto timed_out = backend->generate(hurried, {});
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(timed_out.error().kind, ErrorKind::kDeadlineExceeded);
  EXPECT_NE(timed_out.error().message.find("queue"), std::string::npos)
      << timed_out.error().message;

  auto patient = std::async(std::launch::async,
                            [&] { return backend->generate(greedy_prompt("Lily", 5), {}); });
  release.open();
  auto r1 = first.get();
  ASSERT_TRUE(r1.ok()) << r1.error().message;
  auto r2 = patient.get();
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(r2->usage.completion_tokens, 5);
}

// Turns go in arrival order, and a request that gives up in the middle of the
// queue passes nothing on by mistake: the ones behind it are still served.
TEST(EmbeddedBackendQueue, TurnsGoInArrivalOrderPastOneThatGaveUp) {
  auto backend = small_edge(8);
  ASSERT_NE(backend, nullptr);
  Gate holding, release;
  auto first = hold(*backend, holding, release);
  std::mutex mu;
  std::vector<std::string> served;
  auto queue = [&](const std::string& name, std::optional<std::chrono::milliseconds> patience) {
    const int32_t before = backend->queued_requests();
    auto running = std::async(std::launch::async, [&, name, patience] {
      BackendRequest r = greedy_prompt("Lily", 3);
      if (patience) r.deadline = std::chrono::steady_clock::now() + *patience;
      bool once = false;
      return backend->generate(r, [&, name](const Delta&) {
        if (!once) {
          once = true;
          std::lock_guard lock(mu);
          served.push_back(name);
        }
        return true;
      });
    });
    while (backend->queued_requests() == before) std::this_thread::sleep_for(1ms);
    return running;
  };
  auto a = queue("a", std::nullopt);
  auto hurried = queue("hurried", 100ms);
  auto b = queue("b", std::nullopt);
  auto c = queue("c", std::nullopt);
  auto gave_up = hurried.get();
  ASSERT_FALSE(gave_up.ok());
  EXPECT_EQ(gave_up.error().kind, ErrorKind::kDeadlineExceeded);
  release.open();
  for (auto* f : {&first, &a, &b, &c}) {
    auto r = f->get();
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  EXPECT_EQ(served, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(backend->queued_requests(), 0);
}

// ---------------------------------------------------------------- openai

// A cloud tier on `server`, with timeouts short enough for tests.
TierConfig cloud_tier(const FaultServer& server) {
  TierConfig c;
  c.name = "cloud";
  c.settings = OpenAiTierSettings{};
  c.placement = Placement::kCloud;
  c.model = "gpt-test";
  openai_of(c).endpoint = server.base_url();
  openai_of(c).connect_timeout_ms = 1000;
  openai_of(c).first_byte_timeout_ms = 2000;
  openai_of(c).total_timeout_ms = 5000;
  return c;
}

class OpenAiBackendTest : public ::testing::Test {
 protected:
  std::shared_ptr<Backend> make(std::function<void(TierConfig&)> adjust = {}) {
    TierConfig c = cloud_tier(server_);
    if (adjust) adjust(c);
    auto created = create_backend(c);
    EXPECT_TRUE(created.ok()) << created.error().message;
    return created.ok() ? *created : nullptr;
  }

  static Result<Completion> stream(Backend& b, const BackendRequest& req, std::string* text) {
    return b.generate(req, [text](const Delta& d) {
      *text += d.text;
      return true;
    });
  }

  FaultServer server_;
};

TEST_F(OpenAiBackendTest, PlainChatCompletion) {
  auto backend = make();
  EXPECT_EQ(backend->info().kind, backend::TierKind::kOpenAi);
  EXPECT_EQ(backend->info().model_version, "gpt-test");
  auto r = backend->generate(chat("hello there world"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->text, "echo: hello there world");
  EXPECT_EQ(r->finish_reason, "stop");
  EXPECT_EQ(r->usage.prompt_tokens, 3);
  EXPECT_EQ(r->usage.completion_tokens, 4);
  EXPECT_EQ(r->model, "fault-model");
  EXPECT_EQ(r->model_version, "fault-model");
  EXPECT_EQ(backend->info().model_version, "fault-model");
  EXPECT_FALSE(backend->count_prompt_tokens(chat("x")).has_value());

  const auto received = server_.received();
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].path, "/v1/chat/completions");
  const json body = json::parse(received[0].body);
  EXPECT_EQ(body["model"], "gpt-test");
  EXPECT_EQ(body["messages"][0]["content"], "hello there world");
  EXPECT_FALSE(body.contains("stream"));
  EXPECT_TRUE(received[0].authorization.empty());
}

// The egress guard sees the exact body, refuses before a byte is sent, and
// fails closed on what it cannot read or when no policy is installed.
TEST_F(OpenAiBackendTest, EgressGuardRefusesBeforeSendingAndFailsClosed) {
  auto backend = make();
  auto guard = std::make_shared<EgressGuard>();
  backend->set_egress_guard(guard);
  auto r = backend->generate(chat("hello"), {});
  ASSERT_FALSE(r.ok()) << "a guard without a policy lets nothing out";
  EXPECT_EQ(r.error().kind, ErrorKind::kPermissionDenied);
  EXPECT_NE(r.error().message.find("no privacy policy"), std::string::npos);

  std::string seen;
  guard->set_policy([&](std::string_view tier, std::span<const std::string_view> strings,
                        const EgressClearance*) {
    EXPECT_EQ(tier, "cloud");
    for (auto s : strings) seen.append(s);
    return seen.find("classified") != std::string::npos ? std::string("found it") : std::string();
  });
  BackendRequest hidden = chat("hello");
  hidden.remote_only.other = PassThroughJson::of(
      json::parse(R"({"metadata":{"a":{"b":["x","the \"classified\" plan"]}}})"));
  r = backend->generate(hidden, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kPermissionDenied);
  EXPECT_NE(r.error().message.find("found it"), std::string::npos);
  // Unescaped, whatever the depth; keys come with their scalar values.
  EXPECT_NE(seen.find(std::string("\0the \"classified\" plan\0", 23)), std::string::npos);
  EXPECT_NE(seen.find(std::string("\0role: user\0", 12)), std::string::npos);

  seen.clear();
  BackendRequest deep = chat("hello");
  deep.remote_only.other = PassThroughJson::of(
      json::parse(R"({"x":)" + std::string(200, '[') + std::string(200, ']') + "}"));
  r = backend->generate(deep, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("deeper than"), std::string::npos) << r.error().message;
  EXPECT_TRUE(server_.received().empty()) << "nothing reached the upstream";

  r = backend->generate(chat("public words"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(server_.received().size(), 1u);
}

// Every field passed through without the gateway reading it is read by the
// guard, strings nested in it included: a secret in any one of them stops
// the request.
TEST_F(OpenAiBackendTest, EgressGuardReadsEveryPassedThroughField) {
  auto backend = make();
  auto guard = std::make_shared<EgressGuard>();
  guard->set_policy(
      [](std::string_view, std::span<const std::string_view> strings, const EgressClearance*) {
        for (auto s : strings) {
          if (s.find("classified") != std::string_view::npos) return std::string("found it");
        }
        return std::string();
      });
  backend->set_egress_guard(guard);
  const auto pass = [](const std::string& text) { return PassThroughJson::of(json::parse(text)); };
  const std::vector<std::pair<std::string, std::function<void(BackendRequest&)>>> fields = {
      {"tools",
       [&](BackendRequest& r) {
         r.remote_only.tools =
             pass(R"([{"type":"function","function":{"name":"f","description":"classified"}}])");
       }},
      {"tool_choice",
       [&](BackendRequest& r) {
         r.remote_only.tools = pass(R"([{"type":"function","function":{"name":"f"}}])");
         r.remote_only.tool_choice =
             pass(R"({"type":"function","function":{"name":"classified"}})");
       }},
      {"response_format",
       [&](BackendRequest& r) {
         r.remote_only.response_format = pass(
             R"({"type":"json_schema","json_schema":{"name":"s","description":"classified"}})");
       }},
      {"other", [&](BackendRequest& r) { r.remote_only.other = pass(R"({"user":"classified"})"); }},
      {"content_parts",
       [&](BackendRequest& r) {
         r.messages[0].content_parts =
             pass(R"([{"type":"image_url","image_url":{"url":"https://x/classified.png"}}])");
       }},
      {"tool_calls",
       [&](BackendRequest& r) {
         ChatMessage call("assistant", "");
         call.tool_calls = pass(
             R"([{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"q\":\"classified\"}"}}])");
         r.messages.push_back(std::move(call));
       }},
  };
  for (const auto& [field, set] : fields) {
    BackendRequest request = chat("hello");
    set(request);
    auto r = backend->generate(request, {});
    ASSERT_FALSE(r.ok()) << field << " reached the upstream unread";
    EXPECT_EQ(r.error().kind, ErrorKind::kPermissionDenied) << field;
  }
  EXPECT_TRUE(server_.received().empty()) << "nothing reached the upstream";
}

// What the router scanned need not be scanned again, but only byte for
// byte and only as a message content or prompt: everything else in the body
// is read, JSON inside a vouched-for content included.
TEST(EgressClearanceTest, SkipsOnlyWhatTheRouterScannedByteForByte) {
  EgressGuard guard;
  std::string seen;
  const EgressClearance* vouched = nullptr;
  guard.set_policy([&](std::string_view, std::span<const std::string_view> strings,
                       const EgressClearance* skipped) {
    seen.clear();
    for (auto s : strings) seen.append(s);
    vouched = skipped;
    return std::string();
  });
  EgressClearance cleared;
  cleared.texts = {"first question", R"({"inner": "nested words"})", "last question"};
  cleared.rank = 1;
  const std::string body = json{{"messages",
                                 {{{"role", "user"}, {"content", "first question"}},
                                  {{"role", "assistant"}, {"content", cleared.texts[1]}},
                                  {{"role", "user"}, {"content", "last question, edited"}},
                                  {{"role", "user"}, {"name", "first question"}}}},
                                {"metadata", {{"content", "last question"}, {"note", "kept"}}}}
                               .dump();
  ASSERT_TRUE(guard.check("cloud", body, &cleared).ok());
  EXPECT_EQ(vouched, &cleared);
  EXPECT_EQ(seen.find("content: first question"), std::string::npos) << seen;
  EXPECT_NE(seen.find("inner: nested words"), std::string::npos) << "JSON inside is still read";
  EXPECT_NE(seen.find("last question, edited"), std::string::npos) << "not byte-equal: read";
  EXPECT_NE(seen.find("name: first question"), std::string::npos) << "not a content: read";
  EXPECT_NE(seen.find("role: user"), std::string::npos);
  EXPECT_NE(seen.find("note: kept"), std::string::npos);

  // Nothing vouched for in the body: the policy is told nothing was skipped.
  ASSERT_TRUE(
      guard.check("cloud", R"({"messages":[{"role":"user","content":"other"}]})", &cleared).ok());
  EXPECT_EQ(vouched, nullptr);
  EXPECT_NE(seen.find("content: other"), std::string::npos);
  ASSERT_TRUE(guard.check("cloud", body).ok());
  EXPECT_EQ(vouched, nullptr);
  EXPECT_NE(seen.find("content: first question"), std::string::npos);
}

TEST(EgressStrings, JsonInsideStringsIsReadUnescaped) {
  std::string arena;
  std::vector<std::string_view> out;
  std::string why;
  ASSERT_TRUE(collect_json_strings(
      R"({"arguments":"{\"password\": \"a\\nb\"}","n":12,"f":1.50,"k":{"z":null}})", 64, arena, out,
      why))
      << why;
  const std::vector<std::string> got(out.begin(), out.end());
  EXPECT_NE(std::find(got.begin(), got.end(), "password: a\nb"), got.end());
  EXPECT_NE(std::find(got.begin(), got.end(), "n: 12"), got.end());
  EXPECT_NE(std::find(got.begin(), got.end(), "f: 1.50"), got.end());
  EXPECT_NE(std::find(got.begin(), got.end(), "k"), got.end());
  EXPECT_FALSE(collect_json_strings(R"({"a": [1, 2)", 64, arena, out, why));
  EXPECT_NE(why.find("not valid JSON"), std::string::npos);
}

TEST_F(OpenAiBackendTest, StreamingChatCompletionWithUsage) {
  auto backend = make();
  std::string streamed;
  std::vector<std::string> deltas;
  auto r = backend->generate(chat("one two three"), [&](const Delta& d) {
    deltas.push_back(d.text);
    streamed += d.text;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(streamed, "echo: one two three");
  EXPECT_EQ(r->text, streamed);
  EXPECT_EQ(deltas, (std::vector<std::string>{"echo:", " one", " two", " three"}));
  EXPECT_EQ(r->usage.prompt_tokens, 3);
  EXPECT_EQ(r->usage.completion_tokens, 4);
  EXPECT_EQ(r->finish_reason, "stop");
  const json body = json::parse(server_.received_bodies().at(0));
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
}

// Streamed tool-call fragments reach the sink as they come and are joined
// into the completion's calls, the same calls a non-streamed answer has.
TEST_F(OpenAiBackendTest, ToolCallsStreamedAndWhole) {
  auto backend = make();
  BackendRequest req = chat("find order 42");
  req.remote_only.tools =
      PassThroughJson::of(json::parse(R"([{"type":"function","function":{"name":"find"}}])"));
  auto whole = backend->generate(req, {});
  ASSERT_TRUE(whole.ok()) << whole.error().message;
  EXPECT_EQ(whole->finish_reason, "tool_calls");
  EXPECT_TRUE(whole->text.empty());
  const json calls = json::parse(whole->tool_calls.text());
  ASSERT_EQ(calls.size(), 1u) << whole->tool_calls.text();
  EXPECT_EQ(calls[0]["function"]["name"], "find");
  EXPECT_EQ(calls[0]["function"]["arguments"], R"({"text":"find order 42"})");

  int fragments = 0;
  auto streamed = backend->generate(req, [&](const Delta& d) {
    if (!d.tool_calls.empty()) ++fragments;
    return true;
  });
  ASSERT_TRUE(streamed.ok()) << streamed.error().message;
  EXPECT_GT(fragments, 2);
  EXPECT_EQ(json::parse(streamed->tool_calls.text()), calls);
  EXPECT_EQ(streamed->finish_reason, "tool_calls");
}

TEST_F(OpenAiBackendTest, SamplingParametersAreSent) {
  auto backend = make();
  BackendRequest req = chat("a b c d e f");
  req.model = "other-model";
  req.params.max_tokens = 3;
  req.params.temperature = 0.5f;
  req.params.top_p = 0.9f;
  req.params.seed = 42;
  req.params.stop = {"END"};
  auto r = backend->generate(req, {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "length");
  EXPECT_EQ(r->text, "echo: a b");
  const json body = json::parse(server_.received_bodies().at(0));
  EXPECT_EQ(body["model"], "other-model");
  EXPECT_EQ(body["max_tokens"], 3);
  EXPECT_FLOAT_EQ(body["temperature"].get<float>(), 0.5f);
  EXPECT_FLOAT_EQ(body["top_p"].get<float>(), 0.9f);
  EXPECT_EQ(body["seed"], 42);
  EXPECT_EQ(body["stop"], json::array({"END"}));
  EXPECT_FALSE(body.contains("top_k"));
}

TEST_F(OpenAiBackendTest, LogprobsStreamedAndPlain) {
  auto backend = make();
  BackendRequest req = chat("x y");
  req.params.logprobs = true;
  req.params.top_logprobs = 2;
  for (bool streaming : {false, true}) {
    std::vector<TokenLogprob> from_deltas;
    DeltaSink sink;
    if (streaming) {
      sink = [&](const Delta& d) {
        from_deltas.insert(from_deltas.end(), d.logprobs.begin(), d.logprobs.end());
        return true;
      };
    }
    auto r = backend->generate(req, sink);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->logprobs.size(), 3u) << streaming;
    EXPECT_EQ(r->logprobs[1].token, " x");
    EXPECT_FLOAT_EQ(r->logprobs[1].logprob, -0.2f);
    ASSERT_EQ(r->logprobs[1].top.size(), 2u);
    EXPECT_EQ(r->logprobs[1].top[1].first, "alt1");
    EXPECT_FALSE(r->logprobs[1].entropy.has_value());
    if (streaming) {
      EXPECT_EQ(from_deltas.size(), 3u);
    }
  }
  const json body = json::parse(server_.received_bodies().at(0));
  EXPECT_EQ(body["logprobs"], true);
  EXPECT_EQ(body["top_logprobs"], 2);
}

TEST_F(OpenAiBackendTest, LegacyCompletions) {
  auto backend = make();
  BackendRequest req;
  req.prompt = "tell me";
  req.params.logprobs = true;
  req.params.top_logprobs = 1;
  for (bool streaming : {false, true}) {
    std::string streamed;
    auto r = streaming ? stream(*backend, req, &streamed) : backend->generate(req, {});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->text, "echo: tell me");
    if (streaming) {
      EXPECT_EQ(streamed, r->text);
    }
    ASSERT_EQ(r->logprobs.size(), 3u);
    EXPECT_EQ(r->logprobs[2].token, " me");
    ASSERT_EQ(r->logprobs[2].top.size(), 1u);
  }
  const auto received = server_.received();
  EXPECT_EQ(received[0].path, "/v1/completions");
  EXPECT_EQ(json::parse(received[0].body)["prompt"], "tell me");
  EXPECT_EQ(json::parse(received[0].body)["logprobs"], 1);
}

TEST_F(OpenAiBackendTest, ApiKeyFromTheEnvironment) {
  ::setenv("FSH_BACKEND_TEST_KEY", "sk-test-123", 1);
  auto backend = make([](TierConfig& c) { openai_of(c).api_key_env = "FSH_BACKEND_TEST_KEY"; });
  ASSERT_TRUE(backend->generate(chat("hi"), {}).ok());
  EXPECT_EQ(server_.received().at(0).authorization, "Bearer sk-test-123");
}

TEST_F(OpenAiBackendTest, Status500IsUnavailable) {
  auto backend = make();
  server_.set_mode(FaultMode::kStatus500);
  for (bool streaming : {false, true}) {
    std::string streamed;
    auto r =
        streaming ? stream(*backend, chat("hi"), &streamed) : backend->generate(chat("hi"), {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
    EXPECT_EQ(r.error().upstream_status, 500);
    EXPECT_NE(r.error().message.find("injected internal error"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("tier 'cloud'"), std::string::npos) << r.error().message;
    EXPECT_TRUE(streamed.empty());
  }
}

TEST_F(OpenAiBackendTest, Status400KeepsTheUpstreamsCodeAndField) {
  auto backend = make();
  server_.set_mode(FaultMode::kStatus400);
  for (bool streaming : {false, true}) {
    std::string streamed;
    auto r =
        streaming ? stream(*backend, chat("hi"), &streamed) : backend->generate(chat("hi"), {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kInvalidArgument);
    EXPECT_EQ(r.error().upstream_status, 400);
    EXPECT_EQ(r.error().upstream_code, "invalid_value");
    EXPECT_EQ(r.error().upstream_param, "temperature");
  }
}

TEST_F(OpenAiBackendTest, Status429CarriesRetryAfter) {
  auto backend = make();
  server_.set_mode(FaultMode::kStatus429);
  for (bool streaming : {false, true}) {
    std::string streamed;
    auto r =
        streaming ? stream(*backend, chat("hi"), &streamed) : backend->generate(chat("hi"), {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kResourceExhausted);
    EXPECT_EQ(r.error().upstream_status, 429);
    EXPECT_DOUBLE_EQ(r.error().retry_after_seconds, 2.0);
    EXPECT_NE(r.error().message.find("rate limited"), std::string::npos) << r.error().message;
  }
  // An HTTP-date in the future.
  char date[64];
  const std::time_t later = std::time(nullptr) + 30;
  std::tm tm{};
  gmtime_r(&later, &tm);
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  server_.set_retry_after(date);
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_GT(r.error().retry_after_seconds, 20.0);
  EXPECT_LE(r.error().retry_after_seconds, 30.0);
}

TEST_F(OpenAiBackendTest, Status503WithFractionalRetryAfter) {
  auto backend = make();
  server_.set_mode(FaultMode::kStatus503);
  server_.set_retry_after("1.5");
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_EQ(r.error().upstream_status, 503);
  EXPECT_DOUBLE_EQ(r.error().retry_after_seconds, 1.5);
}

TEST_F(OpenAiBackendTest, FirstByteTimeout) {
  auto backend = make([](TierConfig& c) { openai_of(c).first_byte_timeout_ms = 300; });
  server_.set_mode(FaultMode::kDelayFirstByte);
  server_.set_first_byte_delay(std::chrono::milliseconds(3000));
  for (bool streaming : {false, true}) {
    std::string streamed;
    auto r =
        streaming ? stream(*backend, chat("hi"), &streamed) : backend->generate(chat("hi"), {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kDeadlineExceeded);
    EXPECT_NE(r.error().message.find("timeouts.first_byte_ms 300"), std::string::npos)
        << r.error().message;
  }
  // A delay within the limit is fine.
  server_.set_first_byte_delay(std::chrono::milliseconds(20));
  auto ok = backend->generate(chat("hi"), {});
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->text, "echo: hi");
}

TEST_F(OpenAiBackendTest, TotalTimeoutMidStream) {
  auto backend = make([](TierConfig& c) { openai_of(c).total_timeout_ms = 300; });
  server_.set_chunk_delay(std::chrono::milliseconds(150));
  std::string streamed;
  auto r = stream(*backend, chat("a b c d e f g h i j"), &streamed);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kDeadlineExceeded);
  EXPECT_NE(r.error().message.find("timeouts.total_ms 300"), std::string::npos)
      << r.error().message;
  EXPECT_FALSE(streamed.empty());
}

TEST_F(OpenAiBackendTest, BlackHoleHonoursTimeoutDeadlineAndCancellation) {
  auto backend = make([](TierConfig& c) { openai_of(c).first_byte_timeout_ms = 300; });
  server_.set_mode(FaultMode::kBlackHole);
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kDeadlineExceeded);

  auto patient = make([](TierConfig& c) { openai_of(c).first_byte_timeout_ms = 60000; });
  BackendRequest req = chat("hi");
  req.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  r = patient->generate(req, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kDeadlineExceeded);
  EXPECT_NE(r.error().message.find("deadline"), std::string::npos) << r.error().message;

  BackendRequest cancellable = chat("hi");
  cancellable.cancelled = std::make_shared<std::atomic<bool>>(false);
  std::thread canceller([flag = cancellable.cancelled] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    flag->store(true);
  });
  std::string streamed;
  r = stream(*patient, cancellable, &streamed);
  canceller.join();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_TRUE(streamed.empty());
}

TEST_F(OpenAiBackendTest, GarbageIsCorrupt) {
  auto backend = make();
  server_.set_mode(FaultMode::kGarbageSse);
  std::string streamed;
  auto r = stream(*backend, chat("hi there"), &streamed);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message.find("malformed SSE at byte"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(streamed, "echo:");

  r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message.find("not JSON"), std::string::npos) << r.error().message;
}

TEST_F(OpenAiBackendTest, DyingMidStreamIsAnError) {
  auto backend = make();
  server_.set_mode(FaultMode::kDieMidStream);
  server_.set_die_after_chunks(2);
  std::string streamed;
  auto r = stream(*backend, chat("a b c d e"), &streamed);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(r.error().message.find("mid-stream"), std::string::npos) << r.error().message;
  EXPECT_EQ(streamed, "echo: a");

  r = backend->generate(chat("a b c d e"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(r.error().message.find("died"), std::string::npos) << r.error().message;

  // The pool recovers: the next request gets a fresh connection.
  server_.set_mode(FaultMode::kNormal);
  auto ok = backend->generate(chat("again"), {});
  ASSERT_TRUE(ok.ok()) << ok.error().message;
}

TEST_F(OpenAiBackendTest, RefusingADeltaCancelsTheStream) {
  auto backend = make();
  server_.set_chunk_delay(std::chrono::milliseconds(10));
  std::string streamed;
  auto r = backend->generate(chat("a b c d e f g h"), [&](const Delta& d) {
    if (!streamed.empty()) return false;
    streamed += d.text;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_EQ(streamed, "echo:");
}

TEST_F(OpenAiBackendTest, RefusedConnectionIsUnavailable) {
  int dead_port = 0;
  {
    FaultServer gone;
    dead_port = gone.port();
  }
  auto backend = make([&](TierConfig& c) {
    openai_of(c).endpoint = "http://127.0.0.1:" + std::to_string(dead_port) + "/v1";
  });
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(r.error().message.find("could not connect"), std::string::npos) << r.error().message;
}

TEST_F(OpenAiBackendTest, ConnectionsAreReused) {
  auto backend = make([](TierConfig& c) { c.max_concurrency = 2; });
  for (int i = 0; i < 5; ++i) {
    std::string streamed;
    auto r = i % 2 ? stream(*backend, chat("hi"), &streamed) : backend->generate(chat("hi"), {});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  EXPECT_EQ(server_.connection_count(), 1);

  server_.set_chunk_delay(std::chrono::milliseconds(5));
  std::vector<std::future<Result<Completion>>> running;
  for (int i = 0; i < 8; ++i) {
    running.push_back(std::async(std::launch::async, [&] {
      std::string streamed;
      return stream(*backend, chat("a b c d"), &streamed);
    }));
  }
  for (auto& f : running) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->text, "echo: a b c d");
  }
  EXPECT_LE(server_.connection_count(), 2);
  EXPECT_EQ(server_.received().size(), 13u);
}

// A burst opens as many connections as requests run at once; afterwards only
// kMaxIdleConnections (32) of them stay open, so a second burst of the same size
// reuses 32 and opens the rest anew.
TEST(OpenAiBackendPool, KeepsAtMost32IdleConnectionsAfterABurst) {
  FaultServer server(FaultServer::Options{.keep_alive_seconds = 10, .threads = 64});
  server.set_mode(FaultMode::kDelayFirstByte);
  server.set_first_byte_delay(std::chrono::milliseconds(500));
  TierConfig c = cloud_tier(server);
  c.max_concurrency = 64;
  // A handshake the listen backlog drops is retried by the kernel after a
  // second; on a loaded machine that happens, and it is not what this tests.
  openai_of(c).connect_timeout_ms = 10000;
  auto backend = create_backend(c);
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  constexpr int kBurst = 48;
  auto burst = [&] {
    std::vector<std::future<Result<Completion>>> running;
    for (int i = 0; i < kBurst; ++i) {
      running.push_back(
          std::async(std::launch::async, [&] { return (*backend)->generate(chat("hi"), {}); }));
      // httplib listens with a backlog of 5: connecting all at once would
      // overflow it and lose a handshake now and then.
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
    for (auto& f : running) {
      auto r = f.get();
      ASSERT_TRUE(r.ok()) << r.error().message;
    }
  };
  burst();
  const int first = server.connection_count();
  ASSERT_GT(first, 32) << "the first burst did not run more than 32 requests at once";
  burst();
  const int opened_again = server.connection_count() - first;
  EXPECT_GE(opened_again, 1) << "every connection of the first burst was kept";
  EXPECT_LE(opened_again, kBurst - 32) << "fewer than 32 idle connections were kept";
}

TEST_F(OpenAiBackendTest, FullPoolRejectsBeyondTheQueue) {
  auto backend = make([](TierConfig& c) {
    c.max_concurrency = 1;
    c.max_queue = 0;
  });
  server_.set_mode(FaultMode::kBlackHole);
  auto held = std::async(std::launch::async, [&] { return backend->generate(chat("hold"), {}); });
  while (server_.received().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kResourceExhausted);
  server_.set_mode(FaultMode::kNormal);
  auto first = held.get();
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->text, "echo: hold");
}

// A wait for a pooled connection has its own limit and ends in a retryable
// "unavailable" with Retry-After, not a timeout that blames the upstream;
// and it does not eat into the first-byte timeout of the request that waits.
TEST_F(OpenAiBackendTest, PoolWaitHasItsOwnLimitAndIsNotTheUpstreamsFault) {
  auto backend = make([](TierConfig& c) {
    c.max_concurrency = 1;
    openai_of(c).pool_wait_timeout_ms = 100;
    openai_of(c).first_byte_timeout_ms = 400;
  });
  server_.set_mode(FaultMode::kBlackHole);
  auto held = std::async(std::launch::async, [&] { return backend->generate(chat("hold"), {}); });
  while (server_.received().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto r = backend->generate(chat("hi"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable) << r.error().message;
  EXPECT_EQ(r.error().retry_after_seconds, 1.0);
  EXPECT_NE(r.error().message.find("pool_wait_ms"), std::string::npos) << r.error().message;
  EXPECT_EQ(backend->pool_wait_timeouts(), 1u);
  (void)held.get();  // the black hole ends at the first-byte timeout

  // About 300 ms waiting for the connection, then an upstream that answers
  // after 300 ms: within the 400 ms first-byte timeout, because the wait is
  // not counted against the upstream.
  auto slow = make([](TierConfig& c) {
    c.max_concurrency = 1;
    openai_of(c).pool_wait_timeout_ms = 2000;
    openai_of(c).first_byte_timeout_ms = 400;
  });
  server_.set_mode(FaultMode::kDelayFirstByte);
  server_.set_first_byte_delay(std::chrono::milliseconds(300));
  auto first = std::async(std::launch::async, [&] { return slow->generate(chat("one"), {}); });
  while (server_.received().size() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto second = slow->generate(chat("two"), {});
  ASSERT_TRUE(second.ok()) << second.error().message;
  ASSERT_TRUE(first.get().ok());
}

TEST(OpenAiBackendTls, VerifiesCertificates) {
  FaultServer server(FaultServer::Options{.tls = true});
  TierConfig c = cloud_tier(server);

  auto untrusted = create_backend(c);
  ASSERT_TRUE(untrusted.ok()) << untrusted.error().message;
  auto r = (*untrusted)->generate(chat("secret"), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(r.error().message.find("certificate"), std::string::npos) << r.error().message;
  EXPECT_TRUE(server.received().empty());

  openai_of(c).ca_file = server.ca_file();
  auto trusted = create_backend(c);
  ASSERT_TRUE(trusted.ok()) << trusted.error().message;
  std::string streamed;
  r = (*trusted)->generate(chat("over tls"), [&](const Delta& d) {
    streamed += d.text;
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(streamed, "echo: over tls");

  openai_of(c).ca_file.clear();
  openai_of(c).verify_tls = false;
  auto unverified = create_backend(c);
  ASSERT_TRUE(unverified.ok()) << unverified.error().message;
  EXPECT_TRUE((*unverified)->generate(chat("hi"), {}).ok());

  openai_of(c).ca_file = "/nonexistent/ca.pem";
  auto bad_ca = create_backend(c);
  ASSERT_FALSE(bad_ca.ok());
  EXPECT_NE(bad_ca.error().message.find("ca_file"), std::string::npos) << bad_ca.error().message;
}

}  // namespace
}  // namespace foreshore::backend
