// The fake node map of the mesh (a pure function). The layout rules and their messages live in
// the config (Config::validate_for_world, tests/unit/trainer/config_test.cpp); the groups are
// checked over MPI in tests/dist/mesh_test.cpp.
#include "parallel/mesh.h"

#include <gtest/gtest.h>

namespace condensa::parallel {
namespace {

// Reference: node of rank r is the number of complete blocks of `per_node` ranks before r.
std::vector<int> reference_node_map(int world, int per_node) {
  std::vector<int> nodes;
  int node = 0, in_node = 0;
  for (int r = 0; r < world; ++r) {
    nodes.push_back(node);
    if (++in_node == per_node) in_node = 0, ++node;
  }
  return nodes;
}

TEST(MeshNodes, FakeNodeMapIsConsecutiveRanks) {
  MeshOptions o;
  EXPECT_TRUE(fake_node_map(4, o).empty());
  o.ranks_per_node = 2;
  EXPECT_EQ(fake_node_map(6, o), (std::vector<int>{0, 0, 1, 1, 2, 2}));
  for (int world : {1, 4, 6, 12, 16}) {
    for (int per_node = 1; per_node <= world; ++per_node) {
      if (world % per_node != 0) continue;
      o.ranks_per_node = per_node;
      EXPECT_EQ(fake_node_map(world, o), reference_node_map(world, per_node))
          << "world " << world << ", ranks_per_node " << per_node;
    }
  }
}

}  // namespace
}  // namespace condensa::parallel
