// All-to-all benchmark: see bench_alltoall.h.
#include "parallel/bench_alltoall.h"

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "common/error.h"

namespace condensa::parallel {

namespace {

constexpr int64_t kModulus = 251;  // prime below 256: values exact in uint8, bf16, fp16

// Same formula as alltoall_bench_value, over tensors of indices.
torch::Tensor values(const torch::Tensor& src, int64_t iter, const torch::Tensor& index) {
  return (src * 37 + iter * 11 + index * 7).remainder(kModulus);
}

void validate(const Communicator& comm, const AllToAllBenchOptions& o) {
  CONDENSA_CHECK(o.min_bytes >= 1 && o.max_bytes >= o.min_bytes, ConfigError,
                 "bench alltoall: min bytes (", o.min_bytes, ") must be >= 1 and <= max bytes (",
                 o.max_bytes, ")");
  CONDENSA_CHECK(o.iters >= 1 && o.warmup >= 0, ConfigError, "bench alltoall: iters (", o.iters,
                 ") must be >= 1 and warmup (", o.warmup, ") >= 0");
  CONDENSA_CHECK(is_supported_dtype(o.dtype), ConfigError, "bench alltoall: dtype ", o.dtype,
                 " is not supported by the communicators");
}

struct SizeResult {
  double mean_us = 0;  // slowest rank's mean time per iteration
  int64_t wrong = 0;   // mismatches over all ranks and iterations
};

// Runs warmup + iters all-to-alls of `chunk` elements per peer; times the last `iters`.
SizeResult run_size(Communicator& comm, const AllToAllBenchOptions& o, int64_t chunk) {
  const int n = comm.size();
  const std::vector<int64_t> rows(n, chunk);
  torch::Tensor out = comm.to_device(torch::empty({n * chunk}, o.dtype));
  double total_s = 0;
  int64_t wrong = 0;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    torch::Tensor in = comm.to_device(alltoall_bench_input(comm.rank(), it, n, chunk, o.dtype));
    comm.barrier();
    const auto start = std::chrono::steady_clock::now();
    comm.all_to_all(in, rows, out, rows);
    const auto stop = std::chrono::steady_clock::now();
    if (it >= o.warmup) total_s += std::chrono::duration<double>(stop - start).count();
    wrong += alltoall_bench_wrong(comm.to_cpu(out), comm.rank(), it, n, chunk);
  }
  torch::Tensor time_us =
      comm.to_device(torch::full({1}, total_s * 1e6 / o.iters, torch::kFloat64));
  comm.all_reduce(time_us, ReduceOp::kMax);
  torch::Tensor num_wrong = comm.to_device(torch::full({1}, wrong, torch::kInt64));
  comm.all_reduce(num_wrong, ReduceOp::kSum);
  return {comm.to_cpu(time_us).item<double>(), comm.to_cpu(num_wrong).item<int64_t>()};
}

}  // namespace

int64_t alltoall_bench_value(int64_t src, int64_t iter, int64_t index) {
  return (src * 37 + iter * 11 + index * 7) % kModulus;
}

torch::Tensor alltoall_bench_input(
    int rank, int iter, int num_ranks, int64_t chunk, torch::ScalarType dtype) {
  torch::Tensor index = torch::arange(num_ranks * chunk, torch::kInt64);
  return values(torch::full({1}, static_cast<int64_t>(rank), torch::kInt64), iter, index).to(dtype);
}

int64_t alltoall_bench_wrong(
    const torch::Tensor& got, int rank, int iter, int num_ranks, int64_t chunk) {
  // Position src * chunk + k holds element rank * chunk + k of rank src's send buffer.
  torch::Tensor src = torch::arange(num_ranks, torch::kInt64).unsqueeze(1);
  torch::Tensor index = rank * chunk + torch::arange(chunk, torch::kInt64).unsqueeze(0);
  torch::Tensor expected = values(src, iter, index).reshape({-1});
  TORCH_CHECK(got.numel() == expected.numel(), "alltoall_bench_wrong: got ", got.numel(),
              " elements, expected ", expected.numel());
  return got.reshape({-1}).to(torch::kInt64).ne(expected).sum().item<int64_t>();
}

int run_alltoall_bench(Communicator& comm, const AllToAllBenchOptions& o) {
  validate(comm, o);
  std::ostream& os = o.out ? *o.out : std::cout;
  const bool printer = comm.rank() == 0;
  const int n = comm.size();
  const int64_t elem = torch::elementSize(o.dtype);
  char line[160];
  if (printer) {
    os << "# condensa all_to_all bench: " << n << " ranks, backend " << comm.backend_name()
       << ", dtype " << o.dtype << ", iters " << o.iters << ", warmup " << o.warmup << "\n";
    std::snprintf(line, sizeof(line), "# %14s %14s %12s %13s %13s %8s\n", "size (B)",
                  "count (elem)", "time (us)", "algbw (GB/s)", "busbw (GB/s)", "#wrong");
    os << line;
  }
  int64_t total_wrong = 0;
  double sum_busbw = 0;
  int num_sizes = 0;
  for (int64_t bytes = o.min_bytes; bytes <= o.max_bytes;
       bytes = bytes > o.max_bytes / 2 ? o.max_bytes + 1 : bytes * 2) {
    // Whole elements, an equal chunk (at least one element) for every rank.
    const int64_t chunk = std::max<int64_t>(1, bytes / elem / n);
    const int64_t count = chunk * n;
    const SizeResult r = run_size(comm, o, chunk);
    const double algbw = r.mean_us > 0 ? count * elem / (r.mean_us * 1e-6) / 1e9 : 0.0;
    const double busbw = algbw * (n - 1) / n;
    total_wrong += r.wrong;
    sum_busbw += busbw;
    ++num_sizes;
    if (printer) {
      std::snprintf(line, sizeof(line), "  %14lld %14lld %12.1f %13.3f %13.3f %8lld\n",
                    static_cast<long long>(count * elem), static_cast<long long>(count), r.mean_us,
                    algbw, busbw, static_cast<long long>(r.wrong));
      os << line;
    }
  }
  if (printer) {
    os << "# Out of bounds values : " << total_wrong << (total_wrong == 0 ? " OK" : " FAILED")
       << "\n# Avg bus bandwidth    : " << (num_sizes ? sum_busbw / num_sizes : 0.0) << "\n";
    os.flush();
  }
  return total_wrong == 0 ? 0 : 1;
}

}  // namespace condensa::parallel
