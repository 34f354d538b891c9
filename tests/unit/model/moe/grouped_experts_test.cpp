// The grouped-GEMM experts (at::_grouped_mm over all experts, counts on the device) against the
// per-expert loop: outputs and gradients of inputs and every expert weight, including experts
// that receive no rows. Runs on the CPU (LibTorch's reference kernel) and, where a GPU is
// present, on CUDA in bf16 (the kernel `experts_impl: auto` selects there).
#include <gtest/gtest.h>

#include "model/autocast.h"
#include "model/cpu_fused.h"
#include "model/layers.h"
#include "model/moe/experts.h"

using namespace condensa::model;

namespace {

struct Result {
  torch::Tensor y, dx, dgate, dup, ddown;
};

Result run(GroupedExperts& e,
           const torch::Tensor& x0,
           const std::vector<int64_t>& rows,
           bool grouped) {
  for (auto& p : e->parameters()) p.mutable_grad() = torch::Tensor();
  auto x = x0.detach().clone().requires_grad_();
  auto counts = torch::tensor(rows, torch::kInt64).to(x.device());
  auto y = grouped ? e->forward_grouped(x, counts) : e->forward(x, rows);
  torch::manual_seed(11);
  auto upstream = torch::randn(y.sizes()).to(y.device());
  (y.to(torch::kFloat32) * upstream).sum().backward();
  auto f = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat32).cpu(); };
  return {f(y), f(x.grad()), f(e->gate_proj.grad()), f(e->up_proj.grad()), f(e->down_proj.grad())};
}

double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

void expect_match(const Result& got, const Result& ref, double tol) {
  EXPECT_LT(max_rel_diff(got.y, ref.y), tol) << "output";
  EXPECT_LT(max_rel_diff(got.dx, ref.dx), tol) << "input gradient";
  EXPECT_LT(max_rel_diff(got.dgate, ref.dgate), tol) << "gate_proj gradient";
  EXPECT_LT(max_rel_diff(got.dup, ref.dup), tol) << "up_proj gradient";
  EXPECT_LT(max_rel_diff(got.ddown, ref.ddown), tol) << "down_proj gradient";
}

GroupedExperts make_experts(int64_t E, int64_t D, int64_t F, torch::Device device) {
  torch::manual_seed(3);
  GroupedExperts e(E, 0, D, F);
  {
    torch::NoGradGuard g;
    for (auto& p : e->parameters()) p.normal_(0, 0.2);
  }
  e->to(device);
  return e;
}

}  // namespace

// The per-expert loop (its own autograd function per product) against plain autograd over
// narrow + matmul(x, w^T), the formula written out: outputs and every gradient, in fp32 and
// under CPU bf16 autocast, with an expert that receives no rows and rows past the experts'.
TEST(GroupedExperts, LoopMatchesPlainAutogradFp32AndBf16Autocast) {
  for (const int mode : {0, 1, 2}) {  // fp32; bf16 autocast with native, widened products
    const bool bf16 = mode > 0;
    SCOPED_TRACE(mode == 0 ? "fp32" : mode == 1 ? "bf16 autocast, native" : "bf16, widened");
    set_cpu_bf16_products(mode == 2 ? CpuBf16Products::kWidened : CpuBf16Products::kNative);
    auto e = make_experts(4, 16, 24, torch::kCPU);
    const std::vector<int64_t> rows = {5, 0, 9, 3};
    torch::manual_seed(5);
    auto x0 = torch::randn({19, 16});  // 2 rows past the experts' 17
    AutocastState ac = AutocastState::current();
    if (bf16) ac.cpu_enabled = true, ac.cpu_dtype = at::kBFloat16;
    Result got, ref;
    {
      AutocastScope scope(ac);
      got = run(e, x0, rows, /*grouped=*/false);
    }
    // Reference: plain autograd, the same casts autocast would make.
    for (auto& p : e->parameters()) p.mutable_grad() = torch::Tensor();
    auto x = x0.detach().clone().requires_grad_();
    const auto dt = bf16 ? torch::kBFloat16 : torch::kFloat32;
    std::vector<torch::Tensor> outs;
    int64_t offset = 0;
    for (int64_t i = 0; i < 4; ++i) {
      if (rows[i] == 0) continue;
      auto xi = x.narrow(0, offset, rows[i]).to(dt);
      auto mm = [&](const torch::Tensor& a, const torch::Tensor& w) {
        return torch::matmul(a, w[i].to(dt).t());
      };
      auto h = torch::silu(mm(xi, e->gate_proj)) * mm(xi, e->up_proj);
      outs.push_back(mm(h, e->down_proj));
      offset += rows[i];
    }
    auto y = torch::cat(outs, 0);
    torch::manual_seed(11);
    auto upstream = torch::randn(y.sizes());
    (y.to(torch::kFloat32) * upstream).sum().backward();
    auto f = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat32); };
    ref = {f(y), f(x.grad()), f(e->gate_proj.grad()), f(e->up_proj.grad()), f(e->down_proj.grad())};
    EXPECT_EQ(got.y.sizes(), ref.y.sizes());
    EXPECT_EQ(got.dx.sizes(), ref.dx.sizes());
    expect_match(got, ref, bf16 ? 2e-2 : 1e-6);
    EXPECT_EQ(got.dx.narrow(0, 17, 2).abs().max().item<float>(), 0.0f);
    // The weights' gradients come back in the weights' dtype and layout.
    EXPECT_EQ(e->gate_proj.grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(e->gate_proj.grad().is_contiguous());
    if (bf16) {
      // Native products return the weight gradients in bf16 (then widened); widened ones in
      // fp32, unrounded.
      auto rounded = got.dgate.to(torch::kBFloat16).to(torch::kFloat32);
      EXPECT_EQ(torch::equal(got.dgate, rounded), mode == 1);
    }
  }
  set_cpu_bf16_products(CpuBf16Products::kAuto);
}

TEST(GroupedExperts, GroupedGemmMatchesLoopFp32) {
  auto e = make_experts(5, 16, 24, torch::kCPU);
  const std::vector<int64_t> rows = {7, 0, 3, 12, 1};  // expert 1 gets nothing
  torch::manual_seed(4);
  auto x = torch::randn({23, 16});
  auto ref = run(e, x, rows, false), got = run(e, x, rows, true);
  expect_match(got, ref, 1e-5);
  // The expert without rows gets an exactly zero gradient on both paths.
  EXPECT_EQ(got.dgate[1].abs().max().item<double>(), 0.0);
  EXPECT_EQ(ref.dgate[1].abs().max().item<double>(), 0.0);
}

TEST(GroupedExperts, AutoSelectsGroupedOnlyOnCudaBf16) {
  EXPECT_FALSE(use_grouped_gemm("auto", torch::kCPU, true));
  EXPECT_FALSE(use_grouped_gemm("auto", torch::Device(torch::kCUDA, 0), false));
  EXPECT_TRUE(use_grouped_gemm("auto", torch::Device(torch::kCUDA, 0), true));
  EXPECT_TRUE(use_grouped_gemm("grouped", torch::kCPU, false));
  EXPECT_FALSE(use_grouped_gemm("loop", torch::Device(torch::kCUDA, 0), true));
}

TEST(GroupedExperts, GroupedGemmMatchesLoopOnCudaBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the bf16 kernel is not run";
  torch::Device cuda(torch::kCUDA, 0);
  auto e = make_experts(8, 128, 256, cuda);
  const std::vector<int64_t> rows = {100, 0, 37, 250, 1, 64, 0, 48};
  int64_t n = 0;
  for (auto r : rows) n += r;
  torch::manual_seed(5);
  auto x = torch::randn({n, 128}).to(cuda);
  Result ref, got;
  {
    AutocastState s = AutocastState::current();
    s.cuda_enabled = true;
    s.cuda_dtype = at::kBFloat16;
    AutocastScope scope(s);
    ref = run(e, x, rows, false);
    got = run(e, x, rows, true);
  }
  expect_match(got, ref, 2e-2);
}

// Weight gradients added in place (WeightGradsInPlaceScope) equal the ones autograd accumulates:
// routed experts (an expert with no rows keeps its gradient bit for bit) and the dense MLP
// (weights passed as views), fp32 and bf16 autocast, onto gradients already holding a previous
// micro-batch's. The parameters' gradient hooks show which path ran: autograd's accumulation
// calls them with the gradient, the in-place path does not. Without a .grad to add to, the gradient
// is returned.
TEST(GroupedExperts, WeightGradsInPlaceEqualTheAccumulatedOnes) {
  for (const int mode : {0, 1, 2}) {  // fp32; bf16 autocast with native, widened products
    const bool bf16 = mode > 0;
    SCOPED_TRACE(mode == 0 ? "fp32" : mode == 1 ? "bf16 autocast, native" : "bf16, widened");
    set_cpu_bf16_products(mode == 2 ? CpuBf16Products::kWidened : CpuBf16Products::kNative);
    AutocastState ac = AutocastState::current();
    if (bf16) ac.cpu_enabled = true, ac.cpu_dtype = at::kBFloat16;
    auto e = make_experts(4, 16, 24, torch::kCPU);
    torch::manual_seed(6);
    MLP mlp(16, 40);
    std::vector<torch::Tensor> params = e->parameters();
    for (auto& p : mlp->parameters()) params.push_back(p);
    std::vector<int> hook_calls(params.size(), 0);
    for (size_t i = 0; i < params.size(); ++i)
      params[i].register_hook([&hook_calls, i](const torch::Tensor& g) {
        if (g.defined()) ++hook_calls[i];  // autograd calls hooks with undefined gradients too
      });
    const std::vector<int64_t> rows = {5, 0, 9, 3};
    auto x0 = torch::randn({17, 16});
    auto previous = [&] {
      std::vector<torch::Tensor> g;
      torch::manual_seed(21);
      for (auto& p : params) g.push_back(torch::randn(p.sizes()));
      return g;
    }();
    // One micro-batch on top of `previous` (or on no gradient), in place or through autograd.
    auto step = [&](bool in_place, bool preset) {
      std::fill(hook_calls.begin(), hook_calls.end(), 0);
      for (size_t i = 0; i < params.size(); ++i)
        params[i].mutable_grad() = preset ? previous[i].clone() : torch::Tensor();
      std::vector<void*> buffers;
      for (auto& p : params) buffers.push_back(p.grad().defined() ? p.grad().data_ptr() : nullptr);
      auto x = x0.detach().clone().requires_grad_();
      torch::Tensor y;
      {
        AutocastScope scope(ac);
        y = e->forward(x, rows).to(torch::kFloat32) + mlp->forward(x).to(torch::kFloat32);
      }
      torch::manual_seed(11);
      auto upstream = torch::randn(y.sizes());
      {
        std::optional<WeightGradsInPlaceScope> scope;
        if (in_place) scope.emplace();
        EXPECT_TRUE(WeightGradsInPlaceScope::active() == in_place);
        (y * upstream).sum().backward();
      }
      EXPECT_FALSE(WeightGradsInPlaceScope::active());
      std::vector<torch::Tensor> g = {x.grad().clone()};
      for (size_t i = 0; i < params.size(); ++i) {
        g.push_back(params[i].grad().clone());
        if (preset) {
          EXPECT_EQ(params[i].grad().data_ptr(), buffers[i]) << "parameter " << i;
        }
      }
      return g;
    };
    auto ref = step(/*in_place=*/false, /*preset=*/true);
    EXPECT_EQ(hook_calls, std::vector<int>(params.size(), 1));
    auto got = step(/*in_place=*/true, /*preset=*/true);
    EXPECT_EQ(hook_calls, std::vector<int>(params.size(), 0)) << "the in-place path did not run";
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_LT(max_rel_diff(got[i], ref[i]), 1e-6) << "tensor " << i;
      EXPECT_EQ(got[i].scalar_type(), torch::kFloat32);
    }
    for (size_t i = 0; i < 3; ++i)  // routed expert 1 got no rows
      EXPECT_TRUE(torch::equal(got[1 + i][1], previous[i][1])) << "weight " << i;
    // No gradient to add to: returned, and accumulated by autograd as usual.
    auto fresh_ref = step(false, false), fresh = step(true, false);
    EXPECT_EQ(hook_calls, std::vector<int>(params.size(), 1));
    for (size_t i = 0; i < fresh_ref.size(); ++i)
      EXPECT_TRUE(torch::equal(fresh[i], fresh_ref[i])) << "tensor " << i;
  }
  set_cpu_bf16_products(CpuBf16Products::kAuto);
}
