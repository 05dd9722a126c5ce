// ARM64 `dotprod` level: the neon level with SDOT (ARMv8.2-A dot product)
// in every quantized row kernel. SDOT multiplies four int8 pairs and adds
// them to an int32 lane in one instruction, where the neon level needs two
// widening multiplies and two pairwise adds per 16 bytes. The float
// kernels, activation quantizers and element-wise helpers are the neon
// level's.
//
// Built with -march=armv8.2-a+dotprod; everything here is file-local and
// reachable only through dotprod_kernels(), which the dispatch calls on CPUs
// whose HWCAP has ASIMDDP.
#include <arm_neon.h>

#include "engine/kernels_internal.h"
#include "engine/kernels_neon_rows.h"

namespace foreshore::engine::detail {
namespace {

struct SdotDot {
  [[gnu::always_inline]] static int32x4_t add(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
  }
};

KernelSet make_set() {
  KernelSet set = neon_kernels();
  set.level = CpuLevel::kDotprod;
  for (TypeKernels& k : set.types) {
    if (RowKernel rows = quantized_rows<SdotDot>(k.type)) k.rows = rows;
  }
  return set;
}

}  // namespace

const KernelSet& dotprod_kernels() {
  static const KernelSet set = make_set();
  return set;
}

}  // namespace foreshore::engine::detail
