#include "support/emulator.h"

#include <array>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace foreshore::testing {
namespace {

// The ELF machine field of `path`; 0 when it is no ELF file. Read from the
// header (bytes 18-19, in the file's own byte order).
unsigned elf_machine(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::array<unsigned char, 20> header{};
  if (!in.read(reinterpret_cast<char*>(header.data()), header.size())) return 0;
  if (header[0] != 0x7f || header[1] != 'E' || header[2] != 'L' || header[3] != 'F') return 0;
  const bool big_endian = header[5] == 2;
  return big_endian ? (header[18] << 8) | header[19] : header[18] | (header[19] << 8);
}

// Named by a path (not found on PATH, where the host's programs are) and of
// this test program's machine. The emulator shows this program's own file,
// not itself, as /proc/self/exe.
bool built_here(const std::string& program) {
  if (program.find('/') == std::string::npos) return false;
  const unsigned machine = elf_machine(program);
  return machine != 0 && machine == elf_machine("/proc/self/exe");
}

}  // namespace

std::vector<std::string> emulator_words() {
  std::vector<std::string> words;
  const char* emulator = std::getenv("FORESHORE_TEST_EMULATOR");
  std::istringstream in(emulator != nullptr ? emulator : "");
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

std::chrono::milliseconds time_limit(std::chrono::milliseconds native) {
  return emulator_words().empty() ? native : native * 10;
}

std::vector<std::string> emulated_argv(std::vector<std::string> argv) {
  std::vector<std::string> emulator = emulator_words();
  if (emulator.empty() || argv.empty() || !built_here(argv[0])) return argv;
  emulator.insert(emulator.end(), argv.begin(), argv.end());
  return emulator;
}

bool place_command(const std::filesystem::path& at, const std::string& program, std::string& why) {
  const std::vector<std::string> emulator = emulator_words();
  std::error_code ec;
  if (emulator.empty()) {
    std::filesystem::create_symlink(program, at, ec);
    if (ec) why = "cannot link " + at.string() + " to " + program + ": " + ec.message();
    return !ec;
  }
  {
    std::ofstream script(at);
    script << "#!/bin/sh\nexec";
    for (const std::string& word : emulator) script << " '" << word << "'";
    script << " '" << program << "' \"$@\"\n";
    if (!script.flush()) {
      why = "cannot write " + at.string() + " (a script running " + program + " emulated)";
      return false;
    }
  }
  std::filesystem::permissions(at, std::filesystem::perms::owner_all, ec);
  if (ec) why = "cannot make " + at.string() + " executable: " + ec.message();
  return !ec;
}

}  // namespace foreshore::testing
