// Parameter and FLOP accounting (model/accounting.h) against an allocated model: the counts
// come from the config alone, the references from the tensors a model actually holds.
#include "model/accounting.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "common/matmul_peak.h"
#include "model/moe/experts.h"
#include "model/transformer.h"
#include "tests/support/test_util.h"
#include "trainer/config/config.h"

using namespace condensa::model;

namespace {

ModelConfig small(int64_t mtp_depth, int64_t q_lora_rank) {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.num_layers = 3;
  c.num_dense_layers = 1;
  c.intermediate_size = 24;
  c.num_heads = 2;
  c.q_lora_rank = q_lora_rank;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.num_routed_experts = 4;
  c.num_shared_experts = 1;
  c.top_k = 2;
  c.moe_intermediate_size = 8;
  c.max_seq_len = 32;
  c.mtp_depth = mtp_depth;
  return c;
}

// Matmul weights one token passes through in one forward, counted from the allocated model:
// every parameter of 2 or more dims except the embedding (a lookup), routed experts scaled by
// top_k / num_routed_experts, and the LM head once more per MTP module (the head is shared).
double activated_matmul_params(Transformer& model, const ModelConfig& c) {
  std::set<const void*> routed;
  for (const auto& m : model->modules()) {
    if (auto* experts = m->as<GroupedExpertsImpl>()) {
      for (const auto& p : experts->parameters()) routed.insert(p.unsafeGetTensorImpl());
    }
  }
  double n = 0;
  for (const auto& item : model->named_parameters()) {
    const auto& p = item.value();
    if (p.dim() < 2 || item.key() == "embed_tokens.weight") continue;
    const bool is_routed = routed.count(p.unsafeGetTensorImpl()) > 0;
    n += is_routed ? p.numel() * static_cast<double>(c.top_k) / c.num_routed_experts : p.numel();
  }
  return n + c.mtp_depth * model->lm_head->weight.numel();
}

}  // namespace

TEST(ParamCount, MatchesAllocatedModel) {
  for (int64_t q_lora_rank : {0, 8}) {
    auto c = small(/*mtp_depth=*/2, q_lora_rank);
    Transformer m(c);
    double main = 0, mtp = 0;
    for (auto& p : m->named_parameters())
      (p.key().rfind("mtp.", 0) == 0 ? mtp : main) += p.value().numel();
    auto counts = count_parameters(c);
    EXPECT_DOUBLE_EQ(counts.total, main) << "q_lora_rank " << q_lora_rank;
    EXPECT_DOUBLE_EQ(counts.mtp_total, mtp) << "q_lora_rank " << q_lora_rank;
    // Active = total minus the routed experts a token skips (2 MoE layers, 4 - 2 skipped).
    EXPECT_DOUBLE_EQ(counts.active, main - 2 * (4 - 2) * 3.0 * 16 * 8);
  }
}

TEST(ParamCount, PublishedDeepSeekV3Is671BTotal37BActive) {
  auto cfg = condensa::trainer::load_config(
      condensa::testing::source_path("configs/deepseek-v3-671b.yaml"));
  auto c = count_parameters(cfg.model);
  EXPECT_NEAR(c.total / 1e9, 671.0, 1.0);
  EXPECT_NEAR(c.active / 1e9, 37.5, 0.6);
  EXPECT_NEAR(c.mtp_total / 1e9, 11.5, 0.6);  // the released checkpoint's extra MTP weights
  auto lite = condensa::trainer::load_config(
      condensa::testing::source_path("configs/deepseek-v2-lite-16b.yaml"));
  auto l = count_parameters(lite.model);
  EXPECT_NEAR(l.total / 1e9, 15.7, 0.3);
  EXPECT_NEAR(l.active / 1e9, 2.7, 0.2);
}

TEST(TrainingFlops, SixTimesActivatedMatmulsPlusCausalAttention) {
  for (int64_t mtp_depth : {0, 1, 2}) {
    for (int64_t q_lora_rank : {0, 8}) {
      auto c = small(mtp_depth, q_lora_rank);
      Transformer m(c);
      for (int64_t seq_len : {1, 17, 32}) {
        // Scores (q.k, qk dims) and values (p.v, v dims) per head: seq_len / 2 keys on
        // average per query, 2 FLOPs per multiply-add, x3 for forward + backward.
        const double attention = (c.num_layers + c.mtp_depth) * c.num_heads *
                                 (c.qk_head_dim() * seq_len / 2.0 + c.v_head_dim * seq_len / 2.0) *
                                 2 * 3;
        const double want = 6.0 * activated_matmul_params(m, c) + attention;
        EXPECT_NEAR(training_flops_per_token(c, seq_len), want, 1e-9 * want)
            << "mtp " << mtp_depth << ", q_lora_rank " << q_lora_rank << ", seq " << seq_len;
      }
    }
  }
}

TEST(TrainingFlops, GrowsWithEveryActivatedTerm) {
  const auto base = small(1, 8);
  const double f = training_flops_per_token(base, 16);
  auto more_experts = base;
  more_experts.num_routed_experts = 8;  // router grows; routed experts per token do not
  auto more_top_k = base;
  more_top_k.top_k = 3;
  auto longer = base;
  EXPECT_GT(training_flops_per_token(more_experts, 16), f);
  EXPECT_NEAR(training_flops_per_token(more_top_k, 16) - f,
              6.0 * 3 * 16 * 8 * (base.num_layers - base.num_dense_layers + base.mtp_depth), 1e-6);
  EXPECT_GT(training_flops_per_token(longer, 32), f);
}

// MFU's denominator is the fastest of the three operand layouts, each of them timed: a CPU
// without bf16 units runs LibTorch's bf16 A^T*B about 10x faster than A*B, and an A*B-only peak
// put a bf16 run's MFU at 206%.
TEST(MatmulPeak, IsTheFastestOfTheThreeLayouts) {
  const condensa::MatmulRates r = condensa::measure_matmul_layouts(torch::kFloat32, 64, 0.03);
  EXPECT_GT(r.nn, 0);
  EXPECT_GT(r.nt, 0);
  EXPECT_GT(r.tn, 0);
  EXPECT_EQ(r.best(), std::max({r.nn, r.nt, r.tn}));
  for (int fastest = 0; fastest < 3; ++fastest) {
    condensa::MatmulRates s;
    s.nn = fastest == 0 ? 3 : 1;
    s.nt = fastest == 1 ? 3 : 2;
    s.tn = fastest == 2 ? 3 : 1;
    EXPECT_EQ(s.best(), 3) << "fastest layout " << fastest;
  }
}

// The instruction peak `bench matmul` prints: each loop runs exactly the instructions its rate
// counts (the sum every lane must reach), on the instruction sets this CPU has.
TEST(InstructionPeak, LoopsRunTheInstructionsTheirRatesCount) {
  const condensa::InstructionPeak p = condensa::measure_instruction_peak(0.05);
  EXPECT_TRUE(p.fp32_exact);
  EXPECT_TRUE(p.bf16_exact);
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    EXPECT_STREQ(p.fp32_isa, "AVX-512");
    EXPECT_GT(p.fp32_fma, 0);
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_STREQ(p.fp32_isa, "AVX2");
    EXPECT_GT(p.fp32_fma, 0);
  }
  EXPECT_EQ(p.bf16_dot > 0, static_cast<bool>(__builtin_cpu_supports("avx512bf16")));
#else
  EXPECT_EQ(p.fp32_fma, 0);
  EXPECT_EQ(p.bf16_dot, 0);
#endif
}
