#include "common/matmul_peak.h"

#include <algorithm>
#include <chrono>

namespace condensa {

double measure_matmul_flops(torch::ScalarType dtype,
                            int64_t n,
                            double seconds,
                            torch::Device device) {
  torch::NoGradGuard no_grad;
  auto a = torch::randn({n, n}).to(device, dtype), b = torch::randn({n, n}).to(device, dtype);
  // Kernels on an accelerator run asynchronously: issue a batch, then wait for its last result.
  const int64_t batch = device.is_cpu() ? 1 : 10;
  auto wait = [&](const torch::Tensor& c) {
    if (!device.is_cpu()) c.flatten()[0].item<double>();
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

}  // namespace condensa
