// Building blocks of the DeepSeek-V3 network: RMSNorm, decoupled RoPE (with YaRN), Multi-head
// Latent Attention and the dense SwiGLU MLP.
//
// Module and parameter names are the Hugging Face DeepseekV3 names (q_a_proj, kv_a_layernorm,
// gate_proj, ...), so that export is a renaming of the layer prefix only. RoPE rotates
// interleaved pairs (x[2i], x[2i+1]), the layout of the published weights.
//
// Shape legend: B batch, S sequence, D hidden, H heads, R rope dims, C kv_lora_rank,
// T = B*S tokens.
#pragma once

#include <torch/torch.h>

#include "model/model_config.h"

namespace condensa::model {

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);
// RMSNorm as ATen operators (upcast, mean of squares, rsqrt, products): the reference of the
// fused CPU kernel (cpu_fused.h), and the path of every other device and dtype.
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// cos/sin tables for the rope dims: [max_seq_len, R/2] each (fp64, cast to the input's dtype).
struct RopeTables {
  torch::Tensor cos_SR, sin_SR;
};
RopeTables make_rope_tables(const ModelConfig& cfg);
// Rotates interleaved pairs of the last dim of x [B, S, ..., R] at positions start..start+S-1.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start_pos);
// 1/sqrt(qk_head_dim), times mscale^2 when YaRN scaling is configured.
double attention_softmax_scale(const ModelConfig& cfg);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t dim, int64_t inter);
  torch::Tensor forward(const torch::Tensor& x);
  // down(silu(gate(x)) * up(x)) as Linear modules and ATen operators: forward's reference.
  torch::Tensor mlp_reference(const torch::Tensor& x);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

// The compressed KV cache of one MLA layer (generation): the normalised latent and the
// rotated shared rope key of every past position.
struct MLACache {
  torch::Tensor latent_BSC;  // [B, S_past, C]
  torch::Tensor k_rope_BSR;  // [B, S_past, R]
};

struct MLAImpl : torch::nn::Module {
  MLAImpl(const ModelConfig& cfg);
  // x [B, S, D] -> [B, S, D]. With a cache, appends this chunk and attends to the whole cache.
  torch::Tensor forward(const torch::Tensor& x_BSD,
                        const RopeTables& rope,
                        MLACache* cache = nullptr,
                        int64_t start_pos = 0);

  ModelConfig cfg;
  double softmax_scale;
  bool recompute_up;  // recompute norms and up-projections in backward
  torch::nn::Linear q_proj{nullptr}, q_a_proj{nullptr}, q_b_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr};
  torch::nn::Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  RMSNorm kv_a_layernorm{nullptr};
};
TORCH_MODULE(MLA);

// A bias-free linear layer's product, through cpu_bf16_linear (widened bf16 products under CPU
// autocast, cpu_fused.h); layers with a bias call the module.
torch::Tensor linear(const torch::nn::Linear& m, const torch::Tensor& x);

// Reduced-precision tensors (bf16/fp16) computed in fp32; fp32/fp64 stay as they are.
torch::Tensor upcast(const torch::Tensor& x);

// Plain scaled-dot-product attention with a causal mask over absolute positions.
// q [B, S, H, Dqk], k [B, L, H, Dqk], v [B, L, H, Dv]; query i sits at position start_pos + i.
torch::Tensor causal_attention(const torch::Tensor& q,
                               const torch::Tensor& k,
                               const torch::Tensor& v,
                               double scale,
                               int64_t start_pos);

// The same attention (start_pos 0, S == L) in a fused kernel: on the CPU in fp32/fp64, and in
// bf16 with widened bf16 products, condensa's blocked kernel (cpu_attention.h); otherwise
// at::scaled_dot_product_attention, which picks one (flash on the CPU in bf16; flash,
// memory-efficient or cuDNN on CUDA).
// Dqk may differ from Dv (MLA: nope + rope vs v_head_dim).
torch::Tensor fused_causal_attention(const torch::Tensor& q,
                                     const torch::Tensor& k,
                                     const torch::Tensor& v,
                                     double scale);

}  // namespace condensa::model
