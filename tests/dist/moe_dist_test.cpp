// Expert-parallel MoE under mpirun: the all-to-all layer against an independent per-token
// loop over the full (unsharded) expert weights, outputs and gradients; capacity dropping and
// activation recomputation with ep > 1; node-limited routing over a fake node map.
//
// The per-token reference shares only the router with the layer (routing maths has its own
// unit tests): y_t = shared(x_t) + sum_k p_tk * SwiGLU_{e_tk}(x_t), so a dispatcher that
// drops the gate weight, mixes up rows or loses a rank's tokens cannot pass.
//
// Shape legend: B batch, S sequence, T = B*S tokens, D hidden, E experts, F expert hidden.
#include <gtest/gtest.h>

#include "model/moe/balance.h"
#include "model/moe/layer.h"
#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "tests/dist/dist_env.h"

using namespace condensa;

namespace {

constexpr int64_t kD = 10, kF = 6, kE = 8;

model::ModelConfig moe_config(int64_t experts) {
  model::ModelConfig c;
  c.hidden_size = kD;
  c.num_routed_experts = experts;
  c.num_shared_experts = 1;
  c.top_k = 3;
  c.moe_intermediate_size = kF;
  c.seq_aux_alpha = 0.01;
  return c;
}

// The full expert weights, identical on every rank.
struct FullExperts {
  torch::Tensor gate_EFD = condensa::testing::seeded_normal(1, 0, {kE, kF, kD});
  torch::Tensor up_EFD = condensa::testing::seeded_normal(2, 0, {kE, kF, kD});
  torch::Tensor down_EDF = condensa::testing::seeded_normal(3, 0, {kE, kD, kF});
};

// Same values on every rank for the shared parts; this rank's slice of the full experts.
void fill(model::MoELayerImpl& layer, const FullExperts& full) {
  torch::NoGradGuard g;
  int64_t i = 0;
  for (auto& p : layer.gate->parameters())
    p.copy_(condensa::testing::seeded_normal(100 + i++, 0, p.sizes()).to(p.dtype()));
  for (auto& p : layer.shared_experts->parameters())
    p.copy_(condensa::testing::seeded_normal(200 + i++, 0, p.sizes()).to(p.dtype()));
  const int64_t first = layer.experts->first_expert, n = layer.experts->num_local_experts;
  layer.experts->gate_proj.copy_(full.gate_EFD.narrow(0, first, n));
  layer.experts->up_proj.copy_(full.up_EFD.narrow(0, first, n));
  layer.experts->down_proj.copy_(full.down_EDF.narrow(0, first, n));
  layer.gate->e_score_correction_bias.copy_(
      condensa::testing::seeded_normal(300, 0, {layer.cfg.num_routed_experts}) * 0.1);
}

// y_t = shared(x_t) + sum_k p_tk * SwiGLU_{e_tk}(x_t), one token and one choice at a time.
torch::Tensor per_token_reference(model::MLPImpl& shared,
                                  const FullExperts& w,
                                  const torch::Tensor& x_TD,
                                  const torch::Tensor& idx_TK,
                                  const torch::Tensor& probs_TK) {
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x_TD.size(0); ++t) {
    auto x = x_TD[t];
    auto y = shared.forward(x.unsqueeze(0)).squeeze(0);
    for (int64_t k = 0; k < idx_TK.size(1); ++k) {
      const int64_t e = idx_TK[t][k].item<int64_t>();
      if (e < 0) continue;
      auto h = torch::silu(torch::mv(w.gate_EFD[e], x)) * torch::mv(w.up_EFD[e], x);
      y = y + probs_TK[t][k] * torch::mv(w.down_EDF[e], h);
    }
    rows.push_back(y);
  }
  return torch::stack(rows);
}

bool close(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol) {
  return torch::allclose(a.to(torch::kFloat64), b.to(torch::kFloat64), rtol, atol);
}

// This rank's tokens: uneven counts over ranks.
torch::Tensor rank_tokens(int rank) {
  const int64_t S = 3 + rank * 2;
  return condensa::testing::seeded_normal(7, rank, {2, S, kD});
}

class EpDispatch : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    auto& world = condensa::testing::mpi_world();
    ep_ = GetParam();
    if (world.size() % ep_ != 0)
      GTEST_SKIP() << "ep " << ep_ << " does not divide world " << world.size();
    ep_comm_ = world.split(world.rank() / ep_, world.rank());
  }
  model::MoELayer ep_layer(const model::ModelConfig& cfg, torch::ScalarType dtype) {
    model::MoELayer layer(cfg, std::make_shared<parallel::AllToAllDispatcher>(*ep_comm_, kE));
    layer->to(torch::kFloat64);
    fill(*layer, full_);
    layer->to(dtype);
    return layer;
  }
  // The ep rank holds, for its experts, the sum of the gradients of its ep group's tokens.
  void expect_expert_grad(const torch::Tensor& local_grad,
                          torch::Tensor full_grad,
                          int64_t first,
                          const std::string& what) {
    ep_comm_->all_reduce(full_grad);
    const int64_t n = local_grad.size(0);
    EXPECT_TRUE(close(local_grad, full_grad.narrow(0, first, n), 1e-9, 1e-11)) << what;
  }
  int ep_ = 1;
  std::unique_ptr<parallel::Communicator> ep_comm_;
  FullExperts full_;
};

TEST_P(EpDispatch, MatchesPerTokenReference) {
  auto& world = condensa::testing::mpi_world();
  auto cfg = moe_config(kE);
  auto layer = ep_layer(cfg, torch::kFloat64);
  auto x = rank_tokens(world.rank()).requires_grad_(true);
  torch::Tensor aux;
  auto y = layer(x, &aux);

  // Reference: the same router, full expert weights as fresh leaves, a per-token loop.
  model::MoELayer twin(cfg, std::make_shared<model::LocalDispatcher>(kE));
  twin->to(torch::kFloat64);
  fill(*twin, full_);
  FullExperts leaves;
  for (auto* t : {&leaves.gate_EFD, &leaves.up_EFD, &leaves.down_EDF}) t->requires_grad_(true);
  auto x_ref = x.detach().clone().requires_grad_(true);
  auto x_TD = x_ref.reshape({-1, kD});
  auto r = twin->gate(x_TD);
  auto y_ref = per_token_reference(*twin->shared_experts, leaves, x_TD, r.topk_idx_TK, r.probs_TK)
                   .view_as(y);
  auto aux_ref = cfg.seq_aux_alpha *
                 model::sequence_balance_loss(r.scores_TE, r.topk_idx_TK, x.size(0), cfg.top_k);
  EXPECT_TRUE(close(y, y_ref, 1e-10, 1e-12)) << (y - y_ref).abs().max().item<double>();
  EXPECT_NEAR(aux.item<double>(), aux_ref.item<double>(), 1e-12);

  auto w = condensa::testing::seeded_normal(8, world.rank(), y.sizes());
  ((y * w).sum() + aux).backward();
  ((y_ref * w).sum() + aux_ref).backward();
  EXPECT_TRUE(close(x.grad(), x_ref.grad(), 1e-10, 1e-12)) << "x";
  EXPECT_TRUE(close(layer->gate->weight.grad(), twin->gate->weight.grad(), 1e-10, 1e-12))
      << "router weight";
  EXPECT_GT(layer->gate->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(close(layer->shared_experts->down_proj->weight.grad(),
                    twin->shared_experts->down_proj->weight.grad(), 1e-10, 1e-12))
      << "shared expert";
  const int64_t first = layer->experts->first_expert;
  expect_expert_grad(layer->experts->gate_proj.grad(), leaves.gate_EFD.grad(), first, "gate_proj");
  expect_expert_grad(layer->experts->up_proj.grad(), leaves.up_EFD.grad(), first, "up_proj");
  expect_expert_grad(layer->experts->down_proj.grad(), leaves.down_EDF.grad(), first, "down_proj");
}

TEST_P(EpDispatch, CapacityDroppingMatchesSingleProcessLayer) {
  auto& world = condensa::testing::mpi_world();
  auto cfg = moe_config(kE);
  cfg.capacity_factor = 0.5;  // each rank drops by its own tokens' positions
  auto layer = ep_layer(cfg, torch::kFloat64);
  model::MoELayer single(cfg, std::make_shared<model::LocalDispatcher>(kE));
  single->to(torch::kFloat64);
  fill(*single, full_);
  auto x = rank_tokens(world.rank()).requires_grad_(true);
  auto x_ref = x.detach().clone().requires_grad_(true);
  auto y = layer(x);
  auto y_ref = single(x_ref);
  {
    torch::NoGradGuard g;
    auto dropped = (single->gate(x_ref.reshape({-1, kD})).topk_idx_TK < 0).sum().item<int64_t>();
    ASSERT_GT(dropped, 0) << "capacity drops nothing on rank " << world.rank();
  }
  EXPECT_TRUE(close(y, y_ref, 1e-10, 1e-12)) << (y - y_ref).abs().max().item<double>();
  auto w = condensa::testing::seeded_normal(9, world.rank(), y.sizes());
  (y * w).sum().backward();
  (y_ref * w).sum().backward();
  EXPECT_TRUE(close(x.grad(), x_ref.grad(), 1e-10, 1e-12)) << "x";
  expect_expert_grad(layer->experts->down_proj.grad(), single->experts->down_proj.grad().clone(),
                     layer->experts->first_expert, "down_proj");
}

TEST_P(EpDispatch, RecomputeMatchesNoRecomputeInFp32AndBf16) {
  auto& world = condensa::testing::mpi_world();
  // fp32: the same kernels run again, so the results agree to rounding; bf16: within bf16.
  for (auto [dtype, tol] : {std::pair{torch::kFloat32, 1e-6}, std::pair{torch::kBFloat16, 2e-2}}) {
    auto plain_cfg = moe_config(kE), re_cfg = moe_config(kE);
    re_cfg.recompute = "full";
    auto plain = ep_layer(plain_cfg, dtype), re = ep_layer(re_cfg, dtype);
    ASSERT_TRUE(re->recompute_experts);
    auto x = rank_tokens(world.rank()).to(dtype).requires_grad_(true);
    auto x_re = x.detach().clone().requires_grad_(true);
    auto y = plain(x), y_re = re(x_re);
    const std::string what = std::string("dtype ") + c10::toString(dtype);
    EXPECT_TRUE(close(y, y_re, tol, tol)) << what;
    auto w = condensa::testing::seeded_normal(10, world.rank(), y.sizes()).to(dtype);
    (y * w).sum().backward();
    (y_re * w).sum().backward();
    auto pr = re->named_parameters();
    int compared = 0;
    for (auto& item : plain->named_parameters()) {
      auto g = item.value().grad(), g_re = pr[item.key()].grad();
      ASSERT_TRUE(g.defined() && g_re.defined()) << what << " " << item.key();
      const double scale = g.to(torch::kFloat64).norm().item<double>();
      const double err = (g - g_re).to(torch::kFloat64).norm().item<double>();
      EXPECT_LE(err, tol * (scale + 1e-3)) << what << " " << item.key();
      ++compared;
    }
    EXPECT_EQ(compared, 7) << what;  // router, 3 expert stacks, 3 shared projections
    const double gx = x.grad().to(torch::kFloat64).norm().item<double>();
    EXPECT_LE((x.grad() - x_re.grad()).to(torch::kFloat64).norm().item<double>(), tol * gx) << what;
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
