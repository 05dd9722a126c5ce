// Child processes and HTTP helpers for end-to-end tests.
//
//   foreshore::testing::ServeProcess gw({"-m", "stories260K"});    // foreshore serve --port 0 ...
//   ASSERT_TRUE(gw.ok()) << gw.process().stderr_text();
//   auto r = foreshore::testing::http_post(gw.port(), "/v1/chat/completions", body);
//
// Every child is killed when its object is destroyed, so a failing test
// leaves nothing running.
#pragma once

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace foreshore::testing {

class Process {
 public:
  // Runs argv[0] (searched on PATH when it has no '/') with its stdout and
  // stderr captured; `env` entries ("NAME=value") override the inherited ones;
  // a non-empty `cwd` is its working directory.
  static std::unique_ptr<Process> start(const std::vector<std::string>& argv,
                                        const std::vector<std::string>& env = {},
                                        const std::string& cwd = {});
  ~Process();  // SIGTERM, then SIGKILL if it lingers
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const { return pid_; }
  // Waits for a stdout line containing `needle`; nullopt on timeout or exit.
  std::optional<std::string> wait_for_line(const std::string& needle,
                                           std::chrono::milliseconds timeout);
  std::string stdout_text() const;
  std::string stderr_text() const;
  // The exit status (or 128 + signal); nullopt while it still runs at timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // Sends `sig` and waits for the exit.
  std::optional<int> terminate(int sig, std::chrono::milliseconds timeout);

 private:
  Process() = default;
  void drain(int fd, std::string& into);

  int pid_ = -1;
  std::optional<int> exit_status_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string out_;
  std::string err_;
  int open_streams_ = 0;
  std::thread out_reader_;
  std::thread err_reader_;
};

// $FORESHORE_BINARY, or the build tree's foreshore.
std::string foreshore_binary();

// `foreshore ARGS...` run to its end, with what it printed. The timeouts here
// are the native ones: under an emulator they stretch (time_limit).
struct FinishedRun {
  int status = -1;  // -1: still running at the timeout
  std::string out;
  std::string err;
};
FinishedRun run_foreshore(std::vector<std::string> args,
                          std::chrono::milliseconds timeout = std::chrono::seconds(120),
                          const std::vector<std::string>& env = {});
// The same, started in the folder `cwd` with `env` overriding the inherited
// variables: for what must work from wherever a user happens to be.
FinishedRun run_foreshore_in(const std::string& cwd, std::vector<std::string> args,
                             const std::vector<std::string>& env = {},
                             std::chrono::milliseconds timeout = std::chrono::seconds(120));

// `foreshore serve --port 0 ARGS...`, waited for until it prints its URL
// (`startup` stretches under an emulator, as above).
class ServeProcess {
 public:
  explicit ServeProcess(const std::vector<std::string>& args,
                        const std::vector<std::string>& env = {},
                        std::chrono::milliseconds startup = std::chrono::seconds(60));
  bool ok() const { return port_ > 0; }
  int port() const { return port_; }
  std::string url() const;       // http://127.0.0.1:PORT
  std::string base_url() const;  // http://127.0.0.1:PORT/v1
  Process& process() { return *process_; }

 private:
  std::unique_ptr<Process> process_;
  int port_ = 0;
};

struct HttpResult {
  int status = 0;  // 0: no response (connection failed or timed out)
  std::string body;
  httplib::Headers headers;
  std::string header(const std::string& name) const;
  nlohmann::json json() const;  // the body parsed; null when it is not JSON
};

HttpResult http_get(int port, const std::string& path, const httplib::Headers& headers = {});
HttpResult http_post(int port, const std::string& path, const std::string& body,
                     const httplib::Headers& headers = {},
                     std::chrono::milliseconds timeout = std::chrono::seconds(60));

// The data payloads of an SSE body, in order ("[DONE]" included).
std::vector<std::string> sse_data(const std::string& body);

}  // namespace foreshore::testing
