#include "support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "support/emulator.h"

extern char** environ;

namespace foreshore::testing {
namespace {

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::vector<std::string> merged_environment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& o : overrides) replaced |= o.substr(0, o.find('=')) == name;
    if (!replaced) env.push_back(entry);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

std::unique_ptr<Process> Process::start(const std::vector<std::string>& argv,
                                        const std::vector<std::string>& env,
                                        const std::string& cwd) {
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return nullptr;
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return nullptr;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());

  std::vector<std::string> args = emulated_argv(argv);
  std::vector<std::string> envs = merged_environment(env);
  auto c_args = c_strings(args);
  auto c_env = c_strings(envs);
  auto p = std::unique_ptr<Process>(new Process());
  const int rc = posix_spawnp(&p->pid_, c_args[0], &actions, nullptr, c_args.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return nullptr;
  }
  p->open_streams_ = 2;
  Process* raw = p.get();
  p->out_reader_ = std::thread([raw, fd = out_pipe[0]] { raw->drain(fd, raw->out_); });
  p->err_reader_ = std::thread([raw, fd = err_pipe[0]] { raw->drain(fd, raw->err_); });
  return p;
}

void Process::drain(int fd, std::string& into) {
  char buf[4096];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::lock_guard lock(mu_);
    into.append(buf, static_cast<size_t>(n));
    cv_.notify_all();
  }
  close(fd);
  std::lock_guard lock(mu_);
  --open_streams_;
  cv_.notify_all();
}

Process::~Process() {
  if (!exit_status_ && !wait(std::chrono::milliseconds(0))) {
    if (!terminate(SIGTERM, std::chrono::seconds(10))) terminate(SIGKILL, std::chrono::seconds(10));
  }
  if (out_reader_.joinable()) out_reader_.join();
  if (err_reader_.joinable()) err_reader_.join();
}

std::optional<std::string> Process::wait_for_line(const std::string& needle,
                                                  std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  std::optional<std::string> found;
  cv_.wait_for(lock, timeout, [&] {
    size_t begin = 0;
    for (size_t end; (end = out_.find('\n', begin)) != std::string::npos; begin = end + 1) {
      std::string line = out_.substr(begin, end - begin);
      if (line.find(needle) != std::string::npos) {
        found = std::move(line);
        return true;
      }
    }
    return open_streams_ == 0;  // the child closed its output: it will say nothing more
  });
  return found;
}

std::string Process::stdout_text() const {
  std::lock_guard lock(mu_);
  return out_;
}

std::string Process::stderr_text() const {
  std::lock_guard lock(mu_);
  return err_;
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  if (exit_status_) return exit_status_;
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = decode_status(status);
      // The readers may still hold the child's last output; callers read
      // stdout_text()/stderr_text() right after wait() and must see all of it.
      // Bounded, since a grandchild could keep the pipes open.
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::chrono::seconds(5), [&] { return open_streams_ == 0; });
      return exit_status_;
    }
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::optional<int> Process::terminate(int sig, std::chrono::milliseconds timeout) {
  if (exit_status_) return exit_status_;
  kill(pid_, sig);
  return wait(timeout);
}

std::string foreshore_binary() {
  if (const char* b = std::getenv("FORESHORE_BINARY"); b != nullptr && *b != '\0') return b;
  return std::string(FSH_BINARY_DIR) + "/foreshore";
}

FinishedRun run_foreshore(std::vector<std::string> args, std::chrono::milliseconds timeout,
                          const std::vector<std::string>& env) {
  return run_foreshore_in({}, std::move(args), env, timeout);
}

FinishedRun run_foreshore_in(const std::string& cwd, std::vector<std::string> args,
                             const std::vector<std::string>& env,
                             std::chrono::milliseconds timeout) {
  args.insert(args.begin(), foreshore_binary());
  auto p = Process::start(args, env, cwd);
  const auto status = p->wait(time_limit(timeout));
  return {status.value_or(-1), p->stdout_text(), p->stderr_text()};
}

ServeProcess::ServeProcess(const std::vector<std::string>& args,
                           const std::vector<std::string>& env, std::chrono::milliseconds startup) {
  std::vector<std::string> argv = {foreshore_binary(), "serve", "--port", "0"};
  argv.insert(argv.end(), args.begin(), args.end());
  process_ = Process::start(argv, env);
  if (!process_) return;
  const auto line = process_->wait_for_line("listening on http://", time_limit(startup));
  if (!line) return;
  const size_t colon = line->rfind(':');
  if (colon != std::string::npos) port_ = std::atoi(line->c_str() + colon + 1);
}

std::string ServeProcess::url() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}
std::string ServeProcess::base_url() const {
  return url() + "/v1";
}

std::string HttpResult::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

nlohmann::json HttpResult::json() const {
  return nlohmann::json::parse(body, nullptr, false, true);
}

HttpResult http_get(int port, const std::string& path, const httplib::Headers& headers) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(std::chrono::seconds(30));
  HttpResult out;
  if (auto r = client.Get(path, headers)) {
    out.status = r->status;
    out.body = r->body;
    out.headers = r->headers;
  }
  return out;
}

HttpResult http_post(int port, const std::string& path, const std::string& body,
                     const httplib::Headers& headers, std::chrono::milliseconds timeout) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(timeout);
  client.set_write_timeout(timeout);
  HttpResult out;
  if (auto r = client.Post(path, headers, body, "application/json")) {
    out.status = r->status;
    out.body = r->body;
    out.headers = r->headers;
  }
  return out;
}

std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin < body.size()) {
    size_t end = body.find('\n', begin);
    if (end == std::string::npos) end = body.size();
    std::string_view line(body.data() + begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with("data:")) {
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      out.emplace_back(line);
    }
    begin = end + 1;
  }
  return out;
}

}  // namespace foreshore::testing
