#include "common/matmul_peak.h"

#include <algorithm>
#include <chrono>

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

}  // namespace condensa
