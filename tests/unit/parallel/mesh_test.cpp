// Mesh validation (pure functions: they run before any communicator exists).
#include "parallel/mesh.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace condensa::parallel {
namespace {

std::string error_of(int world, MeshOptions o) {
  try {
    validate_mesh(world, o);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(MeshValidation, MessagesNameBothOperands) {
  MeshOptions o;
  o.expert_parallel = 3;
  EXPECT_EQ(error_of(4, o),
            "parallel.expert_parallel (3) must divide the data-parallel size (4) = world (4) / "
            "pipeline_parallel (1)");
  o = MeshOptions{};
  o.pipeline_parallel = 3;
  EXPECT_EQ(error_of(4, o), "parallel.pipeline_parallel (3) must divide the world size (4)");
  o = MeshOptions{};
  o.pipeline_parallel = 2;
  o.expert_parallel = 8;
  EXPECT_EQ(error_of(8, o),
            "parallel.expert_parallel (8) must divide the data-parallel size (4) = world (8) / "
            "pipeline_parallel (2)");
  o = MeshOptions{};
  o.pipeline_parallel = 0;
  EXPECT_EQ(error_of(4, o), "parallel.pipeline_parallel (0) must be >= 1");
  o = MeshOptions{};
  o.ranks_per_node_override = 3;
  EXPECT_EQ(error_of(4, o), "parallel.ranks_per_node_override (3) must divide the world size (4)");
  o = MeshOptions{};
  o.nodes_override = 2;
  o.ranks_per_node_override = 4;
  EXPECT_EQ(error_of(4, o),
            "parallel.nodes_override (2) x parallel.ranks_per_node_override (4) must equal the "
            "world size (4)");
}

TEST(MeshValidation, ValidLayoutsPass) {
  MeshOptions o;
  o.pipeline_parallel = 2;
  o.expert_parallel = 4;
  EXPECT_EQ(error_of(16, o), "");
  EXPECT_EQ(error_of(1, MeshOptions{}), "");
}

TEST(MeshValidation, ExpertParallelMustDivideRoutedExperts) {
  try {
    validate_expert_parallel(3, 8);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "parallel.expert_parallel (3) must divide model.num_routed_experts (8)");
  }
  EXPECT_NO_THROW(validate_expert_parallel(4, 8));
}

TEST(MeshValidation, FakeNodeMapIsConsecutiveRanks) {
  MeshOptions o;
  EXPECT_TRUE(fake_node_map(4, o).empty());
  o.ranks_per_node_override = 2;
  EXPECT_EQ(fake_node_map(6, o), (std::vector<int>{0, 0, 1, 1, 2, 2}));
  o = MeshOptions{};
  o.nodes_override = 2;
  EXPECT_EQ(fake_node_map(4, o), (std::vector<int>{0, 0, 1, 1}));
}

}  // namespace
}  // namespace condensa::parallel
