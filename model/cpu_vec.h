// Vector helpers for the CPU kernels (cpu_attention.cpp, cpu_fused.cpp): exp and sigmoid on
// four floats at a time, written with GCC/Clang vector types so that they compile to SIMD code
// on every x86-64 (and scalar code elsewhere) without intrinsics or fast-math flags.
//
// Where the CPU has AVX2 and FMA, the hot loops run a second build of the same code on eight
// floats: functions marked CONDENSA_AVX2 are compiled for those instructions and called only
// when cpu_vec_wide() is true (checked at run time, so the binary still runs on any x86-64).
#pragma once

#include <atomic>
#include <cstdint>

namespace condensa::model {

// Four floats (one SSE register), eight floats (one AVX register) and one float, as vector types.
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v1f __attribute__((vector_size(4)));
typedef int32_t v1i __attribute__((vector_size(4)));

#define CONDENSA_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__)
#define CONDENSA_AVX2 __attribute__((target("avx2,fma")))
#else
#define CONDENSA_AVX2
#endif

// Tests set this to run the four-float code on a CPU that has AVX2.
inline std::atomic<bool> g_cpu_vec_force_narrow{false};

// Whether the eight-float (AVX2 + FMA) builds run.
inline bool cpu_vec_wide() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has && !g_cpu_vec_force_narrow.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// The vector helpers here and the kernels' lane loops are always inlined, so their eight-float
// instances never pass vectors across a call: GCC's -Wpsabi note about the AVX calling
// convention does not apply (off for the kernel files that include this header).
#pragma GCC diagnostic ignored "-Wpsabi"

// exp(x) for x <= 0: x = n ln2 + r (Cody-Waite, |r| <= ln2/2), a degree-6 polynomial for exp(r)
// (relative error below 2e-7), and 2^n put into the exponent bits. Arguments below -87 return
// exp(-87) ~ 1.6e-38 (a softmax row sums to >= 1, so this is below every rounding). Written for
// vector-of-float type V with the matching integer vector type I (fp64 callers use std::exp).
template <typename V, typename I>
CONDENSA_INLINE V exp_nonpositive(V x) {
  x = x < -87.0f ? V{} - 87.0f : x;
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = r * (1.0f / 720) + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  return p * __builtin_bit_cast(V, bits);
}

// sigmoid(x) = 1 / (1 + exp(-x)), through exp(-|x|) so that exp's argument is <= 0.
template <typename V, typename I>
CONDENSA_INLINE V sigmoid(V x) {
  const V ax = x < 0.0f ? V{} - x : x;
  const V e = exp_nonpositive<V, I>(V{} - ax);
  const V r = 1.0f / (1.0f + e);
  return x < 0.0f ? e * r : r;
}

}  // namespace condensa::model
