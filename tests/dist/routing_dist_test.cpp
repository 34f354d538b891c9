// Node-limited routing wired through the trainer: with expert parallelism over fake nodes
// (`parallel.ranks_per_node`) and `model.max_nodes_per_token = 1`, every token of every MoE
// layer of the trained model chooses experts on a single node, and the same router scores
// without the node limit would spread some tokens over several nodes (so the check bites).
//
// Only public entry points are used (config loading, Trainer, its model and mesh), so the test
// does not depend on where the trainer installs the expert -> node map.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "model/moe/router.h"
#include "tests/dist/dist_env.h"
#include "trainer/config/config.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using namespace condensa;

namespace {

// Number of distinct nodes among each token's chosen experts.
std::vector<int64_t> nodes_per_token(const torch::Tensor& idx_TK,
                                     const std::vector<int64_t>& node_of_expert) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < idx_TK.size(0); ++t) {
    std::set<int64_t> nodes;
    for (int64_t k = 0; k < idx_TK.size(1); ++k)
      nodes.insert(node_of_expert.at(idx_TK[t][k].item<int64_t>()));
    out.push_back(static_cast<int64_t>(nodes.size()));
  }
  return out;
}

TEST(RoutingDist, TrainerNodeLimitedRoutingKeepsEachTokenOnOneNode) {
  auto& world = condensa::testing::mpi_world();
  const auto dir = world.all_gather_string(
      (fs::temp_directory_path() / ("condensa-routing-" + std::to_string(::getpid()))).string())[0];
  const int64_t E = 8;
  auto cfg = trainer::load_config(
      std::string(CONDENSA_SOURCE_DIR) + "/configs/tiny.yaml",
      {"run.dir=" + dir, "train.steps=2", "train.global_batch_size=" + std::to_string(world.size()),
       "train.micro_batch_size=1", "train.eval_batches=1", "checkpoint.every=0", "log.every=1",
       "parallel.expert_parallel=" + std::to_string(world.size()), "parallel.ranks_per_node=1",
       "model.num_routed_experts=" + std::to_string(E), "model.top_k=2",
       "model.max_nodes_per_token=1"});
  cfg.validate_for_world(world.size());
  trainer::Trainer t(cfg, world);
  t.run();  // two steps: the balancing bias moves away from zero

  const auto& mesh = t.mesh();
  ASSERT_EQ(mesh.ep_size(), world.size());
  ASSERT_EQ(mesh.num_nodes_in_ep_group(), world.size());  // one rank per fake node
  std::vector<int64_t> node_of_expert;
  const int64_t per_rank = E / mesh.ep_size();
  for (int64_t e = 0; e < E; ++e)
    node_of_expert.push_back(mesh.node_of_ep_rank(static_cast<int>(e / per_rank)));

  torch::NoGradGuard g;
  auto x = condensa::testing::seeded_normal(21, world.rank(), {128, cfg.model.hidden_size})
               .to(torch::kFloat32);
  auto layers = t.model().moe_layers();
  ASSERT_FALSE(layers.empty());
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& router = layers[l]->gate;
    auto out = router->forward(x);
    int64_t spread = 0;
    for (int64_t n : nodes_per_token(out.topk_idx_TK, node_of_expert)) {
      EXPECT_EQ(n, 1) << "MoE layer " << l;
      if (n != 1) break;
    }
    // The same scores and bias without the node map: some token would use two nodes.
    auto unlimited = router->routing;
    unlimited.expert_node.clear();
    auto [idx, probs] =
        model::select_experts(out.scores_TE, router->e_score_correction_bias, unlimited);
    for (int64_t n : nodes_per_token(idx, node_of_expert)) spread += (n > 1);
    EXPECT_GT(spread, 0) << "MoE layer " << l << ": the node limit changes nothing here";
  }
  world.barrier();
  if (world.rank() == 0) fs::remove_all(dir);
}

}  // namespace
