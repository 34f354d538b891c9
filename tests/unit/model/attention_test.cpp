// The fused attention paths against the explicit reference (matmul, fp32 softmax over a
// materialised causal mask, matmul): outputs and gradients, with MLA's unequal query/key and
// value head dims. In fp32/fp64 on the CPU the fused path is condensa's blocked kernel
// (cpu_attention.h: 1e-5 in fp32, 1e-12 in fp64, across query blocks, 1 and 2 threads); under
// bf16 autocast it is condensa's kernel in fp32 on the rounded inputs with widened bf16 products,
// at::scaled_dot_product_attention (the flash kernel, v padded) with native ones (cpu_fused.h).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "model/autocast.h"
#include "model/cpu_attention.h"
#include "model/cpu_fused.h"
#include "model/cpu_vec.h"
#include "model/layers.h"

using namespace condensa::model;

namespace {

struct QKV {
  torch::Tensor q, k, v;
};

QKV make_qkv(int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({B, S, H, Dqk}).requires_grad_(),
          torch::randn({B, S, H, Dqk}).requires_grad_(),
          torch::randn({B, S, H, Dv}).requires_grad_()};
}

// Output and input gradients of attention under a fixed upstream gradient.
std::vector<torch::Tensor> run(const QKV& in, bool fused, double scale) {
  for (auto t : {in.q, in.k, in.v}) {
    if (t.grad().defined()) t.mutable_grad() = torch::Tensor();
  }
  auto out = fused ? fused_causal_attention(in.q, in.k, in.v, scale)
                   : causal_attention(in.q, in.k, in.v, scale, 0);
  torch::manual_seed(99);
  auto upstream = torch::randn(out.sizes());
  (out.to(torch::kFloat32) * upstream).sum().backward();
  return {out.detach().to(torch::kFloat32), in.q.grad().clone(), in.k.grad().clone(),
          in.v.grad().clone()};
}

double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

// An MLA module of config c with N(0, 0.3) weights drawn after seeding with `seed`.
MLA random_mla(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  MLA mla(c);
  torch::NoGradGuard g;
  for (auto& p : mla->parameters()) p.normal_(0, 0.3);
  return mla;
}

}  // namespace

TEST(FusedAttention, MatchesExplicitWithUnequalHeadDimsFp32) {
  // MLA: qk = nope + rope = 12, v = 8.
  auto in = make_qkv(2, 37, 3, 12, 8, 1);
  const double scale = 1.0 / std::sqrt(12.0);
  auto ref = run(in, false, scale), got = run(in, true, scale);
  ASSERT_EQ(got[0].sizes(), ref[0].sizes());
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) EXPECT_LT(max_rel_diff(got[i], ref[i]), 1e-5) << names[i];
}

TEST(FusedAttention, MatchesExplicitWithEqualHeadDimsFp32) {
  auto in = make_qkv(1, 64, 2, 16, 16, 2);
  auto ref = run(in, false, 0.3), got = run(in, true, 0.3);
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) EXPECT_LT(max_rel_diff(got[i], ref[i]), 1e-5) << names[i];
}

TEST(FusedAttention, IsCausal) {
  // Changing a later key/value must not change earlier outputs.
  auto in = make_qkv(1, 10, 2, 12, 8, 3);
  torch::NoGradGuard g;
  auto a = fused_causal_attention(in.q, in.k, in.v, 0.25);
  auto k2 = in.k.clone(), v2 = in.v.clone();
  k2.select(1, 7).normal_();
  v2.select(1, 7).normal_();
  auto b = fused_causal_attention(in.q, k2, v2, 0.25);
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 7), b.narrow(1, 0, 7)));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 7, 3), b.narrow(1, 7, 3)));
}

TEST(FusedAttention, MatchesExplicitUnderBf16Autocast) {
  auto in = make_qkv(2, 33, 2, 24, 16, 4);
  AutocastState s = AutocastState::current();
  s.cpu_enabled = true;
  s.cpu_dtype = at::kBFloat16;
  auto fp32 = run(in, false, 0.2);
  // Native bf16 products: LibTorch's flash kernel; widened: condensa's kernel in fp32 on the
  // bf16-rounded inputs, the output and gradients rounded once.
  for (auto policy : {CpuBf16Products::kNative, CpuBf16Products::kWidened}) {
    const bool widened = policy == CpuBf16Products::kWidened;
    SCOPED_TRACE(widened ? "widened" : "native");
    set_cpu_bf16_products(policy);
    std::vector<torch::Tensor> ref, got;
    {
      AutocastScope scope(s);
      EXPECT_EQ(cpu_attention_applies(in.q, in.k, in.v), widened);
      EXPECT_EQ(cpu_attention_applies(in.q.to(torch::kBFloat16), in.k.to(torch::kBFloat16),
                                      in.v.to(torch::kBFloat16)),
                widened);
      ref = run(in, false, 0.2);
      got = run(in, true, 0.2);
    }
    const char* names[] = {"output", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i) EXPECT_LT(max_rel_diff(got[i], ref[i]), 3e-2) << names[i];
    // And the bf16 result is close to the fp32 one (the fused path really ran in bf16 or better);
    // widened, within a bf16 rounding of the output (2^-8) plus the input roundings' effect.
    EXPECT_LT(max_rel_diff(got[0], fp32[0]), widened ? 1e-2 : 3e-2);
    for (int i = 1; i < 4; ++i) EXPECT_LT(max_rel_diff(got[i], fp32[i]), 3e-2) << names[i];
  }
  set_cpu_bf16_products(CpuBf16Products::kAuto);
}

// bf16 attention with widened products against the explicit reference in fp64 on the same
// bf16-rounded inputs, under autocast and for plain bf16 tensors: every output element within
// one bf16 rounding of the exact value (the fp32 kernel's own error is 1e-6 of that).
TEST(CpuAttention, Bf16IsTheRoundedFp32KernelOnRoundedInputs) {
  set_cpu_bf16_products(CpuBf16Products::kWidened);
  auto in = make_qkv(2, 70, 2, 12, 8, 9);
  auto b = [](const torch::Tensor& t) { return t.detach().to(torch::kBFloat16); };
  torch::NoGradGuard g;
  auto exact = causal_attention(b(in.q).to(torch::kFloat64), b(in.k).to(torch::kFloat64),
                                b(in.v).to(torch::kFloat64), 0.3, 0);
  auto bound = exact.abs() * std::ldexp(1.0, -8) + 1e-5 * exact.abs().max();
  auto plain = cpu_causal_attention(b(in.q), b(in.k), b(in.v), 0.3);
  ASSERT_EQ(plain.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(((plain.to(torch::kFloat64) - exact).abs() <= bound).all().item<bool>());
  AutocastState s = AutocastState::current();
  s.cpu_enabled = true;
  s.cpu_dtype = at::kBFloat16;
  AutocastScope scope(s);
  auto autocast = cpu_causal_attention(in.q.detach(), in.k.detach(), in.v.detach(), 0.3);
  EXPECT_TRUE(torch::equal(autocast, plain)) << "autocast rounds fp32 inputs to bf16 first";
  set_cpu_bf16_products(CpuBf16Products::kAuto);
}

TEST(FusedAttention, MlaModuleSdpaMatchesExplicitOutputsAndGradients) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.q_lora_rank = 16;
  c.kv_lora_rank = 12;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_seq_len = 64;
  auto rope = make_rope_tables(c);
  torch::manual_seed(5);
  auto x = torch::randn({2, 24, c.hidden_size});
  std::vector<std::vector<torch::Tensor>> grads;
  std::vector<torch::Tensor> outs;
  for (const char* impl : {"explicit", "sdpa"}) {
    c.attention_impl = impl;
    MLA mla = random_mla(c, 6);
    auto y = mla(x, rope);
    y.pow(2).sum().backward();
    outs.push_back(y.detach());
    std::vector<torch::Tensor> gs;
    for (auto& p : mla->parameters()) gs.push_back(p.grad().clone());
    grads.push_back(gs);
  }
  EXPECT_LT(max_rel_diff(outs[1], outs[0]), 1e-5);
  for (size_t i = 0; i < grads[0].size(); ++i)
    EXPECT_LT(max_rel_diff(grads[1][i], grads[0][i]), 1e-5) << "parameter " << i;
}

TEST(FusedAttention, DecodingWithCacheMatchesFullSequence) {
  // The cache path (start_pos > 0) uses the explicit kernel; the prompt may use the fused one.
  ModelConfig c;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 4;
  c.max_seq_len = 32;
  auto rope = make_rope_tables(c);
  MLA mla = random_mla(c, 7);
  torch::NoGradGuard g;
  auto x = torch::randn({1, 9, c.hidden_size});
  auto full = mla(x, rope);
  MLACache cache;
  auto first = mla(x.narrow(1, 0, 6), rope, &cache, 0);
  auto rest = mla(x.narrow(1, 6, 3), rope, &cache, 6);
  EXPECT_LT(max_rel_diff(torch::cat({first, rest}, 1), full), 1e-5);
}

// condensa's CPU kernel on several query blocks (150 = 64 + 64 + 22 rows), a strided v (a split
// view, as in MLA), fp32 and fp64, one and two threads: outputs and q/k/v gradients.
// Both ways of running the products: the BLAS's gemm on pointers (where the libraries export
// one, as LibTorch's x86-64 builds do) and at::mm_out; and both ways of getting the
// probabilities in backward: kept by forward, or recomputed from the log-sum-exp.
TEST(CpuAttention, MatchesExplicitAcrossBlocksDtypesAndThreads) {
  const int saved_threads = at::get_num_threads();
  for (auto probs : {CpuAttentionProbs::kKeep, CpuAttentionProbs::kRecompute})
    for (bool aten_products : {false, true}) {
      // The row loops' four-float build with the at::mm_out products, the eight-float (AVX2)
      // build, where the CPU has it, with the BLAS's.
      g_cpu_vec_force_narrow = aten_products;
      cpu_attention_set_probs(probs);
      EXPECT_EQ(cpu_attention_keeps_probs(150, 12, 8), probs == CpuAttentionProbs::kKeep);
      cpu_attention_force_aten_products(aten_products);
      if (aten_products) {
        EXPECT_FALSE(cpu_attention_uses_blas_gemm()) << "forced off";
      }
      for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
        for (int threads : {1, 2}) {
          at::set_num_threads(threads);
          torch::manual_seed(11);
          auto q = torch::randn({2, 150, 3, 12}, dtype), k = torch::randn({2, 150, 3, 12}, dtype);
          auto kv = torch::randn({2, 150, 3, 20}, dtype);
          auto upstream = torch::randn({2, 150, 3, 8}, dtype);
          auto grads = [&](bool fused) {
            auto qg = q.clone().requires_grad_(), kg = k.clone().requires_grad_();
            auto kvg = kv.clone().requires_grad_();
            auto v = kvg.narrow(-1, 12, 8);
            EXPECT_TRUE(!fused || cpu_attention_applies(qg, kg, v));
            auto out = fused ? cpu_causal_attention(qg, kg, v, 0.29)
                             : causal_attention(qg, kg, v, 0.29, 0);
            (out * upstream).sum().backward();
            return std::vector<torch::Tensor>{out.detach(), qg.grad(), kg.grad(), kvg.grad()};
          };
          auto ref = grads(false), got = grads(true);
          const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-5;
          const char* names[] = {"output", "dq", "dk", "dv"};
          for (int i = 0; i < 4; ++i)
            EXPECT_LT(max_rel_diff(got[i], ref[i]), tol)
                << names[i] << " " << dtype << " threads " << threads << " aten " << aten_products
                << " kept probabilities " << (probs == CpuAttentionProbs::kKeep);
        }
      }
    }
  cpu_attention_set_probs(CpuAttentionProbs::kBySize);
  g_cpu_vec_force_narrow = false;
  cpu_attention_force_aten_products(false);
  at::set_num_threads(saved_threads);
}

// By size, the probabilities (S (S + 64) / 2 per head in 64-row blocks) are kept while they are
// no larger than q, k, v and the output (2 S (Dqk + Dv) per head): S <= 4 (Dqk + Dv) - 64.
TEST(CpuAttention, KeepsTheProbabilitiesOnlyWhileNoLargerThanQKVAndOutput) {
  cpu_attention_set_probs(CpuAttentionProbs::kBySize);
  EXPECT_TRUE(cpu_attention_keeps_probs(512, 96, 64));  // the d512 bench shape
  EXPECT_TRUE(cpu_attention_keeps_probs(576, 96, 64));  // equal sizes
  EXPECT_FALSE(cpu_attention_keeps_probs(577, 96, 64));
  EXPECT_FALSE(cpu_attention_keeps_probs(4096, 192, 128));  // DeepSeek-V3's pre-training length
  EXPECT_FALSE(cpu_attention_keeps_probs(150, 12, 8));      // the test shape above
}

TEST(CpuAttention, UsesTheBlasGemmOfLibTorchsX86Build) {
#if defined(__x86_64__)
  EXPECT_TRUE(cpu_attention_uses_blas_gemm())
      << "no sgemm_/dgemm_ in the loaded libraries: the kernel falls back to at::mm_out";
#else
  GTEST_SKIP() << "only LibTorch's x86-64 builds are known to export the BLAS";
#endif
}

TEST(CpuAttention, RejectsMixedDtypesAndShapesWithTheirValues) {
  auto q = torch::randn({1, 5, 2, 4}), v = torch::randn({1, 5, 2, 3});
  try {
    cpu_causal_attention(q, q.to(torch::kFloat64), v, 0.5);
    FAIL() << "mixed dtypes accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Float, Double, Float"), std::string::npos) << e.what();
  }
  try {
    cpu_causal_attention(q, q, torch::randn({1, 6, 2, 3}), 0.5);
    FAIL() << "mismatched v accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("v [1, 6, 2, 3]"), std::string::npos) << e.what();
  }
}
