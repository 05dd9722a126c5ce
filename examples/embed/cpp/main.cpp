// An app embedding foreshore from C++ (foreshore/foreshore.hpp over the C
// API): a routed chat request, edge in process and cloud over HTTP.
// Run: hybrid_chat_cpp MODEL_FOLDER CLOUD_BASE_URL
#include <foreshore/foreshore.hpp>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " MODEL_FOLDER CLOUD_BASE_URL\n";
    return 2;
  }
  try {
    foreshore_set_model_search_path(argv[1]);
    foreshore::Hybrid hybrid(
        "tiers:\n"
        "  edge: {kind: embedded, placement: device, model: stories260K, threads: 1}\n"
        "  cloud: {kind: openai, placement: cloud, endpoint: '" +
        std::string(argv[2]) +
        "', model: stories260K}\n"
        "routing: {policy: threshold}\n");
    const std::string request =
        R"({"model": "foreshore", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Once upon a time"}]})";
    std::cout << "route: " << hybrid.route(request) << "\n";
    foreshore_chat_params params = foreshore_chat_default_params();
    params.hints.tier = "cloud";
    size_t pieces = 0;
    const auto reply = hybrid.chat(request, params, [&](std::string_view) { return ++pieces > 0; });
    std::cout << "chat: HTTP " << reply.http_status << " " << reply.json << "\n";
    std::cout << "pieces " << pieces << "\n";
    return reply.http_status == 200 ? 0 : 1;
  } catch (const foreshore::Error& e) {
    std::cerr << "foreshore: " << e.what() << "\n";
    return 1;
  }
}
