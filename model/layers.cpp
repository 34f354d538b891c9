#include "model/layers.h"

#include <cmath>

#include "model/cpu_attention.h"
#include "model/cpu_fused.h"
#include "model/moe/experts.h"
#include "model/recompute.h"

namespace condensa::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor upcast(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return (t == torch::kBFloat16 || t == torch::kHalf) ? x.to(torch::kFloat32) : x;
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (cpu_fused_applies(x)) return fused_rms_norm(x, weight, eps);
  return rms_norm_reference(x, weight, eps);
}

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = upcast(x);
  auto y = xf * torch::rsqrt((xf * xf).mean(-1, /*keepdim=*/true) + eps);
  return (y * weight).to(x.scalar_type());
}

namespace {
// YaRN helpers, as in the published DeepSeek-V3 rope (HF "yarn" rope_scaling).
double yarn_correction_dim(double num_rotations, int64_t dim, double base, int64_t max_pos) {
  return dim * std::log(max_pos / (num_rotations * 2 * M_PI)) / (2 * std::log(base));
}
double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

RopeTables make_rope_tables(const ModelConfig& cfg) {
  const int64_t dim = cfg.qk_rope_head_dim;
  const double base = cfg.rope_theta;
  auto idx = torch::arange(0, dim, 2, torch::kFloat64);
  auto freqs = 1.0 / torch::pow(base, idx / static_cast<double>(dim));
  double cos_scale = 1.0;
  if (cfg.rope_factor > 1.0) {
    double low = std::floor(
        yarn_correction_dim(cfg.rope_beta_fast, dim, base, cfg.rope_original_max_seq_len));
    double high = std::ceil(
        yarn_correction_dim(cfg.rope_beta_slow, dim, base, cfg.rope_original_max_seq_len));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    auto ramp = ((torch::arange(dim / 2, torch::kFloat64) - low) / (high - low)).clamp(0, 1);
    auto smooth = 1.0 - ramp;  // 1 = keep the original frequency (high-frequency dims)
    freqs = freqs / cfg.rope_factor * (1.0 - smooth) + freqs * smooth;
    cos_scale = yarn_get_mscale(cfg.rope_factor, cfg.rope_mscale) /
                yarn_get_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim);
  }
  auto t = torch::arange(cfg.max_seq_len, torch::kFloat64);
  auto angles = torch::outer(t, freqs);
  return {angles.cos() * cos_scale, angles.sin() * cos_scale};  // fp64; cast at use
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start_pos) {
  // x [B, S, ..., R]: pairs (2i, 2i+1) rotate by angle pos * freq_i.
  const int64_t S = x.size(1);
  auto xf = upcast(x);
  auto cos = rope.cos_SR.narrow(0, start_pos, S).to(xf.options());
  auto sin = rope.sin_SR.narrow(0, start_pos, S).to(xf.options());
  std::vector<int64_t> view_shape = {1, S};
  for (int64_t d = 2; d < x.dim() - 1; ++d) view_shape.push_back(1);
  view_shape.push_back(cos.size(1));
  cos = cos.view(view_shape);
  sin = sin.view(view_shape);
  auto shape = x.sizes().vec();
  shape.back() /= 2;
  shape.push_back(2);
  xf = xf.reshape(shape);
  auto x0 = xf.select(-1, 0), x1 = xf.select(-1, 1);
  auto y = torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1);
  return y.flatten(-2).to(x.scalar_type());
}

double attention_softmax_scale(const ModelConfig& cfg) {
  double scale = 1.0 / std::sqrt(static_cast<double>(cfg.qk_head_dim()));
  if (cfg.rope_factor > 1.0 && cfg.rope_mscale_all_dim > 0) {
    double m = yarn_get_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

MLPImpl::MLPImpl(int64_t dim, int64_t inter) {
  auto opt = [](int64_t i, int64_t o) { return torch::nn::LinearOptions(i, o).bias(false); };
  gate_proj = register_module("gate_proj", torch::nn::Linear(opt(dim, inter)));
  up_proj = register_module("up_proj", torch::nn::Linear(opt(dim, inter)));
  down_proj = register_module("down_proj", torch::nn::Linear(opt(inter, dim)));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  // On the CPU (fp32/fp64, bf16 autocast included): the experts' autograd function with one
  // expert (SwiGLU in one fused pass, contiguous weight gradients); the Linear composition is its
  // reference.
  if (cpu_fused_bf16_applies(x)) {
    const int64_t D = x.size(-1);
    auto x_TD = x.reshape({-1, D});
    auto y_TD =
        swiglu_per_expert(x_TD, gate_proj->weight.unsqueeze(0), up_proj->weight.unsqueeze(0),
                          down_proj->weight.unsqueeze(0), {x_TD.size(0)});
    auto shape = x.sizes().vec();
    shape.back() = y_TD.size(1);
    return y_TD.view(shape);
  }
  return mlp_reference(x);
}

torch::Tensor linear(const torch::nn::Linear& m, const torch::Tensor& x) {
  return m->options.bias() ? m.ptr()->forward(x) : cpu_bf16_linear(x, m->weight);
}

torch::Tensor MLPImpl::mlp_reference(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

torch::Tensor causal_attention(const torch::Tensor& q,
                               const torch::Tensor& k,
                               const torch::Tensor& v,
                               double scale,
                               int64_t start_pos) {
  // [B, H, S, L] scores in fp32.
  auto qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);
  auto scores = upcast(torch::matmul(qh, kh.transpose(-1, -2))) * scale;
  const int64_t S = q.size(1), L = k.size(1);
  auto qpos = torch::arange(start_pos, start_pos + S, torch::kInt64).unsqueeze(1);
  auto kpos = torch::arange(L, torch::kInt64).unsqueeze(0);
  auto mask = (kpos > qpos).to(q.device());  // [S, L]: future keys
  scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  auto attn = torch::softmax(scores, -1).to(v.scalar_type());
  return torch::matmul(attn, vh).transpose(1, 2);  // [B, S, H, Dv]
}

torch::Tensor fused_causal_attention(const torch::Tensor& q,
                                     const torch::Tensor& k,
                                     const torch::Tensor& v,
                                     double scale) {
  // CPU fp32/fp64: condensa's blocked kernel (cpu_attention.h), unequal head dims unpadded.
  if (cpu_attention_applies(q, k, v)) return cpu_causal_attention(q, k, v, scale);
  // [B, H, S, D] views; is_causal masks key j > query i (both from position 0).
  const int64_t Dqk = q.size(-1), Dv = v.size(-1);
  auto vh = v.transpose(1, 2);
  // The CPU flash kernel needs Dv == Dqk (otherwise the unfused math path runs, about 2x
  // slower): pad v with zero columns and drop those output columns. Exact: the padded columns
  // are never mixed into the kept ones, and their gradient is discarded. CUDA takes Dv != Dqk
  // unpadded (memory-efficient and cuDNN kernels).
  const bool pad = q.device().is_cpu() && Dv < Dqk;
  if (pad)
    vh = torch::nn::functional::pad(vh, torch::nn::functional::PadFuncOptions({0, Dqk - Dv}));
  auto out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), vh,
                                              /*attn_mask=*/c10::nullopt, /*dropout_p=*/0.0,
                                              /*is_causal=*/true, scale);
  if (pad) out = out.narrow(-1, 0, Dv);
  return out.transpose(1, 2);  // [B, S, H, Dv]
}

MLAImpl::MLAImpl(const ModelConfig& c) : cfg(c), softmax_scale(attention_softmax_scale(c)) {
  recompute_up = cfg.recompute == "norm_up";
  auto opt = [](int64_t i, int64_t o) { return torch::nn::LinearOptions(i, o).bias(false); };
  const int64_t H = cfg.num_heads, D = cfg.hidden_size;
  if (cfg.q_lora_rank == 0) {
    q_proj = register_module("q_proj", torch::nn::Linear(opt(D, H * cfg.qk_head_dim())));
  } else {
    q_a_proj = register_module("q_a_proj", torch::nn::Linear(opt(D, cfg.q_lora_rank)));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(cfg.q_lora_rank, cfg.norm_eps));
    q_b_proj =
        register_module("q_b_proj", torch::nn::Linear(opt(cfg.q_lora_rank, H * cfg.qk_head_dim())));
  }
  kv_a_proj_with_mqa = register_module(
      "kv_a_proj_with_mqa", torch::nn::Linear(opt(D, cfg.kv_lora_rank + cfg.qk_rope_head_dim)));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(cfg.kv_lora_rank, cfg.norm_eps));
  kv_b_proj = register_module(
      "kv_b_proj",
      torch::nn::Linear(opt(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim))));
  o_proj = register_module("o_proj", torch::nn::Linear(opt(H * cfg.v_head_dim, D)));
}

torch::Tensor MLAImpl::forward(const torch::Tensor& x,
                               const RopeTables& rope,
                               MLACache* cache,
                               int64_t start_pos) {
  const int64_t B = x.size(0), S = x.size(1), H = cfg.num_heads;
  const int64_t nope = cfg.qk_nope_head_dim, R = cfg.qk_rope_head_dim, Dv = cfg.v_head_dim;
  const int64_t C = cfg.kv_lora_rank;

  // Query: direct, or down-projection -> RMSNorm -> up-projection (recomputable).
  torch::Tensor q;
  if (cfg.q_lora_rank == 0) {
    q = linear(q_proj, x);
  } else {
    auto q_latent = linear(q_a_proj, x);
    auto up = [this](const torch::Tensor& t) { return linear(q_b_proj, q_a_layernorm(t)); };
    q = recompute_up ? recompute(up, q_latent) : up(q_latent);
  }
  // Keys/values: one shared latent (normalised) plus one shared rope key per position.
  // split (not narrow): its backward concatenates the parts' gradients once, where each
  // narrow's backward writes a zero-filled tensor of the whole size.
  auto kv = linear(kv_a_proj_with_mqa, x).split_with_sizes({C, R}, -1);
  auto latent = kv[0];
  // Training and evaluation on the CPU in fp32/fp64 assemble the rope heads in fused kernels
  // (cpu_fused.h); the ATen composition below is their reference and serves the rest.
  const bool fused_rope = !cache && cpu_fused_bf16_applies(q) && cpu_fused_bf16_applies(kv[1]) &&
                          q.scalar_type() == kv[1].scalar_type();
  torch::Tensor q_nope, q_rope, k_rope, qf, cos_SP, sin_SP;
  if (fused_rope) {
    // The tables in fp32 for bf16 heads (the reference's apply_rope computes in fp32 too).
    const auto table = q.scalar_type() == torch::kBFloat16 ? torch::kFloat32 : q.scalar_type();
    cos_SP = rope.cos_SR.narrow(0, start_pos, S).to(table).contiguous();
    sin_SP = rope.sin_SR.narrow(0, start_pos, S).to(table).contiguous();
    qf = fused_rope_tail(q.view({B, S, H, nope + R}), cos_SP, sin_SP);
    k_rope = kv[1];  // rotated inside fused_mla_key
  } else {
    auto q_parts = q.view({B, S, H, nope + R}).split_with_sizes({nope, R}, -1);
    q_nope = q_parts[0];
    q_rope = apply_rope(q_parts[1], rope, start_pos);
    k_rope = apply_rope(kv[1].unsqueeze(2), rope, start_pos).squeeze(2);  // [B,S,R]
  }
  auto norm_latent =
      recompute_up ? recompute([this](const torch::Tensor& t) { return kv_a_layernorm(t); }, latent)
                   : kv_a_layernorm(latent);
  if (cache) {
    cache->latent_BSC =
        cache->latent_BSC.defined() ? torch::cat({cache->latent_BSC, norm_latent}, 1) : norm_latent;
    cache->k_rope_BSR =
        cache->k_rope_BSR.defined() ? torch::cat({cache->k_rope_BSR, k_rope}, 1) : k_rope;
    norm_latent = cache->latent_BSC;
    k_rope = cache->k_rope_BSR;
  }
  const int64_t L = norm_latent.size(1);
  auto kv_up =
      recompute_up
          ? recompute([this](const torch::Tensor& t) { return linear(kv_b_proj, t); }, norm_latent)
          : linear(kv_b_proj, norm_latent);
  auto kv_parts = kv_up.view({B, L, H, nope + Dv}).split_with_sizes({nope, Dv}, -1);
  auto k_nope = kv_parts[0];
  auto v = kv_parts[1];
  torch::Tensor k;
  if (fused_rope) {
    k = fused_mla_key(k_nope, k_rope, cos_SP, sin_SP);
  } else {
    k = torch::cat({k_nope, k_rope.unsqueeze(2).expand({B, L, H, R})}, -1);
    qf = torch::cat({q_nope, q_rope}, -1);
  }
  // The fused kernel's causal mask is aligned at position 0: it serves full sequences (training,
  // evaluation, a generation prompt); decoding with a cache uses the explicit path.
  const bool fused = cfg.attention_impl == "sdpa" && start_pos == 0 && L == S;
  auto out = fused ? fused_causal_attention(qf, k, v, softmax_scale)
                   : causal_attention(qf, k, v, softmax_scale, start_pos);  // [B, S, H, Dv]
  return linear(o_proj, out.reshape({B, S, H * Dv}));
}

}  // namespace condensa::model
