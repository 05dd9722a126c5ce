#include "support/shared_servers.h"

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace foreshore::testing {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string find_program(const std::string& name) {
  std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
  dirs += ":/usr/sbin:/usr/lib/postgresql/15/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t colon = std::min(dirs.find(':', start), dirs.size());
    const std::filesystem::path candidate =
        std::filesystem::path(dirs.substr(start, colon - start)) / name;
    if (colon > start && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = colon + 1;
  }
  return {};
}

namespace {

// Polls until something accepts on 127.0.0.1:port.
bool wait_listening(int port, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    if (up) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace

RedisServer::RedisServer(int port, std::string password)
    : binary_(find_program("redis-server")), password_(std::move(password)) {
  if (binary_.empty()) {
    why_ = "redis-server is not installed (Debian package redis-server; scripts/setup.sh)";
    return;
  }
  port_ = port != 0 ? port : free_port();
  std::vector<std::string> argv = {
      binary_,        "--port", std::to_string(port_), "--bind", "127.0.0.1", "--save", "",
      "--appendonly", "no",     "--protected-mode",    "no"};
  if (!password_.empty()) {
    argv.push_back("--requirepass");
    argv.push_back(password_);
  }
  process_ = Process::start(argv);
  if (!process_ || !wait_listening(port_, std::chrono::seconds(10))) {
    why_ = "redis-server did not start on port " + std::to_string(port_) + ": " +
           (process_ ? process_->stdout_text() + process_->stderr_text() : "cannot run it");
    process_.reset();
  }
}

void RedisServer::kill() {
  if (process_) process_->terminate(SIGKILL, std::chrono::seconds(5));
  process_.reset();
}

std::string RedisServer::command(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {find_program("redis-cli"), "-p", std::to_string(port_)};
  if (!password_.empty()) {
    argv.insert(argv.end(), {"--pass", password_, "--no-auth-warning"});
  }
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = Process::start(argv);
  if (!p) return {};
  p->wait(std::chrono::seconds(10));
  std::string out = p->stdout_text();
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

LoadBalancer::LoadBalancer(const std::vector<int>& backend_ports, const std::string& folder)
    : binary_(find_program("haproxy")) {
  if (binary_.empty()) {
    why_ = "haproxy is not installed (Debian package haproxy; scripts/setup.sh)";
    return;
  }
  port_ = free_port();
  std::string cfg =
      "global\n  maxconn 4096\n"
      "defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n"
      "  timeout server 60s\n  option http-keep-alive\n"
      "frontend gateways\n  bind 127.0.0.1:" +
      std::to_string(port_) + "\n  default_backend replicas\n" +
      "backend replicas\n  balance roundrobin\n";
  for (size_t i = 0; i < backend_ports.size(); ++i) {
    cfg +=
        "  server r" + std::to_string(i) + " 127.0.0.1:" + std::to_string(backend_ports[i]) + "\n";
  }
  const std::string path = folder + "/haproxy.cfg";
  std::ofstream(path) << cfg;
  process_ = Process::start({binary_, "-db", "-f", path});
  ok_ = process_ && wait_listening(port_, std::chrono::seconds(10));
  if (!ok_) {
    why_ = "haproxy did not start: " + (process_ ? process_->stderr_text() : std::string());
  }
}

PostgresServer::PostgresServer(const std::string& folder, int port) {
  for (const char* dir : {"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"}) {
    if (::access((std::string(dir) + "/postgres").c_str(), X_OK) == 0) {
      bin_ = dir;
      break;
    }
  }
  const passwd* user = ::getpwnam("postgres");
  if (bin_.empty() || user == nullptr || find_program("setpriv").empty() ||
      find_program("psql").empty()) {
    bin_.clear();
    why_ =
        "PostgreSQL 15 is not installed (Debian packages postgresql-15 and its client; "
        "scripts/setup.sh)";
    return;
  }
  data_ = folder + "/pgdata";
  // As the postgres user: the server refuses to run as root.
  const std::vector<std::string> as_postgres = {find_program("setpriv"), "--reuid=postgres",
                                                "--regid=postgres", "--init-groups", "--"};
  if (!std::filesystem::exists(data_ + "/PG_VERSION")) {
    std::filesystem::create_directories(data_);
    if (::chown(data_.c_str(), user->pw_uid, user->pw_gid) != 0) {
      why_ = "cannot hand " + data_ + " to the postgres user";
      return;
    }
    std::vector<std::string> argv = as_postgres;
    for (const char* a : {"/initdb", "-D"}) argv.push_back(a[0] == '/' ? bin_ + a : a);
    argv.insert(argv.end(), {data_, "-A", "trust", "-U", "postgres", "--no-sync"});
    auto init = Process::start(argv, {}, data_);
    if (!init || init->wait(std::chrono::seconds(120)) != 0) {
      why_ = "initdb failed: " + (init ? init->stdout_text() + init->stderr_text() : "");
      return;
    }
  }
  port_ = port != 0 ? port : free_port();
  std::vector<std::string> argv = as_postgres;
  argv.insert(argv.end(),
              {bin_ + "/postgres", "-D", data_, "-p", std::to_string(port_), "-k", data_, "-c",
               "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"});
  process_ = Process::start(argv, {}, data_);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool up = false;
  while (process_ && !up && std::chrono::steady_clock::now() < until) {
    up = query("SELECT 1") == "1";
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!up) {
    why_ = "postgres did not start on port " + std::to_string(port_) + ": " +
           (process_ ? process_->stderr_text() : "cannot run it");
    kill();
  }
}

PostgresServer::~PostgresServer() {
  kill();
}

std::string PostgresServer::url() const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres";
}

void PostgresServer::kill() {
  if (process_) process_->terminate(SIGQUIT, std::chrono::seconds(20));
  process_.reset();
}

std::string PostgresServer::query(const std::string& sql) const {
  auto p = Process::start({find_program("psql"), "-h", "127.0.0.1", "-p", std::to_string(port_),
                           "-U", "postgres", "-d", "postgres", "-At", "-c", sql});
  if (!p) return {};
  p->wait(std::chrono::seconds(20));
  std::string out = p->stdout_text();
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace foreshore::testing
