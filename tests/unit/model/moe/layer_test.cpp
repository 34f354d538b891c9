// The MoE layer against an explicit per-token loop, and MLA against an explicit formula.
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

// y_t = shared(x_t) + sum_k p_tk * SwiGLU_{e_tk}(x_t), one token at a time.
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

TEST(MLA, MatchesExplicitAttentionFormula) {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_heads = 3;
  c.q_lora_rank = 6;
  c.kv_lora_rank = 5;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 3;
  c.max_seq_len = 16;
  MLA mla(c);
  randomize(*mla, 5);
  mla->to(torch::kFloat64);
  auto rope = make_rope_tables(c);
  const int64_t B = 2, S = 6, H = 3;
  auto x = torch::randn({B, S, c.hidden_size}, torch::kFloat64);
  auto y = mla(x, rope);

  // Explicit: per position, per head, with rope written as 2x2 rotations of interleaved pairs.
  auto rms = [&](torch::Tensor v, torch::Tensor w) {
    return v / torch::sqrt(v.pow(2).mean() + c.norm_eps) * w;
  };
  auto rotate = [&](torch::Tensor v, int64_t pos) {
    auto out = v.clone();
    for (int64_t i = 0; i < v.size(0) / 2; ++i) {
      double freq = 1.0 / std::pow(c.rope_theta, 2.0 * i / v.size(0));
      double a = pos * freq;
      auto x0 = v[2 * i], x1 = v[2 * i + 1];
      out[2 * i] = x0 * std::cos(a) - x1 * std::sin(a);
      out[2 * i + 1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
    return out;
  };
  double scale = 1.0 / std::sqrt(8.0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<torch::Tensor> qs, ks, vs;
    for (int64_t s = 0; s < S; ++s) {
      auto xs = x[b][s];
      auto q = torch::mv(mla->q_b_proj->weight,
                         rms(torch::mv(mla->q_a_proj->weight, xs), mla->q_a_layernorm->weight));
      auto kv = torch::mv(mla->kv_a_proj_with_mqa->weight, xs);
      auto latent = rms(kv.narrow(0, 0, 5), mla->kv_a_layernorm->weight);
      auto k_rope = rotate(kv.narrow(0, 5, 4), s);
      auto up = torch::mv(mla->kv_b_proj->weight, latent).view({H, 7});
      auto qh = q.view({H, 8});
      std::vector<torch::Tensor> qrow, krow;
      for (int64_t h = 0; h < H; ++h) {
        qrow.push_back(torch::cat({qh[h].narrow(0, 0, 4), rotate(qh[h].narrow(0, 4, 4), s)}));
        krow.push_back(torch::cat({up[h].narrow(0, 0, 4), k_rope}));
      }
      qs.push_back(torch::stack(qrow));
      ks.push_back(torch::stack(krow));
      vs.push_back(up.narrow(1, 4, 3));
    }
    for (int64_t s = 0; s < S; ++s) {
      std::vector<torch::Tensor> heads;
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> logits;
        for (int64_t j = 0; j <= s; ++j)
          logits.push_back(torch::dot(qs[s][h], ks[j][h]).item<double>() * scale);
        double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
        for (double& l : logits) z += (l = std::exp(l - mx));
        auto o = torch::zeros({3}, torch::kFloat64);
        for (int64_t j = 0; j <= s; ++j) o = o + logits[j] / z * vs[j][h];
        heads.push_back(o);
      }
      auto ref = torch::mv(mla->o_proj->weight, torch::cat(heads));
      EXPECT_TRUE(torch::allclose(y[b][s], ref, 1e-9, 1e-11)) << "b " << b << " s " << s;
    }
  }
}

TEST(Transformer, GradientMatchesFiniteDifferences) {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.num_dense_layers = 1;
  c.intermediate_size = 10;
  c.num_heads = 2;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.num_routed_experts = 4;
  c.top_k = 2;
  c.moe_intermediate_size = 3;
  c.max_seq_len = 8;
  c.mtp_depth = 1;
  Transformer model(c);
  init_parameters(*model, 7);
  randomize(*model, 8);
  model->to(torch::kFloat64);
  auto tokens = torch::randint(0, c.vocab_size, {2, 5}, torch::kInt64);
  auto loss_fn = [&] {
    ForwardOptions opt;
    opt.with_mtp = true;
    auto out = model(tokens, opt);
    return out.logits_BSV.pow(2).mean() + out.mtp_logits[0].sin().mean();
  };
  auto loss = loss_fn();
  model->zero_grad();
  loss.backward();
  // Routing is piecewise constant: small steps keep the same expert choices.
  const double eps = 1e-6;
  int checked = 0;
  for (auto& item : model->named_parameters()) {
    auto& p = item.value();
    auto flat = p.data().view(-1);
    for (int64_t i : {int64_t(0), flat.numel() / 2, flat.numel() - 1}) {
      torch::NoGradGuard g;
      double old = flat[i].item<double>();
      flat[i] = old + eps;
      double up = loss_fn().item<double>();
      flat[i] = old - eps;
      double down = loss_fn().item<double>();
      flat[i] = old;
      double numeric = (up - down) / (2 * eps);
      double analytic = p.grad().view(-1)[i].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 + 1e-4 * std::abs(numeric))
          << item.key() << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 60);
}
