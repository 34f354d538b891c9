// Expert-parallel MoE against the single-process layer (outputs and gradients), and
// node-limited routing over a fake node map.
#include <gtest/gtest.h>

#include "model/moe/layer.h"
#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "tests/dist/dist_env.h"

using namespace condensa;

namespace {

model::ModelConfig moe_config(int64_t experts) {
  model::ModelConfig c;
  c.hidden_size = 10;
  c.num_routed_experts = experts;
  c.num_shared_experts = 1;
  c.top_k = 3;
  c.moe_intermediate_size = 6;
  c.seq_aux_alpha = 0.01;
  return c;
}

// Same values on every rank for the shared parts; experts from a full seeded set.
void fill(model::MoELayerImpl& layer,
          const torch::Tensor& full_gate,
          const torch::Tensor& full_up,
          const torch::Tensor& full_down) {
  torch::NoGradGuard g;
  int64_t i = 0;
  for (auto& p : layer.gate->parameters())
    p.copy_(condensa::testing::seeded_normal(100 + i++, 0, p.sizes()).to(p.dtype()));
  for (auto& p : layer.shared_experts->parameters())
    p.copy_(condensa::testing::seeded_normal(200 + i++, 0, p.sizes()).to(p.dtype()));
  const int64_t first = layer.experts->first_expert, n = layer.experts->num_local_experts;
  layer.experts->gate_proj.copy_(full_gate.narrow(0, first, n));
  layer.experts->up_proj.copy_(full_up.narrow(0, first, n));
  layer.experts->down_proj.copy_(full_down.narrow(0, first, n));
  layer.gate->e_score_correction_bias.copy_(
      condensa::testing::seeded_normal(300, 0, {layer.cfg.num_routed_experts}) * 0.1);
}

class EpDispatch : public ::testing::TestWithParam<int> {};

TEST_P(EpDispatch, MatchesSingleProcessLayer) {
  auto& world = condensa::testing::mpi_world();
  const int ep = GetParam();
  if (world.size() % ep != 0)
    GTEST_SKIP() << "ep " << ep << " does not divide world " << world.size();
  auto ep_comm = world.split(world.rank() / ep, world.rank());
  const int64_t E = 8;
  auto cfg = moe_config(E);
  auto full_gate = condensa::testing::seeded_normal(1, 0, {E, 6, 10}),
       full_up = condensa::testing::seeded_normal(2, 0, {E, 6, 10}),
       full_down = condensa::testing::seeded_normal(3, 0, {E, 10, 6});

  model::MoELayer dist(cfg, std::make_shared<parallel::AllToAllDispatcher>(*ep_comm, E));
  model::MoELayer ref(cfg, std::make_shared<model::LocalDispatcher>(E));
  dist->to(torch::kFloat64);
  ref->to(torch::kFloat64);
  fill(*dist, full_gate, full_up, full_down);
  fill(*ref, full_gate, full_up, full_down);

  // Each rank its own tokens (uneven counts, one rank possibly with few).
  const int64_t S = 3 + world.rank() * 2;
  auto x = condensa::testing::seeded_normal(7, world.rank(), {2, S, 10}).requires_grad_(true);
  auto x_ref = x.detach().clone().requires_grad_(true);
  torch::Tensor aux, aux_ref;
  auto y = dist(x, &aux);
  auto y_ref = ref(x_ref, &aux_ref);
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-10, 1e-12)) << (y - y_ref).abs().max().item<double>();
  EXPECT_NEAR(aux.item<double>(), aux_ref.item<double>(), 1e-12);

  auto w = condensa::testing::seeded_normal(8, world.rank(), y.sizes());
  ((y * w).sum() + aux).backward();
  ((y_ref * w).sum() + aux_ref).backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(dist->gate->weight.grad(), ref->gate->weight.grad(), 1e-10, 1e-12));
  // Expert gradients: the EP rank holds the sum over its ep group's tokens.
  const int64_t first = dist->experts->first_expert, n = dist->experts->num_local_experts;
  for (auto [d, r] : {std::pair{dist->experts->gate_proj, ref->experts->gate_proj},
                      std::pair{dist->experts->down_proj, ref->experts->down_proj}}) {
    auto summed = r.grad().clone();
    ep_comm->all_reduce(summed);
    EXPECT_TRUE(torch::allclose(d.grad(), summed.narrow(0, first, n), 1e-9, 1e-11));
  }
}

INSTANTIATE_TEST_SUITE_P(Ep, EpDispatch, ::testing::Values(1, 2, 4));

TEST(NodeLimitedRouting, TokensUseAtMostMNodesOfTheFakeNodeMap) {
  auto& world = condensa::testing::mpi_world();
  parallel::MeshOptions mo;
  mo.expert_parallel = world.size();
  mo.ranks_per_node = 1;  // every rank its own node
  auto mesh = parallel::Mesh::create(world, mo);
  ASSERT_EQ(mesh.num_nodes_in_ep_group(), world.size());
  const int64_t E = 4 * world.size();
  auto cfg = moe_config(E);
  cfg.top_k = 4;
  cfg.max_nodes_per_token = 1;
  model::Router router(cfg);
  for (int64_t e = 0; e < E; ++e)
    router->routing.expert_node.push_back(mesh.node_of_ep_rank(static_cast<int>(e / 4)));
  torch::NoGradGuard g;
  router->weight.copy_(
      condensa::testing::seeded_normal(11, 0, router->weight.sizes()).to(torch::kFloat32));
  auto out =
      router(condensa::testing::seeded_normal(12, world.rank(), {64, 10}).to(torch::kFloat32));
  auto nodes = torch::div(out.topk_idx_TK, 4, "floor");
  for (int64_t t = 0; t < 64; ++t) {
    auto u = std::get<0>(at::_unique(nodes[t]));
    EXPECT_EQ(u.numel(), 1) << "token " << t;
  }
}

}  // namespace
