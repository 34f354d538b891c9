#include "common/matmul_peak.h"

#include <chrono>

namespace condensa {

double measure_matmul_flops(torch::ScalarType dtype, int64_t n, double seconds) {
  torch::NoGradGuard no_grad;
  auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype);
  auto c = torch::matmul(a, b);  // warm-up
  int64_t iters = 0;
  auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    c = torch::matmul(a, b);
    ++iters;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (elapsed < seconds);
  return 2.0 * n * n * n * iters / elapsed;
}

}  // namespace condensa
