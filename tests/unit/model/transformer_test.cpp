// The whole decoder (dense + MoE blocks, MTP module) against finite differences: autograd's
// gradient of every parameter tensor equals the central difference of the loss.
#include "model/transformer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "model/init.h"

using namespace condensa::model;

namespace {

void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& p : m.parameters()) p.normal_(0, 0.5);
}

// Dense first layer, MoE after, one MTP module: the smallest model with every kind of block.
ModelConfig small_config(int64_t num_layers) {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.num_layers = num_layers;
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
  return c;
}

}  // namespace

TEST(Transformer, GradientMatchesFiniteDifferences) {
  ModelConfig c = small_config(2);
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

// Pipeline stages: parts of the model keep the whole model's parameter names and initial
// values, and embed -> run_layers (in two pieces) -> head_forward on two parts computes the
// whole model's logits, MTP logits and auxiliary loss.
TEST(Transformer, PartsKeepGlobalNamesAndComposeToTheWholeModel) {
  ModelConfig c = small_config(4);
  c.seq_aux_alpha = 0.01;
  Transformer whole(c);
  init_parameters(*whole, 7);
  ModelPart first, last;
  first.layers = {0, 1};
  first.head = false;
  last.layers = {2, 3};
  Transformer a(c, nullptr, &first), b(c, nullptr, &last);
  init_parameters(*a, 7);
  init_parameters(*b, 7);
  auto reference = whole->named_parameters();
  int64_t held = 0;
  for (auto* part : {&a, &b}) {
    for (auto& item : (*part)->named_parameters()) {
      ASSERT_TRUE(reference.contains(item.key())) << item.key();
      EXPECT_TRUE(torch::equal(item.value(), reference[item.key()])) << item.key();
      held += item.key().rfind("embed_tokens.", 0) == 0 && part == &b ? 0 : 1;
    }
  }
  EXPECT_EQ(held, static_cast<int64_t>(reference.size()));  // every tensor once (+ b's embedding)
  EXPECT_TRUE(a->holds_layer(1) && !a->holds_layer(2) && !a->lm_head && b->lm_head);
  EXPECT_THROW(a->forward(torch::zeros({1, 4}, torch::kInt64)), c10::Error);

  auto tokens = torch::randint(0, c.vocab_size, {2, 6}, torch::kInt64);
  ForwardOptions opt;
  opt.with_mtp = true;
  const auto ref = whole->forward(tokens, opt);
  torch::Tensor aux_a, aux_b;
  auto h = a->run_layers(a->embed(tokens), 0, 2, &aux_a);
  h = b->run_layers(h, 2, 2, &aux_b);
  const auto out = b->head_forward(h, b->embed(tokens), true);
  EXPECT_TRUE(torch::allclose(out.logits_BSV, ref.logits_BSV, 1e-6, 1e-6));
  ASSERT_EQ(out.mtp_logits.size(), 1u);
  EXPECT_TRUE(torch::allclose(out.mtp_logits[0], ref.mtp_logits[0], 1e-6, 1e-6));
  const auto aux = aux_a + aux_b + out.aux_loss;
  EXPECT_NEAR(aux.item<double>(), ref.aux_loss.item<double>(), 1e-6);
  EXPECT_GT(ref.aux_loss.item<double>(), 0.0);
}
