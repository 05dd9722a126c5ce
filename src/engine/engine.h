// The embedded edge engine: everything a caller needs to load a GGUF model and
// generate text on the CPU. Callers outside src/engine include only this.
#pragma once

#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/gguf.h"
#include "engine/json_constraint.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/synthetic_model.h"
#include "engine/tensor_type.h"
#include "engine/thread_pool.h"
#include "engine/tokenizer.h"
