// The MoE layer against an explicit per-token loop: dropless, and with capacity dropping.
#include "model/moe/layer.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace condensa::model;

namespace {

ModelConfig small_moe_config() {
  ModelConfig c;
  c.hidden_size = 12;
  c.num_routed_experts = 6;
  c.num_shared_experts = 1;
  c.top_k = 2;
  c.moe_intermediate_size = 5;
  c.num_groups = 3;
  c.topk_groups = 2;
  c.route_scale = 1.7;
  c.seq_aux_alpha = 0.0;
  return c;
}

void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& p : m.parameters()) p.normal_(0, 0.5);
}

// y_t = shared(x_t) + sum_k p_tk * SwiGLU_{e_tk}(x_t), one token at a time; e = -1 is skipped.
torch::Tensor moe_reference(MoELayerImpl& layer,
                            const torch::Tensor& x_TD,
                            const torch::Tensor& idx,
                            const torch::Tensor& probs) {
  std::vector<torch::Tensor> rows;
  auto& ex = *layer.experts;
  for (int64_t t = 0; t < x_TD.size(0); ++t) {
    auto x = x_TD[t];
    auto y = layer.shared_experts(x.unsqueeze(0)).squeeze(0);
    for (int64_t k = 0; k < idx.size(1); ++k) {
      int64_t e = idx[t][k].item<int64_t>();
      if (e < 0) continue;
      auto h = torch::silu(torch::mv(ex.gate_proj[e], x)) * torch::mv(ex.up_proj[e], x);
      y = y + probs[t][k] * torch::mv(ex.down_proj[e], h);
    }
    rows.push_back(y);
  }
  return torch::stack(rows);
}

}  // namespace

TEST(MoELayer, MatchesPerTokenLoopOutputsAndGradients) {
  auto cfg = small_moe_config();
  MoELayer layer(cfg, std::make_shared<LocalDispatcher>(cfg.num_routed_experts));
  randomize(*layer, 3);
  layer->to(torch::kFloat64);
  layer->gate->e_score_correction_bias.copy_(
      torch::randn({cfg.num_routed_experts}, torch::kFloat64) * 0.1);
  auto x = torch::randn({2, 7, cfg.hidden_size}, torch::kFloat64).requires_grad_(true);
  auto y = layer(x);
  auto r = layer->gate(x.reshape({-1, cfg.hidden_size}));  // the same router, differentiable
  auto y_ref =
      moe_reference(*layer, x.reshape({-1, cfg.hidden_size}), r.topk_idx_TK, r.probs_TK).view_as(y);
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-10, 1e-12)) << (y - y_ref).abs().max().item<double>();

  auto w = torch::randn_like(y);
  auto grads = torch::autograd::grad(
      {(y * w).sum()},
      {x, layer->experts->gate_proj, layer->experts->down_proj, layer->gate->weight});
  auto grads_ref = torch::autograd::grad(
      {(y_ref * w).sum()},
      {x, layer->experts->gate_proj, layer->experts->down_proj, layer->gate->weight});
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(torch::allclose(grads[i], grads_ref[i], 1e-9, 1e-11)) << "gradient " << i;
  }
  // The router weight gets a non-zero gradient through the gate weights.
  EXPECT_GT(grads[3].abs().sum().item<double>(), 0.0);
}

TEST(MoELayer, CountsTokensPerExpert) {
  auto cfg = small_moe_config();
  MoELayer layer(cfg, std::make_shared<LocalDispatcher>(cfg.num_routed_experts));
  randomize(*layer, 4);
  auto x = torch::randn({3, 5, cfg.hidden_size});
  layer(x);
  EXPECT_EQ(layer->stats.tokens_per_expert_E.sum().item<int64_t>(), 3 * 5 * cfg.top_k);
  layer(x);
  EXPECT_EQ(layer->stats.tokens_per_expert_E.sum().item<int64_t>(), 2 * 3 * 5 * cfg.top_k);
}

TEST(MoELayer, CapacityDropsTheLatestAssignmentsOfEachExpert) {
  auto cfg = small_moe_config();
  cfg.capacity_factor = 0.5;
  MoELayer layer(cfg, std::make_shared<LocalDispatcher>(cfg.num_routed_experts));
  randomize(*layer, 6);
  layer->to(torch::kFloat64);
  layer->gate->e_score_correction_bias.copy_(
      torch::randn({cfg.num_routed_experts}, torch::kFloat64) * 0.1);
  auto x = torch::randn({2, 7, cfg.hidden_size}, torch::kFloat64).requires_grad_(true);
  auto y = layer(x);

  // Reference: the dropless choice of the same router, then walk the assignments in token
  // order and keep the first `capacity` of each expert.
  auto x_TD = x.reshape({-1, cfg.hidden_size});
  auto r = layer->gate(x_TD);
  auto [idx, probs] =
      select_experts(r.scores_TE, layer->gate->e_score_correction_bias, layer->gate->routing);
  const int64_t T = idx.size(0), K = idx.size(1), E = cfg.num_routed_experts;
  const auto capacity = static_cast<int64_t>(std::ceil(cfg.capacity_factor * T * K / E));
  std::vector<int64_t> used(E, 0);
  auto kept_idx = idx.clone();
  int64_t dropped = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = idx[t][k].item<int64_t>();
      if (used[e]++ >= capacity) {
        kept_idx[t][k] = -1;
        ++dropped;
      }
    }
  }
  ASSERT_GT(dropped, 0) << "capacity " << capacity << " drops nothing: the test would not bite";
  EXPECT_TRUE(torch::equal(r.topk_idx_TK, kept_idx)) << r.topk_idx_TK << kept_idx;
  auto y_ref = moe_reference(*layer, x_TD, kept_idx, probs).view_as(y);
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-10, 1e-12)) << (y - y_ref).abs().max().item<double>();

  auto w = torch::randn_like(y);
  auto grads = torch::autograd::grad({(y * w).sum()}, {x, layer->experts->down_proj});
  auto grads_ref = torch::autograd::grad({(y_ref * w).sum()}, {x, layer->experts->down_proj});
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(torch::allclose(grads[i], grads_ref[i], 1e-9, 1e-11)) << "gradient " << i;
  }
}
