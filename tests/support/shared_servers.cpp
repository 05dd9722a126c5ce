#include "support/shared_servers.h"

#include <netinet/in.h>
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

RedisServer::RedisServer(int port) : binary_(find_program("redis-server")) {
  if (binary_.empty()) {
    why_ = "redis-server is not installed (Debian package redis-server; scripts/setup.sh)";
    return;
  }
  port_ = port != 0 ? port : free_port();
  process_ = Process::start({binary_, "--port", std::to_string(port_), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--protected-mode", "no"});
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

}  // namespace foreshore::testing
