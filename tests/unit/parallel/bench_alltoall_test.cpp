// The benchmark's verification, checked against a slow, explicit simulation of the exchange.
#include "parallel/bench_alltoall.h"

#include <gtest/gtest.h>

namespace condensa::parallel {
namespace {

// What rank `rank` receives: chunk `rank` of every sender's buffer, in sender order.
torch::Tensor simulate_receive(int rank, int iter, int n, int64_t chunk, torch::ScalarType dtype) {
  std::vector<torch::Tensor> parts;
  for (int src = 0; src < n; ++src) {
    parts.push_back(alltoall_bench_input(src, iter, n, chunk, dtype)
                        .slice(0, rank * chunk, (rank + 1) * chunk));
  }
  return torch::cat(parts);
}

TEST(AllToAllBench, InputsAreTheClosedFormValues) {
  const torch::Tensor in = alltoall_bench_input(2, 3, 4, 5, torch::kInt64);
  ASSERT_EQ(in.numel(), 20);
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(in[i].item<int64_t>(), alltoall_bench_value(2, 3, i));
  EXPECT_NE(alltoall_bench_value(0, 0, 1), alltoall_bench_value(1, 0, 1));
  EXPECT_NE(alltoall_bench_value(0, 0, 1), alltoall_bench_value(0, 1, 1));
}

TEST(AllToAllBench, CorrectExchangeHasNoWrongAndCorruptionIsCounted) {
  for (torch::ScalarType dtype :
       {torch::kFloat32, torch::kBFloat16, torch::kFloat16, torch::kUInt8}) {
    SCOPED_TRACE(c10::toString(dtype));
    const int n = 4, iter = 7;
    const int64_t chunk = 300;  // index up to 1199: the modulus keeps values exact
    torch::Tensor got = simulate_receive(1, iter, n, chunk, dtype);
    EXPECT_EQ(alltoall_bench_wrong(got, 1, iter, n, chunk), 0);
    EXPECT_GT(alltoall_bench_wrong(got, 2, iter, n, chunk), 0);      // someone else's data
    EXPECT_GT(alltoall_bench_wrong(got, 1, iter + 1, n, chunk), 0);  // a stale iteration
    got[17] = got[17].item<double>() + 1;
    got[900] = got[900].item<double>() + 1;
    EXPECT_EQ(alltoall_bench_wrong(got, 1, iter, n, chunk), 2);
  }
}

}  // namespace
}  // namespace condensa::parallel
