// `foreshore serve`: the OpenAI-compatible gateway from a YAML file or flags.
#include "serve/serve.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "cli/commands.h"

namespace foreshore::cli {
namespace {

struct ServeOptions {
  std::string config_file;
  config::FlagConfig flags;
  std::string host;
  int port = 8080;
  std::string default_tier;
  bool quiet = false;
  std::string audit_db;
};

std::string url_host(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

// The configuration from the file or flags, with command-line overrides
// applied; the same on start and on every SIGHUP.
Result<config::GatewayConfig> read_config(const ServeOptions& o, const CLI::App& cmd) {
  auto config = o.config_file.empty() ? config::config_from_flags(o.flags)
                                      : config::load_config(o.config_file);
  if (!config.ok()) return config.error();
  config::ServerConfig& s = config->server;
  if (cmd.count("--host") > 0) s.host = o.host;
  if (cmd.count("--port") > 0 || o.config_file.empty()) s.port = o.port;
  if (!o.default_tier.empty()) s.default_tier = o.default_tier;
  if (o.quiet) s.log_requests = false;
  if (!o.audit_db.empty()) s.audit_db = o.audit_db;
  if (auto v = config::validate_config(*config); !v.ok()) return v.error();
  return config;
}

void reload(serve::Gateway& gateway, const ServeOptions& o, const CLI::App& cmd) {
  if (o.config_file.empty()) {
    std::fprintf(stderr, "SIGHUP: serving from command-line flags, no --config file to reload\n");
    return;
  }
  Status status = gateway.reload(read_config(o, cmd));
  if (status.ok()) {
    std::fprintf(stderr, "SIGHUP: config reloaded from %s\n", o.config_file.c_str());
  } else {
    std::fprintf(stderr,
                 "SIGHUP: config reload failed, the previous configuration stays in force: %s\n",
                 status.error().message.c_str());
  }
}

int serve_main(const ServeOptions& o, const CLI::App& cmd) {
  // Only the main thread takes SIGINT/SIGTERM/SIGHUP: block them before any
  // thread exists so that every thread inherits the mask, then wait for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that hangs up must cost its stream, not the process.
  signal(SIGPIPE, SIG_IGN);

  auto config = read_config(o, cmd);
  if (!config.ok()) return fail(config.error());

  serve::Gateway gateway(std::move(config).value());
  auto port = gateway.bind();
  if (!port.ok()) return fail(port.error());
  std::atomic<bool> server_done{false};
  std::thread server([&] {
    gateway.run();
    server_done.store(true);
  });

  const config::GatewayConfig& c = gateway.config();
  for (const auto& t : c.tiers) {
    const std::string endpoint = t.openai() != nullptr ? t.openai()->endpoint : "";
    std::fprintf(stderr, "tier %s: %s %s (%s)%s%s\n", t.name.c_str(),
                 std::string(backend::kind_name(t.kind())).c_str(), t.model.c_str(),
                 std::string(backend::placement_name(t.placement)).c_str(),
                 endpoint.empty() ? "" : " at ", endpoint.c_str());
  }
  if (c.state.backend != "local" && c.server.api_keys.empty() && c.server.admin_key.empty()) {
    std::fprintf(stderr,
                 "note: requests without a key are served (no server.api_keys or "
                 "server.admin_key_env): virtual keys from `foreshore keys` limit only the "
                 "clients that send them\n");
  }
  if (auto loaded = gateway.load_tiers(); !loaded.ok()) {
    gateway.stop();
    server.join();
    return fail(loaded.error());
  }
  std::printf("listening on http://%s:%d\n", url_host(c.server.host).c_str(), *port);
  std::fflush(stdout);

  const timespec tick{0, 100 * 1000 * 1000};
  int stop_signal = 0;
  while (!server_done.load() && stop_signal == 0) {
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGHUP) reload(gateway, o, cmd);
    if (sig == SIGINT || sig == SIGTERM) stop_signal = sig;
  }
  // Drain: requests already running finish, new ones are turned away; a
  // second signal or the end of server.shutdown_timeout_ms cuts it short.
  const char* name = stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
  const int32_t timeout_ms = gateway.config().server.shutdown_timeout_ms;
  if (stop_signal != 0) {
    gateway.begin_drain();
    std::fprintf(stderr, "%s: draining %d request(s), up to %d ms; send it again to stop now\n",
                 name, gateway.active_requests(), timeout_ms);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (gateway.active_requests() > 0 && std::chrono::steady_clock::now() < deadline) {
      const int sig = sigtimedwait(&signals, nullptr, &tick);
      if (sig == SIGINT || sig == SIGTERM) break;
      if (sig == SIGHUP) std::fprintf(stderr, "SIGHUP: ignored while shutting down\n");
    }
    int32_t left = gateway.active_requests();
    if (left > 0) {
      // Streams still running end with an error event rather than a cut
      // connection; a moment lets those events reach their clients.
      const int32_t ended = gateway.end_streams(
          std::string(name) + ": the gateway is shutting down and server.shutdown_timeout_ms (" +
          std::to_string(timeout_ms) + " ms) has passed; the answer is incomplete, retry it");
      const auto flush_by = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (gateway.active_requests() > 0 && std::chrono::steady_clock::now() < flush_by) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      left = gateway.active_requests();
      std::fprintf(
          stderr,
          "%s: ended %d stream(s) with an error event; stopping with %d request(s) unfinished\n",
          name, ended, left);
    } else {
      std::fprintf(stderr, "%s: drained, stopping\n", name);
    }
  }
  gateway.stop();
  server.join();
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Run the OpenAI-compatible gateway over an embedded model and/or cloud tiers");
  auto* config_opt = cmd->add_option("--config", o->config_file,
                                     "YAML file with server:, tiers: and models: sections");
  auto* model_opt =
      cmd->add_option("-m,--model", o->flags.model,
                      "Serve this GGUF file or model name as the embedded device tier 'edge'");
  auto* upstream_opt =
      cmd->add_option("--upstream", o->flags.upstream,
                      "OpenAI-compatible base URL to add as the cloud tier 'cloud' (e.g. "
                      "https://api.openai.com/v1)");
  cmd->add_option("--upstream-model", o->flags.upstream_model,
                  "Model id to ask the --upstream for");
  cmd->add_option("--upstream-key-env", o->flags.upstream_api_key_env,
                  "Environment variable holding the --upstream API key");
  cmd->add_option("--host", o->host, "Address to listen on (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", o->port, "Port to listen on; 0 picks a free one and prints it")
      ->capture_default_str();
  cmd->add_option("--default-tier", o->default_tier,
                  "Tier for requests that name no model or tier (default: first device tier)");
  auto* keys_opt =
      cmd->add_option("--api-keys-env", o->flags.api_keys_env,
                      "Require 'Authorization: Bearer KEY' with a key from this variable "
                      "(comma-separated; with --config use server.api_keys_env)");
  cmd->add_option("-t,--threads", o->flags.threads, "Threads for -m (0: one per core)")
      ->check(kThreadCount)
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size", o->flags.context_length,
                  "Context length for -m (0: the model's)")
      ->capture_default_str();
  cmd->add_flag("-q,--quiet", o->quiet, "Do not log one line per request on stderr");
  cmd->add_option("--audit-db", o->audit_db,
                  "SQLite audit trail, one row per request (prompt hashes, not text); "
                  "read it with `foreshore report --db FILE`");
  config_opt->excludes(model_opt)->excludes(upstream_opt)->excludes(keys_opt);
  cmd->footer(
      "Examples:\n"
      "  foreshore serve -m stories260K --port 8080\n"
      "      one embedded tier; then:\n"
      "      curl localhost:8080/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\","
      "\"content\":\"Hi\"}]}'\n"
      "  foreshore serve -m stories260K --upstream https://api.openai.com/v1 \\\n"
      "      --upstream-model gpt-4o-mini --upstream-key-env OPENAI_API_KEY\n"
      "      edge tier plus a cloud tier; pick one per request with the header\n"
      "      'x-foreshore-tier: cloud' or by model name\n"
      "  foreshore serve --config examples/gateway.yaml --port 0\n"
      "      everything from a YAML file; --port 0 takes any free port\n"
      "Every response names where it ran: headers x-foreshore-tier, -model,\n"
      "-model-version and -decision-id, and a 'foreshore' object in the body.\n"
      "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n"
      "/healthz, /readyz, /metrics (Prometheus). Prints 'listening on URL' when ready.\n"
      "Signals: SIGHUP reloads --config (an invalid file changes nothing); SIGINT or\n"
      "SIGTERM drain running requests (server.shutdown_timeout_ms, default 30 s), then exit.");
  on_run(cmd, [o, cmd] { return serve_main(*o, *cmd); });
}

}  // namespace foreshore::cli
