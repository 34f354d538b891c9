// Process mesh over the MPI world: group memberships for every layout the world size allows,
// node maps (discovered and faked), the invariant check and the config-hash check.
#include "parallel/mesh.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "tests/dist/dist_env.h"

namespace condensa::testing {
namespace {

using parallel::Communicator;
using parallel::Mesh;
using parallel::MeshOptions;

// World ranks of `comm`'s members, in comm rank order.
std::vector<int64_t> members(Communicator& comm, int world_rank) {
  return comm.all_gather_int64({world_rank});
}

void expect_layout(const Mesh& m, int pp, int ep) {
  const int world = m.world_size(), r = m.world_rank();
  const int dp = world / pp, edp = dp / ep;
  const int pp_rank = r / dp, dp_rank = r % dp, ep_rank = dp_rank % ep, edp_rank = dp_rank / ep;
  EXPECT_EQ(m.pp_size(), pp);
  EXPECT_EQ(m.dp_size(), dp);
  EXPECT_EQ(m.ep_size(), ep);
  EXPECT_EQ(m.edp_size(), edp);
  EXPECT_EQ(m.pp_rank(), pp_rank);
  EXPECT_EQ(m.dp_rank(), dp_rank);
  EXPECT_EQ(m.ep_rank(), ep_rank);
  EXPECT_EQ(m.edp_rank(), edp_rank);

  std::vector<int64_t> want_dp, want_ep, want_edp, want_pp;
  for (int i = 0; i < dp; ++i) want_dp.push_back(pp_rank * dp + i);
  for (int i = 0; i < ep; ++i) want_ep.push_back(pp_rank * dp + (dp_rank / ep) * ep + i);
  for (int i = 0; i < edp; ++i) want_edp.push_back(pp_rank * dp + i * ep + ep_rank);
  for (int s = 0; s < pp; ++s) want_pp.push_back(s * dp + dp_rank);
  EXPECT_EQ(members(m.dp(), r), want_dp);
  EXPECT_EQ(members(m.ep(), r), want_ep);
  EXPECT_EQ(members(m.edp(), r), want_edp);
  EXPECT_EQ(members(m.pp(), r), want_pp);
  EXPECT_EQ(m.dp().rank(), dp_rank);
  EXPECT_EQ(m.ep().rank(), ep_rank);
  EXPECT_EQ(m.edp().rank(), edp_rank);
  EXPECT_EQ(m.pp().rank(), pp_rank);
  EXPECT_EQ(m.ep().name(), "ep");
  for (int e = 0; e < ep; ++e) EXPECT_EQ(m.world_rank_of_ep_rank(e), want_ep[e]);
}

TEST(MeshTest, EveryLayoutHasClosedFormGroups) {
  const int world = mpi_world().size();
  int num_layouts = 0;
  for (int pp = 1; pp <= world; ++pp) {
    if (world % pp != 0) continue;
    for (int ep = 1; ep <= world / pp; ++ep) {
      if ((world / pp) % ep != 0) continue;
      SCOPED_TRACE(str("world ", world, " pp ", pp, " ep ", ep));
      MeshOptions options;
      options.pipeline_parallel = pp;
      options.expert_parallel = ep;
      expect_layout(Mesh::create(mpi_world(), options), pp, ep);
      ++num_layouts;
    }
  }
  EXPECT_EQ(num_layouts, world == 4 ? 6 : world == 2 ? 3 : num_layouts);
}

TEST(MeshTest, DiscoveredNodesMatchHostNames) {
  const Mesh m = Mesh::create(mpi_world(), MeshOptions{});
  const auto hosts = mpi_world().all_gather_string(parallel::this_host_name());
  const int r = m.world_rank();
  for (int j = 0; j < m.world_size(); ++j) {
    EXPECT_EQ(m.node_of_world_rank()[j] == m.node(), hosts[j] == hosts[r]);
  }
}

TEST(MeshTest, FakeNodesOfConsecutiveRanks) {
  const int world = mpi_world().size();
  MeshOptions options;
  options.ranks_per_node = world / 2;  // two fake nodes
  options.expert_parallel = world;     // one ep group spanning both
  const Mesh m = Mesh::create(mpi_world(), options);
  EXPECT_EQ(m.num_nodes(), 2);
  EXPECT_EQ(m.node(), m.world_rank() / (world / 2));
  EXPECT_EQ(m.num_nodes_in_ep_group(), 2);
  for (int e = 0; e < world; ++e) EXPECT_EQ(m.node_of_ep_rank(e), e / (world / 2));

  // Same nodes; ep groups of half the world stay inside one node.
  MeshOptions half_ep;
  half_ep.ranks_per_node = world / 2;
  half_ep.expert_parallel = world / 2;
  const Mesh half = Mesh::create(mpi_world(), half_ep);
  EXPECT_EQ(half.node_of_world_rank(), m.node_of_world_rank());
  EXPECT_EQ(half.num_nodes_in_ep_group(), 1);
  for (int e = 0; e < half.ep_size(); ++e) EXPECT_EQ(half.node_of_ep_rank(e), 0);
}

// Options that do not fit the world are a programming error (the config's validate_for_world
// owns the rules and their messages, tests/unit/trainer/config_test.cpp): every rank throws
// before any split, naming the options and the world size.
std::string mesh_error(const MeshOptions& options) {
  try {
    Mesh::create(mpi_world(), options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MeshTest, OptionsThatDoNotFitTheWorldThrowBeforeAnySplit) {
  const int world = mpi_world().size();
  MeshOptions pp3;
  pp3.pipeline_parallel = 3;
  EXPECT_NE(mesh_error(pp3).find(str("pipeline_parallel 3, expert_parallel 1, ranks_per_node 0) "
                                     "do not fit world size ",
                                     world)),
            std::string::npos);
  MeshOptions ep3;
  ep3.expert_parallel = 3;
  EXPECT_NE(mesh_error(ep3).find("expert_parallel 3"), std::string::npos);
  MeshOptions rpn3;
  rpn3.ranks_per_node = 3;
  EXPECT_NE(mesh_error(rpn3).find("ranks_per_node 3"), std::string::npos);
  // The world is still usable: the check threw before any split.
  EXPECT_EQ(mpi_world().all_gather_int64({1}).size(), static_cast<size_t>(world));
}

TEST(MeshTest, ConfigHashMismatchNamesTheRanks) {
  const int r = mpi_world().rank(), world = mpi_world().size();
  EXPECT_NO_THROW(parallel::check_same_config(mpi_world(), "model:\n  dim: 64\n"));
  std::string message;
  try {
    parallel::check_same_config(mpi_world(), r % 2 ? "model:\n  dim: 65\n" : "model:\n  dim: 64\n");
  } catch (const CommError& e) {
    message = e.what();
  }
  const std::string ranks = world == 2 ? "rank 1 of world has" : "ranks 1, 3 of world have";
  EXPECT_NE(message.find("config differs between ranks: " + ranks), std::string::npos) << message;
  EXPECT_NE(message.find("differs from rank 0's"), std::string::npos) << message;
}

}  // namespace
}  // namespace condensa::testing
