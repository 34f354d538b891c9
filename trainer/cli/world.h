// The MPI world of a subcommand: MPI initialised once per process, and the world communicator
// for the config's backend.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi/mpi_communicator.h"
#include "trainer/config/config.h"

namespace condensa::trainer {

// MPI (initialised once per process) and the world communicator for the config's backend.
struct World {
  std::unique_ptr<parallel::MpiRuntime> runtime;
  std::unique_ptr<parallel::MpiCommunicator> mpi;
  std::unique_ptr<parallel::Communicator> nccl;  // when parallel.backend resolves to nccl
  parallel::Communicator& comm() {
    return nccl ? *nccl : static_cast<parallel::Communicator&>(*mpi);
  }
};
World make_world(const ParallelConfig& parallel);

}  // namespace condensa::trainer
