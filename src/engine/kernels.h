// Numeric kernels: conversion between float and every computable tensor type,
// and the matrix products of the forward pass.
//
// Quantized weights are multiplied against activations that are themselves
// quantized to 8 bits (Q8_0 blocks for Q4_0/Q8_0, Q8_K blocks for the K-quants),
// as mature engines do; F32/F16/BF16 weights use float activations.
// Each vector kernel has a scalar reference used by the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/tensor_type.h"
#include "engine/thread_pool.h"

namespace foreshore::engine {

// The instruction-set levels the kernels are built for, each needing the
// one before on its architecture: portable scalar code; on x86-64 AVX2 with
// FMA and F16C, then AVX-512 F/BW/VL with VNNI (the AVX2 kernels with VNNI
// ones for Q8_0 and Q4_0); on ARM64 Advanced SIMD (neon, every ARMv8-A
// CPU), then the ARMv8.2-A dot product (dotprod: SDOT in the quantized
// kernels), then the int8 matrix multiply (i8mm: SMMLA, ARMv8.6-A, in the
// 32-element block types' kernels for several activation rows at once).
// One binary holds every level of its architecture and everything outside
// the kernels runs on the architecture's baseline, so it runs on any CPU of
// it; the kernels run at the best level the CPU has unless a lower one is
// asked for (FORESHORE_CPU_LEVEL, or foreshore --cpu-level), for tests and
// A/B runs.
enum class CpuLevel { kScalar, kAvx2, kAvx512, kNeon, kDotprod, kI8mm };

std::string_view cpu_level_name(CpuLevel level);
// The levels this CPU can run, lowest first; kScalar always. Only the
// levels of the architecture built for are ever supported.
std::vector<CpuLevel> supported_cpu_levels();
// The level the kernels run at. Unless set_cpu_level chose one, it is
// chosen at the first kernel call: the level FORESHORE_CPU_LEVEL names, else
// the best supported. An unknown or unsupported name there gets a warning on
// stderr and the best level, since a kernel call cannot fail; the CLI checks
// the variable at start and refuses it instead (set_cpu_level).
CpuLevel cpu_level();
// Runs the kernels at the level named ("scalar", "avx2", "avx512", "neon",
// "dotprod", "i8mm") from now on; a matmul already running finishes at its level.
// `source` says where the name came from ("--cpu-level") for the message.
// Fails, changing nothing, for an unknown name or a level this CPU lacks
// (the message lists the levels it has).
Status set_cpu_level(std::string_view name, std::string_view source);

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

// Converts n floats (a multiple of the type's block size) to `type`. Returns
// false for a type without kernels.
bool quantize_row(TensorType type, const float* src, void* dst, int64_t n);
// quantize_row with each element's importance (n values, e.g. the mean
// square of the input column it multiplies, from calibration text): Q4_0,
// Q4_K and Q6_K fit each (sub-)block's scale to minimize the
// importance-weighted squared error (Q4_0 instead of ggml's max/-8 rule); the
// file format is unchanged. Q8_0 and float types, and blocks whose importance
// is all zero, round as quantize_row does.
bool quantize_row_weighted(TensorType type, const float* src, void* dst, int64_t n,
                           const float* importance);
// Converts n elements of `type` back to float.
bool dequantize_row(TensorType type, const void* src, float* dst, int64_t n);

// A weight matrix as stored in GGUF: `rows` rows of `cols` elements, row-major,
// each row `row_bytes` long.
struct WeightMatrix {
  TensorType type = TensorType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  // The same rows repacked by interleave_weights, or null. Where set, matmul
  // reads them instead of `data` wherever the running level has kernels for
  // them (prompts and decode), with the same results up to float summation
  // order; `data` must stay valid for the other levels and get_row.
  const void* interleaved = nullptr;
};

// Rows the repacked layout keeps together: interleaved_bytes needs a
// multiple of it, and rows from a multiple of it sit at the same byte offset
// in the repacked copy as in `data`, so a view of them shares the copy.
inline constexpr int64_t kInterleavedRowGroup = 16;

// The bytes interleave_weights writes for `w`, or 0 where the running level
// has no kernels for repacked weights of its type (today Q4_0 at avx512,
// whose kernels read sixteen rows side by side) or its rows are not a
// multiple of kInterleavedRowGroup.
size_t interleaved_bytes(const WeightMatrix& w);
// Writes w's rows repacked for those kernels into out (interleaved_bytes(w)
// bytes); returns false where interleaved_bytes(w) is 0.
bool interleave_weights(const WeightMatrix& w, void* out);

// Scratch memory for activation quantization, sized by the caller once
// (no allocation per token). Use activation_scratch_bytes to size it.
size_t activation_scratch_bytes(TensorType weight_type, int64_t cols, int64_t batch);

// y[b][r] = sum_c W[r][c] * x[b][c] for b < batch, r < rows.
// x is batch rows of cols floats; y is batch rows of W.rows floats and must
// not overlap x. scratch must hold activation_scratch_bytes(W.type, W.cols,
// batch). The result does not depend on the pool's size (each output is
// computed by one thread in a fixed order). Never allocates. Throws
// std::invalid_argument for a type without kernels or too small a scratch.
void matmul(const WeightMatrix& w, const float* x, int64_t batch, float* y,
            std::span<uint8_t> scratch, ThreadPool& pool);

// The scalar reference, single-threaded: for quantized weights it rounds the
// activations through the same 8-bit quantization as matmul and forms the
// same exact per-block integer sums, so the two differ only by float
// summation order (relative 1e-6 or so). Against dequantized weights times
// unrounded activations both differ by at most sum |w| * (activation step)/2
// per 32 (Q4_0, Q8_0) or 256 (Q4_K, Q6_K) elements; float weights use float
// activations and agree to summation order.
void matmul_reference(const WeightMatrix& w, const float* x, int64_t batch, float* y);

// Dequantizes one row (embedding lookup).
bool get_row(const WeightMatrix& w, int64_t row, float* out);

// Vector helpers of the forward pass, at the level cpu_level() names, any n.
// exp-based ones use a polynomial exp accurate to a few float ulps.

float dot_f32(const float* a, const float* b, int64_t n);
// a . b with b in fp16 (an fp16 KV cache).
float dot_f32_f16(const float* a, const uint16_t* b, int64_t n);
// y += a * x.
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
// The same with b (x) in Q8_0 blocks (a Q8_0 KV cache); n a multiple of 32.
float dot_f32_q8_0(const float* a, const void* b, int64_t n);
void axpy_q8_0(float a, const void* x, float* y, int64_t n);
// y += x.
void add_f32(float* y, const float* x, int64_t n);
// y *= a.
void scale_f32(float* y, float a, int64_t n);
// out = x / sqrt(mean(x^2) + eps) * weight; out may be x.
void rmsnorm(const float* x, const float* weight, float* out, int64_t n, float eps);
// x = exp(x - max x) / sum, in place; -inf entries (masked positions) become
// 0. At least one entry must be finite.
void softmax(float* x, int64_t n);
// gate = silu(gate) * up (SwiGLU).
void silu_mul(float* gate, const float* up, int64_t n);
// gate = gelu(gate) * up with the tanh approximation of GELU (GeGLU, Gemma).
void gelu_mul(float* gate, const float* up, int64_t n);

}  // namespace foreshore::engine
