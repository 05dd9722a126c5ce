// Locations tests share: temporary files and the real models of ../shared/data.
// Header-only so that engine tests need nothing beyond their own library.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>

namespace foreshore::testing {

// A fresh temporary file path, unique per call and per process.
inline std::string temp_path(const std::string& suffix) {
  static std::atomic<int> counter{0};
  const auto dir = std::filesystem::temp_directory_path();
  return (dir / ("foreshore-test-" + std::to_string(::getpid()) + "-" +
                 std::to_string(counter++) + suffix))
      .string();
}

// Folder holding the shared real models (FSH_SHARED_DATA_DIR/models).
inline std::string shared_models_dir() {
  return (std::filesystem::path(FSH_SHARED_DATA_DIR) / "models").lexically_normal().string();
}

}  // namespace foreshore::testing
