// The MoE layer against an explicit per-token loop: dropless, and with capacity dropping.
#include "model/moe/layer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/init.h"
#include "model/transformer.h"

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

// Assignments of the layer's router on x, recomputed outside the layer: scores from the
// router weight by hand, selection by select_experts (before capacity dropping).
torch::Tensor reference_assignments(MoELayerImpl& layer, const torch::Tensor& x_BSD) {
  torch::NoGradGuard g;
  auto x_TD = x_BSD.reshape({-1, x_BSD.size(-1)});
  auto scores = torch::sigmoid(torch::matmul(x_TD, layer.gate->weight.t()));
  return select_experts(scores, layer.gate->e_score_correction_bias, layer.gate->routing).first;
}

// Per-expert count of the non-negative entries, one assignment at a time.
std::vector<int64_t> count_per_expert(const torch::Tensor& idx_TK, int64_t num_experts) {
  std::vector<int64_t> counts(num_experts, 0);
  auto idx = idx_TK.contiguous();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    const int64_t e = idx.data_ptr<int64_t>()[i];
    if (e >= 0) ++counts.at(e);
  }
  return counts;
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(MoELayer, CountsTokensPerExpert) {
  auto cfg = small_moe_config();
  MoELayer layer(cfg, std::make_shared<LocalDispatcher>(cfg.num_routed_experts));
  randomize(*layer, 4);
  layer->gate->e_score_correction_bias.copy_(torch::randn({cfg.num_routed_experts}) * 0.3);
  auto x1 = torch::randn({3, 5, cfg.hidden_size}), x2 = torch::randn({2, 4, cfg.hidden_size});
  auto expected = count_per_expert(reference_assignments(*layer, x1), cfg.num_routed_experts);
  layer(x1);
  EXPECT_EQ(to_vector(layer->gate->stats.tokens_per_expert_E), expected);
  // Summed over forwards (micro-batches) until reset.
  auto second = count_per_expert(reference_assignments(*layer, x2), cfg.num_routed_experts);
  for (size_t e = 0; e < expected.size(); ++e) expected[e] += second[e];
  layer(x2);
  EXPECT_EQ(to_vector(layer->gate->stats.tokens_per_expert_E), expected);
  EXPECT_EQ(layer->gate->stats.dropped.item<int64_t>(), 0);  // dropless
  // Not all in one expert (the per-expert comparison means something).
  EXPECT_LT(*std::max_element(expected.begin(), expected.end()), (3 * 5 + 2 * 4) * cfg.top_k);
  layer->gate->reset_stats();
  EXPECT_EQ(layer->gate->stats.tokens_per_expert_E.sum().item<int64_t>(), 0);
}

TEST(MoELayer, CountsAssignmentsDroppedByCapacity) {
  auto cfg = small_moe_config();
  cfg.capacity_factor = 0.5;  // capacity ceil(0.5 * T * K / E)
  MoELayer layer(cfg, std::make_shared<LocalDispatcher>(cfg.num_routed_experts));
  randomize(*layer, 6);
  layer->gate->stats.keep_assignments = true;
  auto x = torch::randn({3, 8, cfg.hidden_size});
  const int64_t T = 3 * 8;
  const auto capacity =
      static_cast<int64_t>(std::ceil(cfg.capacity_factor * T * cfg.top_k / cfg.num_routed_experts));
  auto before = count_per_expert(reference_assignments(*layer, x), cfg.num_routed_experts);
  int64_t dropped = 0;
  for (auto c : before) dropped += std::max<int64_t>(0, c - capacity);
  ASSERT_GT(dropped, 0) << "the case must drop something";
  layer(x);
  const auto& stats = layer->gate->stats;
  EXPECT_EQ(stats.dropped.item<int64_t>(), dropped);
  EXPECT_EQ(to_vector(stats.tokens_per_expert_E), before);  // counted before dropping
  auto kept = count_per_expert(stats.last_topk_idx_TK, cfg.num_routed_experts);
  for (int64_t e = 0; e < cfg.num_routed_experts; ++e)
    EXPECT_EQ(kept[e], std::min(before[e], capacity)) << "expert " << e;
}

TEST(RoutingStatsApi, LoadBiasUpdateAndResetThroughTheModel) {
  ModelConfig c = small_moe_config();
  c.vocab_size = 13;
  c.num_layers = 3;
  c.num_dense_layers = 1;
  c.intermediate_size = 7;
  c.num_heads = 2;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.max_seq_len = 8;
  Transformer model(c);
  init_parameters(*model, 9);
  randomize(*model, 10);
  keep_routing_assignments(*model, true);
  auto tokens = torch::randint(0, c.vocab_size, {2, 6}, torch::kInt64);
  model(tokens);
  auto layers = model->moe_layers();
  ASSERT_EQ(layers.size(), 2u);
  auto load = expert_load(*model);
  auto assignments = routing_assignments(*model);
  ASSERT_EQ(load.sizes(), (std::vector<int64_t>{2, c.num_routed_experts}));
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_EQ(to_vector(load[l]), count_per_expert(assignments[l], c.num_routed_experts));
    EXPECT_EQ(assignments[l].size(0), 2 * 6);
  }
  EXPECT_EQ(to_vector(dropped_assignments(*model)), (std::vector<int64_t>{0, 0}));

  // b_i += gamma * sign(mean - load_i), per layer, from the given (global) load.
  auto global = torch::randint(0, 50, {2, c.num_routed_experts}, torch::kInt64).to(torch::kFloat64);
  // Experts 2 and 3 of layer 1 sit exactly at the mean (6): their bias must not move.
  global[1].copy_(torch::tensor({3.0, 9.0, 6.0, 6.0, 1.0, 11.0}, torch::kFloat64));
  auto before = balance_biases(*model).clone();
  apply_bias_update(*model, global, 0.25);
  auto after = balance_biases(*model);
  for (int64_t l = 0; l < 2; ++l) {
    const double mean = global[l].mean().item<double>();
    for (int64_t e = 0; e < c.num_routed_experts; ++e) {
      const double g = global[l][e].item<double>();
      const double step = g < mean ? 0.25 : (g > mean ? -0.25 : 0.0);
      EXPECT_NEAR(after[l][e].item<double>(), before[l][e].item<double>() + step, 1e-7)
          << "layer " << l << " expert " << e;
    }
    EXPECT_TRUE(torch::equal(after[l], layers[l]->gate->e_score_correction_bias));
  }

  reset_routing_stats(*model);
  EXPECT_EQ(expert_load(*model).sum().item<int64_t>(), 0);
  keep_routing_assignments(*model, false);
  EXPECT_FALSE(routing_assignments(*model)[0].defined());
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
