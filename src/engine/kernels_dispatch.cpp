// Run-time choice of the kernels' instruction-set level: detected once from
// CPUID (x86-64) or the kernel's hardware capabilities (ARM64), overridable
// downwards for tests and A/B runs.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>  // getauxval, and glibc's HWCAP_* bits
// The kernel's bit for SMMLA (Linux 5.10); glibc before 2.33 lacks the name.
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine {
namespace {

// The levels of the architecture built for, lowest first: the names
// FORESHORE_CPU_LEVEL and --cpu-level take here.
#if defined(__x86_64__)
constexpr CpuLevel kAllLevels[] = {CpuLevel::kScalar, CpuLevel::kAvx2, CpuLevel::kAvx512};
#elif defined(__aarch64__) && defined(FSH_KERNELS_I8MM)
constexpr CpuLevel kAllLevels[] = {CpuLevel::kScalar, CpuLevel::kNeon, CpuLevel::kDotprod,
                                   CpuLevel::kI8mm};
#elif defined(__aarch64__)
// Built by a compiler without +i8mm (CMake checks): no i8mm level.
constexpr CpuLevel kAllLevels[] = {CpuLevel::kScalar, CpuLevel::kNeon, CpuLevel::kDotprod};
#else
constexpr CpuLevel kAllLevels[] = {CpuLevel::kScalar};
#endif

bool cpu_has(CpuLevel level) {
  switch (level) {
    case CpuLevel::kScalar:
      return true;
    case CpuLevel::kNeon:
      // Advanced SIMD is part of every ARMv8-A CPU that runs a 64-bit OS.
#if defined(__aarch64__)
      return true;
#else
      return false;
#endif
    case CpuLevel::kDotprod:
      // The kernel reports SDOT/UDOT as HWCAP_ASIMDDP (ARMv8.2-A, optional
      // there, e.g. Cortex-A55/A75 and later; not Cortex-A53/A57/A72).
#if defined(__aarch64__) && defined(__linux__)
      return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
      return false;
#endif
    case CpuLevel::kI8mm:
      // SMMLA is HWCAP2_I8MM (ARMv8.6-A, optional from ARMv8.2-A, e.g.
      // Neoverse V1/N2, Cortex-A510/A710/X2 and later, Apple M2; not
      // Neoverse N1). The level builds on dotprod's kernels, so it needs both.
#if defined(__aarch64__) && defined(__linux__) && defined(FSH_KERNELS_I8MM)
      return cpu_has(CpuLevel::kDotprod) && (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
#else
      return false;
#endif
    case CpuLevel::kAvx2:
#if defined(__x86_64__)
      // The AVX2 kernels also use FMA and F16C; libgcc's check includes the
      // OS saving the AVX registers (XCR0).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case CpuLevel::kAvx512:
#if defined(__x86_64__)
      return cpu_has(CpuLevel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512vnni");
#else
      return false;
#endif
  }
  return false;
}

const detail::KernelSet& kernels_for(CpuLevel level) {
  switch (level) {
    case CpuLevel::kScalar:
      break;
    case CpuLevel::kAvx2:
#if defined(__x86_64__)
      return detail::avx2_kernels();
#else
      break;
#endif
    case CpuLevel::kAvx512:
#if defined(__x86_64__)
      return detail::avx512_kernels();
#else
      break;
#endif
    case CpuLevel::kNeon:
#if defined(__aarch64__)
      return detail::neon_kernels();
#else
      break;
#endif
    case CpuLevel::kDotprod:
#if defined(__aarch64__)
      return detail::dotprod_kernels();
#else
      break;
#endif
    case CpuLevel::kI8mm:
#if defined(__aarch64__) && defined(FSH_KERNELS_I8MM)
      return detail::i8mm_kernels();
#else
      break;
#endif
  }
  return detail::scalar_kernels();
}

CpuLevel best_level() {
  CpuLevel best = CpuLevel::kScalar;
  for (CpuLevel level : kAllLevels) {
    if (cpu_has(level)) best = level;
  }
  return best;
}

std::string level_list(const std::vector<CpuLevel>& levels) {
  std::string out;
  for (CpuLevel level : levels) {
    if (!out.empty()) out += ", ";
    out += cpu_level_name(level);
  }
  return out;
}

// The level `name` asks for, if this CPU has it.
Result<CpuLevel> parse_level(std::string_view name, std::string_view source) {
  for (CpuLevel level : kAllLevels) {
    if (name != cpu_level_name(level)) continue;
    if (!cpu_has(level)) {
      return make_error(ErrorKind::kUnsupported, std::string(source) + "=" + std::string(name) +
                                                     ": this CPU lacks that level; it runs " +
                                                     level_list(supported_cpu_levels()));
    }
    return level;
  }
  return make_error(ErrorKind::kInvalidArgument,
                    std::string(source) + "=" + std::string(name) +
                        ": not a CPU level; use one of " +
                        level_list({std::begin(kAllLevels), std::end(kAllLevels)}));
}

const detail::KernelSet& initial_kernels() {
  CpuLevel level = best_level();
  if (const char* env = std::getenv("FORESHORE_CPU_LEVEL"); env != nullptr && *env != '\0') {
    auto parsed = parse_level(env, "FORESHORE_CPU_LEVEL");
    if (parsed.ok()) {
      level = *parsed;
    } else {
      std::fprintf(stderr, "foreshore: warning: %s; running the kernels at %s\n",
                   parsed.error().message.c_str(), std::string(cpu_level_name(level)).c_str());
    }
  }
  return kernels_for(level);
}

}  // namespace

namespace detail {

std::atomic<const KernelSet*> g_active_kernels{nullptr};

const KernelSet& choose_kernels() {
  const KernelSet* set = nullptr;
  // Concurrent first calls may each choose; they choose the same set.
  const KernelSet* chosen = &initial_kernels();
  if (g_active_kernels.compare_exchange_strong(set, chosen, std::memory_order_acq_rel)) {
    set = chosen;
  }
  return *set;
}

}  // namespace detail

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::kScalar:
      return "scalar";
    case CpuLevel::kAvx2:
      return "avx2";
    case CpuLevel::kAvx512:
      return "avx512";
    case CpuLevel::kNeon:
      return "neon";
    case CpuLevel::kDotprod:
      return "dotprod";
    case CpuLevel::kI8mm:
      return "i8mm";
  }
  return "unknown";
}

std::vector<CpuLevel> supported_cpu_levels() {
  std::vector<CpuLevel> out;
  for (CpuLevel level : kAllLevels) {
    if (cpu_has(level)) out.push_back(level);
  }
  return out;
}

CpuLevel cpu_level() {
  return detail::active_kernels().level;
}

Status set_cpu_level(std::string_view name, std::string_view source) {
  auto level = parse_level(name, source);
  if (!level.ok()) return level.error();
  detail::g_active_kernels.store(&kernels_for(*level), std::memory_order_release);
  return Status::Ok();
}

}  // namespace foreshore::engine
