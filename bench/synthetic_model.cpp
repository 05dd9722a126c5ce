// Writes a model with a real model's shapes and random weights, for benchmarks
// that need a file of a given size and type when no real one is at hand
// (speed does not depend on weight values).
// Usage: build/bench/synthetic_model PRESET TYPE OUT.gguf
//   PRESET: any of synthetic_model_preset_names() (real shapes, and *-tiny ones)
//   TYPE:   any type the engine computes (F16, Q8_0, Q4_0, Q4_K, ...)
#include <cstdio>
#include <string>

#include "engine/engine.h"

int main(int argc, char** argv) {
  using namespace foreshore::engine;
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s PRESET TYPE OUT.gguf\n", argv[0]);
    return 2;
  }
  const auto type = parse_tensor_type(argv[2]);
  if (!type) {
    std::fprintf(stderr, "unknown type '%s'; use one of %s\n", argv[2],
                 computable_type_names().c_str());
    return 2;
  }
  auto spec = synthetic_model_preset(argv[1], *type);
  if (!spec) {
    std::fprintf(stderr, "unknown preset '%s'; use one of %s\n", argv[1],
                 synthetic_model_preset_names());
    return 2;
  }
  // llama.cpp takes Llama 3's rope scaling only from a rope_freqs tensor and
  // refuses the metadata form the synthetic writer uses; rope does not change
  // speed, so the file goes without it and both engines can load it.
  spec->llama3_rope_scaling = false;
  const auto written = write_synthetic_model(*spec, argv[3]);
  if (!written.ok()) {
    std::fprintf(stderr, "%s\n", written.error().message.c_str());
    return 1;
  }
  return 0;
}
