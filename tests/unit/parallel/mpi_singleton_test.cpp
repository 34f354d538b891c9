// The MPI backend without mpirun: a singleton world of one rank.
#include <gtest/gtest.h>

#include "parallel/mpi/mpi_communicator.h"

namespace condensa::parallel {
namespace {

TEST(MpiSingleton, WorldOfOneRankRunsEveryOp) {
  MpiRuntime mpi;
  MpiRuntime again;  // already initialised: neither initialises nor finalises
  EXPECT_FALSE(again.owns_mpi());
  auto world = MpiCommunicator::world(30);
  ASSERT_EQ(world->size(), 1);
  EXPECT_EQ(world->rank(), 0);
  EXPECT_EQ(world->backend_name(), "mpi");
  torch::Tensor t = torch::tensor({1.5, -2.0}, torch::kBFloat16);
  world->all_reduce(t, ReduceOp::kAvg);
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.5, -2.0}, torch::kBFloat16)));
  torch::Tensor in = torch::arange(6, torch::kInt32).reshape({3, 2});
  torch::Tensor out = torch::zeros({3, 2}, torch::kInt32);
  world->all_to_all(in, {3}, out, {3});
  EXPECT_TRUE(torch::equal(in, out));
  EXPECT_EQ(world->discover_node_map(), std::vector<int>{0});
  EXPECT_EQ(world->all_gather_string("solo"), std::vector<std::string>{"solo"});
  auto none = world->split(-1, 0);
  EXPECT_EQ(none, nullptr);
}

}  // namespace
}  // namespace condensa::parallel
