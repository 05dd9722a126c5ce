// Where the files foreshore ships with (data/router/..., the models beside a
// checkout) are found, whatever folder the binary is started from: relative
// to the binary itself, built or installed. Header-only so that the engine,
// the lowest layer, can use it without a library of its own.
#pragma once

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace foreshore {

// The folder of the binary this code is part of: the foreshore executable,
// or libforeshore.so inside an app (whose own executable says nothing of
// where foreshore is installed). Empty when it cannot be told.
inline std::filesystem::path executable_dir() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<const void*>(&executable_dir), &info) != 0 &&
      info.dli_fname != nullptr &&
      std::string_view(info.dli_fname).find('/') != std::string_view::npos) {
    std::error_code ec;
    const std::filesystem::path module = std::filesystem::canonical(info.dli_fname, ec);
    if (!ec) return module.parent_path();
  }
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}

// Folders that may hold the shipped data, most specific first:
//   $FORESHORE_DATA_DIR;
//   <prefix>/share/foreshore for a binary installed in <prefix>/bin (or a
//   library in <prefix>/lib);
//   the first `data` folder in the binary's folder or a folder above it (a
//   build tree: <source>/build/foreshore finds <source>/data);
//   `data` in the working directory, last, as before there was an install.
inline std::vector<std::filesystem::path> shipped_data_dirs() {
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("FORESHORE_DATA_DIR"); env != nullptr && *env != '\0') {
    dirs.emplace_back(env);
  }
  std::error_code ec;
  if (const fs::path exe_dir = executable_dir(); !exe_dir.empty()) {
    const fs::path installed = exe_dir.parent_path() / "share" / "foreshore";
    if (fs::is_directory(installed, ec)) dirs.push_back(installed);
    for (fs::path dir = exe_dir; !dir.empty() && dir != dir.root_path(); dir = dir.parent_path()) {
      if (fs::is_directory(dir / "data" / "router", ec)) {
        dirs.push_back(dir / "data");
        break;
      }
    }
  }
  dirs.emplace_back("data");
  return dirs;
}

// The shipped file `relative` (say "router/complexity-default.json") in the
// first of shipped_data_dirs() that holds it; nullopt when none does.
inline std::optional<std::string> find_shipped_file(const std::string& relative) {
  std::error_code ec;
  for (const auto& dir : shipped_data_dirs()) {
    if (std::filesystem::is_regular_file(dir / relative, ec)) return (dir / relative).string();
  }
  return std::nullopt;
}

// Model folders found from the binary, searched after FORESHORE_MODEL_PATH:
// <prefix>/share/foreshore/models when installed; for a build tree,
// <source>/models and the shared data beside the checkout,
// <source>/../shared/data/models.
inline std::vector<std::string> binary_relative_model_dirs() {
  namespace fs = std::filesystem;
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& data : shipped_data_dirs()) {
    if (data.is_relative()) continue;  // the working directory's, already on the search path
    if (data.filename() == "foreshore") {
      dirs.push_back((data / "models").string());
    } else {
      const fs::path source = data.parent_path();
      dirs.push_back((source / "models").string());
      dirs.push_back(
          (source.parent_path() / "shared" / "data" / "models").lexically_normal().string());
    }
  }
  std::erase_if(dirs, [&](const std::string& d) { return !fs::is_directory(d, ec); });
  return dirs;
}

}  // namespace foreshore
