#include "support/fault_server.h"

#include <httplib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace foreshore::testing {
namespace {

using nlohmann::json;

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> pieces;
  std::istringstream in(text);
  std::string word;
  while (in >> word) pieces.push_back(pieces.empty() ? word : " " + word);
  return pieces;
}

// Deterministic, distinct per position, so tests can check they arrive in order.
float piece_logprob(size_t i) {
  return -0.1f * static_cast<float>(i % 5 + 1);
}

json chat_logprob(const std::string& piece, size_t i, int top) {
  json alternatives = json::array();
  for (int k = 0; k < top; ++k) {
    alternatives.push_back({{"token", k == 0 ? piece : "alt" + std::to_string(k)},
                            {"logprob", piece_logprob(i) - static_cast<float>(k)}});
  }
  return {{"token", piece}, {"logprob", piece_logprob(i)}, {"top_logprobs", alternatives}};
}

json legacy_logprobs(const std::vector<std::string>& pieces, size_t first, int top) {
  json tokens = json::array(), values = json::array(), tops = json::array();
  for (size_t i = first; i < first + pieces.size(); ++i) {
    const std::string& piece = pieces[i - first];
    tokens.push_back(piece);
    values.push_back(piece_logprob(i));
    json alternatives = json::object();
    for (int k = 0; k < top; ++k) {
      alternatives[k == 0 ? piece : "alt" + std::to_string(k)] =
          piece_logprob(i) - static_cast<float>(k);
    }
    tops.push_back(alternatives);
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}};
}

std::string sse(const json& event) {
  return "data: " + event.dump() + "\n\n";
}

// What a normal answer to one request consists of.
struct Answer {
  bool legacy = false;
  std::string model;
  std::vector<std::string> pieces;
  std::string finish_reason = "stop";
  int prompt_tokens = 0;
  bool logprobs = false;
  int top_logprobs = 0;
  bool include_usage = false;
  // n: choice i > 0 answers "(choice i) " before the same words.
  int choices = 1;
  // A tool call instead of text, when the request offered tools.
  std::string tool_name;
  std::string tool_arguments;
  std::string reasoning;

  json tool_call() const {
    return {{"id", "call_fault_0"},
            {"type", "function"},
            {"function", {{"name", tool_name}, {"arguments", tool_arguments}}}};
  }

  std::vector<std::string> pieces_of(int choice) const {
    if (choice == 0) return pieces;
    std::vector<std::string> out = {"(choice " + std::to_string(choice) + ") "};
    out.insert(out.end(), pieces.begin(), pieces.end());
    return out;
  }

  json usage() const {
    int completion = 0;
    for (int i = 0; i < choices; ++i) completion += static_cast<int>(pieces_of(i).size());
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", prompt_tokens + completion}};
  }

  json base(const char* object) const {
    return {{"id", legacy ? "cmpl-fault" : "chatcmpl-fault"},
            {"object", object},
            {"created", 0},
            {"model", model}};
  }

  std::string text(int choice = 0) const {
    std::string out;
    for (const auto& p : pieces_of(choice)) out += p;
    return out;
  }

  json whole() const {
    json out = base(legacy ? "text_completion" : "chat.completion");
    out["choices"] = json::array({whole_choice()});
    for (int i = 1; i < choices; ++i) {
      json more = {{"index", i}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
      if (legacy) {
        more["text"] = text(i);
      } else {
        more["message"] = {{"role", "assistant"}, {"content", text(i)}};
      }
      out["choices"].push_back(std::move(more));
    }
    out["usage"] = usage();
    return out;
  }

  json whole_choice() const {
    json choice = {{"index", 0}, {"finish_reason", finish_reason}};
    if (legacy) {
      choice["text"] = text();
      choice["logprobs"] = logprobs ? legacy_logprobs(pieces, 0, top_logprobs) : json(nullptr);
    } else if (!tool_name.empty()) {
      choice["message"] = {
          {"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({tool_call()})}};
      choice["logprobs"] = nullptr;
    } else {
      choice["message"] = {{"role", "assistant"}, {"content", text()}};
      if (!reasoning.empty()) choice["message"]["reasoning_content"] = reasoning;
      json content = json::array();
      for (size_t i = 0; i < pieces.size(); ++i)
        content.push_back(chat_logprob(pieces[i], i, top_logprobs));
      choice["logprobs"] = logprobs ? json{{"content", content}} : json(nullptr);
    }
    return choice;
  }

  // The streamed events: one per piece, then the finish, the usage and [DONE].
  std::vector<std::string> events() const {
    std::vector<std::string> out;
    const char* object = legacy ? "text_completion" : "chat.completion.chunk";
    if (!tool_name.empty()) {
      // As OpenAI streams a call: id and name first, then the arguments in pieces.
      json head = tool_call();
      head["index"] = 0;
      head["function"]["arguments"] = "";
      std::vector<json> deltas = {
          {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({head})}}};
      for (size_t at = 0; at < tool_arguments.size(); at += 7) {
        deltas.push_back(
            {{"tool_calls",
              json::array(
                  {{{"index", 0}, {"function", {{"arguments", tool_arguments.substr(at, 7)}}}}})}});
      }
      for (const json& delta : deltas) {
        json chunk = base(object);
        chunk["choices"] =
            json::array({{{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}}});
        out.push_back(sse(chunk));
      }
    }
    if (!legacy && !reasoning.empty()) {
      json chunk = base(object);
      chunk["choices"] = json::array(
          {{{"index", 0},
            {"delta",
             {{"role", "assistant"}, {"content", nullptr}, {"reasoning_content", reasoning}}},
            {"finish_reason", nullptr}}});
      out.push_back(sse(chunk));
    }
    for (size_t i = 0; i < pieces.size(); ++i) {
      json choice = {{"index", 0}, {"finish_reason", nullptr}};
      if (legacy) {
        choice["text"] = pieces[i];
        choice["logprobs"] =
            logprobs ? legacy_logprobs({pieces[i]}, i, top_logprobs) : json(nullptr);
      } else {
        choice["delta"] = i == 0 ? json{{"role", "assistant"}, {"content", pieces[i]}}
                                 : json{{"content", pieces[i]}};
        choice["logprobs"] =
            logprobs ? json{{"content", json::array({chat_logprob(pieces[i], i, top_logprobs)})}}
                     : json(nullptr);
      }
      json chunk = base(object);
      chunk["choices"] = json::array({choice});
      out.push_back(sse(chunk));
      // The other choices' pieces interleave with the first's, as OpenAI's do.
      for (int c = 1; c < choices; ++c) {
        const std::vector<std::string> more = pieces_of(c);
        const size_t from = i == 0 ? 0 : i + 1;
        for (size_t k = from; k <= i + 1 && k < more.size(); ++k) {
          json piece = {{"index", c}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
          if (legacy) {
            piece["text"] = more[k];
          } else {
            piece["delta"] = {{"content", more[k]}};
          }
          json more_chunk = base(object);
          more_chunk["choices"] = json::array({piece});
          out.push_back(sse(more_chunk));
        }
      }
    }
    for (int c = 0; c < choices; ++c) {
      json last = base(object);
      json choice = {{"index", c}, {"finish_reason", finish_reason}};
      if (legacy) {
        choice["text"] = "";
      } else {
        choice["delta"] = json::object();
      }
      last["choices"] = json::array({choice});
      out.push_back(sse(last));
    }
    if (include_usage) {
      json tail = base(object);
      tail["choices"] = json::array();
      tail["usage"] = usage();
      out.push_back(sse(tail));
    }
    out.push_back("data: [DONE]\n\n");
    return out;
  }
};

json error_body(const std::string& message, const std::string& type) {
  return {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
}

std::string unique_temp_path(const std::string& suffix) {
  static std::atomic<int> counter{0};
  return (std::filesystem::temp_directory_path() /
          ("fsh-fault-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + suffix))
      .string();
}

// Writes a self-signed certificate for 127.0.0.1 and localhost and its key.
void write_self_signed(const std::string& cert_path, const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  if (key == nullptr || cert == nullptr)
    throw std::runtime_error("FaultServer: OpenSSL key generation failed");
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  for (const auto& [nid, value] : {std::pair{NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"},
                                   std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(cert, key, EVP_sha256());
  FILE* c = std::fopen(cert_path.c_str(), "w");
  FILE* k = std::fopen(key_path.c_str(), "w");
  const bool ok = c != nullptr && k != nullptr && PEM_write_X509(c, cert) == 1 &&
                  PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  if (c != nullptr) std::fclose(c);
  if (k != nullptr) std::fclose(k);
  X509_free(cert);
  EVP_PKEY_free(key);
  if (!ok)
    throw std::runtime_error("FaultServer: cannot write the TLS certificate to " + cert_path);
}

}  // namespace

FaultServer::FaultServer() : FaultServer(Options{}) {}

FaultServer::FaultServer(Options options) : tls_(options.tls) {
  settings_.model = options.model;
  if (tls_) {
    ca_file_ = unique_temp_path(".pem");
    key_file_ = unique_temp_path(".key");
    write_self_signed(ca_file_, key_file_);
    server_ = std::make_unique<httplib::SSLServer>(ca_file_.c_str(), key_file_.c_str());
  } else {
    server_ = std::make_unique<httplib::Server>();
  }
  // Short keep-alive by default, so that stopping never waits long on idle connections.
  server_->set_keep_alive_timeout(options.keep_alive_seconds);
  if (options.threads > 0) {
    const auto threads = static_cast<size_t>(options.threads);
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  }
  server_->set_keep_alive_max_count(100000);
  server_->set_tcp_nodelay(true);
  server_->Post(
      "/v1/chat/completions",
      [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
  server_->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle(req, res, true);
  });
  server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const json list = {{"object", "list"},
                       {"data", json::array({{{"id", settings().model},
                                              {"object", "model"},
                                              {"created", 0},
                                              {"owned_by", "fault-server"}}})}};
    res.set_content(list.dump(), "application/json");
  });
  port_ = server_->bind_to_any_port("127.0.0.1");
  if (port_ <= 0) throw std::runtime_error("FaultServer: cannot bind a port on 127.0.0.1");
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // httplib's stop() is a no-op until the accept loop runs, so a server
  // destroyed straight away would never stop.
  while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

FaultServer::~FaultServer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  server_->stop();
  thread_.join();
  std::error_code ec;
  if (!ca_file_.empty()) std::filesystem::remove(ca_file_, ec);
  if (!key_file_.empty()) std::filesystem::remove(key_file_, ec);
}

void FaultServer::set_mode(FaultMode mode) {
  {
    std::lock_guard lock(mu_);
    settings_.mode = mode;
  }
  cv_.notify_all();
}

void FaultServer::set_retry_after(std::string value) {
  std::lock_guard lock(mu_);
  settings_.retry_after = std::move(value);
}

void FaultServer::set_first_byte_delay(std::chrono::milliseconds delay) {
  std::lock_guard lock(mu_);
  settings_.first_byte_delay = delay;
}

void FaultServer::set_chunk_delay(std::chrono::milliseconds delay) {
  std::lock_guard lock(mu_);
  settings_.chunk_delay = delay;
}

void FaultServer::set_die_after_chunks(int chunks) {
  std::lock_guard lock(mu_);
  settings_.die_after_chunks = chunks;
}

void FaultServer::set_reply(std::string text) {
  std::lock_guard lock(mu_);
  settings_.reply = std::move(text);
}

void FaultServer::set_reasoning(std::string text) {
  std::lock_guard lock(mu_);
  settings_.reasoning = std::move(text);
}

void FaultServer::set_model(std::string model) {
  std::lock_guard lock(mu_);
  settings_.model = std::move(model);
}

std::string FaultServer::base_url() const {
  return std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) + "/v1";
}

std::vector<ReceivedRequest> FaultServer::received() const {
  std::lock_guard lock(mu_);
  return received_;
}

std::vector<std::string> FaultServer::received_bodies() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> bodies;
  for (const auto& r : received_) bodies.push_back(r.body);
  return bodies;
}

int FaultServer::connection_count() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(connections_.size());
}

void FaultServer::clear_received() {
  std::lock_guard lock(mu_);
  received_.clear();
  connections_.clear();
}

FaultServer::Settings FaultServer::settings() const {
  std::lock_guard lock(mu_);
  return settings_;
}

bool FaultServer::pause(std::chrono::milliseconds delay) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, delay, [this] { return stopping_; });
}

void FaultServer::handle(const httplib::Request& req, httplib::Response& res, bool legacy) {
  {
    std::unique_lock lock(mu_);
    received_.push_back(
        {req.method, req.path, req.body, req.get_header_value("Authorization"), req.remote_port});
    connections_.insert(req.remote_port);
    cv_.wait(lock, [this] { return stopping_ || settings_.mode != FaultMode::kBlackHole; });
    if (stopping_) {
      res.status = 503;
      return;
    }
  }
  const Settings s = settings();
  const json body = json::parse(req.body, nullptr, false);
  if (!body.is_object()) {
    res.status = 400;
    res.set_content(
        error_body("fault server: the body is not a JSON object", "invalid_request_error").dump(),
        "application/json");
    return;
  }

  switch (s.mode) {
    case FaultMode::kStatus400: {
      json body = error_body("fault server: temperature is out of range", "invalid_request_error");
      body["error"]["param"] = "temperature";
      body["error"]["code"] = "invalid_value";
      res.status = 400;
      res.set_content(body.dump(), "application/json");
      return;
    }
    case FaultMode::kStatus500:
      res.status = 500;
      res.set_content(error_body("fault server: injected internal error", "server_error").dump(),
                      "application/json");
      return;
    case FaultMode::kStatus429:
    case FaultMode::kStatus503:
      res.status = s.mode == FaultMode::kStatus429 ? 429 : 503;
      if (!s.retry_after.empty()) res.set_header("Retry-After", s.retry_after);
      res.set_content(
          error_body(res.status == 429 ? "fault server: rate limited" : "fault server: overloaded",
                     res.status == 429 ? "rate_limit_error" : "server_error")
              .dump(),
          "application/json");
      return;
    case FaultMode::kDelayFirstByte:
      if (!pause(s.first_byte_delay)) return;
      break;
    case FaultMode::kNormal:
    case FaultMode::kGarbageSse:
    case FaultMode::kDieMidStream:
    case FaultMode::kBlackHole:
      break;
  }

  Answer answer;
  answer.legacy = legacy;
  answer.model = s.model;
  std::string last_user;
  if (legacy) {
    last_user = body.value("prompt", std::string());
    answer.prompt_tokens = static_cast<int>(split_words(last_user).size());
  } else if (auto messages = body.find("messages");
             messages != body.end() && messages->is_array()) {
    for (const auto& m : *messages) {
      if (!m.is_object()) continue;
      // Assistant messages that made tool calls may carry null content.
      const auto c = m.find("content");
      const std::string content = c != m.end() && c->is_string() ? c->get<std::string>() : "";
      answer.prompt_tokens += static_cast<int>(split_words(content).size());
      if (m.value("role", std::string()) == "user") last_user = content;
    }
  }
  answer.pieces = split_words(s.reply.empty() ? "echo: " + last_user : s.reply);
  answer.reasoning = s.reasoning;
  if (auto tools = body.find("tools"); !legacy && tools != body.end() && tools->is_array() &&
                                       !tools->empty() &&
                                       body.value("tool_choice", json()) != "none") {
    const json choice = body.value("tool_choice", json());
    const json& named = choice.is_object() ? choice : (*tools)[0];
    answer.tool_name = named.at("function").at("name").get<std::string>();
    answer.tool_arguments = json{{"text", last_user}}.dump();
    answer.pieces.clear();
    answer.finish_reason = "tool_calls";
  }
  if (auto max = body.find("max_completion_tokens");
      max != body.end() && max->is_number_integer()) {
    if (max->get<size_t>() < answer.pieces.size()) {
      answer.pieces.resize(max->get<size_t>());
      answer.finish_reason = "length";
    }
  }
  if (auto max = body.find("max_tokens"); max != body.end() && max->is_number_integer()) {
    if (max->get<size_t>() < answer.pieces.size()) {
      answer.pieces.resize(max->get<size_t>());
      answer.finish_reason = "length";
    }
  }
  if (legacy) {
    if (auto lp = body.find("logprobs"); lp != body.end() && lp->is_number_integer()) {
      answer.logprobs = true;
      answer.top_logprobs = lp->get<int>();
    }
  } else {
    answer.logprobs = body.value("logprobs", false);
    answer.top_logprobs = body.value("top_logprobs", 0);
  }
  if (auto n = body.find("n");
      n != body.end() && n->is_number_integer() && answer.tool_name.empty()) {
    answer.choices = std::max(1, n->get<int>());
  }
  const bool stream = body.value("stream", false);
  if (auto so = body.find("stream_options"); so != body.end() && so->is_object()) {
    answer.include_usage = so->value("include_usage", false);
  }

  if (!stream) {
    const std::string whole = answer.whole().dump();
    if (s.mode == FaultMode::kGarbageSse) {
      res.set_content("{\"choices\": [ this is not json", "application/json");
    } else if (s.mode == FaultMode::kDieMidStream) {
      // Promise the whole body, send half, then drop the connection.
      res.set_content_provider(whole.size(), "application/json",
                               [whole](size_t, size_t, httplib::DataSink& sink) {
                                 sink.write(whole.data(), whole.size() / 2);
                                 return false;
                               });
    } else {
      res.set_content(whole, "application/json");
    }
    return;
  }

  std::vector<std::string> events = answer.events();
  if (s.mode == FaultMode::kGarbageSse) {
    events.resize(1);
    events.push_back("data: {\"choices\": [{\"delta\": {\"content\": \"x\"}}]garbage\n\n");
  }
  const int die_after = s.mode == FaultMode::kDieMidStream ? s.die_after_chunks : -1;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, events, die_after, delay = s.chunk_delay](size_t, httplib::DataSink& sink) {
        for (size_t i = 0; i < events.size(); ++i) {
          if (static_cast<int>(i) == die_after) return false;  // httplib closes the connection
          if (i > 0 && delay.count() > 0 && !pause(delay)) return false;
          if (!sink.write(events[i].data(), events[i].size())) return false;
        }
        sink.done();
        return true;
      });
}

}  // namespace foreshore::testing
