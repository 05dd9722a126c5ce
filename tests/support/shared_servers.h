// Real servers that several gateway replicas share in end-to-end tests: a
// Redis (state backend) and an HAProxy in front of the replicas, each started
// by the test on a loopback port chosen at run time and killed with it.
//
//   foreshore::testing::RedisServer redis;
//   if (!redis.available()) GTEST_SKIP() << redis.why();
//   ASSERT_TRUE(redis.ok()) << redis.why();
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/process.h"

namespace foreshore::testing {

// A loopback TCP port no one listens on right now.
int free_port();
// The absolute path of `name` on PATH (and /usr/sbin, /usr/lib/postgresql/15/bin), or empty.
std::string find_program(const std::string& name);

class RedisServer {
 public:
  // port 0: a free one; a given port restarts a server on the same address.
  // A password makes it require one (--requirepass) of every client.
  explicit RedisServer(int port = 0, std::string password = {});
  bool available() const { return !binary_.empty(); }  // redis-server is installed
  bool ok() const { return process_ != nullptr; }
  const std::string& why() const { return why_; }
  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  // SIGKILL, as a crash or a lost host would end it.
  void kill();
  // A redis-cli command's output (trimmed), e.g. command({"GET", "fsh:x"}).
  std::string command(const std::vector<std::string>& args) const;

 private:
  std::string binary_;
  std::string why_;
  int port_ = 0;
  std::string password_;
  std::unique_ptr<Process> process_;
};

// HAProxy round-robin over `backend_ports`, listening on its own free port.
class LoadBalancer {
 public:
  LoadBalancer(const std::vector<int>& backend_ports, const std::string& folder);
  bool available() const { return !binary_.empty(); }
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  int port() const { return port_; }

 private:
  std::string binary_;
  std::string why_;
  int port_ = 0;
  bool ok_ = false;
  std::unique_ptr<Process> process_;
};

// A PostgreSQL 15 server of its own: initdb into `folder`/pgdata (once), run
// as the `postgres` user (PostgreSQL refuses root) on a free port, trust
// authentication on loopback only.
class PostgresServer {
 public:
  // port 0: a free one; a given port restarts the server on the same data.
  explicit PostgresServer(const std::string& folder, int port = 0);
  ~PostgresServer();
  bool available() const { return !bin_.empty(); }
  bool ok() const { return process_ != nullptr; }
  const std::string& why() const { return why_; }
  int port() const { return port_; }
  std::string url() const;  // postgresql://postgres@127.0.0.1:PORT/postgres
  // Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start).
  void kill();
  // One SQL statement through psql; its unaligned output, trimmed.
  std::string query(const std::string& sql) const;

 private:
  std::string bin_;  // folder of postgres and initdb
  std::string data_;
  std::string why_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace foreshore::testing
