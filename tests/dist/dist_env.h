// Shared state and helpers of the multi-rank test binary (condensa_dist_tests).
//
// main() creates the MPI world once; contract tests ask for a backend by name and get either a
// communicator or a reason to skip that every rank agrees on (so that no rank runs a collective
// its peers skipped).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi/mpi_communicator.h"

namespace condensa::testing {

// The world MPI communicator of this test run (set by main).
parallel::MpiCommunicator& mpi_world();
void set_mpi_world(std::unique_ptr<parallel::MpiCommunicator> world);
// Destroys every communicator the suite made (before MPI_Finalize).
void release_communicators();

// "mpi" or "nccl": the world communicator of that backend, or nullptr with *skip_reason set
// (identically on every rank). Collective on first use of a backend.
parallel::Communicator* backend_world(const std::string& backend, std::string* skip_reason);

// CPU tensor of integers in [lo, hi) cast to dtype, seeded by (tag, rank): any rank can
// recompute any other rank's input.
torch::Tensor seeded_ints(uint64_t tag,
                          int rank,
                          torch::IntArrayRef shape,
                          torch::ScalarType dtype,
                          int64_t lo = 1,
                          int64_t hi = 10);
// CPU float64 tensor of N(0, 1) values seeded by (tag, rank).
torch::Tensor seeded_normal(uint64_t tag, int rank, torch::IntArrayRef shape);

}  // namespace condensa::testing
