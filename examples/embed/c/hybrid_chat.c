/* An app embedding foreshore through its C API: generate with a model in
 * process, route a request and explain why, then run whole hybrid chat
 * requests (edge in process, cloud over HTTP).
 *
 * Build against an installed foreshore:
 *   cc hybrid_chat.c $(pkg-config --cflags --libs foreshore) -o hybrid_chat
 * Run: ./hybrid_chat MODEL_FOLDER CLOUD_BASE_URL
 *   MODEL_FOLDER holds stories260K.gguf; CLOUD_BASE_URL is any
 *   OpenAI-compatible server, e.g. `foreshore serve -m stories260K --port 8081`
 *   as http://127.0.0.1:8081/v1.
 */
#include <foreshore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool print_piece(const char* text, size_t length, void* user_data) {
  int* pieces = (int*)user_data;
  ++*pieces;
  fwrite(text, 1, length, stdout);
  return true;
}

static bool show_progress(float progress, void* user_data) {
  (void)user_data;
  printf("[load %.0f%%]\n", progress * 100.0f);
  return true;
}

static void log_line(foreshore_log_level level, const char* line, void* user_data) {
  (void)level;
  (void)user_data;
  printf("[log] %s\n", line);
}

static int fail(const char* what, foreshore_status status) {
  fprintf(stderr, "%s failed: %s: %s\n", what, foreshore_status_name(status),
          foreshore_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL_FOLDER CLOUD_BASE_URL\n", argv[0]);
    return 2;
  }
  printf("foreshore %s\n", foreshore_version());
  /* The app says where its models are; no environment variable needed. */
  foreshore_status status = foreshore_set_model_search_path(argv[1]);
  if (status != FORESHORE_OK) return fail("foreshore_set_model_search_path", status);

  /* 1. A model in process, streamed. */
  foreshore_model_params model_params = foreshore_model_default_params();
  model_params.threads = 1;
  model_params.progress = show_progress;
  foreshore_model* model = NULL;
  status = foreshore_model_load("stories260K", &model_params, &model);
  if (status != FORESHORE_OK) return fail("foreshore_model_load", status);
  foreshore_generate_params gen = foreshore_generate_default_params();
  gen.max_tokens = 16;
  gen.temperature = 0.0f;
  gen.chat = false;
  int pieces = 0;
  gen.on_token = print_piece;
  gen.user_data = &pieces;
  char* text = NULL;
  printf("generate: ");
  status = foreshore_model_generate(model, "Once upon a time", &gen, &text);
  if (status != FORESHORE_OK) return fail("foreshore_model_generate", status);
  printf("\ngenerated %zu bytes in %d pieces\n", strlen(text), pieces);
  foreshore_string_free(text);
  foreshore_model_free(model);

  /* 2. The hybrid pipeline: an edge tier in process, a cloud tier over HTTP. */
  char yaml[2048];
  snprintf(yaml, sizeof yaml,
           "tiers:\n"
           "  edge: {kind: embedded, placement: device, model: stories260K, threads: 1}\n"
           "  cloud: {kind: openai, placement: cloud, endpoint: '%s', model: stories260K}\n"
           "routing:\n"
           "  policy: threshold\n",
           argv[2]);
  foreshore_hybrid_params hybrid_params = foreshore_hybrid_default_params();
  hybrid_params.config_yaml = yaml;
  hybrid_params.log = log_line;
  foreshore_hybrid* hybrid = NULL;
  status = foreshore_hybrid_create(&hybrid_params, &hybrid);
  if (status != FORESHORE_OK) return fail("foreshore_hybrid_create", status);

  const char* request =
      "{\"model\": \"foreshore\", \"max_tokens\": 8, \"temperature\": 0,"
      " \"messages\": [{\"role\": \"user\", \"content\": \"Once upon a time\"}]}";
  foreshore_route_hints hints = {0};
  hints.data_class = "device-only";
  char* decision = NULL;
  status = foreshore_hybrid_route(hybrid, request, &hints, &decision);
  if (status != FORESHORE_OK) return fail("foreshore_hybrid_route", status);
  printf("route (device-only): %s\n", decision);
  foreshore_string_free(decision);

  /* Device-only data stays on the edge; the cloud tier, asked for, answers over HTTP. */
  const char* data_classes[] = {"device-only", "public"};
  const char* tiers[] = {NULL, "cloud"};
  for (int i = 0; i < 2; ++i) {
    foreshore_chat_params chat = foreshore_chat_default_params();
    chat.hints.data_class = data_classes[i];
    chat.hints.tier = tiers[i];
    char* reply = NULL;
    int http_status = 0;
    status = foreshore_hybrid_chat(hybrid, request, &chat, &reply, &http_status);
    if (status != FORESHORE_OK) {
      fprintf(stderr, "reply: %s\n", reply ? reply : "(none)");
      foreshore_string_free(reply);
      return fail("foreshore_hybrid_chat", status);
    }
    printf("chat (%s): HTTP %d %s\n", data_classes[i], http_status, reply);
    foreshore_string_free(reply);
  }

  /* The app's own memory-pressure reading, which the router acts on. */
  status = foreshore_hybrid_set_memory_pressure(hybrid, 3);
  if (status != FORESHORE_OK) return fail("foreshore_hybrid_set_memory_pressure", status);
  status = foreshore_hybrid_route(hybrid, request, NULL, &decision);
  if (status != FORESHORE_OK) return fail("foreshore_hybrid_route", status);
  printf("route (memory pressure critical): %s\n", decision);
  foreshore_string_free(decision);

  foreshore_hybrid_free(hybrid);
  printf("done\n");
  return 0;
}
