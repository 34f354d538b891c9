// Multi-head latent attention against the explicit formula: per position and head, with the
// low-rank query/key/value paths, RMSNorm on the latents and RoPE written as 2x2 rotations of
// interleaved pairs, and a causal softmax computed by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/layers.h"

using namespace condensa::model;

namespace {

void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& p : m.parameters()) p.normal_(0, 0.5);
}

}  // namespace

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
