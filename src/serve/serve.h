// src/serve: the OpenAI-compatible gateway. Front ends include only this.
#pragma once

#include "hybrid/config.h"
#include "serve/metrics.h"
#include "serve/openai.h"
#include "serve/server.h"
