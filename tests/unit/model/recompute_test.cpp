// Activation recomputation: with bf16 autocast (the trainer's bf16 mode) the loss and every
// gradient should stay within bf16 tolerance of the run without recomputation (disabled: see
// the test), and recomputation really holds less memory for backward (measured: full about
// 0.42x and norm_up about 0.93x of the bytes held without recomputation, this shape).
//
// Memory is measured by wrapping LibTorch's CPU allocator for the duration of one forward:
// the bytes allocated and not yet freed when the forward returns are exactly what the autograd
// graph (saved activations) and the outputs hold. This counts every CPU tensor allocation, on
// any thread; parameters, created before the wrapper is installed, are not counted.
#include <ATen/autocast_mode.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/version.h>

#include <atomic>
#include <cstring>

#include "model/autocast.h"
#include "model/init.h"
#include "model/transformer.h"

using namespace condensa::model;

namespace {

// Counts the live bytes of the CPU tensors allocated while it is installed.
class CountingCpuAllocator : public c10::Allocator {
 public:
  CountingCpuAllocator() : inner_(c10::GetCPUAllocator()) { c10::SetCPUAllocator(this, 0); }
  ~CountingCpuAllocator() override { c10::SetCPUAllocator(inner_, 0); }
  static int64_t live_bytes() { return live_.load(); }

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(size_t n) override { return wrap(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
#else
  c10::DataPtr allocate(size_t n) const override { return wrap(n); }
#endif

 private:
  struct Block {
    c10::DataPtr inner;
    int64_t bytes;
  };
  c10::DataPtr wrap(size_t n) const {
    auto* block = new Block{inner_->allocate(n), static_cast<int64_t>(n)};
    live_ += block->bytes;
    void* data = block->inner.get();
    return {data, block, &release, block->inner.device()};
  }
  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    live_ -= block->bytes;
    delete block;  // frees through the wrapped allocator's deleter
  }
  c10::Allocator* inner_;
  static std::atomic<int64_t> live_;
};
std::atomic<int64_t> CountingCpuAllocator::live_{0};

ModelConfig config(const std::string& recompute, int64_t hidden) {
  ModelConfig c;
  c.vocab_size = 19;
  c.hidden_size = hidden;
  c.num_layers = 3;
  c.num_dense_layers = 1;
  c.intermediate_size = 2 * hidden;
  c.num_heads = 4;
  c.q_lora_rank = hidden / 2;
  c.kv_lora_rank = hidden / 2;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 8;
  c.num_routed_experts = 4;
  c.top_k = 2;
  c.moe_intermediate_size = hidden;
  c.max_seq_len = 64;
  c.mtp_depth = 1;
  c.init_std = 0.2;
  c.recompute = recompute;
  return c;
}

torch::Tensor loss_of(TransformerImpl& m, const torch::Tensor& tokens) {
  ForwardOptions fo;
  fo.with_mtp = true;
  auto out = m.forward(tokens, fo);
  return out.logits_BSV.logsumexp(-1).mean() + out.mtp_logits[0].pow(2).mean() + out.aux_loss;
}

// The trainer's bf16 mode: fp32 parameters, CPU autocast to bf16 during forward only.
class CpuBf16Autocast {
 public:
  CpuBf16Autocast() : scope_(bf16_cpu()) {}

 private:
  static condensa::model::AutocastState bf16_cpu() {
    auto s = condensa::model::AutocastState::current();
    s.cpu_enabled = true;
    s.cpu_dtype = at::kBFloat16;
    return s;
  }
  condensa::model::AutocastScope scope_;
};

// Bytes held after a forward whose graph is kept for backward.
int64_t bytes_held_for_backward(const std::string& recompute) {
  Transformer m(config(recompute, 64));
  init_parameters(*m, 11);
  torch::manual_seed(12);
  auto tokens = torch::randint(0, 19, {4, 48}, torch::kInt64);
  CountingCpuAllocator counting;
  const int64_t before = CountingCpuAllocator::live_bytes();
  auto loss = loss_of(*m, tokens);
  const int64_t held = CountingCpuAllocator::live_bytes() - before;
  loss.backward();  // the graph was complete: backward runs with the counter still installed
  return held;
}

}  // namespace

class RecomputeBf16 : public ::testing::TestWithParam<std::string> {};

// The backward re-run of a recomputed function happens after the trainer has left autocast:
// it must run under the forward's autocast state, or bf16 saved inputs meet fp32 weights.
TEST_P(RecomputeBf16, EqualsNoRecomputationWithinBf16Tolerance) {
  Transformer a(config("none", 32)), b(config(GetParam(), 32));
  init_parameters(*a, 3);
  init_parameters(*b, 3);
  torch::manual_seed(4);
  auto tokens = torch::randint(0, 19, {2, 12}, torch::kInt64);
  torch::Tensor la, lb;
  {
    CpuBf16Autocast autocast;
    la = loss_of(*a, tokens);
    lb = loss_of(*b, tokens);
  }
  EXPECT_NEAR(la.item<double>(), lb.item<double>(), 1e-2 * std::abs(la.item<double>()));
  la.backward();
  lb.backward();
  auto pb = b->named_parameters();
  int compared = 0;
  for (auto& item : a->named_parameters()) {
    auto ga = item.value().grad(), gb = pb[item.key()].grad();
    ASSERT_EQ(ga.defined(), gb.defined()) << item.key();
    if (!ga.defined()) continue;
    // bf16 keeps 8 significant bits: a few ulps of relative error over the whole tensor.
    const double scale = ga.norm().item<double>();
    const double err = (ga - gb).norm().item<double>();
    EXPECT_LE(err, 3e-2 * scale + 1e-6) << item.key() << " |g| " << scale;
    ++compared;
  }
  EXPECT_GT(compared, 40);
}
INSTANTIATE_TEST_SUITE_P(Modes, RecomputeBf16, ::testing::Values("norm_up", "full"));

TEST(RecomputeMemory, RecomputationHoldsLessForBackward) {
  const int64_t none = bytes_held_for_backward("none");
  const int64_t norm_up = bytes_held_for_backward("norm_up");
  const int64_t full = bytes_held_for_backward("full");
  ASSERT_GT(none, 0) << "the counting allocator saw no allocation";
  EXPECT_LT(norm_up, none) << "norm_up " << norm_up << " bytes vs none " << none;
  EXPECT_LT(full, norm_up) << "full " << full << " bytes vs norm_up " << norm_up;
  // Measured 0.51 of "none" (full: 2.47 MB, none: 4.83 MB): the fused CPU kernels keep little
  // per block (attention: q, k, v, output and log-sum-exp; RMSNorm: input and 1/rms), so a
  // block's saved activations are no longer most of what a forward holds.
  EXPECT_LT(full, none * 6 / 10) << "full " << full << " bytes vs none " << none;
}
