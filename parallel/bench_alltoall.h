// All-to-all benchmark (`condensa bench alltoall`), in the style of nccl-tests.
//
// Key design choice: the data is checked, not only timed. Every element a rank sends is a
// closed-form function of (source rank, iteration, index) that is exact in every supported
// dtype (an integer in [0, 251)), so each receiver computes what it must have received and
// counts mismatches (#wrong) on every iteration, warm-up included. Rank 0 prints one row per
// size: size (B), count (elements), time (us), algbw (GB/s), busbw (GB/s), #wrong, where size is
// the bytes each rank sends in total (1/n of it to each rank), time the slowest rank's mean,
// algbw = size / time and busbw = algbw * (n - 1) / n.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <iosfwd>

#include "parallel/communicator.h"

namespace condensa::parallel {

struct AllToAllBenchOptions {
  int64_t min_bytes = 1024;     // first size: bytes each rank sends in total
  int64_t max_bytes = 1 << 26;  // last size (sizes double from min_bytes)
  int iters = 20;               // timed and verified iterations per size
  int warmup = 5;               // untimed (but verified) iterations per size
  torch::ScalarType dtype = torch::kFloat32;
  std::ostream* out = nullptr;  // where rank 0 prints the table; nullptr = std::cout
};

// Throws ConfigError for bad options (every rank, before communicating). Returns 0 when every
// element of every iteration arrived intact, 1 otherwise. Collective over comm.
int run_alltoall_bench(Communicator& comm, const AllToAllBenchOptions& options);

// The element with index `index` that rank `src` sends in iteration `iter` (in [0, 251)).
int64_t alltoall_bench_value(int64_t src, int64_t iter, int64_t index);
// CPU [num_ranks * chunk] send buffer of rank `rank` for iteration `iter`.
torch::Tensor alltoall_bench_input(
    int rank, int iter, int num_ranks, int64_t chunk, torch::ScalarType dtype);
// Number of elements of the received buffer `got` (CPU, [num_ranks * chunk]) of rank `rank`
// that differ from what the senders' closed-form inputs say must have arrived.
int64_t alltoall_bench_wrong(
    const torch::Tensor& got, int rank, int iter, int num_ranks, int64_t chunk);

}  // namespace condensa::parallel
