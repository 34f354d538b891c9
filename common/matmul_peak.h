// The sustained matmul rate of this process: the peak that MFU is measured against.
#pragma once

#include <torch/torch.h>

namespace condensa {

// Sustained FLOP/s of an n x n x n matmul in `dtype` on this process's threads, timed for
// about `seconds` after a warm-up. The trainer uses it as the peak for MFU.
double measure_matmul_flops(torch::ScalarType dtype, int64_t n, double seconds);

}  // namespace condensa
