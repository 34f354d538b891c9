// The model's shape and routing hyper-parameters: the `model:` section of the YAML config.
//
// Names follow the DeepSeek-V3 / Hugging Face DeepseekV3 conventions where one exists
// (the export maps them one to one, see docs/config.md). The struct is plain data with a
// `visit` method that the config loader uses to read, print and hash it, and a `validate`
// that throws ConfigError naming the key and the value.
#pragma once

#include <cstdint>
#include <string>

namespace condensa::model {

struct ModelConfig {
  int64_t vocab_size = 259;
  int64_t hidden_size = 64;
  int64_t num_layers = 2;
  int64_t num_dense_layers = 1;  // first k layers use a dense MLP (first_k_dense_replace)
  int64_t intermediate_size = 128;
  int64_t max_seq_len = 4096;
  double norm_eps = 1e-6;
  double init_std = 0.006;

  // Multi-head latent attention.
  int64_t num_heads = 4;
  int64_t q_lora_rank = 0;  // 0 = direct query projection
  int64_t kv_lora_rank = 32;
  int64_t qk_nope_head_dim = 16;
  int64_t qk_rope_head_dim = 8;
  int64_t v_head_dim = 16;
  double rope_theta = 10000.0;
  // YaRN rope scaling; rope_factor 1 = none.
  double rope_factor = 1.0;
  int64_t rope_original_max_seq_len = 4096;
  double rope_beta_fast = 32.0;
  double rope_beta_slow = 1.0;
  double rope_mscale = 1.0;
  double rope_mscale_all_dim = 0.0;

  // DeepSeekMoE.
  int64_t num_routed_experts = 8;
  int64_t num_shared_experts = 1;
  int64_t top_k = 2;
  int64_t moe_intermediate_size = 32;
  std::string scoring = "sigmoid";  // sigmoid | softmax
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  double route_scale = 1.0;
  bool norm_topk_prob = true;
  bool router_bias = true;              // auxiliary-loss-free balancing bias (selection only)
  double bias_update_rate = 0.001;      // gamma
  int64_t bias_update_until_step = -1;  // stop updating after this step; -1 = never stop
  double seq_aux_alpha = 0.0001;        // complementary sequence-wise balance loss weight
  double z_loss_coef = 0.0;             // router z-loss weight
  double capacity_factor = 0.0;         // 0 = dropless
  int64_t max_nodes_per_token = 0;      // node-limited routing M; 0 = off

  // Multi-token prediction.
  int64_t mtp_depth = 0;
  double mtp_loss_weight = 0.3;
  int64_t mtp_loss_weight_until_step = -1;  // after this step use mtp_loss_weight_after
  double mtp_loss_weight_after = 0.1;

  // Activation recomputation: none | norm_up (RMSNorm + MLA up-projections) | full.
  std::string recompute = "none";

  // Kernels (same numerics up to rounding; the reference paths are what tests compare with).
  std::string attention_impl = "sdpa";  // sdpa (fused kernels) | explicit (matmul-softmax-matmul)
  std::string experts_impl = "auto";    // auto | loop | grouped (CUDA grouped GEMM)
  // CPU bf16 autocast products: auto (widened unless the CPU has AMX-BF16) | native (LibTorch's
  // bf16 kernels) | widened (fp32 GEMMs on the widened bf16 operands; cpu_fused.h).
  std::string cpu_bf16_products = "auto";

  template <class V>
  void visit(V& v) {
    v("vocab_size", vocab_size, "vocabulary size (259 for the byte tokenizer)");
    v("hidden_size", hidden_size, "model width d");
    v("num_layers", num_layers, "transformer blocks (MTP modules not counted)");
    v("num_dense_layers", num_dense_layers, "first k blocks use a dense SwiGLU MLP");
    v("intermediate_size", intermediate_size, "dense MLP hidden size");
    v("max_seq_len", max_seq_len, "longest sequence the RoPE tables cover");
    v("norm_eps", norm_eps, "RMSNorm epsilon");
    v("init_std", init_std, "normal init std for weights (norms start at 1)");
    v("num_heads", num_heads, "attention heads");
    v("q_lora_rank", q_lora_rank, "query compression rank; 0 = direct query projection");
    v("kv_lora_rank", kv_lora_rank, "key/value compression rank");
    v("qk_nope_head_dim", qk_nope_head_dim, "per-head query/key dims without RoPE");
    v("qk_rope_head_dim", qk_rope_head_dim, "per-head query/key dims with decoupled RoPE");
    v("v_head_dim", v_head_dim, "per-head value dims");
    v("rope_theta", rope_theta, "RoPE base");
    v("rope_factor", rope_factor, "YaRN scaling factor; 1 = no scaling");
    v("rope_original_max_seq_len", rope_original_max_seq_len, "YaRN original context");
    v("rope_beta_fast", rope_beta_fast, "YaRN beta_fast");
    v("rope_beta_slow", rope_beta_slow, "YaRN beta_slow");
    v("rope_mscale", rope_mscale, "YaRN mscale");
    v("rope_mscale_all_dim", rope_mscale_all_dim, "YaRN mscale_all_dim (softmax scale correction)");
    v("num_routed_experts", num_routed_experts, "routed experts per MoE layer");
    v("num_shared_experts", num_shared_experts, "shared experts per MoE layer (every token)");
    v("top_k", top_k, "routed experts per token");
    v("moe_intermediate_size", moe_intermediate_size, "hidden size of each expert");
    v("scoring", scoring, "router affinity: sigmoid | softmax");
    v("num_groups", num_groups, "expert groups for group-limited routing");
    v("topk_groups", topk_groups, "groups each token may use");
    v("route_scale", route_scale, "multiplier on the routed gate weights");
    v("norm_topk_prob", norm_topk_prob, "normalise the selected gate weights to sum 1");
    v("router_bias", router_bias, "auxiliary-loss-free balancing bias (used for selection only)");
    v("bias_update_rate", bias_update_rate, "gamma of the bias update");
    v("bias_update_until_step", bias_update_until_step,
      "last step that updates the bias; -1 = all");
    v("seq_aux_alpha", seq_aux_alpha, "sequence-wise balance loss weight alpha");
    v("z_loss_coef", z_loss_coef, "router z-loss weight; 0 = off");
    v("capacity_factor", capacity_factor, "expert capacity factor; 0 = dropless");
    v("max_nodes_per_token", max_nodes_per_token, "node-limited routing M; 0 = off");
    v("mtp_depth", mtp_depth, "multi-token prediction modules; 0 = off");
    v("mtp_loss_weight", mtp_loss_weight, "MTP loss weight lambda");
    v("mtp_loss_weight_until_step", mtp_loss_weight_until_step,
      "last step using mtp_loss_weight; -1 = all");
    v("mtp_loss_weight_after", mtp_loss_weight_after, "MTP loss weight after that step");
    v("recompute", recompute, "activation recomputation: none | norm_up | full");
    v("attention_impl", attention_impl,
      "attention kernel: sdpa (fused scaled_dot_product_attention) | explicit (reference)");
    v("experts_impl", experts_impl,
      "routed experts: auto (grouped on CUDA in bf16, else loop) | loop | grouped");
    v("cpu_bf16_products", cpu_bf16_products,
      "CPU bf16 autocast products: auto (widened without AMX-BF16) | native (LibTorch's bf16 "
      "kernels) | widened (fp32 GEMMs on the bf16 operands, rounded once)");
  }

  // Throws ConfigError naming `model.<key>` and the offending values.
  void validate() const;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return layer >= num_dense_layers; }
};

}  // namespace condensa::model
