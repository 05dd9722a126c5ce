// A real OpenAI-compatible HTTP server on loopback for tests, which can be told
// to misbehave in the ways cloud upstreams do.
//
//   foreshore::testing::FaultServer server;            // listening on 127.0.0.1:<free port>
//   config.endpoint = server.base_url();        // "http://127.0.0.1:PORT/v1"
//   server.set_mode(foreshore::testing::FaultMode::kStatus429);
//   ... server.received_bodies() ...            // every request body, in arrival order
//
// In kNormal mode it answers POST /v1/chat/completions and /v1/completions
// (streaming or not, with usage and logprobs when asked) with deterministic
// text: "echo: " followed by the last user message (or the prompt), one
// streamed chunk and one completion token per word; max_tokens cuts it short
// with finish_reason "length". A chat request that offers tools (and does
// not set tool_choice "none") gets a call instead, as OpenAI sends one: to the
// tool named by tool_choice or else the first, with arguments
// {"text": <last user message>}, streamed as id and name then the arguments
// in 7-byte pieces, finish_reason "tool_calls". GET /v1/models lists its model.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace foreshore::testing {

enum class FaultMode {
  kNormal,
  kStatus500,       // 500 with an OpenAI error body
  kStatus400,       // 400 blaming 'temperature' (code invalid_value)
  kStatus429,       // 429 with Retry-After (see set_retry_after)
  kStatus503,       // 503 with Retry-After
  kDelayFirstByte,  // wait set_first_byte_delay() before answering normally
  kGarbageSse,      // streams one good chunk, then data that is not JSON; plain: a non-JSON body
  kDieMidStream,    // closes the connection after set_die_after_chunks() chunks (plain: half the
                    // body)
  kBlackHole,  // accepts the request and never answers (until the mode changes or the server stops)
};

struct ReceivedRequest {
  std::string method;
  std::string path;
  std::string body;
  std::string authorization;  // the Authorization header, empty when absent
  int remote_port = 0;        // identifies the client connection
};

class FaultServer {
 public:
  struct Options {
    // Serve HTTPS with a fresh self-signed certificate for 127.0.0.1 and
    // localhost; ca_file() is then a PEM file that verifies it.
    bool tls = false;
    std::string model = "fault-model";
    // How long an idle client connection is kept open.
    int keep_alive_seconds = 1;
    // Connections served at once; 0 takes httplib's default pool.
    int threads = 0;
  };

  FaultServer();
  explicit FaultServer(Options options);
  ~FaultServer();
  FaultServer(const FaultServer&) = delete;
  FaultServer& operator=(const FaultServer&) = delete;

  void set_mode(FaultMode mode);
  // Retry-After header value for 429/503; empty sends none. Default "2".
  void set_retry_after(std::string value);
  // Default 200 ms.
  void set_first_byte_delay(std::chrono::milliseconds delay);
  // Pause between streamed chunks, for tests that act mid-stream. Default 0.
  void set_chunk_delay(std::chrono::milliseconds delay);
  // Default 2.
  void set_die_after_chunks(int chunks);
  // Replaces the echo text of normal answers.
  void set_reply(std::string text);
  // Adds reasoning_content, as reasoning models behind vLLM or llama-server
  // send it: in the message, or streamed in one delta before the content.
  void set_reasoning(std::string text);
  // The `model` field reported in answers (default Options::model).
  void set_model(std::string model);

  int port() const { return port_; }
  // Base URL for a tier's endpoint, with the /v1 prefix.
  std::string base_url() const;
  const std::string& ca_file() const { return ca_file_; }

  std::vector<ReceivedRequest> received() const;
  std::vector<std::string> received_bodies() const;
  // Distinct client connections that sent at least one request.
  int connection_count() const;
  void clear_received();

 private:
  struct Settings {
    FaultMode mode = FaultMode::kNormal;
    std::string retry_after = "2";
    std::chrono::milliseconds first_byte_delay{200};
    std::chrono::milliseconds chunk_delay{0};
    int die_after_chunks = 2;
    std::string reply;
    std::string reasoning;
    std::string model;
  };

  void handle(const httplib::Request& req, httplib::Response& res, bool legacy);
  Settings settings() const;
  // Sleeps up to `delay`; false when the server is stopping.
  bool pause(std::chrono::milliseconds delay);
  void setup_tls();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Settings settings_;
  uint64_t mode_generation_ = 0;  // wakes black-holed requests on a mode change
  bool stopping_ = false;
  std::vector<ReceivedRequest> received_;
  std::set<int> connections_;
  std::string ca_file_;
  std::string key_file_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  bool tls_ = false;
  std::thread thread_;
};

}  // namespace foreshore::testing
