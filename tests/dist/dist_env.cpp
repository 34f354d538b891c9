#include "tests/dist/dist_env.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"
#if CONDENSA_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace condensa::testing {

namespace {

std::unique_ptr<parallel::MpiCommunicator> g_mpi_world;
std::unique_ptr<parallel::Communicator> g_nccl_world;
bool g_nccl_checked = false;
std::string g_nccl_skip_reason;

// Why NCCL cannot run on this rank ("" if it can).
std::string local_nccl_problem(parallel::MpiCommunicator& world) {
#if CONDENSA_WITH_CUDA
  const int devices = parallel::NcclCommunicator::num_visible_devices();
  const std::vector<int> nodes = world.discover_node_map();
  const int ranks_here =
      static_cast<int>(std::count(nodes.begin(), nodes.end(), nodes[world.rank()]));
  if (devices == 0) return "no CUDA device visible";
  if (devices < ranks_here) {
    return str("NCCL needs one CUDA device per rank: ", devices, " device(s) for ", ranks_here,
               " ranks on this node");
  }
  return "";
#else
  return "built without CUDA/NCCL (CONDENSA_WITH_CUDA is off)";
#endif
}

}  // namespace

parallel::MpiCommunicator& mpi_world() { return *g_mpi_world; }

void set_mpi_world(std::unique_ptr<parallel::MpiCommunicator> world) {
  g_mpi_world = std::move(world);
}

void release_communicators() {
  g_nccl_world.reset();
  g_mpi_world.reset();
}

parallel::Communicator* backend_world(const std::string& backend, std::string* skip_reason) {
  if (backend == "mpi") return g_mpi_world.get();
  if (!g_nccl_checked) {
    g_nccl_checked = true;
    // Every rank must agree: skip everywhere if any rank cannot run NCCL.
    const std::string problem = local_nccl_problem(*g_mpi_world);
    const std::vector<std::string> problems = g_mpi_world->all_gather_string(problem);
    for (size_t r = 0; r < problems.size() && g_nccl_skip_reason.empty(); ++r) {
      if (!problems[r].empty())
        g_nccl_skip_reason = str("NCCL backend skipped: rank ", r, ": ", problems[r]);
    }
#if CONDENSA_WITH_CUDA
    if (g_nccl_skip_reason.empty()) g_nccl_world = parallel::NcclCommunicator::create(*g_mpi_world);
#endif
  }
  *skip_reason = g_nccl_skip_reason;
  return g_nccl_world.get();
}

torch::Tensor seeded_ints(uint64_t tag,
                          int rank,
                          torch::IntArrayRef shape,
                          torch::ScalarType dtype,
                          int64_t lo,
                          int64_t hi) {
  auto gen =
      at::make_generator<at::CPUGeneratorImpl>(hash_combine(tag, static_cast<uint64_t>(rank)));
  return torch::randint(lo, hi, shape, gen, torch::kInt64).to(dtype);
}

torch::Tensor seeded_normal(uint64_t tag, int rank, torch::IntArrayRef shape) {
  auto gen =
      at::make_generator<at::CPUGeneratorImpl>(hash_combine(tag, static_cast<uint64_t>(rank)));
  return torch::randn(shape, gen, torch::kFloat64);
}

}  // namespace condensa::testing
