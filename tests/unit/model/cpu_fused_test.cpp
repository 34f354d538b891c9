// The fused CPU kernels (model/cpu_fused.h) against the ATen compositions they replace:
// RMSNorm (rms_norm_reference), the query's rope tail (split, apply_rope, cat) and MLA's key
// heads (cat of k_nope with the rotated shared rope key expanded over heads). Outputs and every
// input gradient, fp32 to 1e-5 and fp64 to 1e-12, on strided inputs like MLA's split views, with
// 1 and 2 threads, and at a start position other than 0. A model-level test checks that MLA's
// output and parameter gradients do not depend on which path ran.
#include "model/cpu_fused.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <gtest/gtest.h>

#include <iterator>
#include <limits>

#include "model/autocast.h"
#include "model/cpu_vec.h"
#include "model/layers.h"
#include "model/moe/dispatcher.h"

using namespace condensa::model;

namespace {

double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

double tolerance(torch::ScalarType t) { return t == torch::kFloat64 ? 1e-12 : 1e-5; }

// Gradients of sum(f(inputs) * upstream) with respect to every input, plus the output.
template <typename F>
std::vector<torch::Tensor> output_and_grads(F f, std::vector<torch::Tensor> inputs) {
  for (auto& t : inputs) t = t.detach().clone().requires_grad_();
  auto out = f(inputs);
  torch::manual_seed(77);
  auto upstream = torch::randn(out.sizes(), out.options());
  (out * upstream).sum().backward();
  std::vector<torch::Tensor> r = {out.detach()};
  for (auto& t : inputs) r.push_back(t.grad());
  return r;
}

void expect_close(const std::vector<torch::Tensor>& got,
                  const std::vector<torch::Tensor>& ref,
                  double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].sizes(), ref[i].sizes()) << what << " tensor " << i;
    EXPECT_LT(max_rel_diff(got[i], ref[i]), tol) << what << (i == 0 ? " output" : " grad ") << i;
  }
}

RopeTables tables(int64_t R, int64_t max_seq) {
  ModelConfig c;
  c.qk_rope_head_dim = R;
  c.max_seq_len = max_seq;
  return make_rope_tables(c);
}

// The ATen compositions the rope kernels replace: the query with its last R dims rotated, and
// the key heads cat(k_nope, rope(k_rope) for every head).
torch::Tensor rope_tail_reference(const torch::Tensor& q, const RopeTables& rope, int64_t start) {
  const int64_t R = rope.cos_SR.size(1) * 2, N = q.size(-1) - R;
  auto parts = q.split_with_sizes({N, R}, -1);
  return torch::cat({parts[0], apply_rope(parts[1], rope, start)}, -1);
}

torch::Tensor mla_key_reference(const torch::Tensor& k_nope,
                                const torch::Tensor& k_rope,
                                const RopeTables& rope) {
  const int64_t B = k_nope.size(0), S = k_nope.size(1), H = k_nope.size(2), R = k_rope.size(2);
  auto kr = apply_rope(k_rope.unsqueeze(2), rope, 0).squeeze(2);
  return torch::cat({k_nope, kr.unsqueeze(2).expand({B, S, H, R})}, -1);
}

class CpuFused : public ::testing::TestWithParam<std::tuple<torch::ScalarType, int>> {
 protected:
  void SetUp() override {
    saved_threads_ = at::get_num_threads();
    at::set_num_threads(std::get<1>(GetParam()));
  }
  void TearDown() override { at::set_num_threads(saved_threads_); }
  torch::ScalarType dtype() const { return std::get<0>(GetParam()); }
  int saved_threads_ = 1;
};

}  // namespace

TEST_P(CpuFused, RMSNormMatchesReferenceOnAStridedInput) {
  torch::manual_seed(3);
  // The kv latent is a split view: 37 rows of 24 within rows of 30.
  auto base = torch::randn({2, 37, 30}, dtype()) * 3;
  auto x = base.narrow(-1, 0, 24);
  auto w = torch::randn({24}, dtype());
  const double eps = 1e-6;
  auto ref = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return rms_norm_reference(in[0], in[1], eps); },
      {x, w});
  auto got = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return fused_rms_norm(in[0], in[1], eps); },
      {x, w});
  expect_close(got, ref, tolerance(dtype()), "rms_norm");
  // The module dispatches to the fused kernel for this dtype and still matches.
  RMSNorm norm(24, eps);
  norm->to(dtype());
  {
    torch::NoGradGuard g;
    norm->weight.copy_(w);
  }
  EXPECT_LT(max_rel_diff(norm(x).detach(), ref[0]), tolerance(dtype()));
}

TEST_P(CpuFused, RopeTailMatchesSplitRopeCat) {
  const int64_t B = 2, S = 19, H = 3, N = 10, R = 8, start = 5;
  auto rope = tables(R, 64);
  torch::manual_seed(4);
  auto q = torch::randn({B, S, H, N + R}, dtype());
  auto ref = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return rope_tail_reference(in[0], rope, start); },
      {q});
  auto cos = rope.cos_SR.narrow(0, start, S).to(dtype()).contiguous();
  auto sin = rope.sin_SR.narrow(0, start, S).to(dtype()).contiguous();
  auto got = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return fused_rope_tail(in[0], cos, sin); }, {q});
  expect_close(got, ref, tolerance(dtype()), "rope_tail");
}

TEST_P(CpuFused, MLAKeyMatchesCatOfNopeAndExpandedRope) {
  const int64_t B = 2, S = 23, H = 4, N = 6, Dv = 5, R = 4, C = 7;
  auto rope = tables(R, 32);
  torch::manual_seed(5);
  // Strided like MLA: k_nope is split from [.., N + Dv], k_rope from [.., C + R].
  auto kv_up = torch::randn({B, S, H, N + Dv}, dtype());
  auto kv_a = torch::randn({B, S, C + R}, dtype());
  auto k_nope = kv_up.narrow(-1, 0, N), k_rope = kv_a.narrow(-1, C, R);
  auto ref = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return mla_key_reference(in[0], in[1], rope); },
      {k_nope, k_rope});
  auto cos = rope.cos_SR.narrow(0, 0, S).to(dtype()).contiguous();
  auto sin = rope.sin_SR.narrow(0, 0, S).to(dtype()).contiguous();
  auto got = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return fused_mla_key(in[0], in[1], cos, sin); },
      {k_nope, k_rope});
  expect_close(got, ref, tolerance(dtype()), "mla_key");
}

INSTANTIATE_TEST_SUITE_P(DtypesAndThreads,
                         CpuFused,
                         ::testing::Combine(::testing::Values(torch::kFloat32, torch::kFloat64),
                                            ::testing::Values(1, 2)));

TEST(CpuFusedErrors, NameTheOffendingShapeOrDtype) {
  auto w = torch::ones({8});
  try {
    fused_rms_norm(torch::randn({3, 7}), w, 1e-6);
    FAIL() << "mismatched weight accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the input's last dim 7"),
              std::string::npos)
        << e.what();
  }
  try {
    fused_rms_norm(torch::randn({3, 8}).to(torch::kBFloat16), w, 1e-6);
    FAIL() << "bf16 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("BFloat16"), std::string::npos) << e.what();
  }
  auto cos = torch::ones({4, 2}), sin = torch::ones({4, 2});
  try {
    fused_rope_tail(torch::randn({1, 5, 2, 8}), cos, sin);
    FAIL() << "tables of the wrong length accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[S=5, R/2]"), std::string::npos) << e.what();
  }
}

// MLA's output and every parameter gradient are the same whichever path assembles the heads:
// the fused one runs for fp32 without a cache, the reference one under a (fresh) cache.
TEST(CpuFusedMLA, ModuleOutputAndGradientsMatchTheReferencePath) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_seq_len = 32;
  c.attention_impl = "explicit";  // the same attention for both paths
  torch::manual_seed(6);
  MLA mla(c);
  {
    torch::NoGradGuard g;
    for (auto& p : mla->parameters()) p.normal_(0, 0.3);
  }
  auto rope = make_rope_tables(c);
  auto x = torch::randn({2, 11, 32});
  auto upstream = torch::randn({2, 11, 32});
  auto grads = [&](bool use_cache) {
    mla->zero_grad();
    MLACache cache;
    auto y = mla->forward(x, rope, use_cache ? &cache : nullptr, 0);
    (y * upstream).sum().backward();
    std::vector<torch::Tensor> r = {y.detach()};
    for (auto& p : mla->parameters()) r.push_back(p.grad().clone());
    return r;
  };
  auto ref = grads(true), got = grads(false);
  expect_close(got, ref, 1e-5, "mla");
}

// Both fp32 builds: eight-float vectors (AVX2 + FMA, where the CPU has them) and four-float.
TEST_P(CpuFused, SwigluAndItsGradientsMatchSiluTimesU) {
  torch::manual_seed(8);
  // 4099 elements: whole four- and eight-element vectors and a scalar tail; values past +-20.
  auto g = torch::randn({4099}, dtype()) * 6, u = torch::randn({4099}, dtype());
  auto ref = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return torch::silu(in[0]) * in[1]; }, {g, u});
  // The reference gradients are those of sum(h * upstream): recompute with that upstream.
  torch::manual_seed(77);
  auto upstream = torch::randn({4099}, dtype());
  for (bool narrow : {false, true}) {
    g_cpu_vec_force_narrow = narrow;
    auto h = fused_swiglu(g, u);
    auto [dg, du] = fused_swiglu_backward(g, u, upstream);
    expect_close({h, dg, du}, ref, tolerance(dtype()) * 2,
                 narrow ? "swiglu, four-float" : "swiglu");
  }
  g_cpu_vec_force_narrow = false;
}

TEST_P(CpuFused, MLPMatchesItsLinearReference) {
  torch::manual_seed(9);
  MLP mlp(16, 40);
  mlp->to(dtype());
  auto x = torch::randn({3, 7, 16}, dtype());
  auto upstream = torch::randn({3, 7, 16}, dtype());
  auto run = [&](bool reference) {
    mlp->zero_grad();
    auto xg = x.clone().requires_grad_();
    auto y = reference ? mlp->mlp_reference(xg) : mlp->forward(xg);
    (y * upstream).sum().backward();
    std::vector<torch::Tensor> r = {y.detach(), xg.grad()};
    for (auto& p : mlp->parameters()) r.push_back(p.grad().clone());
    return r;
  };
  auto ref = run(true), got = run(false);
  expect_close(got, ref, tolerance(dtype()) * 2, "mlp");
}

// The MoE combine against dispatcher.cpp's composition: 203 rows (many tokens take several
// rows, some none), D = 70 (eight-lane blocks and a tail; 2 threads split the columns), fp32
// router probabilities under an fp64 y as well. Output, dy and dprob.
TEST_P(CpuFused, WeightedCombineMatchesIndexAddOfWeightedRows) {
  torch::manual_seed(10);
  const int64_t N = 203, D = 70, T = 90;
  auto y = torch::randn({N, D}, dtype());
  auto token = torch::randint(0, T - 5, {N}, torch::kInt64);  // the last 5 tokens get no row
  auto prob = torch::rand({N}, torch::kFloat32);
  auto combine = [&](bool reference) {
    return [&, reference](const std::vector<torch::Tensor>& in) {
      return reference ? condensa::model::unpermute_weighted_reference(in[0], token, in[1], T)
                       : fused_weighted_combine(in[0], token, in[1], T);
    };
  };
  auto ref = output_and_grads(combine(true), {y, prob});
  auto got = output_and_grads(combine(false), {y, prob});
  ASSERT_EQ(got[2].scalar_type(), torch::kFloat32) << "dprob must come back in prob's dtype";
  // The reference computes y * prob in y's dtype; fp32 prob limits fp64's agreement on dprob.
  expect_close({got[0], got[1]}, {ref[0], ref[1]}, tolerance(dtype()) * 2, "combine");
  expect_close({got[2]}, {ref[2]}, 1e-5, "combine dprob");
  EXPECT_EQ(got[0].slice(0, T - 5).abs().max().item<double>(), 0.0) << "tokens without rows";
  // unpermute_weighted takes the fused path here.
  auto via = condensa::model::unpermute_weighted(y, token, prob, T);
  EXPECT_LT(max_rel_diff(via, ref[0]), tolerance(dtype()) * 2);
}

TEST(CpuFusedErrors, WeightedCombineNamesTheBadTokenIndex) {
  try {
    fused_weighted_combine(torch::randn({3, 4}), torch::tensor({0, 7, 1}, torch::kInt64),
                           torch::rand({3}), 5);
    FAIL() << "token 7 of 5 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("token index 7 is outside [0, 5)"), std::string::npos)
        << e.what();
  }
}

// bf16 SwiGLU (CPU autocast): the fp32 computation rounded once to bf16, bit for bit what
// rounding the fp32 kernel's results with c10's round-to-nearest-even gives, both vector widths;
// lengths with partial conversion chunks; infinities, NaN and values past bf16's range.
TEST(CpuFusedBf16, SwigluRoundsTheFp32ResultOnce) {
  torch::manual_seed(12);
  for (int64_t n : {4099, 300, 7}) {
    auto g = (torch::randn({n}) * 6).to(torch::kBFloat16);
    auto u = torch::randn({n}).to(torch::kBFloat16);
    auto dh = torch::randn({n}).to(torch::kBFloat16);
    if (n > 5) {
      g[0] = std::numeric_limits<float>::quiet_NaN();
      g[1] = std::numeric_limits<float>::infinity();
      u[2] = 3e38f;  // times g: past bf16's largest finite value, rounds to infinity
      g[2] = 4.0f;
      dh[3] = -std::numeric_limits<float>::infinity();
    }
    for (bool narrow : {false, true}) {
      SCOPED_TRACE(std::string(narrow ? "four-float" : "eight-float") + ", n " + std::to_string(n));
      g_cpu_vec_force_narrow = narrow;
      const auto gf = g.to(torch::kFloat32), uf = u.to(torch::kFloat32);
      const auto dhf = dh.to(torch::kFloat32);
      auto h = fused_swiglu(g, u);
      ASSERT_EQ(h.scalar_type(), torch::kBFloat16);
      const auto want_h = fused_swiglu(gf, uf).to(torch::kBFloat16);
      EXPECT_TRUE(torch::equal(h.isnan(), want_h.isnan()));
      EXPECT_TRUE(torch::equal(h.nan_to_num(0, 1e30, -1e30), want_h.nan_to_num(0, 1e30, -1e30)));
      auto [dg, du] = fused_swiglu_backward(g, u, dh);
      auto [want_dg, want_du] = fused_swiglu_backward(gf, uf, dhf);
      for (auto [got, want] : {std::pair{dg, want_dg.to(torch::kBFloat16)},
                               std::pair{du, want_du.to(torch::kBFloat16)}}) {
        ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
        EXPECT_TRUE(torch::equal(got.isnan(), want.isnan()));
        EXPECT_TRUE(torch::equal(got.nan_to_num(0, 1e30, -1e30), want.nan_to_num(0, 1e30, -1e30)));
      }
      // Widened: the same bf16 results, returned as fp32 bit for bit (NaN bits included).
      auto bits = [](const torch::Tensor& t) { return t.view(torch::kInt32); };
      auto hw = fused_swiglu(g, u, /*widened=*/true);
      ASSERT_EQ(hw.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(bits(hw), bits(h.to(torch::kFloat32))));
      auto [dgw, duw] = fused_swiglu_backward(g, u, dh, /*widened=*/true);
      ASSERT_EQ(dgw.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(bits(dgw), bits(dg.to(torch::kFloat32))));
      EXPECT_TRUE(torch::equal(bits(duw), bits(du.to(torch::kFloat32))));
      // fp32 inputs ignore `widened`.
      EXPECT_TRUE(torch::equal(bits(fused_swiglu(gf, uf, true)), bits(fused_swiglu(gf, uf))));
      // And against ATen's fp32 silu: within one bf16 rounding (2^-8 relative).
      auto ref = (torch::silu(gf) * uf).slice(0, 4);
      auto err = (h.slice(0, 4).to(torch::kFloat32) - ref).abs();
      EXPECT_TRUE((err <= ref.abs() * (1.0 / 256) * (1 + 1e-5)).all().item<bool>());
    }
  }
  g_cpu_vec_force_narrow = false;
}

// The dense MLP under CPU bf16 autocast takes the experts' function too; it agrees with the
// Linear composition under the same autocast to bf16 tolerance, output and every gradient.
TEST(CpuFusedBf16, MLPUnderAutocastMatchesItsLinearReference) {
  torch::manual_seed(13);
  MLP mlp(16, 40);
  auto x = torch::randn({3, 7, 16});
  auto upstream = torch::randn({3, 7, 16});
  AutocastState ac = AutocastState::current();
  ac.cpu_enabled = true;
  ac.cpu_dtype = at::kBFloat16;
  auto run = [&](bool reference) {
    mlp->zero_grad();
    auto xg = x.clone().requires_grad_();
    torch::Tensor y;
    {
      AutocastScope scope(ac);
      y = reference ? mlp->mlp_reference(xg) : mlp->forward(xg);
    }
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    (y.to(torch::kFloat32) * upstream).sum().backward();
    std::vector<torch::Tensor> r = {y.detach().to(torch::kFloat32), xg.grad()};
    for (auto& p : mlp->parameters()) {
      EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
      r.push_back(p.grad().clone());
    }
    return r;
  };
  auto ref = run(true), got = run(false);
  expect_close(got, ref, 2e-2, "mlp, bf16 autocast");
}

// dst += src with the bf16 -> fp32 conversion fused: bit for bit ATen's fp32 sum, on a length
// with partial chunks and across parallel tasks; other dtype pairs and strided operands take
// add_.
TEST(CpuFusedBf16, AddConvertedEqualsTheFp32Sum) {
  torch::manual_seed(14);
  for (int64_t n : {7, 300, 40000}) {
    auto dst = torch::randn({n});
    auto src = torch::randn({n}).to(torch::kBFloat16);
    auto want = dst + src.to(torch::kFloat32);
    add_converted(dst, src);
    EXPECT_TRUE(torch::equal(dst, want)) << "n " << n;
  }
  auto dst = torch::randn({6, 5}), src = torch::randn({5, 6}).to(torch::kBFloat16).t();
  auto want = dst + src.to(torch::kFloat32);
  add_converted(dst, src);
  EXPECT_TRUE(torch::equal(dst, want)) << "strided source";
  auto dd = torch::randn({9}, torch::kFloat64), sd = torch::randn({9}, torch::kFloat64);
  auto want_d = dd + sd;
  add_converted(dd, sd);
  EXPECT_TRUE(torch::equal(dd, want_d)) << "fp64";
}

// The rope heads in bf16 (CPU autocast) with fp32 tables against the ATen composition in bf16
// (apply_rope computes in fp32 and rounds once): the query's rope tail bit for bit, output and
// gradient; the key heads' output and k_nope gradient bit for bit. The k_rope gradient is the
// fp32 kernel's rounded once (the fused backward sums the heads in fp32; the composition rounds
// that sum to bf16 before rotating it, so the two differ by bf16 roundings, which cancellation
// in the rotation can make large next to a small entry). bf16 tables are an error naming the
// dtype wanted.
TEST(CpuFusedBf16, RopeHeadsMatchTheCompositionInBf16) {
  const int64_t B = 2, S = 19, H = 4, N = 6, Dv = 5, R = 8, C = 7;
  auto rope = tables(R, 32);
  const auto bf = torch::kBFloat16;
  auto cos = rope.cos_SR.narrow(0, 0, S).to(torch::kFloat32).contiguous();
  auto sin = rope.sin_SR.narrow(0, 0, S).to(torch::kFloat32).contiguous();
  torch::manual_seed(15);
  auto q = torch::randn({B, S, H, N + R}).to(bf);
  auto ref_q = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return rope_tail_reference(in[0], rope, 0); },
      {q});
  auto got_q = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return fused_rope_tail(in[0], cos, sin); }, {q});
  ASSERT_EQ(got_q[0].scalar_type(), bf);
  EXPECT_TRUE(torch::equal(got_q[0], ref_q[0])) << "rope tail output";
  EXPECT_TRUE(torch::equal(got_q[1], ref_q[1])) << "rope tail gradient";

  auto kv_up = torch::randn({B, S, H, N + Dv}).to(bf);
  auto kv_a = torch::randn({B, S, C + R}).to(bf);
  auto k_nope = kv_up.narrow(-1, 0, N), k_rope = kv_a.narrow(-1, C, R);
  auto ref_k = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return mla_key_reference(in[0], in[1], rope); },
      {k_nope, k_rope});
  auto got_k = output_and_grads(
      [&](const std::vector<torch::Tensor>& in) { return fused_mla_key(in[0], in[1], cos, sin); },
      {k_nope, k_rope});
  ASSERT_EQ(got_k[0].scalar_type(), bf);
  EXPECT_TRUE(torch::equal(got_k[0], ref_k[0])) << "key heads output";
  EXPECT_TRUE(torch::equal(got_k[1], ref_k[1])) << "k_nope gradient";
  // The k_rope gradient: the fp32 kernel's on the same (bf16-valued) inputs and upstream
  // gradient, rounded once.
  const auto f32 = torch::kFloat32;
  auto upstream = torch::randn({B, S, H, N + R}).to(bf);
  auto kr = k_rope.detach().clone().requires_grad_();
  (fused_mla_key(k_nope, kr, cos, sin).to(f32) * upstream.to(f32)).sum().backward();
  auto kr32 = k_rope.to(f32).requires_grad_();
  (fused_mla_key(k_nope.to(f32), kr32, cos, sin) * upstream.to(f32)).sum().backward();
  EXPECT_TRUE(torch::equal(kr.grad(), kr32.grad().to(bf))) << "k_rope gradient";
  EXPECT_LT(max_rel_diff(got_k[2].to(f32), ref_k[2].to(f32)), 1.0 / 32) << "k_rope gradient";
  try {
    fused_rope_tail(q, cos.to(bf), sin.to(bf));
    FAIL() << "bf16 tables accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Float for a BFloat16 input"), std::string::npos)
        << e.what();
  }
}

namespace {

// Sets the bf16 products policy for a scope; back to kAuto after.
struct Bf16ProductsScope {
  explicit Bf16ProductsScope(CpuBf16Products p) { set_cpu_bf16_products(p); }
  ~Bf16ProductsScope() { set_cpu_bf16_products(CpuBf16Products::kAuto); }
};

// Each element of got within one bf16 rounding of the exact value ref (fp64): 2^-8 |ref|, plus
// `slack` times ref's largest magnitude for the fp32 accumulation.
void expect_one_rounding(const torch::Tensor& got,
                         const torch::Tensor& ref,
                         double slack,
                         const std::string& what) {
  auto err = (got.to(torch::kFloat64) - ref).abs();
  auto bound = ref.abs() * std::ldexp(1.0, -8) + slack * ref.abs().max();
  EXPECT_TRUE((err <= bound).all().item<bool>())
      << what << ": worst excess " << (err - bound).max().item<double>();
}

}  // namespace

TEST(CpuBf16Products, PolicyParsesAndAutoWidensWithoutAmx) {
  EXPECT_EQ(parse_cpu_bf16_products("auto"), CpuBf16Products::kAuto);
  EXPECT_EQ(parse_cpu_bf16_products("native"), CpuBf16Products::kNative);
  EXPECT_EQ(parse_cpu_bf16_products("widened"), CpuBf16Products::kWidened);
  try {
    parse_cpu_bf16_products("fast");
    FAIL() << "'fast' accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'fast'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(cpu_bf16_products_widened(CpuBf16Products::kNative));
  EXPECT_TRUE(cpu_bf16_products_widened(CpuBf16Products::kWidened));
#if defined(__x86_64__)
  const auto caps = at::cpu::get_cpu_capabilities();
  const bool amx = caps.count("amx_bf16") && caps.at("amx_bf16").toBool() && at::cpu::init_amx();
  EXPECT_EQ(cpu_bf16_products_widened(CpuBf16Products::kAuto), !amx);
#endif
  {
    Bf16ProductsScope scope(CpuBf16Products::kWidened);
    EXPECT_TRUE(cpu_widens_bf16(torch::zeros({2}, torch::kBFloat16)));
    EXPECT_FALSE(cpu_widens_bf16(torch::zeros({2})));
  }
  Bf16ProductsScope scope(CpuBf16Products::kNative);
  EXPECT_FALSE(cpu_widens_bf16(torch::zeros({2}, torch::kBFloat16)));
}

// The one-pass rounding and widening is bit for bit ATen's two casts: ties to even, NaN,
// infinities, subnormals, values that round up to infinity, bf16 inputs, non-contiguous inputs,
// and lengths with a partial parallel task.
TEST(CpuBf16Products, WidenedIsBitForBitTheTwoCasts) {
  torch::manual_seed(32);
  auto x = torch::randn({70001}) * 100;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::max(),
                            1e-40f,
                            -1e-42f,
                            1.0f + std::ldexp(1.0f, -8),      // a tie: stays 1
                            1.0f + 3 * std::ldexp(1.0f, -8),  // a tie: rounds up to even
                            0.0f,
                            -0.0f};
  for (size_t i = 0; i < std::size(specials); ++i) x[i] = specials[i];
  // Bit for bit, NaN for NaN (ATen's NaN bits vary with its conversion path).
  auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
    if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
    auto nan = a.isnan();
    return torch::equal(nan, b.isnan()) &&
           torch::equal(a.masked_fill(nan, 0).view(torch::kInt32),
                        b.masked_fill(nan, 0).contiguous().view(torch::kInt32));
  };
  auto ref = x.to(torch::kBFloat16).to(torch::kFloat32);
  EXPECT_TRUE(same(bf16_widened(x), ref));
  EXPECT_TRUE(same(bf16_widened(x.to(torch::kBFloat16)), ref));
  auto m = x.narrow(0, 0, 70000).view({700, 100}).t();  // strided
  EXPECT_TRUE(same(bf16_widened(m), m.to(torch::kBFloat16).to(torch::kFloat32)));
}

// A bias-free linear layer under bf16 autocast, both ways, against the exact (fp64) products of
// the bf16-rounded operands: the output and the input gradient within one bf16 rounding. Widened,
// the weight gradient is the fp32 product of the rounded operands (not rounded to bf16: within
// 1e-5 of the exact one); native, LibTorch's bf16 product rounded once. The autograd node shows
// which ran.
TEST(CpuBf16Products, LinearIsTheRoundedProductOfTheRoundedOperands) {
  torch::manual_seed(31);
  auto x = torch::randn({3, 5, 48}), w = torch::randn({24, 48}) * 0.2;
  auto dy = torch::randn({3, 5, 24}).to(torch::kBFloat16);
  auto exact = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); };
  auto y_ref = at::matmul(exact(x), exact(w).t());
  auto dx_ref = at::matmul(exact(dy), exact(w));
  auto dw_ref = at::mm(exact(dy).reshape({-1, 24}).t(), exact(x).reshape({-1, 48}));
  AutocastState ac = AutocastState::current();
  ac.cpu_enabled = true;
  ac.cpu_dtype = at::kBFloat16;
  for (auto policy : {CpuBf16Products::kNative, CpuBf16Products::kWidened}) {
    const bool widened = policy == CpuBf16Products::kWidened;
    SCOPED_TRACE(widened ? "widened" : "native");
    Bf16ProductsScope scope(policy);
    auto xg = x.clone().requires_grad_(), wg = w.clone().requires_grad_();
    torch::Tensor y;
    {
      AutocastScope autocast(ac);
      y = cpu_bf16_linear(xg, wg);
    }
    ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
    const std::string node = y.grad_fn()->name();
    EXPECT_EQ(node.find("WidenedLinearFn") != std::string::npos, widened) << node;
    y.backward(dy);
    EXPECT_EQ(xg.grad().scalar_type(), torch::kFloat32);
    EXPECT_EQ(wg.grad().scalar_type(), torch::kFloat32);
    expect_one_rounding(y, y_ref, 1e-5, "output");
    expect_one_rounding(xg.grad(), dx_ref, 1e-5, "input gradient");
    if (widened) {
      EXPECT_LT(((wg.grad().to(torch::kFloat64) - dw_ref).abs().max() / dw_ref.abs().max())
                    .item<double>(),
                1e-5);
    } else {
      expect_one_rounding(wg.grad(), dw_ref, 1e-5, "weight gradient");
    }
  }
  // Outside autocast, and for fp64: torch's linear, whatever the policy.
  Bf16ProductsScope scope(CpuBf16Products::kWidened);
  auto xd = x.to(torch::kFloat64).requires_grad_();
  auto yd = cpu_bf16_linear(xd, w.to(torch::kFloat64));
  EXPECT_EQ(yd.scalar_type(), torch::kFloat64);
  EXPECT_EQ(std::string(yd.grad_fn()->name()).find("Widened"), std::string::npos);
}
