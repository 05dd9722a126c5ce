// The OpenAI wire format (src/hybrid/openai.h): request parsing, the error shape and
// the statuses refusals map to, JSON text. The HTTP gateway's use of it is
// tested in serve_test.cpp.
#include "hybrid/openai.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace foreshore::openai {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------- requests

std::optional<ApiError> parse_chat(const json& body, hybrid::Request& out) {
  return parse_request(hybrid::RequestKind::kChat, body.dump(), out);
}

json chat_body() {
  return {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
}

TEST(RequestTest, ParsesEveryParameter) {
  json b = chat_body();
  b["model"] = "m";
  b["messages"] = json::array({{{"role", "developer"}, {"content", "be brief"}},
                               {{"role", "user"},
                                {"content", json::array({{{"type", "text"}, {"text", "a"}},
                                                         {{"type", "text"}, {"text", "b"}}})}},
                               {{"role", "assistant"}, {"content", nullptr}}});
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  b["max_tokens"] = 10;
  b["max_completion_tokens"] = 12;
  b["temperature"] = 0.5;
  b["top_p"] = 0.9;
  b["top_k"] = 40;
  b["min_p"] = 0.05;
  b["presence_penalty"] = 0.1;
  b["frequency_penalty"] = -0.1;
  b["seed"] = 7;
  b["stop"] = {"\n", "END"};
  b["n"] = 1;
  b["logprobs"] = true;
  b["top_logprobs"] = 3;
  b["user"] = "ignored";
  hybrid::Request r;
  auto e = parse_chat(b, r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.backend.messages.size(), 3u);
  EXPECT_EQ(r.backend.messages[0].role, "system");
  EXPECT_EQ(r.backend.messages[1].content, "a\nb");  // parts are lines, not glued
  EXPECT_EQ(r.backend.messages[2].content, "");
  const auto& p = r.backend.params;
  EXPECT_EQ(p.max_tokens, 12);
  EXPECT_FLOAT_EQ(*p.temperature, 0.5f);
  EXPECT_FLOAT_EQ(*p.top_p, 0.9f);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_FLOAT_EQ(*p.min_p, 0.05f);
  EXPECT_FLOAT_EQ(*p.presence_penalty, 0.1f);
  EXPECT_FLOAT_EQ(*p.frequency_penalty, -0.1f);
  EXPECT_EQ(p.seed, 7u);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 3);
}

TEST(RequestTest, NullMeansUnset) {
  json b = chat_body();
  b["temperature"] = nullptr;
  b["stop"] = nullptr;
  b["max_tokens"] = nullptr;
  hybrid::Request r;
  ASSERT_FALSE(parse_chat(b, r));
  EXPECT_FALSE(r.backend.params.temperature);
  EXPECT_FALSE(r.backend.params.max_tokens);
  EXPECT_TRUE(r.backend.params.stop.empty());
}

void expect_400(const json& b, const std::string& param, const std::string& message_part) {
  hybrid::Request r;
  auto e = parse_chat(b, r);
  ASSERT_TRUE(e) << b.dump();
  EXPECT_EQ(e->status, 400);
  EXPECT_EQ(e->type, "invalid_request_error");
  EXPECT_EQ(e->param, param);
  EXPECT_NE(e->message.find(message_part), std::string::npos) << e->message;
}

TEST(RequestTest, RejectsBadFieldsNamingThem) {
  auto with = [](const char* key, json v) {
    json b = chat_body();
    b[key] = std::move(v);
    return b;
  };
  expect_400(with("n", 129), "n", "'n' must be between 1 and 128 (got 129)");
  expect_400(with("temperature", 3), "temperature", "between 0 and 2 (got 3)");
  expect_400(with("temperature", "hot"), "temperature", "must be a number");
  expect_400(with("top_p", 1.5), "top_p", "between 0 and 1");
  expect_400(with("max_tokens", 0), "max_tokens", "between 1 and");
  expect_400(with("max_tokens", 1.5), "max_tokens", "must be an integer");
  expect_400(with("presence_penalty", -3), "presence_penalty", "between -2 and 2");
  expect_400(with("stop", 5), "stop", "string or a list");
  expect_400(with("stream", "yes"), "stream", "true or false");
  expect_400(with("top_logprobs", 2), "top_logprobs", "needs 'logprobs': true");
  expect_400(with("top_logprobs", 21), "top_logprobs", "between 0 and 20");
  expect_400(with("model", 5), "model", "must be a string");
  expect_400(with("stream_options", 1), "stream_options", "must be an object");
  expect_400(with("messages", json::array()), "messages", "non-empty list");
  expect_400(with("messages", json::array({{{"role", "robot"}, {"content", "x"}}})),
             "messages[0].role", "must be one of");
  expect_400(
      with("messages",
           json::array({{{"role", "user"}, {"content", json::array({{{"image_url", "x"}}})}}})),
      "messages[0].content", "list of parts");
  expect_400(with("tool_choice", "auto"), "tool_choice", "only allowed when 'tools'");
  json no_messages = chat_body();
  no_messages.erase("messages");
  expect_400(no_messages, "messages", "'messages' is required");
}

// What only a remote tier reads is kept for it, and what the edge would
// ignore or could not honour is named.
TEST(RequestTest, KeepsWhatOnlyRemoteTiersRead) {
  json b = chat_body();
  b["messages"] = json::array(
      {{{"role", "user"},
        {"content",
         json::array({{{"type", "text"}, {"text", "look: "}},
                      {{"type", "image_url"}, {"image_url", {{"url", "https://x/y.png"}}}},
                      {{"type", "text"}, {"text", "what is it"}}})}}});
  b["logit_bias"] = {{"50256", -100}};
  b["user"] = "u1";
  hybrid::Request r;
  ASSERT_FALSE(parse_chat(b, r));
  const backend::ChatMessage& m = r.backend.messages[0];
  EXPECT_EQ(m.content, "look: \nwhat is it");
  EXPECT_EQ(json::parse(m.content_parts.text()), b["messages"][0]["content"]);
  const backend::RemoteOnlyFields& f = r.backend.remote_only;
  EXPECT_EQ(f.edge_unsupported, "image_url content");
  EXPECT_EQ(json::parse(f.other.text()), json({{"logit_bias", b["logit_bias"]}, {"user", "u1"}}));
  EXPECT_EQ(f.edge_ignored, "logit_bias");

  // metadata goes on without the gateway's own data_class hint.
  json meta = chat_body();
  meta["metadata"] = {{"data_class", "public"}, {"run", "eval-7"}};
  hybrid::Request m1;
  ASSERT_FALSE(parse_chat(meta, m1));
  EXPECT_EQ(m1.data_class, "public");
  EXPECT_EQ(json::parse(m1.backend.remote_only.other.text()),
            json({{"metadata", {{"run", "eval-7"}}}}));
  EXPECT_EQ(m1.backend.remote_only.edge_ignored, "");
  meta["metadata"] = {{"data_class", "public"}};
  hybrid::Request m2;
  ASSERT_FALSE(parse_chat(meta, m2));
  EXPECT_TRUE(m2.backend.remote_only.other.empty());

  json tools = chat_body();
  tools["tools"] = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
  hybrid::Request t;
  ASSERT_FALSE(parse_chat(tools, t));
  EXPECT_EQ(t.backend.remote_only.edge_unsupported, "tools");
  EXPECT_TRUE(t.backend.messages[0].content_parts.empty());
  tools["tool_choice"] = "none";
  tools["response_format"] = {{"type", "text"}};
  hybrid::Request none;
  ASSERT_FALSE(parse_chat(tools, none));
  EXPECT_EQ(none.backend.remote_only.edge_unsupported, "");
  EXPECT_EQ(none.backend.remote_only.edge_ignored, "tools");
  tools["response_format"] = {{"type", "json_schema"}, {"json_schema", {{"name", "s"}}}};
  hybrid::Request schema;
  ASSERT_FALSE(parse_chat(tools, schema));
  EXPECT_EQ(schema.backend.remote_only.edge_unsupported, "response_format json_schema");
}

// chat_template_kwargs: the edge honours enable_thinking; remote tiers get
// the object as sent; options the edge ignores are named.
TEST(RequestTest, ChatTemplateKwargsEnableThinking) {
  json b = chat_body();
  b["chat_template_kwargs"] = {{"enable_thinking", false}, {"custom", 1}};
  hybrid::Request r;
  ASSERT_FALSE(parse_chat(b, r));
  EXPECT_EQ(r.backend.params.enable_thinking, false);
  EXPECT_EQ(json::parse(r.backend.remote_only.other.text())["chat_template_kwargs"],
            b["chat_template_kwargs"]);
  EXPECT_EQ(r.backend.remote_only.edge_ignored, "chat_template_kwargs.custom");

  b["chat_template_kwargs"] = {{"enable_thinking", true}};
  hybrid::Request on;
  ASSERT_FALSE(parse_chat(b, on));
  EXPECT_EQ(on.backend.params.enable_thinking, true);
  EXPECT_EQ(on.backend.remote_only.edge_ignored, "");

  hybrid::Request unset;
  ASSERT_FALSE(parse_chat(chat_body(), unset));
  EXPECT_FALSE(unset.backend.params.enable_thinking.has_value());

  b["chat_template_kwargs"] = {{"enable_thinking", "no"}};
  expect_400(b, "chat_template_kwargs.enable_thinking", "must be true or false");
  b["chat_template_kwargs"] = "off";
  expect_400(b, "chat_template_kwargs", "must be an object");
}

TEST(RequestTest, MalformedBody) {
  hybrid::Request r;
  auto e = parse_request(hybrid::RequestKind::kChat, "{not json", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->status, 400);
  EXPECT_TRUE(e->param.empty());
  e = parse_request(hybrid::RequestKind::kChat, "[1,2]", r);
  ASSERT_TRUE(e);
  EXPECT_NE(e->message.find("JSON object"), std::string::npos);
}

TEST(RequestTest, LegacyCompletions) {
  hybrid::Request r;
  auto e = parse_request(hybrid::RequestKind::kCompletion,
                         R"({"model":"m","prompt":"Once","max_tokens":5,"logprobs":2})", r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(r.backend.prompt, "Once");
  EXPECT_TRUE(r.backend.messages.empty());
  EXPECT_TRUE(r.backend.params.logprobs);
  EXPECT_EQ(r.backend.params.top_logprobs, 2);
  e = parse_request(hybrid::RequestKind::kCompletion, R"({"prompt":["a","b"]})", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "prompt");
  e = parse_request(hybrid::RequestKind::kCompletion, R"({"model":"m"})", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "prompt");
}

// ---------------------------------------------------------------- streams

std::vector<json> sse_events(const std::string& stream) {
  std::vector<json> out;
  size_t at = 0;
  while ((at = stream.find("data: ", at)) != std::string::npos) {
    const size_t end = stream.find("\n\n", at);
    const std::string data = stream.substr(at + 6, end - at - 6);
    if (data != "[DONE]") out.push_back(json::parse(data));
    at = end;
  }
  return out;
}

backend::Delta text_delta(const std::string& text, std::vector<std::string> tokens) {
  backend::Delta d;
  d.text = text;
  for (auto& t : tokens) d.logprobs.push_back({std::move(t), -0.5f, std::nullopt, {}});
  return d;
}

TEST(StreamTest, CompletionTextOffsetsRunOnAsInTheWholeAnswer) {
  hybrid::Request r;
  ASSERT_FALSE(parse_request(hybrid::RequestKind::kCompletion,
                             R"({"prompt":"Once","stream":true,"logprobs":0})", r));
  SseWriter writer(r, "id", 1, "m");
  std::string out;
  writer.delta(out, text_delta(" upon", {" upon"}));
  writer.delta(out, text_delta(" a", {" a"}));
  // Text held back over two tokens, only the last reported: it starts where
  // its own text does, after " ti".
  writer.delta(out, text_delta(" time", {"me"}));
  const auto events = sse_events(out);
  ASSERT_EQ(events.size(), 3u) << out;
  std::vector<int> offsets;
  for (const auto& e : events) {
    offsets.push_back(e["choices"][0]["logprobs"]["text_offset"][0].get<int>());
  }
  EXPECT_EQ(offsets, (std::vector<int>{0, 5, 10}));
}

TEST(StreamTest, WithIncludeUsageEveryChunkButTheLastHasUsageNull) {
  for (const char* body :
       {R"({"messages":[{"role":"user","content":"hi"}],"stream":true,)"
        R"("stream_options":{"include_usage":true}})",
        R"({"prompt":"Once","stream":true,"stream_options":{"include_usage":true}})"}) {
    SCOPED_TRACE(body);
    hybrid::Request r;
    const bool chat = std::string_view(body).find("messages") != std::string_view::npos;
    ASSERT_FALSE(parse_request(chat ? hybrid::RequestKind::kChat : hybrid::RequestKind::kCompletion,
                               body, r));
    SseWriter writer(r, "id", 1, "m");
    std::string out;
    Provenance where;
    writer.begin(out, where);
    writer.delta(out, text_delta("Hello", {"Hello"}));
    backend::Completion c;
    c.text = "Hello";
    c.finish_reason = "stop";
    c.usage.completion_tokens = 1;
    writer.finish(out, c, where);
    const auto events = sse_events(out);
    ASSERT_EQ(events.size(), 4u) << out;
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      ASSERT_TRUE(events[i].contains("usage")) << events[i].dump();
      EXPECT_TRUE(events[i]["usage"].is_null()) << events[i].dump();
    }
    EXPECT_EQ(events.back()["usage"]["completion_tokens"], 1);
  }
  // Without include_usage no chunk has the key.
  hybrid::Request r;
  ASSERT_FALSE(
      parse_request(hybrid::RequestKind::kCompletion, R"({"prompt":"a","stream":true})", r));
  SseWriter writer(r, "id", 1, "m");
  std::string out;
  writer.delta(out, text_delta("a", {"a"}));
  EXPECT_EQ(out.find("usage"), std::string::npos) << out;
}

TEST(ErrorShapeTest, OpenAiShape) {
  ApiError e = invalid_request("bad \"x\"", "x", "invalid_value");
  json j = json::parse(error_json(e));
  EXPECT_EQ(j["error"]["message"], "bad \"x\"");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "x");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  j = json::parse(error_json(invalid_request("m")));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ErrorShapeTest, BackendErrorsMapToStatuses) {
  auto map = [](ErrorKind kind, int up, std::string msg = "x", double retry = 0) {
    Error e = make_error(kind, std::move(msg));
    e.upstream_status = up;
    e.retry_after_seconds = retry;
    return from_backend_error(e);
  };
  ApiError e = map(ErrorKind::kResourceExhausted, 429, "slow down", 7);
  EXPECT_EQ(e.status, 429);
  EXPECT_DOUBLE_EQ(e.retry_after_seconds, 7);
  EXPECT_EQ(e.message, "slow down");  // tiers name themselves in their messages
  EXPECT_EQ(map(ErrorKind::kUnavailable, 500).status, 502);
  EXPECT_EQ(map(ErrorKind::kUnavailable, 401).status, 502);
  EXPECT_EQ(map(ErrorKind::kNotFound, 404).status, 502);
  EXPECT_EQ(map(ErrorKind::kInvalidArgument, 400).status, 400);
  EXPECT_EQ(map(ErrorKind::kResourceExhausted, 413).status, 413);
  EXPECT_EQ(map(ErrorKind::kDeadlineExceeded, 0).status, 504);
  EXPECT_EQ(map(ErrorKind::kDeadlineExceeded, 408).status, 504);
  EXPECT_EQ(map(ErrorKind::kCorrupt, 0).status, 502);
  EXPECT_EQ(map(ErrorKind::kUnavailable, 0).status, 503);
  EXPECT_EQ(map(ErrorKind::kResourceExhausted, 0, "busy with 9 requests").status, 429);
  e = map(ErrorKind::kResourceExhausted, 0, "the prompt is 600 tokens but the context holds 512");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "context_length_exceeded");
}

TEST(JsonTest, EscapesStrings) {
  std::string out;
  append_json_string(out, std::string("a\"b\\c\n\x01\xc3\xa9", 9));
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"");
  EXPECT_EQ(json::parse(out).get<std::string>(), std::string("a\"b\\c\n\x01\xc3\xa9", 9));
}

// Byte-token models can emit malformed UTF-8; strict JSON clients must
// still parse every answer, with U+FFFD where the bytes were malformed.
TEST(JsonTest, MalformedUtf8BecomesReplacementCharacters) {
  const std::string bad[] = {std::string("a\xff"
                                         "b"),
                             std::string("\xc3"),
                             std::string("\xe2\x82"),
                             std::string("\xed\xa0\x80"),
                             std::string("\xc0\xaf"),
                             std::string("ok \xf0\x9f\x98\x80 \x80")};
  for (const std::string& text : bad) {
    std::string out;
    append_json_string(out, text);
    EXPECT_TRUE(is_valid_utf8(out)) << out;
    const json parsed = json::parse(out, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << out;
    EXPECT_NE(parsed.get<std::string>().find("\xEF\xBF\xBD"), std::string::npos) << out;
  }
  std::string emoji;
  append_json_string(emoji, "\xf0\x9f\x98\x80");
  EXPECT_EQ(emoji, "\"\xf0\x9f\x98\x80\"");
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9"));
}

}  // namespace
}  // namespace foreshore::openai
