// The sustained matmul rate of this process: the peak that MFU is measured against.
#pragma once

#include <torch/torch.h>

namespace condensa {

// Sustained FLOP/s of an n x n x n matmul in `dtype` on `device` (this process's threads on
// the CPU), timed for about `seconds` after a warm-up: the best of five equal windows. The trainer uses it as the peak for MFU:
// measured where the model runs, so a GPU run is measured against the GPU's own matmul.
double measure_matmul_flops(torch::ScalarType dtype,
                            int64_t n,
                            double seconds,
                            torch::Device device = torch::kCPU);

}  // namespace condensa
