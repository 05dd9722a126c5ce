// Tests of a cross build, run under an emulator: ctest puts
// CMAKE_CROSSCOMPILING_EMULATOR (e.g. "qemu-aarch64 -cpu max") in front of
// each test program and sets FORESHORE_TEST_EMULATOR to it. Without
// binfmt_misc the programs built here cannot be started directly, so the
// tests start them through the emulator too; host programs (bash,
// redis-server, node) start as they are.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace foreshore::testing {

// The emulator's command words ($FORESHORE_TEST_EMULATOR split at spaces);
// empty when the tests run natively.
std::vector<std::string> emulator_words();

// How long a test lets a program it starts run, given the limit natively:
// ten times longer under an emulator, as ctest's own limit is there
// (scripts/test-arm64.sh), since every instruction is translated.
std::chrono::milliseconds time_limit(std::chrono::milliseconds native);

// `argv` as it must be started: behind the emulator when argv[0] is a
// program built here (an ELF file of this test program's own machine, named
// by a path) and the tests run under one; unchanged otherwise.
std::vector<std::string> emulated_argv(std::vector<std::string> argv);

// A command at `at` for shell commands to run that starts `program`: a link
// to it, or under an emulator a script that runs it through the emulator.
// False, with `why` set, when it cannot be written.
bool place_command(const std::filesystem::path& at, const std::string& program, std::string& why);

}  // namespace foreshore::testing
