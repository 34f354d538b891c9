#include "trainer/cli/world.h"

#include "common/error.h"
#ifdef CONDENSA_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace condensa::trainer {

World make_world(const ParallelConfig& p) {
  World w;
  w.runtime = std::make_unique<parallel::MpiRuntime>();
  w.mpi = parallel::MpiCommunicator::world(p.timeout_s);
  std::string backend = p.backend;
  const bool cuda = torch::cuda::is_available();
  if (backend == "auto") backend = cuda ? "nccl" : "mpi";
  if (backend == "nccl") {
#ifdef CONDENSA_WITH_CUDA
    CONDENSA_CHECK(cuda, ConfigError,
                   "parallel.backend = 'nccl' but LibTorch sees no CUDA device on rank ",
                   w.mpi->rank());
    parallel::NcclOptions options;
    w.nccl = parallel::NcclCommunicator::create(*w.mpi, options);
#else
    throw ConfigError(
        "parallel.backend = 'nccl' but this build has no CUDA/NCCL backend (CONDENSA_WITH_CUDA "
        "off)");
#endif
  }
  return w;
}

}  // namespace condensa::trainer
