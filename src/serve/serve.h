// src/serve: the OpenAI-compatible gateway. Front ends include only this.
#pragma once

#include "hybrid/config.h"
#include "hybrid/openai.h"
#include "observe/metrics.h"
#include "serve/server.h"
