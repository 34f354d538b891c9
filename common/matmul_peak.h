// The sustained matmul rate of this process: the peak that MFU is measured against.
#pragma once

#include <torch/torch.h>

namespace condensa {

// FLOP/s of an n x n x n product in each operand layout the model's matmuls use: A B (forward
// of x W with W stored [in, out]), A B^T (forward of x W^T, W stored [out, in], and the input
// gradient) and A^T B (the weight gradient). BLAS libraries run the three at about the same
// rate, but a fallback kernel need not: LibTorch's bf16 matmul on a CPU without bf16 units runs
// A^T B about 10x faster than A B.
struct MatmulRates {
  double nn = 0, nt = 0, tn = 0;
  double best() const { return std::max(nn, std::max(nt, tn)); }
};

// Each layout timed for about a third of `seconds` after a warm-up (the best of five equal
// windows), in `dtype` on `device` (this process's threads on the CPU).
MatmulRates measure_matmul_layouts(torch::ScalarType dtype,
                                   int64_t n,
                                   double seconds,
                                   torch::Device device = torch::kCPU);

// The peak MFU is measured against: the fastest layout of measure_matmul_layouts, so no mix of
// the model's products can run faster than it (MFU stays at or below 100%). Measured where the
// model runs, so a GPU run is measured against the GPU's own matmul.
double measure_matmul_flops(torch::ScalarType dtype,
                            int64_t n,
                            double seconds,
                            torch::Device device = torch::kCPU);

// One core's peak of the vector instructions that matmuls are made of, measured on the calling
// thread with independent chains of each (no memory traffic): what no matmul kernel on this
// CPU can beat. fp32: fused multiply-adds (AVX-512, else AVX2; 2 FLOPs per lane). bf16: the
// AVX512-BF16 dot product vdpbf16ps (two bf16 products added into each fp32 lane: 4 FLOPs per
// lane); AMX is a separate unit, not measured here. A rate is 0 where the CPU lacks the
// instructions (and both are 0 on other architectures).
struct InstructionPeak {
  double fp32_fma = 0, bf16_dot = 0;  // FLOP/s
  const char* fp32_isa = "";          // "AVX-512" or "AVX2"
  // Each loop's result against the exact sum of the instructions it claims to have run (a
  // loop the compiler shortened, or a count the rate was computed from wrongly, differs).
  bool fp32_exact = true, bf16_exact = true;
};
InstructionPeak measure_instruction_peak(double seconds);

}  // namespace condensa
