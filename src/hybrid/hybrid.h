// src/hybrid: the hybrid pipeline as a library, free of any transport. The
// gateway configuration (config.h); a transport-free request and refusal
// (request.h); decide, admit, execute and record over the tiers (pipeline.h),
// with the limits replicas share (shared_limits.h), virtual keys
// (virtual_keys.h) and online router learning (learning.h); a streamed run's
// events (stream.h); and one configuration made live, with a request's whole
// run in process (deployment.h). Front ends (src/serve, src/capi) include only this.
#pragma once

#include "hybrid/config.h"
#include "hybrid/deployment.h"
#include "hybrid/learning.h"
#include "hybrid/pipeline.h"
#include "hybrid/request.h"
#include "hybrid/shared_limits.h"
#include "hybrid/stream.h"
#include "hybrid/virtual_keys.h"
