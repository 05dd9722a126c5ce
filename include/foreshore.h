/* foreshore.h: the C API of libforeshore, the hybrid edge-cloud LLM runtime
 * for apps. One header, plain C99, every language binds to it.
 *
 *   Engine:  load a GGUF model and generate text on the CPU, streamed,
 *            cancellable (foreshore_model_*).
 *   Hybrid:  the gateway's whole pipeline in process, without an HTTP
 *            server: route a chat request, explain the decision, run it on
 *            the edge tier in process or on cloud tiers over HTTP, with the
 *            same routing, egress guard and fallbacks as `foreshore serve`
 *            (foreshore_hybrid_*).
 *
 * Conventions
 *   - Handles are opaque; each *_free accepts NULL.
 *   - Parameter structs come from foreshore_*_default_params(); set the
 *     fields you need and pass a pointer (NULL means the defaults).
 *   - Functions that can fail return foreshore_status; on failure
 *     foreshore_last_error() says what was wrong, where and what to do.
 *   - Strings returned through char** are the caller's to release with
 *     foreshore_string_free().
 *   - Thread safety is stated per function. "Any thread" means safe to call
 *     from several threads at once on the same handle.
 *   - Callbacks run on the thread that called the function they were passed
 *     to, unless said otherwise; they must not call back into the same handle.
 *
 * Link: pkg-config --cflags --libs foreshore, or CMake
 *   find_package(foreshore) + target_link_libraries(app foreshore::foreshore).
 */
#ifndef FORESHORE_H
#define FORESHORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(FORESHORE_BUILDING_LIBRARY)
#define FORESHORE_API __attribute__((visibility("default")))
#else
#define FORESHORE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Version, errors, logging ------------------------------------------ */

#define FORESHORE_VERSION_MAJOR 0
#define FORESHORE_VERSION_MINOR 1
#define FORESHORE_VERSION_PATCH 0

typedef enum foreshore_status {
  FORESHORE_OK = 0,
  FORESHORE_ERR_INVALID_ARGUMENT = 1, /* a parameter or request is malformed or too large
                                         (a prompt longer than the context, a context
                                         the memory cannot hold): retrying cannot help */
  FORESHORE_ERR_NOT_FOUND = 2,        /* a model, tier or file does not exist */
  FORESHORE_ERR_UNAVAILABLE = 3,      /* a tier failed or is not ready; retrying may help */
  FORESHORE_ERR_CANCELLED = 4,        /* a callback or foreshore_*_cancel stopped it */
  FORESHORE_ERR_UNSUPPORTED = 5,      /* not in this build (e.g. hybrid in an engine-only build) */
  FORESHORE_ERR_INTERNAL = 6          /* a bug: please report it with the message */
} foreshore_status;

/* "0.1.0". Any thread. */
FORESHORE_API const char* foreshore_version(void);
/* The status's name, e.g. "invalid_argument". Any thread. */
FORESHORE_API const char* foreshore_status_name(foreshore_status status);
/* The message of the last failure on the calling thread ("" if none); valid
 * until the thread's next call into the library. Any thread (thread-local). */
FORESHORE_API const char* foreshore_last_error(void);
/* Releases a string the library returned. Any thread. */
FORESHORE_API void foreshore_string_free(char* text);

/* Log levels for foreshore_log_callback. */
typedef enum foreshore_log_level {
  FORESHORE_LOG_INFO = 0,
  FORESHORE_LOG_WARN = 1,
  FORESHORE_LOG_ERROR = 2
} foreshore_log_level;
/* One log line, without a trailing newline. May be called from any of the
 * library's threads; must be thread-safe itself. */
typedef void (*foreshore_log_callback)(foreshore_log_level level, const char* line,
                                       void* user_data);

/* The folders (colon-separated) searched for a model given by name rather
 * than path, in place of the FORESHORE_MODEL_PATH environment variable; NULL
 * goes back to the environment. Process-wide: call before loading models,
 * not while another thread loads one. */
FORESHORE_API foreshore_status foreshore_set_model_search_path(const char* folders);

/* ---- Engine: a model in process --------------------------------------- */

typedef struct foreshore_model foreshore_model;

/* Load progress in [0, 1]; return false to abort the load (it then fails
 * with FORESHORE_ERR_CANCELLED). Called on the loading thread. */
typedef bool (*foreshore_progress_callback)(float progress, void* user_data);

typedef struct foreshore_model_params {
  int32_t threads;                      /* 0: one per core; at most 1024 */
  int32_t context_length;               /* 0: the model's own */
  foreshore_progress_callback progress; /* NULL: none */
  void* progress_user_data;
} foreshore_model_params;

/* Any thread. */
FORESHORE_API foreshore_model_params foreshore_model_default_params(void);

/* Loads a GGUF model: a path, or a name found on the model search path.
 * Any thread; each call loads its own copy. */
FORESHORE_API foreshore_status foreshore_model_load(const char* name_or_path,
                                                    const foreshore_model_params* params,
                                                    foreshore_model** out_model);
/* Not while a generation on the model runs. */
FORESHORE_API void foreshore_model_free(foreshore_model* model);

/* A piece of generated text as it becomes final (complete UTF-8, clear of
 * stop strings); `text` is not NUL-terminated. Return false to cancel. */
typedef bool (*foreshore_token_callback)(const char* text, size_t length, void* user_data);

typedef struct foreshore_generate_params {
  int32_t max_tokens; /* default 256; <= 0: until the end of text or a full context */
  float temperature;  /* default 0.8; 0: greedy; at most 2 */
  float top_p;        /* default 0.95; 1: off; 0 to 1 */
  int32_t top_k;      /* default 40; 0: off; not negative */
  uint64_t seed;      /* default 0 */
  bool chat; /* default true: wrap the prompt in the model's chat template as one user turn */
  foreshore_token_callback on_token; /* NULL: none */
  void* user_data;
} foreshore_generate_params;

/* Any thread. */
FORESHORE_API foreshore_generate_params foreshore_generate_default_params(void);

/* Generates from `prompt`; the whole text goes to *out_text (release with
 * foreshore_string_free), pieces to params->on_token as they come. A model
 * runs one generation at a time: calls on the same model from several
 * threads wait for each other. A cancelled generation returns
 * FORESHORE_ERR_CANCELLED and still sets *out_text to the text so far. */
FORESHORE_API foreshore_status foreshore_model_generate(foreshore_model* model, const char* prompt,
                                                        const foreshore_generate_params* params,
                                                        char** out_text);
/* Stops the generation running on `model`, if any, at its next token.
 * Any thread; the point of it is to be called from another one. */
FORESHORE_API void foreshore_model_cancel(foreshore_model* model);

/* ---- Hybrid: route and run chat requests in process -------------------- */

typedef struct foreshore_hybrid foreshore_hybrid;

typedef struct foreshore_hybrid_params {
  /* The gateway's configuration as YAML text (docs/CONFIG.md: tiers,
   * routing, privacy, models), or a path to the file; exactly one. server.*
   * keys about the HTTP listener are accepted and ignored. */
  const char* config_yaml;
  const char* config_path;
  /* One line per request (tier, status, time, plan); NULL: stderr. Tier
   * and memory-pressure notices still go to stderr in this version. */
  foreshore_log_callback log;
  void* log_user_data;
} foreshore_hybrid_params;

/* Any thread. */
FORESHORE_API foreshore_hybrid_params foreshore_hybrid_default_params(void);

/* Reads and validates the configuration and creates every tier (an embedded
 * tier loads its model; an HTTP tier only checks its settings). Any thread. */
FORESHORE_API foreshore_status foreshore_hybrid_create(const foreshore_hybrid_params* params,
                                                       foreshore_hybrid** out_hybrid);
/* Not while a call on the handle runs. */
FORESHORE_API void foreshore_hybrid_free(foreshore_hybrid* hybrid);

/* Routing hints of one request, as the gateway's x-foreshore-* headers carry
 * them; NULL or "" leaves one out. */
typedef struct foreshore_route_hints {
  /* public | prefer-local | contractual | device-only; with the body's
   * metadata.data_class also given, the stricter of the two holds */
  const char* data_class;
  const char* tier;              /* force a tier (still subject to the data class) */
  const char* latency_budget_ms; /* e.g. "800" */
  const char* cost_ceiling_usd;  /* e.g. "0.01" */
  const char* session;           /* pins a conversation to a tier */
} foreshore_route_hints;

/* The routing decision for a chat request, explained and not run: the JSON
 * that POST /v1/route answers with. `request_json` is an OpenAI chat
 * completion request ({"messages": [...], ...}). Any thread. */
FORESHORE_API foreshore_status foreshore_hybrid_route(foreshore_hybrid* hybrid,
                                                      const char* request_json,
                                                      const foreshore_route_hints* hints,
                                                      char** out_json);

typedef struct foreshore_chat_params {
  foreshore_route_hints hints;
  foreshore_token_callback on_token; /* NULL: none; return false to cancel */
  void* user_data;
} foreshore_chat_params;

/* Any thread. */
FORESHORE_API foreshore_chat_params foreshore_chat_default_params(void);

/* Runs a chat request through the whole pipeline: route, run on the decided
 * tier(s) with fallbacks, record. *out_json gets the OpenAI chat.completion
 * object with the gateway's "foreshore" provenance (tier, plan, decision id)
 * when it succeeds, and the OpenAI error object when it does not; both are
 * the caller's to free. *out_http_status (may be NULL) gets the status the
 * gateway would have answered with. "stream" in the request is ignored:
 * pieces go to params->on_token. Any thread; requests run concurrently up
 * to the tiers' own limits. */
FORESHORE_API foreshore_status foreshore_hybrid_chat(foreshore_hybrid* hybrid,
                                                     const char* request_json,
                                                     const foreshore_chat_params* params,
                                                     char** out_json, int* out_http_status);

/* The app's own memory-pressure level, 0 (none) to 3 (critical), which the
 * router and the edge tiers act on (docs/RELIABILITY.md) instead of the
 * measured one; -1 goes back to measuring. Any thread. */
FORESHORE_API foreshore_status foreshore_hybrid_set_memory_pressure(foreshore_hybrid* hybrid,
                                                                    int level);

#ifdef __cplusplus
}
#endif

#endif /* FORESHORE_H */
