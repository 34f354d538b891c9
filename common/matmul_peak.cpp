#include "common/matmul_peak.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace condensa {

namespace {

// Sustained FLOP/s of a x b (n x n operands, any strides): the best of five equal windows.
double time_product(const torch::Tensor& a, const torch::Tensor& b, double seconds) {
  const int64_t n = a.size(0);
  const bool cpu = a.device().is_cpu();
  // Kernels on an accelerator run asynchronously: issue a batch, then wait for its last result.
  const int64_t batch = cpu ? 1 : 10;
  auto wait = [&](const torch::Tensor& c) {
    if (!cpu) c.flatten()[0].item<double>();
  };
  auto c = torch::matmul(a, b);  // warm-up
  wait(c);
  // NOTE: the best of several windows: a window in which another process held a core (one
  // OpenMP thread descheduled stalls the others) would otherwise set the peak, and MFU past 100%.
  constexpr int kWindows = 5;
  double best = 0;
  for (int w = 0; w < kWindows; ++w) {
    int64_t iters = 0;
    auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0;
    do {
      for (int64_t i = 0; i < batch; ++i) c = torch::matmul(a, b);
      wait(c);
      iters += batch;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (elapsed < seconds / kWindows);
    best = std::max(best, 2.0 * n * n * n * iters / elapsed);
  }
  return best;
}

}  // namespace

MatmulRates measure_matmul_layouts(torch::ScalarType dtype,
                                   int64_t n,
                                   double seconds,
                                   torch::Device device) {
  torch::NoGradGuard no_grad;
  auto make = [&] { return torch::randn({n, n}).to(device, dtype); };
  auto a = make(), b = make();
  // Transposed operands are views of contiguous tensors: the strides a BLAS call sees for W^T.
  auto at = make().t(), bt = make().t();
  MatmulRates r;
  r.nn = time_product(a, b, seconds / 3);
  r.nt = time_product(a, bt, seconds / 3);
  r.tn = time_product(at, b, seconds / 3);
  return r;
}

double measure_matmul_flops(torch::ScalarType dtype,
                            int64_t n,
                            double seconds,
                            torch::Device device) {
  return measure_matmul_layouts(dtype, n, seconds, device).best();
}

namespace {

// Chains of `kChains` independent accumulators (more than an instruction's latency times its
// issue rate), each advanced `iters` times from zero with all-ones operands: every lane ends at
// iters (FMA) or 2 x iters (bf16 dot), exact in fp32 below 2^24.
constexpr int kChains = 12;
constexpr int64_t kIters = int64_t{1} << 20;

#if defined(__x86_64__)
// The sum of every fp32 lane of the accumulators (vector types may alias float).
template <class Vec>
double lanes_sum(const Vec (&acc)[kChains]) {
  const auto* f = reinterpret_cast<const float*>(acc);
  double sum = 0;
  constexpr size_t kFloats = sizeof(Vec) / sizeof(float) * kChains;
  for (size_t i = 0; i < kFloats; ++i) sum += f[i];
  return sum;
}

__attribute__((target("avx512f"))) double fma_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (auto& v : acc) v = _mm512_setzero_ps();
  __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& v : acc) v = _mm512_fmadd_ps(one, one, v);
    __asm__ volatile("" : "+v"(one));  // keeps the loop from being folded
  }
  return lanes_sum(acc);
}

__attribute__((target("avx2,fma"))) double fma_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (auto& v : acc) v = _mm256_setzero_ps();
  __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& v : acc) v = _mm256_fmadd_ps(one, one, v);
    __asm__ volatile("" : "+x"(one));
  }
  return lanes_sum(acc);
}

__attribute__((target("avx512f,avx512bf16"))) double dot_avx512bf16(int64_t iters) {
  __m512 acc[kChains];
  for (auto& v : acc) v = _mm512_setzero_ps();
  const __m512 ones = _mm512_set1_ps(1.0f);
  __m512bh one = _mm512_cvtne2ps_pbh(ones, ones);
  for (int64_t i = 0; i < iters; ++i) {
    for (auto& v : acc) v = _mm512_dpbf16_ps(v, one, one);
    __asm__ volatile("" : "+v"(one));
  }
  return lanes_sum(acc);
}
#endif

// FLOP/s of loop(kIters), `flops_per_iter` per iteration of all chains: the best of windows
// of about `seconds` / 5 each. `exact` is cleared if a result is not `expected`.
template <class Loop>
double loop_rate(Loop loop, double flops_per_iter, double expected, double seconds, bool& exact) {
  loop(kIters / 16);  // warm-up (and the clock's ramp to the vector units' frequency)
  double best = 0;
  for (int w = 0; w < 5; ++w) {
    int64_t calls = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0;
    do {
      if (loop(kIters) != expected) exact = false;
      ++calls;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (elapsed < seconds / 5);
    best = std::max(best, flops_per_iter * static_cast<double>(kIters * calls) / elapsed);
  }
  return best;
}

}  // namespace

InstructionPeak measure_instruction_peak(double seconds) {
  InstructionPeak p;
#if defined(__x86_64__)
  const double iters = static_cast<double>(kIters);
  if (__builtin_cpu_supports("avx512f")) {
    p.fp32_isa = "AVX-512";
    p.fp32_fma =
        loop_rate(fma_avx512, kChains * 16 * 2.0, kChains * 16 * iters, seconds, p.fp32_exact);
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    p.fp32_isa = "AVX2";
    p.fp32_fma = loop_rate(fma_avx2, kChains * 8 * 2.0, kChains * 8 * iters, seconds, p.fp32_exact);
  }
  if (__builtin_cpu_supports("avx512bf16")) {
    p.bf16_dot = loop_rate(dot_avx512bf16, kChains * 16 * 4.0, kChains * 16 * 2 * iters, seconds,
                           p.bf16_exact);
  }
#else
  (void)seconds;
#endif
  return p;
}

}  // namespace condensa
