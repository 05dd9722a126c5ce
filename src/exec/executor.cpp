#include <algorithm>
#include <cmath>
#include <future>
#include <thread>

#include "exec/exec.h"
#include "exec/shadow.h"

namespace foreshore::exec {
namespace {

using Clock = std::chrono::steady_clock;

bool deadline_passed(const backend::BackendRequest& r) {
  return r.deadline && Clock::now() >= *r.deadline;
}

std::string describe(const Error& e) {
  return e.upstream_status ? std::to_string(e.upstream_status) + " " + e.message : e.message;
}

}  // namespace

Confidence measure_confidence(const std::vector<backend::TokenLogprob>& logprobs, size_t first_n) {
  Confidence c;
  const size_t n = std::min(first_n, logprobs.size());
  if (n == 0) return c;
  double sum = 0, entropy = 0;
  c.min_logprob = 0;
  for (size_t i = 0; i < n; ++i) {
    sum += logprobs[i].logprob;
    c.min_logprob = std::min<double>(c.min_logprob, logprobs[i].logprob);
    entropy += logprobs[i].entropy.value_or(0.0f);
  }
  c.tokens = static_cast<int32_t>(n);
  c.mean_logprob = sum / static_cast<double>(n);
  c.mean_entropy = entropy / static_cast<double>(n);
  return c;
}

std::string escalation_reason(const Confidence& c, const route::CascadeSettings& s) {
  if (c.tokens == 0) return "the edge produced no tokens";
  if (c.mean_logprob < s.min_mean_logprob)
    return "mean logprob " + std::to_string(c.mean_logprob) + " < " +
           std::to_string(s.min_mean_logprob);
  if (c.min_logprob < s.min_token_logprob)
    return "min token logprob " + std::to_string(c.min_logprob) + " < " +
           std::to_string(s.min_token_logprob);
  if (c.mean_entropy > s.max_mean_entropy)
    return "mean entropy " + std::to_string(c.mean_entropy) + " > " +
           std::to_string(s.max_mean_entropy);
  return "";
}

double answer_similarity(std::string_view a, std::string_view b) {
  // One definition of agreement for consistency checks and shadow scoring.
  return word_jaccard(a, b);
}

Executor::Executor(std::map<std::string, std::shared_ptr<backend::Backend>> tiers,
                   ExecutorSettings settings, route::Router* router)
    : settings_(settings), router_(router) {
  for (auto& [name, b] : tiers) {
    tiers_[name] = Tier{std::move(b), std::make_unique<CircuitBreaker>(settings.breaker)};
  }
}

bool Executor::available(const std::string& tier) const {
  auto it = tiers_.find(tier);
  return it != tiers_.end() && it->second.breaker->available();
}

BreakerState Executor::breaker_state(const std::string& tier) const {
  auto it = tiers_.find(tier);
  return it == tiers_.end() ? BreakerState::kOpen : it->second.breaker->state();
}

double Executor::seconds_until_probe(const std::string& tier) const {
  auto it = tiers_.find(tier);
  return it == tiers_.end() ? 0.0 : it->second.breaker->seconds_until_probe();
}

std::shared_ptr<backend::Backend> Executor::backend(const std::string& tier) const {
  auto it = tiers_.find(tier);
  return it == tiers_.end() ? nullptr : it->second.backend;
}

route::TierProfile tier_profile(const backend::TierConfig& tier, int32_t context_length) {
  route::TierProfile p;
  p.name = tier.name;
  p.on_device = tier.placement == backend::Placement::kDevice;
  p.max_data_class = p.on_device ? route::DataClass::kDeviceOnly : route::DataClass::kPreferLocal;
  p.price_input_per_mtok = tier.price_input_per_mtok;
  p.price_output_per_mtok = tier.price_output_per_mtok;
  p.context_length = context_length;
  // A local model answers fast, a cloud round trip does not.
  p.prior_ttft_ms = p.on_device ? 50.0 : 400.0;
  p.prior_ms_per_token = p.on_device ? 20.0 : 15.0;
  p.quality = p.on_device ? 0.7 : 0.95;
  return p;
}

Result<backend::Completion> Executor::call(const std::string& name, bool cloud_allowed,
                                           const backend::BackendRequest& request,
                                           const backend::DeltaSink& on_delta, ExecutionResult& out,
                                           int32_t max_attempts, const SourceSink& on_source) {
  const int32_t attempts = max_attempts > 0 ? max_attempts : settings_.retry.max_attempts;
  auto it = tiers_.find(name);
  if (it == tiers_.end()) {
    return make_error(ErrorKind::kNotFound, "tier '" + name + "' is not configured");
  }
  Tier& tier = it->second;
  if (tier.backend->info().placement == backend::Placement::kCloud && !cloud_allowed) {
    out.trace.push_back(name + ": refused (data may not leave the device)");
    return make_error(ErrorKind::kInternal, "refused to send a request to cloud tier '" + name +
                                                "': its plan does not allow the cloud");
  }
  bool streamed = false;
  const backend::DeltaSink counting = on_delta ? backend::DeltaSink([&](const backend::Delta& d) {
    streamed = true;
    if (on_source) on_source(name);
    return on_delta(d);
  })
                                               : backend::DeltaSink();
  Error last = make_error(ErrorKind::kUnavailable, "tier '" + name + "' was not tried");
  for (int32_t attempt = 1; attempt <= attempts; ++attempt) {
    if (!tier.breaker->allow()) {
      out.trace.push_back(name + ": circuit open");
      Error open = make_error(
          ErrorKind::kUnavailable,
          "tier '" + name + "' is failing and its circuit breaker is open; retry after it probes");
      // A whole second at least: Retry-After counts in seconds.
      open.retry_after_seconds = std::max(1.0, std::ceil(tier.breaker->seconds_until_probe()));
      return open;
    }
    auto r = tier.backend->generate(request, counting);
    if (r.ok()) {
      tier.breaker->record_success();
      if (router_ != nullptr) {
        router_->record_latency(name, r->time_to_first_token_ms, r->total_ms,
                                r->usage.completion_tokens);
      }
      out.trace.push_back(name + ": ok" +
                          (attempt > 1 ? " after " + std::to_string(attempt) + " attempts" : ""));
      return r;
    }
    last = r.error();
    const bool cancelled = request.cancelled && request.cancelled->load();
    // The request's fault, not the tier's: a guard refusal sends nothing.
    if (!cancelled && last.kind != ErrorKind::kInvalidArgument &&
        last.kind != ErrorKind::kResourceExhausted && last.kind != ErrorKind::kPermissionDenied) {
      tier.breaker->record_failure();
    } else {
      tier.breaker->record_neither();
    }
    out.trace.push_back(name + ": " + describe(last));
    // Retry only while nothing has reached the client and there is time left.
    if (streamed || cancelled || !is_retryable(last) || attempt == attempts) break;
    const auto delay = backoff_delay(settings_.retry, attempt, last);
    if (request.deadline && Clock::now() + delay >= *request.deadline) break;
    if (request.first_token_deadline && Clock::now() + delay >= *request.first_token_deadline) {
      out.trace.push_back(name + ": no retry, the latency budget is spent");
      break;
    }
    std::this_thread::sleep_for(delay);
  }
  if (streamed) last.message += " (after part of the answer was streamed)";
  return last;
}

Result<ExecutionResult> Executor::run(const route::Plan& plan,
                                      const backend::BackendRequest& request,
                                      const backend::DeltaSink& on_delta,
                                      const SourceSink& on_source) {
  if (plan.fallback_tiers.empty()) return run_plan(plan, request, on_delta, on_source);
  bool streamed = false;
  const backend::DeltaSink sink = on_delta ? backend::DeltaSink([&](const backend::Delta& d) {
    streamed = true;
    return on_delta(d);
  })
                                           : backend::DeltaSink();
  auto first = run_plan(plan, request, sink, on_source);
  if (first.ok() || streamed || first.error().kind == ErrorKind::kInvalidArgument) return first;
  ExecutionResult out;
  out.trace.push_back(first.error().message);
  Error last = first.error();
  for (const auto& tier : plan.fallback_tiers) {
    if (request.cancelled && request.cancelled->load()) break;
    // The router listed only tiers this request's data may reach.
    auto r = call(tier, /*cloud_allowed=*/true, request, sink, out, 1, on_source);
    if (r.ok()) {
      out.completion = std::move(r).value();
      out.tier = tier;
      out.fell_back = true;
      // The device answering for a failed cloud tier is the fallback of last
      // resort the client is told of, as when the router planned the cloud.
      const std::string& planned =
          plan.kind == route::PlanKind::kEdge ? plan.edge_tier : plan.cloud_tier;
      const auto on_cloud = [this](const std::string& name) {
        const auto b = backend(name);
        return b != nullptr && b->info().placement == backend::Placement::kCloud;
      };
      if (on_cloud(planned) && !on_cloud(tier)) {
        out.degraded = true;
        out.degraded_reason = "tier '" + planned + "' failed: " + first.error().message;
      }
      return out;
    }
    last = r.error();
    if (streamed) break;
  }
  last.message = "every tier of the fallback chain failed; last: " + last.message;
  return last;
}

Result<ExecutionResult> Executor::run_plan(const route::Plan& plan,
                                           const backend::BackendRequest& request,
                                           const backend::DeltaSink& on_delta,
                                           const SourceSink& on_source) {
  ExecutionResult out;
  switch (plan.kind) {
    case route::PlanKind::kReject:
      return make_error(ErrorKind::kUnavailable, plan.reason);
    case route::PlanKind::kCascade:
      return run_cascade(plan, request, on_delta, on_source);
    case route::PlanKind::kConsistency:
      return run_consistency(plan, request, on_delta, on_source);
    case route::PlanKind::kEdge: {
      bool streamed = false;
      auto sink = on_delta ? backend::DeltaSink([&](const backend::Delta& d) {
        streamed = true;
        return on_delta(d);
      })
                           : backend::DeltaSink();
      auto r = call(plan.edge_tier, plan.cloud_allowed, request, sink, out, plan.forced ? 1 : 0,
                    on_source);
      if (r.ok()) {
        out.completion = std::move(r).value();
        out.tier = plan.edge_tier;
        return out;
      }
      // A parameter the edge refuses (top_logprobs 21, max_tokens 0, ...) is
      // the client's mistake: a 400 as it stands, not "edge unavailable" and
      // not a reason to send the request to the cloud. A feature the edge
      // lacks (remote_only) is the edge's limit, and the cloud may serve it.
      if (r.error().kind == ErrorKind::kInvalidArgument &&
          request.remote_only.edge_unsupported.empty()) {
        return r.error();
      }
      if (streamed || !plan.cloud_allowed || plan.cloud_tier.empty() || deadline_passed(request)) {
        Error e = r.error();
        if (!plan.cloud_allowed && !streamed) {
          e.message = "the edge tier cannot serve this request (" + e.message +
                      ") and its data may not be sent to the cloud";
          e.kind = e.kind == ErrorKind::kResourceExhausted ? e.kind : ErrorKind::kUnavailable;
        }
        return e;
      }
      auto c = call(plan.cloud_tier, plan.cloud_allowed, request, on_delta, out, 0, on_source);
      if (!c.ok()) return c.error();
      out.completion = std::move(c).value();
      out.tier = plan.cloud_tier;
      out.fell_back = true;
      return out;
    }
    case route::PlanKind::kCloud: {
      bool streamed = false;
      auto sink = on_delta ? backend::DeltaSink([&](const backend::Delta& d) {
        streamed = true;
        return on_delta(d);
      })
                           : backend::DeltaSink();
      auto r = call(plan.cloud_tier, plan.cloud_allowed, request, sink, out, plan.forced ? 1 : 0,
                    on_source);
      if (r.ok()) {
        out.completion = std::move(r).value();
        out.tier = plan.cloud_tier;
        return out;
      }
      if (streamed || !plan.edge_fallback_allowed || plan.edge_tier.empty() ||
          (request.cancelled && request.cancelled->load())) {
        return r.error();
      }
      // Fallback of last resort: the edge's answer, flagged, beats no answer.
      backend::BackendRequest edge_request = request;
      edge_request.params.logprobs = true;
      auto e = call(plan.edge_tier, plan.cloud_allowed, edge_request, on_delta, out, 0, on_source);
      if (!e.ok()) {
        Error err = r.error();
        err.message = "cloud: " + r.error().message + "; edge fallback: " + e.error().message;
        return err;
      }
      out.completion = std::move(e).value();
      out.tier = plan.edge_tier;
      out.fell_back = true;
      out.degraded = true;
      out.degraded_reason = "cloud tier '" + plan.cloud_tier + "' failed: " + r.error().message;
      out.confidence = std::exp(measure_confidence(out.completion.logprobs).mean_logprob);
      return out;
    }
  }
  return make_error(ErrorKind::kInternal, "unknown plan kind");
}

Result<ExecutionResult> Executor::run_cascade(const route::Plan& plan,
                                              const backend::BackendRequest& request,
                                              const backend::DeltaSink& on_delta,
                                              const SourceSink& on_source) {
  ExecutionResult out;
  backend::BackendRequest edge_request = request;
  edge_request.params.logprobs = true;  // the confidence signal

  // Streaming: hold back the first tokens; once they look sure, release them
  // and pass the rest through; if they look unsure, stop the edge early.
  const size_t hold = static_cast<size_t>(std::max(plan.cascade.hold_back_tokens, 1));
  std::vector<backend::Delta> held;
  std::vector<backend::TokenLogprob> seen;
  bool released = false, escalate_early = false, client_gone = false;
  std::string early_reason;
  backend::DeltaSink edge_sink;
  if (on_delta) {
    edge_sink = [&](const backend::Delta& d) {
      if (released) {
        if (!on_delta(d)) client_gone = true;
        return !client_gone;
      }
      held.push_back(d);
      seen.insert(seen.end(), d.logprobs.begin(), d.logprobs.end());
      if (seen.size() < hold) return true;
      early_reason = escalation_reason(measure_confidence(seen, hold), plan.cascade);
      if (!early_reason.empty() && plan.cloud_allowed) {
        escalate_early = true;
        return false;
      }
      released = true;
      for (const auto& h : held) {
        if (!on_delta(h)) {
          client_gone = true;
          return false;
        }
      }
      held.clear();
      return true;
    };
  }

  auto edge = call(plan.edge_tier, plan.cloud_allowed, edge_request, edge_sink, out, 0, on_source);
  if (client_gone) return make_error(ErrorKind::kCancelled, "the client went away");
  std::string reason;
  Confidence conf;
  if (edge.ok()) {
    conf = measure_confidence(edge->logprobs);
    out.confidence = std::exp(conf.mean_logprob);
    reason = escalate_early ? early_reason : escalation_reason(conf, plan.cascade);
    if (reason.empty() || !plan.cloud_allowed || released) {
      // Sure enough, or nowhere to escalate to, or already streaming.
      if (on_delta && !released) {
        for (const auto& h : held) on_delta(h);
      }
      out.completion = std::move(edge).value();
      out.tier = plan.edge_tier;
      if (!reason.empty() && !released) {
        out.trace.push_back("cascade: unsure (" + reason + ") but the cloud is not allowed");
      }
      return out;
    }
  } else {
    reason = "edge failed: " + edge.error().message;
    if (!plan.cloud_allowed) return edge.error();
  }

  out.escalated = true;
  out.trace.push_back("cascade: escalate (" + reason + ")");
  bool cloud_streamed = false;
  const backend::DeltaSink cloud_sink = on_delta ? backend::DeltaSink([&](const backend::Delta& d) {
    cloud_streamed = true;
    return on_delta(d);
  })
                                                 : backend::DeltaSink();
  auto cloud = call(plan.cloud_tier, plan.cloud_allowed, request, cloud_sink, out, 0, on_source);
  if (cloud.ok()) {
    out.completion = std::move(cloud).value();
    out.tier = plan.cloud_tier;
    return out;
  }
  // Part of the cloud's answer already reached the client: appending the
  // edge's would hand it a corrupt answer that looks whole.
  if (!edge.ok() || cloud_streamed) return cloud.error();
  // Both tiers degraded: serve what the edge produced, flagged, with its confidence.
  backend::Completion answer = std::move(edge).value();
  if (escalate_early) {
    // The edge was stopped early; finish its answer for the client.
    ExecutionResult again;
    auto full = call(plan.edge_tier, false, edge_request, on_delta, again, 0, on_source);
    if (!full.ok()) return full.error();
    answer = std::move(full).value();
    out.trace.insert(out.trace.end(), again.trace.begin(), again.trace.end());
  } else if (on_delta) {
    for (const auto& h : held) on_delta(h);
  }
  out.completion = std::move(answer);
  out.confidence = std::exp(measure_confidence(out.completion.logprobs).mean_logprob);
  out.tier = plan.edge_tier;
  out.degraded = true;
  out.degraded_reason = "cascade escalated (" + reason + ") but cloud tier '" + plan.cloud_tier +
                        "' failed: " + cloud.error().message;
  out.fell_back = true;
  return out;
}

Result<ExecutionResult> Executor::run_consistency(const route::Plan& plan,
                                                  const backend::BackendRequest& request,
                                                  const backend::DeltaSink& on_delta,
                                                  const SourceSink& on_source) {
  ExecutionResult out;
  if (!plan.cloud_allowed) {
    // Nothing to compare against without the cloud: the edge answers alone.
    route::Plan edge_only = plan;
    edge_only.kind = route::PlanKind::kEdge;
    return run(edge_only, request, on_delta, on_source);
  }
  backend::BackendRequest edge_request = request;
  edge_request.params.logprobs = true;
  ExecutionResult cloud_trace;
  auto cloud_future = std::async(std::launch::async, [&] {
    return call(plan.cloud_tier, plan.cloud_allowed, request, {}, cloud_trace);
  });
  auto edge = call(plan.edge_tier, plan.cloud_allowed, edge_request, {}, out);
  auto cloud = cloud_future.get();
  out.trace.insert(out.trace.end(), cloud_trace.trace.begin(), cloud_trace.trace.end());
  if (!edge.ok() && !cloud.ok()) return cloud.error();
  if (edge.ok()) out.confidence = std::exp(measure_confidence(edge->logprobs).mean_logprob);
  if (edge.ok() && cloud.ok()) out.similarity = answer_similarity(edge->text, cloud->text);
  const bool use_edge =
      edge.ok() && (!cloud.ok() || *out.similarity >= plan.consistency_min_similarity);
  if (use_edge) {
    out.completion = std::move(edge).value();
    out.tier = plan.edge_tier;
    out.degraded = !cloud.ok();
    if (!cloud.ok()) {
      out.degraded_reason = "consistency check without the cloud: cloud tier '" + plan.cloud_tier +
                            "' failed: " + cloud.error().message;
    }
  } else if (cloud.ok()) {
    out.completion = std::move(cloud).value();
    out.tier = plan.cloud_tier;
    out.fell_back = !edge.ok();
  } else {
    return cloud.error();
  }
  out.trace.push_back("consistency: " +
                      (out.similarity ? "similarity " + std::to_string(*out.similarity)
                                      : std::string("one tier failed")) +
                      ", served " + out.tier);
  if (on_delta) {
    if (on_source) on_source(out.tier);
    backend::Delta d;
    d.text = out.completion.text;
    d.logprobs = out.completion.logprobs;
    on_delta(d);
  }
  return out;
}

}  // namespace foreshore::exec
