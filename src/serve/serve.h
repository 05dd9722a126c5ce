// src/serve: the OpenAI-compatible gateway. Front ends include only this.
#pragma once

#include "config/config.h"
#include "serve/metrics.h"
#include "serve/openai.h"
#include "serve/server.h"
