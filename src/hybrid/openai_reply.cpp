// A pipeline's answer as an OpenAI reply; apart from openai.cpp, which needs
// nothing of the pipeline but its request and refusal types (the request
// fuzzer compiles it on its own).
#include <ctime>
#include <string>

#include "hybrid/openai.h"

namespace foreshore::openai {

Reply reply_to(const hybrid::Request& request, const hybrid::Answer& answer,
               std::string_view decision_id) {
  Reply reply;
  if (answer.refusal || !answer.result) {
    hybrid::Refusal neither;
    neither.kind = hybrid::RefusalKind::kInternal;
    neither.message = "the pipeline gave neither an answer nor a refusal; report this as a bug";
    const ApiError e = api_error(answer.refusal ? *answer.refusal : neither);
    reply.status = e.status;
    reply.body = error_json(e);
    return reply;
  }
  const exec::ExecutionResult& result = *answer.result;
  const backend::Completion& c = result.completion;
  const backend::BackendInfo& info = answer.tier->backend->info();
  const std::string& version = c.model_version.empty() ? info.model_version : c.model_version;
  Provenance where;
  where.tier = answer.tier->config.name;
  where.placement = backend::placement_name(answer.tier->config.placement);
  where.model = c.model.empty() ? info.model : c.model;
  where.model_version = version.empty() ? std::string_view("unknown") : std::string_view(version);
  where.decision_id = decision_id;
  if (answer.decision) where.plan = route::to_string(answer.decision->plan.kind);
  where.degraded = result.degraded;
  where.degraded_reason = result.degraded_reason;
  where.escalated = result.escalated;
  where.confidence = result.confidence;
  append_completion(reply.body, request, decision_id, std::time(nullptr), c, where);
  return reply;
}

}  // namespace foreshore::openai
