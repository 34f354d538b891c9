// DeepSeek-V3 features: recomputation, MTP causality, KV-cache generation, layout-independent
// initialisation. Parameter and FLOP counts: accounting_test.cpp.
#include <gtest/gtest.h>

#include "model/init.h"
#include "model/param_names.h"
#include "model/transformer.h"
#include "tests/support/test_util.h"
#include "trainer/config/config.h"
#include "trainer/inference.h"

using namespace condensa::model;

namespace {
ModelConfig tiny(const std::string& recompute = "none") {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.num_layers = 3;
  c.num_dense_layers = 1;
  c.intermediate_size = 24;
  c.num_heads = 2;
  c.q_lora_rank = 8;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 4;
  c.num_routed_experts = 4;
  c.top_k = 2;
  c.moe_intermediate_size = 8;
  c.max_seq_len = 32;
  c.mtp_depth = 2;
  c.init_std = 0.2;
  c.recompute = recompute;
  return c;
}
}  // namespace

class Recompute : public ::testing::TestWithParam<std::string> {};

TEST_P(Recompute, EqualsNoRecomputationOutputsAndGradients) {
  Transformer a(tiny("none")), b(tiny(GetParam()));
  init_parameters(*a, 3);
  init_parameters(*b, 3);
  auto tokens = torch::randint(0, 23, {2, 9}, torch::kInt64);
  ForwardOptions fo;
  fo.with_mtp = true;
  auto loss_of = [&](TransformerImpl& m) {
    auto out = m.forward(tokens, fo);
    return out.logits_BSV.logsumexp(-1).mean() + out.mtp_logits[1].pow(2).mean() + out.aux_loss;
  };
  auto la = loss_of(*a), lb = loss_of(*b);
  EXPECT_TRUE(torch::allclose(la, lb, 1e-6, 1e-7));
  la.backward();
  lb.backward();
  auto pa = a->named_parameters(), pb = b->named_parameters();
  int compared = 0;
  for (auto& item : pa) {
    auto ga = item.value().grad(), gb = pb[item.key()].grad();
    ASSERT_EQ(ga.defined(), gb.defined())
        << item.key() << " gradient presence differs with recompute " << GetParam();
    if (!ga.defined()) continue;  // mtp.0's head norm: the loss below does not use its logits
    EXPECT_TRUE(torch::allclose(ga, gb, 1e-5, 1e-7)) << item.key();
    ++compared;
  }
  EXPECT_GT(compared, 40);
}
INSTANTIATE_TEST_SUITE_P(Modes, Recompute, ::testing::Values("norm_up", "full"));

TEST(MTP, ChangingALaterTokenNeverChangesAnEarlierPrediction) {
  Transformer m(tiny());
  init_parameters(*m, 5);
  auto tokens = torch::randint(0, 23, {1, 10}, torch::kInt64);
  ForwardOptions fo;
  fo.with_mtp = true;
  torch::NoGradGuard g;
  auto base = m->forward(tokens, fo);
  for (int64_t j = 1; j < 10; ++j) {
    auto t2 = tokens.clone();
    t2[0][j] = (t2[0][j].item<int64_t>() + 7) % 23;
    auto out = m->forward(t2, fo);
    // Main head at position i sees tokens <= i. Equal up to float noise only: when routing
    // changes, the expert matmuls see other row counts (other BLAS blocking).
    auto diff = [](const torch::Tensor& a, const torch::Tensor& b) {
      return (a - b).abs().max().item<double>();
    };
    EXPECT_LT(diff(out.logits_BSV.narrow(1, 0, j), base.logits_BSV.narrow(1, 0, j)), 1e-5)
        << "main, token " << j;
    EXPECT_GT(diff(out.logits_BSV.narrow(1, j, 1), base.logits_BSV.narrow(1, j, 1)), 1e-3)
        << "main, token " << j;
    // MTP depth d at position i sees tokens <= i + d (it predicts i + d + 1).
    for (int64_t d = 1; d <= 2; ++d) {
      int64_t visible = std::max<int64_t>(0, j - d);  // positions i with i + d < j
      if (visible == 0) continue;
      EXPECT_LT(diff(out.mtp_logits[d - 1].narrow(1, 0, visible),
                     base.mtp_logits[d - 1].narrow(1, 0, visible)),
                1e-5)
          << "depth " << d << ", token " << j;
      EXPECT_GT(diff(out.mtp_logits[d - 1].narrow(1, visible, 1),
                     base.mtp_logits[d - 1].narrow(1, visible, 1)),
                1e-3)
          << "depth " << d << ", token " << j << " must see token " << j;
    }
  }
}

TEST(Generate, KvCacheEqualsFullRecomputation) {
  Transformer m(tiny());
  init_parameters(*m, 9);
  condensa::trainer::GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.temperature = 0.8;
  opt.seed = 4;
  std::vector<torch::Tensor> with_cache, without;
  auto a = condensa::trainer::generate(*m, {1, 2, 3}, opt, &with_cache);
  opt.use_cache = false;
  auto b = condensa::trainer::generate(*m, {1, 2, 3}, opt, &without);
  EXPECT_EQ(a, b);
  ASSERT_EQ(with_cache.size(), without.size());
  for (size_t i = 0; i < with_cache.size(); ++i)
    EXPECT_TRUE(torch::allclose(with_cache[i], without[i], 1e-4, 1e-5)) << i;
}

TEST(Init, ExpertWeightsDependOnGlobalIndexNotLayout) {
  auto c = tiny();
  Transformer full(c);
  init_parameters(*full, 11);
  // A model holding only experts 2..3 (as ep rank 1 of 2 would).
  struct Half : TokenDispatcher {
    int64_t num_local_experts() const override { return 2; }
    int64_t first_local_expert() const override { return 2; }
    Dispatched dispatch(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {
      return {};
    }
    torch::Tensor combine(const torch::Tensor&, const DispatchHandle&) override { return {}; }
  };
  Transformer half(c, [](int64_t) { return std::make_shared<Half>(); });
  init_parameters(*half, 11);
  auto a = full->named_parameters(), b = half->named_parameters();
  for (auto& item : b) {
    if (is_expert_param(item.key())) {
      EXPECT_TRUE(torch::equal(item.value(), a[item.key()].narrow(0, 2, 2))) << item.key();
    } else {
      EXPECT_TRUE(torch::equal(item.value(), a[item.key()])) << item.key();
    }
  }
}
