#include "hybrid/openai.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/json_limits.h"
#include "common/json_syntax.h"
#include "common/utf8.h"

namespace foreshore::openai {
namespace {

using json = nlohmann::json;

// OpenAI's own limit on n.
constexpr int32_t kMaxChoices = 128;

std::string format_number(double v) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%g", v);
  return std::string(buf, static_cast<size_t>(n));
}

// Reads optional fields of a request object; the first problem wins.
class FieldReader {
 public:
  explicit FieldReader(const json& object) : obj_(object) {}

  const std::optional<ApiError>& error() const { return error_; }
  bool ok() const { return !error_; }

  void fail(std::string message, const std::string& param) {
    if (!error_) error_ = invalid_request(std::move(message), param, "invalid_value");
  }

  // The field, or null when absent or JSON null (clients send null for "unset").
  // Every field looked up counts as read by the gateway (see was_read).
  const json* find(const char* key) {
    read_.push_back(key);
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  bool was_read(std::string_view key) const {
    return std::find(read_.begin(), read_.end(), key) != read_.end();
  }

  void number(const char* key, double lo, double hi, std::optional<float>& out) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_number()) {
      fail(std::string("'") + key + "' must be a number", key);
      return;
    }
    const double d = v->get<double>();
    if (!(d >= lo && d <= hi)) {
      fail(std::string("'") + key + "' must be between " + format_number(lo) + " and " +
               format_number(hi) + " (got " + format_number(d) + ")",
           key);
      return;
    }
    out = static_cast<float>(d);
  }

  template <typename Int>
  void integer(const char* key, int64_t lo, int64_t hi, std::optional<Int>& out) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_number_integer()) {
      fail(std::string("'") + key + "' must be an integer", key);
      return;
    }
    const bool too_big = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi);
    const int64_t i = too_big ? 0 : v->get<int64_t>();
    if (too_big || i < lo || i > hi) {
      fail(std::string("'") + key + "' must be between " + std::to_string(lo) + " and " +
               std::to_string(hi) + " (got " + v->dump() + ")",
           key);
      return;
    }
    out = static_cast<Int>(i);
  }

  void boolean(const char* key, bool& out) {
    std::optional<bool> v;
    boolean(key, v);
    if (v) out = *v;
  }
  void boolean(const char* key, std::optional<bool>& out) {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_boolean()) {
      fail(std::string("'") + key + "' must be true or false", key);
      return;
    }
    out = v->get<bool>();
  }

 private:
  const json& obj_;
  std::optional<ApiError> error_;
  std::vector<std::string_view> read_;
};

// The shape tools, tool choices and tool calls share: an object whose
// "function" is an object with a non-empty string "name".
bool names_a_function(const json& entry) {
  if (!entry.is_object()) return false;
  auto fn = entry.find("function");
  if (fn == entry.end() || !fn->is_object()) return false;
  auto name = fn->find("name");
  return name != fn->end() && name->is_string() && !name->get_ref<const std::string&>().empty();
}

void read_stop(FieldReader& r, std::vector<std::string>& stop) {
  const json* v = r.find("stop");
  if (!v) return;
  if (v->is_string()) {
    if (!v->get_ref<const std::string&>().empty()) stop.push_back(v->get<std::string>());
    return;
  }
  if (!v->is_array() || v->size() > 16) {
    r.fail("'stop' must be a string or a list of at most 16 strings", "stop");
    return;
  }
  for (const json& s : *v) {
    if (!s.is_string()) {
      r.fail("'stop' must be a string or a list of at most 16 strings", "stop");
      return;
    }
    if (!s.get_ref<const std::string&>().empty()) stop.push_back(s.get<std::string>());
  }
}

// OpenAI content is a string or a list of typed parts. The text parts are
// joined into `text`, one line break between two (as vLLM joins them:
// "Hello" and "world" are two words, not "Helloworld"); when there are others (image_url,
// input_audio, file), the whole list is kept in `parts` for remote tiers and `other_type` names the
// first of them. False when the content has another shape.
bool read_content(const json& content, std::string& text, backend::PassThroughJson& parts,
                  std::string& other_type) {
  if (content.is_string()) {
    text = content.get<std::string>();
    return true;
  }
  if (content.is_null()) return true;
  if (!content.is_array()) return false;
  bool first_text = true;
  for (const json& part : content) {
    if (!part.is_object()) return false;
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) return false;
    const std::string& name = type->get_ref<const std::string&>();
    if (name == "text" || name == "refusal") {
      auto t = part.find(name);
      if (t == part.end() || !t->is_string()) return false;
      if (!first_text) text += '\n';
      text += t->get_ref<const std::string&>();
      first_text = false;
    } else if (other_type.empty()) {
      other_type = name;
    }
  }
  if (!other_type.empty()) parts = backend::PassThroughJson::of(content);
  return true;
}

// An optional string field of a message; false (after failing r) when it is
// there but not a string.
bool read_message_string(FieldReader& r, const json& m, const char* key, const std::string& param,
                         std::string& out) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) return true;
  if (!it->is_string()) {
    r.fail("'" + param + "." + key + "' must be a string", param + "." + key);
    return false;
  }
  out = it->get<std::string>();
  return true;
}

// An assistant message's tool_calls, a tool message's tool_call_id, any
// message's name: kept so that a cloud tier sees the conversation whole.
bool read_message_tool_fields(FieldReader& r, const json& m, const std::string& param,
                              backend::ChatMessage& msg) {
  if (!read_message_string(r, m, "name", param, msg.name) ||
      !read_message_string(r, m, "tool_call_id", param, msg.tool_call_id)) {
    return false;
  }
  if (msg.role == "tool" && msg.tool_call_id.empty()) {
    r.fail(
        "'" + param + ".tool_call_id' is required in a tool message: the id of the call it answers",
        param + ".tool_call_id");
    return false;
  }
  auto calls = m.find("tool_calls");
  if (calls == m.end() || calls->is_null()) return true;
  const std::string where = param + ".tool_calls";
  if (msg.role != "assistant" || !calls->is_array()) {
    r.fail("'" + where + "' must be a list, and only in an assistant message", where);
    return false;
  }
  for (size_t i = 0; i < calls->size(); ++i) {
    const json& c = (*calls)[i];
    const std::string at = where + "[" + std::to_string(i) + "]";
    const bool ok = names_a_function(c) && c.contains("id") && c["id"].is_string() &&
                    c["function"].contains("arguments") && c["function"]["arguments"].is_string();
    if (!ok) {
      r.fail("'" + at +
                 "' must be {\"id\": string, \"type\": \"function\", \"function\": {\"name\": "
                 "string, \"arguments\": string}}",
             at);
      return false;
    }
  }
  if (!calls->empty()) msg.tool_calls = backend::PassThroughJson::of(*calls);
  return true;
}

// tools, tool_choice, parallel_tool_calls and response_format: validated the
// way OpenAI does, kept as JSON for the cloud tier, and named in
// edge_unsupported when an answer from the embedded engine would ignore them
// (tools, a JSON schema). json_object: the answer must be a JSON object,
// which the engine can honour.
void read_remote_only(FieldReader& r, backend::RemoteOnlyFields& out, bool& json_object) {
  if (r.find("functions") || r.find("function_call")) {
    r.fail(
        "'functions' and 'function_call' are OpenAI's deprecated function-calling fields; send "
        "'tools' and 'tool_choice' instead",
        r.find("functions") ? "functions" : "function_call");
    return;
  }
  if (const json* tools = r.find("tools")) {
    if (!tools->is_array() || tools->size() > 128) {
      r.fail("'tools' must be a list of at most 128 tool definitions", "tools");
      return;
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& t = (*tools)[i];
      const std::string at = "tools[" + std::to_string(i) + "]";
      if (!names_a_function(t) || t.value("type", json()) != "function") {
        r.fail("'" + at +
                   "' must be {\"type\": \"function\", \"function\": {\"name\": string, "
                   "\"description\": ..., \"parameters\": {...}}}",
               at);
        return;
      }
    }
    if (!tools->empty()) out.tools = backend::PassThroughJson::of(*tools);
  }
  bool calls_off = false;
  if (const json* choice = r.find("tool_choice")) {
    const bool named = names_a_function(*choice) && choice->value("type", json()) == "function";
    const bool mode =
        choice->is_string() && (*choice == "none" || *choice == "auto" || *choice == "required");
    if (!named && !mode) {
      r.fail(
          "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
          "\"function\": {\"name\": string}}",
          "tool_choice");
      return;
    }
    if (out.tools.empty()) {
      r.fail("'tool_choice' is only allowed when 'tools' are given", "tool_choice");
      return;
    }
    calls_off = *choice == "none";
    out.tool_choice = backend::PassThroughJson::of(*choice);
  }
  r.boolean("parallel_tool_calls", out.parallel_tool_calls);
  if (!out.tools.empty() && !calls_off && out.edge_unsupported.empty()) {
    out.edge_unsupported = "tools";
  }

  if (const json* format = r.find("response_format")) {
    const std::string type =
        format->is_object() && format->contains("type") && (*format)["type"].is_string()
            ? (*format)["type"].get<std::string>()
            : std::string();
    if (type != "text" && type != "json_object" && type != "json_schema") {
      r.fail(
          "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
          "{\"type\": \"json_schema\", \"json_schema\": {...}}",
          "response_format");
      return;
    }
    if (type == "json_schema" &&
        !(format->contains("json_schema") && (*format)["json_schema"].is_object())) {
      r.fail("'response_format' of type json_schema needs a 'json_schema' object",
             "response_format.json_schema");
      return;
    }
    out.response_format = backend::PassThroughJson::of(*format);
    // The engine can keep its output to one JSON object, not to a schema.
    json_object = type == "json_object";
    if (type == "json_schema" && out.edge_unsupported.empty()) {
      out.edge_unsupported = "response_format json_schema";
    }
  }
}

// Every non-null top-level field the gateway did not read: forwarded to
// remote tiers, and named as ignored when the edge answers. `user` (which
// pins the session) and `metadata` (the client's bookkeeping, less the
// gateway's own data_class hint) are read and forwarded too.
void read_other_fields(const FieldReader& r, const json& doc, backend::RemoteOnlyFields& out) {
  json other = json::object();
  std::string& ignored = out.edge_ignored;
  if (!out.tools.empty() && out.edge_unsupported.empty()) ignored = "tools";
  for (const auto& [key, value] : doc.items()) {
    if (value.is_null()) continue;
    if (key == "metadata" && value.is_object()) {
      json rest = value;
      rest.erase("data_class");
      if (!rest.empty()) other[key] = std::move(rest);
      continue;
    }
    if (key == "user") {
      other[key] = value;
      continue;
    }
    // Template options go to remote tiers as sent; the edge honours
    // enable_thinking (read in parse_request) and names only the others.
    if (key == "chat_template_kwargs" && value.is_object()) {
      other[key] = value;
      for (const auto& [option, unused] : value.items()) {
        if (option == "enable_thinking") continue;
        if (!ignored.empty()) ignored += ',';
        ignored += "chat_template_kwargs." + option;
      }
      continue;
    }
    if (r.was_read(key)) continue;
    other[key] = value;
    if (!ignored.empty()) ignored += ',';
    ignored += key;
  }
  if (!other.empty()) out.other = backend::PassThroughJson::of(other);
}

void read_messages(FieldReader& r, std::vector<backend::ChatMessage>& out,
                   backend::RemoteOnlyFields& remote_only) {
  const json* it = r.find("messages");
  if (!it) {
    r.fail("'messages' is required", "messages");
    return;
  }
  if (!it->is_array() || it->empty()) {
    r.fail("'messages' must be a non-empty list of messages", "messages");
    return;
  }
  out.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) {
      r.fail("'" + param + "' must be an object with 'role' and 'content'", param);
      return;
    }
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      r.fail("'" + param + ".role' is required and must be a string", param + ".role");
      return;
    }
    std::string role_name = role->get<std::string>();
    // OpenAI's newer name for the system role.
    if (role_name == "developer") role_name = "system";
    if (role_name != "system" && role_name != "user" && role_name != "assistant" &&
        role_name != "tool") {
      r.fail("'" + param + ".role' must be one of system, developer, user, assistant, tool (got '" +
                 role_name + "')",
             param + ".role");
      return;
    }
    backend::ChatMessage msg;
    msg.role = std::move(role_name);
    auto content = m.find("content");
    std::string other_type;
    if (content != m.end() && !read_content(*content, msg.content, msg.content_parts, other_type)) {
      r.fail("'" + param +
                 ".content' must be a string or a list of parts, each an object with a 'type' "
                 "({\"type\":\"text\",\"text\":...}, {\"type\":\"image_url\",...})",
             param + ".content");
      return;
    }
    if (!other_type.empty() && remote_only.edge_unsupported.empty()) {
      remote_only.edge_unsupported = other_type + " content";
    }
    if (!read_message_tool_fields(r, m, param, msg)) return;
    // Only an assistant message may go without content (null when it
    // called tools or is a prefill the client left empty).
    const bool absent = content == m.end();
    if ((absent && msg.tool_calls.empty()) ||
        (!absent && content->is_null() && msg.role != "assistant")) {
      r.fail("'" + param +
                 ".content' is required (only an assistant message may leave it null or "
                 "out, and out only when it has tool_calls)",
             param + ".content");
      return;
    }
    out.push_back(std::move(msg));
  }
}

void read_prompt(FieldReader& r, std::optional<std::string>& out) {
  const json* p = r.find("prompt");
  if (!p) {
    r.fail("'prompt' is required", "prompt");
    return;
  }
  if (p->is_string()) {
    out = p->get<std::string>();
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    out = (*p)[0].get<std::string>();
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
    r.fail(
        "'prompt' as token ids is not supported: the tiers may not share a tokenizer; send "
        "the text",
        "prompt");
  } else {
    r.fail(
        "'prompt' must be a string, or a list of one string (batches of prompts are not "
        "supported)",
        "prompt");
  }
}

void append_double(std::string& out, double v) {
  // JSON has no infinities; OpenAI reports impossible tokens as -9999.
  if (!std::isfinite(v)) v = -9999.0;
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%.7g", v);
  out.append(buf, static_cast<size_t>(n));
}

void append_bytes(std::string& out, std::string_view token) {
  out += '[';
  for (size_t i = 0; i < token.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(static_cast<unsigned char>(token[i]));
  }
  out += ']';
}

// Chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}]}.
void append_chat_logprobs(std::string& out, const std::vector<backend::TokenLogprob>& tokens) {
  out += "{\"content\":[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto& t = tokens[i];
    if (i > 0) out += ',';
    out += "{\"token\":";
    append_json_string(out, t.token);
    out += ",\"logprob\":";
    append_double(out, t.logprob);
    out += ",\"bytes\":";
    append_bytes(out, t.token);
    out += ",\"top_logprobs\":[";
    for (size_t j = 0; j < t.top.size(); ++j) {
      if (j > 0) out += ',';
      out += "{\"token\":";
      append_json_string(out, t.top[j].first);
      out += ",\"logprob\":";
      append_double(out, t.top[j].second);
      out += ",\"bytes\":";
      append_bytes(out, t.top[j].first);
      out += '}';
    }
    out += "]}";
  }
  out += "]}";
}

// Legacy completions: parallel arrays.
void append_text_logprobs(std::string& out, const std::vector<backend::TokenLogprob>& tokens,
                          size_t text_offset) {
  out += "{\"tokens\":[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, tokens[i].token);
  }
  out += "],\"token_logprobs\":[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ',';
    append_double(out, tokens[i].logprob);
  }
  out += "],\"top_logprobs\":[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ',';
    out += '{';
    for (size_t j = 0; j < tokens[i].top.size(); ++j) {
      if (j > 0) out += ',';
      append_json_string(out, tokens[i].top[j].first);
      out += ':';
      append_double(out, tokens[i].top[j].second);
    }
    out += '}';
  }
  out += "],\"text_offset\":[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(text_offset);
    text_offset += tokens[i].token.size();
  }
  out += "]}";
}

// Splices the members of a passed-through JSON object (compact and valid by
// construction) into the object being written.
void append_members(std::string& out, const backend::PassThroughJson& passed, bool after_member) {
  const std::string_view object = passed.text();
  if (object.size() <= 2) return;
  if (after_member) out += ',';
  out.append(object.substr(1, object.size() - 2));
}

void append_usage(std::string& out, const backend::Usage& u) {
  out += "{\"prompt_tokens\":" + std::to_string(u.prompt_tokens) +
         ",\"completion_tokens\":" + std::to_string(u.completion_tokens) +
         ",\"total_tokens\":" + std::to_string(u.prompt_tokens + u.completion_tokens) +
         ",\"prompt_tokens_details\":{\"cached_tokens\":" + std::to_string(u.cached_prompt_tokens) +
         "}}";
}

std::string_view finish_reason(const backend::Completion& c) {
  return c.finish_reason.empty() ? std::string_view("stop") : std::string_view(c.finish_reason);
}

// The first name given twice at the top level of the body or inside its
// `metadata`, or empty. A JSON parser keeps one of the two values silently
// (this one the last), so `"data_class": "device-only", "data_class":
// "public"` would declare the looser class; such a body is refused instead.
struct RepeatedNames {
  std::vector<std::string> top, metadata;
  std::string last_top;
  bool in_metadata = false;
  std::string repeated;

  bool operator()(int depth, json::parse_event_t event, const json& parsed) {
    using E = json::parse_event_t;
    if (event == E::object_start && depth == 1) in_metadata = last_top == "metadata";
    if (event == E::object_end && depth == 1) in_metadata = false;
    if (event != E::key || !repeated.empty() || (depth != 1 && !(depth == 2 && in_metadata))) {
      return true;
    }
    std::vector<std::string>& seen = depth == 1 ? top : metadata;
    const auto& name = parsed.get_ref<const std::string&>();
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      repeated = depth == 1 ? name : "metadata." + name;
    }
    seen.push_back(name);
    if (depth == 1) last_top = name;
    return true;
  }
};

}  // namespace

ApiError invalid_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::string error_json(const ApiError& error) {
  std::string out;
  out.reserve(128 + error.message.size());
  out += "{\"error\":{\"message\":";
  append_json_string(out, error.message);
  out += ",\"type\":";
  append_json_string(out, error.type);
  out += ",\"param\":";
  if (error.param.empty()) {
    out += "null";
  } else {
    append_json_string(out, error.param);
  }
  out += ",\"code\":";
  if (error.code.empty()) {
    out += "null";
  } else {
    append_json_string(out, error.code);
  }
  out += "}}";
  return out;
}

ApiError api_error(const hybrid::Refusal& refusal) {
  using hybrid::RefusalKind;
  ApiError e;
  e.status = hybrid::recorded_status(refusal);
  e.message = refusal.message;
  e.param = refusal.param;
  e.code = refusal.code;
  e.retry_after_seconds = refusal.retry_after_seconds;
  switch (refusal.kind) {
    case RefusalKind::kInvalidRequest:
    case RefusalKind::kNotFound:
      e.type = "invalid_request_error";
      break;
    case RefusalKind::kForbidden:
      e.type = "permission_error";
      break;
    case RefusalKind::kRateLimited:
      e.type = "rate_limit_error";
      break;
    case RefusalKind::kOverBudget:
      e.type = "insufficient_quota";
      break;
    case RefusalKind::kUnavailable:
      e.type = "service_unavailable";
      break;
    case RefusalKind::kTimeout:
      e.type = "timeout_error";
      break;
    case RefusalKind::kUpstream:
      e.type = "upstream_error";
      break;
    case RefusalKind::kCancelled:
      e.type = "cancelled";
      break;
    case RefusalKind::kInternal:
      e.type = "server_error";
      break;
  }
  return e;
}

ApiError from_backend_error(const Error& error) {
  return api_error(hybrid::refusal_from_error(error));
}

std::optional<ApiError> parse_client_json(std::string_view body, json& doc) {
  if (json_nesting_exceeds(body)) {
    return invalid_request("The request body nests arrays or objects deeper than " +
                               std::to_string(kMaxJsonDepth) +
                               " levels; flatten it (OpenAI requests need about 10)",
                           "", "json_too_deep");
  }
  RepeatedNames names;
  doc = json::parse(
      body.begin(), body.end(),
      [&names](int depth, json::parse_event_t event, json& parsed) {
        return names(depth, event, parsed);
      },
      false);
  if (body.empty()) {
    return invalid_request(
        "The request body is empty; send a JSON object with Content-Type: application/json", "",
        "invalid_json");
  }
  if (doc.is_discarded()) {
    // Where and why: "at byte 43 (line 1, column 43): syntax error while
    // parsing value - invalid string: ill-formed UTF-8 byte".
    std::string why;
    if (const auto e = json_syntax_error(body)) {
      const size_t colon = e->what.find(':');
      why = " at byte " + std::to_string(e->byte) +
            (colon == std::string::npos
                 ? ": " + e->what
                 : " (" + e->what.substr(0, colon) + ")" + e->what.substr(colon));
    }
    return invalid_request("The request body is not valid JSON" + why +
                               "; send a JSON object with Content-Type: application/json",
                           "", "invalid_json");
  }
  if (!names.repeated.empty()) {
    return invalid_request(
        "The request body gives '" + names.repeated + "' more than once; send each field once",
        names.repeated, "duplicate_field");
  }
  if (!doc.is_object()) return invalid_request("The request body must be a JSON object");
  return std::nullopt;
}

std::optional<ApiError> parse_request(hybrid::RequestKind kind, std::string_view body,
                                      hybrid::Request& out) {
  out.kind = kind;
  json doc;
  if (auto e = parse_client_json(body, doc)) return e;
  FieldReader r(doc);
  if (const json* m = r.find("model")) {
    if (!m->is_string()) {
      r.fail("'model' must be a string", "model");
    } else {
      out.model = m->get<std::string>();
    }
  }
  if (kind == hybrid::RequestKind::kChat) {
    read_messages(r, out.backend.messages, out.backend.remote_only);
  } else {
    read_prompt(r, out.backend.prompt);
  }
  r.boolean("stream", out.stream);
  if (const json* so = r.find("stream_options")) {
    auto iu = so->is_object() ? so->find("include_usage") : so->end();
    if (!so->is_object() || (iu != so->end() && !iu->is_boolean() && !iu->is_null())) {
      r.fail("'stream_options' must be an object like {\"include_usage\": true}", "stream_options");
    } else if (iu != so->end() && iu->is_boolean()) {
      out.include_usage = iu->get<bool>();
    }
  }
  // Routing hints in the body: OpenAI's free-form metadata and user fields.
  if (const json* md = r.find("metadata"); md && !md->is_object()) {
    r.fail("'metadata' must be an object of string values", "metadata");
  } else if (md) {
    // A declaration the gateway cannot read is refused, not skipped: skipping
    // it would send device-only data where the client said it must not go.
    if (auto dc = md->find("data_class"); dc != md->end()) {
      if (!dc->is_string() || dc->get_ref<const std::string&>().empty()) {
        r.fail(
            "'metadata.data_class' must be one of \"device-only\", \"contractual\", "
            "\"prefer-local\" or \"public\"",
            "metadata.data_class");
      } else {
        out.data_class = dc->get<std::string>();
      }
    }
  }
  if (const json* user = r.find("user"); user && user->is_string()) {
    out.user = user->get<std::string>();
  }
  // n > 1 is passed through to a cloud tier; the embedded engine produces
  // one completion, so such a request is not one the edge can answer.
  std::optional<int32_t> n;
  r.integer("n", 1, kMaxChoices, n);
  if (n && *n > 1) {
    out.backend.params.choices = *n;
    if (out.backend.remote_only.edge_unsupported.empty()) {
      out.backend.remote_only.edge_unsupported = "n > 1";
    }
  }
  std::optional<int32_t> best_of;
  r.integer("best_of", 1, 1, best_of);
  if (const json* echo = r.find("echo"); echo && *echo != false) {
    r.fail("'echo' is not supported", "echo");
  }

  backend::GenerationParams& p = out.backend.params;
  r.integer("max_tokens", 1, 1 << 24, p.max_tokens);
  // The newer name wins when a client sends both.
  r.integer("max_completion_tokens", 1, 1 << 24, p.max_tokens);
  out.backend.remote_only.limit_named_max_completion_tokens =
      r.find("max_completion_tokens") != nullptr;
  r.number("temperature", 0.0, 2.0, p.temperature);
  r.number("top_p", 0.0, 1.0, p.top_p);
  r.integer("top_k", 0, 1 << 20, p.top_k);
  r.number("min_p", 0.0, 1.0, p.min_p);
  r.number("presence_penalty", -2.0, 2.0, p.presence_penalty);
  r.number("frequency_penalty", -2.0, 2.0, p.frequency_penalty);
  // llama.cpp and vLLM spell the repetition penalty differently.
  r.number("repeat_penalty", 0.01, 10.0, p.repeat_penalty);
  r.number("repetition_penalty", 0.01, 10.0, p.repeat_penalty);
  std::optional<int64_t> seed;
  r.integer("seed", INT64_MIN, INT64_MAX, seed);
  if (seed) p.seed = static_cast<uint64_t>(*seed);
  read_stop(r, p.stop);

  if (kind == hybrid::RequestKind::kChat) {
    read_remote_only(r, out.backend.remote_only, p.json_object);
    r.boolean("logprobs", p.logprobs);
    std::optional<int32_t> top;
    r.integer("top_logprobs", 0, 20, top);
    if (top) {
      if (!p.logprobs && *top > 0) {
        r.fail("'top_logprobs' needs 'logprobs': true", "top_logprobs");
      }
      p.top_logprobs = *top;
    }
  } else {
    // Legacy completions ask for logprobs with a count of alternatives.
    std::optional<int32_t> top;
    r.integer("logprobs", 0, 5, top);
    if (top) {
      p.logprobs = true;
      p.top_logprobs = *top;
    }
  }
  if (!r.ok()) return r.error();
  if (auto kwargs = doc.find("chat_template_kwargs"); kwargs != doc.end() && !kwargs->is_null()) {
    const auto thinking = kwargs->is_object() ? kwargs->find("enable_thinking") : kwargs->end();
    if (!kwargs->is_object()) {
      return invalid_request(
          "'chat_template_kwargs' must be an object like "
          "{\"enable_thinking\": false}",
          "chat_template_kwargs");
    }
    if (thinking != kwargs->end() && !thinking->is_null()) {
      if (!thinking->is_boolean()) {
        return invalid_request("'chat_template_kwargs.enable_thinking' must be true or false",
                               "chat_template_kwargs.enable_thinking");
      }
      p.enable_thinking = thinking->get<bool>();
    }
  }
  read_other_fields(r, doc, out.backend.remote_only);
  return std::nullopt;
}

void append_provenance(std::string& out, const Provenance& where) {
  out += "{\"tier\":";
  append_json_string(out, where.tier);
  out += ",\"placement\":";
  append_json_string(out, where.placement);
  out += ",\"model\":";
  append_json_string(out, where.model);
  out += ",\"model_version\":";
  append_json_string(out, where.model_version);
  out += ",\"decision_id\":";
  append_json_string(out, where.decision_id);
  if (!where.plan.empty()) {
    out += ",\"plan\":";
    append_json_string(out, where.plan);
    out += where.degraded ? ",\"degraded\":true" : ",\"degraded\":false";
    if (where.degraded && !where.degraded_reason.empty()) {
      out += ",\"degraded_reason\":";
      append_json_string(out, where.degraded_reason);
    }
    out += where.escalated ? ",\"escalated\":true" : ",\"escalated\":false";
    if (where.confidence) out += ",\"confidence\":" + std::to_string(*where.confidence);
  }
  out += '}';
}

namespace {

// One entry of "choices": the message (chat) or text (completions) of one
// of the n completions.
void append_choice(std::string& out, const hybrid::Request& request, const backend::Completion& c,
                   size_t index) {
  const bool chat = request.kind == hybrid::RequestKind::kChat;
  out += "{\"index\":";
  out += std::to_string(index);
  out += ',';
  if (chat) {
    out += "\"message\":{\"role\":\"assistant\",\"content\":";
    // OpenAI sends null content beside tool calls when the model said nothing.
    if (c.text.empty() && !c.tool_calls.empty()) {
      out += "null";
    } else {
      append_json_string(out, c.text);
    }
    if (!c.tool_calls.empty()) {
      out += ",\"tool_calls\":";
      out += c.tool_calls.text();
    }
    append_members(out, c.message_other, true);
    out += "},\"logprobs\":";
    if (request.backend.params.logprobs) {
      append_chat_logprobs(out, c.logprobs);
    } else {
      out += "null";
    }
  } else {
    out += "\"text\":";
    append_json_string(out, c.text);
    out += ",\"logprobs\":";
    if (request.backend.params.logprobs) {
      append_text_logprobs(out, c.logprobs, 0);
    } else {
      out += "null";
    }
  }
  out += ",\"finish_reason\":";
  append_json_string(out, finish_reason(c));
  out += '}';
}

}  // namespace

void append_completion(std::string& out, const hybrid::Request& request, std::string_view id,
                       int64_t created, const backend::Completion& c, const Provenance& where) {
  const bool chat = request.kind == hybrid::RequestKind::kChat;
  out.reserve(out.size() + 512 + c.text.size() * 11 / 10);
  out += "{\"id\":";
  append_json_string(out, std::string(chat ? "chatcmpl-" : "cmpl-") + std::string(id));
  out += chat ? ",\"object\":\"chat.completion\",\"created\":"
              : ",\"object\":\"text_completion\",\"created\":";
  out += std::to_string(created);
  out += ",\"model\":";
  append_json_string(out, where.model);
  out += ",\"choices\":[";
  append_choice(out, request, c, 0);
  for (size_t i = 0; i < c.more_choices.size(); ++i) {
    out += ',';
    append_choice(out, request, c.more_choices[i], i + 1);
  }
  out += "],\"usage\":";
  append_usage(out, c.usage);
  out += ",\"foreshore\":";
  append_provenance(out, where);
  out += '}';
}

namespace {

// With stream_options.include_usage every chunk but the last (the usage
// chunk) carries "usage": null, as OpenAI's spec says; strict typed clients
// check for the key.
constexpr std::string_view kUsageToCome = ",\"usage\":null";

}  // namespace

SseWriter::SseWriter(const hybrid::Request& request, std::string id, int64_t created,
                     std::string model)
    : kind_(request.kind),
      include_usage_(request.include_usage),
      logprobs_(request.backend.params.logprobs),
      id_(std::move(id)),
      model_(std::move(model)) {
  const bool chat = kind_ == hybrid::RequestKind::kChat;
  head_ = "data: {\"id\":";
  append_json_string(head_, (chat ? "chatcmpl-" : "cmpl-") + id_);
  head_ += chat ? ",\"object\":\"chat.completion.chunk\",\"created\":"
                : ",\"object\":\"text_completion\",\"created\":";
  head_ += std::to_string(created);
  head_ += ",\"model\":";
  append_json_string(head_, model_);
}

void SseWriter::open_chunk(std::string& out, int32_t choice) const {
  out += head_;
  out += ",\"choices\":[{\"index\":";
  out += std::to_string(choice);
  out += ',';
}

void SseWriter::begin(std::string& out, const Provenance& where) const {
  open_chunk(out, 0);
  out += kind_ == hybrid::RequestKind::kChat ? "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"
                                             : "\"text\":\"\"";
  out += ",\"logprobs\":null,\"finish_reason\":null}]";
  if (include_usage_) out += kUsageToCome;
  out += ",\"foreshore\":";
  append_provenance(out, where);
  out += "}\n\n";
}

void SseWriter::delta(std::string& out, const backend::Delta& d) {
  open_chunk(out, d.choice);
  if (kind_ == hybrid::RequestKind::kChat) {
    out += "\"delta\":{";
    // begin() gave the first choice its role; the others (n > 1) get theirs
    // with their first delta, as clients that join choices by index expect.
    if (d.choice > 0) {
      const auto index = static_cast<size_t>(d.choice);
      if (roles_sent_.size() <= index) roles_sent_.resize(index + 1, false);
      if (!roles_sent_[index]) {
        roles_sent_[index] = true;
        out += "\"role\":\"assistant\",";
      }
    }
    // Content when there is some, or when nothing else is in the delta.
    const bool content = !d.text.empty() || (d.tool_calls.empty() && d.other.empty());
    if (content) {
      out += "\"content\":";
      append_json_string(out, d.text);
    }
    if (!d.tool_calls.empty()) {
      if (content) out += ',';
      out += "\"tool_calls\":";
      out += d.tool_calls.text();
    }
    append_members(out, d.other, content || !d.tool_calls.empty());
    out += "},\"logprobs\":";
    if (logprobs_) {
      append_chat_logprobs(out, d.logprobs);
    } else {
      out += "null";
    }
  } else {
    out += "\"text\":";
    append_json_string(out, d.text);
    out += ",\"logprobs\":";
    // text_offset counts from the start of the choice's text, as in the
    // whole answer: the bytes streamed before this chunk, plus, when text was
    // held back over several tokens and only the last is reported, the part
    // of this chunk before that token.
    const auto index = static_cast<size_t>(std::max(d.choice, 0));
    if (text_sent_.size() <= index) text_sent_.resize(index + 1, 0);
    if (logprobs_) {
      size_t reported = 0;
      for (const auto& t : d.logprobs) reported += t.token.size();
      const size_t lead = reported < d.text.size() ? d.text.size() - reported : 0;
      append_text_logprobs(out, d.logprobs, text_sent_[index] + lead);
    } else {
      out += "null";
    }
    text_sent_[index] += d.text.size();
  }
  out += ",\"finish_reason\":";
  if (d.finish_reason.empty()) {
    out += "null";
  } else {
    append_json_string(out, d.finish_reason);
  }
  out += "}]";
  if (include_usage_) out += kUsageToCome;
  out += "}\n\n";
}

void SseWriter::finish(std::string& out, const backend::Completion& c,
                       const Provenance& where) const {
  open_chunk(out, 0);
  out += kind_ == hybrid::RequestKind::kChat ? "\"delta\":{}" : "\"text\":\"\"";
  out += ",\"logprobs\":null,\"finish_reason\":";
  append_json_string(out, finish_reason(c));
  out += "}]";
  if (include_usage_) out += kUsageToCome;
  out += ",\"foreshore\":";
  append_provenance(out, where);
  out += "}\n\n";
  if (include_usage_) {
    out += head_;
    out += ",\"choices\":[],\"usage\":";
    append_usage(out, c.usage);
    out += "}\n\n";
  }
  out += "data: [DONE]\n\n";
}

void SseWriter::error(std::string& out, const ApiError& error) {
  out += "data: ";
  out += error_json(error);
  out += "\n\n";
}

}  // namespace foreshore::openai
