#include "model/model_config.h"

#include "common/error.h"

namespace condensa::model {
namespace {
template <class T>
void require(bool ok, const char* key, const T& value, const std::string& rule) {
  if (!ok) throw ConfigError(str("model.", key, " = ", value, ": ", rule));
}
// Bounds far above any real model (DeepSeek-V3: d 7168, 128 heads, 256 experts) that keep
// sizes and their products from overflowing; whether a shape fits the machine is the memory
// estimate's call (trainer/config/memory.h), which names the keys and the bytes.
void require_in(const char* key, int64_t value, int64_t lo, int64_t hi, const char* note = "") {
  require(value >= lo && value <= hi, key, value,
          str("must be in [", lo, ", ", hi, "]", *note ? " " : "", note));
}
constexpr int64_t kMaxVocab = (int64_t{1} << 31) - 1;  // ids are stored as 32-bit integers
constexpr int64_t kMaxWidth = int64_t{1} << 20;        // hidden size, ranks
constexpr int64_t kMaxInner = int64_t{1} << 24;        // MLP hidden sizes, sequence lengths
constexpr int64_t kMaxHeads = int64_t{1} << 14;
constexpr int64_t kMaxHeadDim = int64_t{1} << 16;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxExperts = int64_t{1} << 16;
constexpr int64_t kMaxMtpDepth = 64;
constexpr int64_t kMaxStep = int64_t{1} << 40;
}  // namespace

void ModelConfig::validate() const {
  require_in("vocab_size", vocab_size, 2, kMaxVocab);
  require_in("hidden_size", hidden_size, 1, kMaxWidth);
  require_in("num_layers", num_layers, 1, kMaxLayers);
  require(num_dense_layers >= 0 && num_dense_layers <= num_layers, "num_dense_layers",
          num_dense_layers, str("must be in [0, model.num_layers (", num_layers, ")]"));
  require_in("intermediate_size", intermediate_size, 1, kMaxInner);
  require_in("max_seq_len", max_seq_len, 2, kMaxInner);
  require(norm_eps > 0 && norm_eps <= 1, "norm_eps", norm_eps, "must be in (0, 1]");
  require(init_std > 0 && init_std <= 1, "init_std", init_std, "must be in (0, 1]");
  require_in("num_heads", num_heads, 1, kMaxHeads);
  require_in("q_lora_rank", q_lora_rank, 0, kMaxWidth, "(0 = direct query projection)");
  require_in("kv_lora_rank", kv_lora_rank, 1, kMaxWidth);
  require_in("qk_nope_head_dim", qk_nope_head_dim, 0, kMaxHeadDim);
  require_in("qk_rope_head_dim", qk_rope_head_dim, 0, kMaxHeadDim);
  require(qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", qk_rope_head_dim, "must be even and >= 0");
  require(qk_head_dim() >= 1, "qk_nope_head_dim", qk_nope_head_dim,
          "qk_nope_head_dim + qk_rope_head_dim must be >= 1");
  require_in("v_head_dim", v_head_dim, 1, kMaxHeadDim);
  // RoPE and YaRN: the YaRN correction divides by log(rope_theta) and takes the log of
  // rope_original_max_seq_len / (2 pi beta); out of these ranges the tables hold NaN.
  require(rope_theta > 1 && rope_theta <= 1e12, "rope_theta", rope_theta, "must be in (1, 1e12]");
  require(rope_factor >= 1 && rope_factor <= 1e6, "rope_factor", rope_factor,
          "must be in [1, 1e6] (1 = no scaling)");
  require_in("rope_original_max_seq_len", rope_original_max_seq_len, 1, kMaxInner);
  require(rope_beta_slow > 0, "rope_beta_slow", rope_beta_slow, "must be > 0");
  require(rope_beta_fast > rope_beta_slow && rope_beta_fast <= 1e6, "rope_beta_fast",
          rope_beta_fast, str("must be in (model.rope_beta_slow (", rope_beta_slow, "), 1e6]"));
  require(rope_mscale >= 0 && rope_mscale <= 100, "rope_mscale", rope_mscale,
          "must be in [0, 100]");
  require(rope_mscale_all_dim >= 0 && rope_mscale_all_dim <= 100, "rope_mscale_all_dim",
          rope_mscale_all_dim, "must be in [0, 100]");
  bool has_moe = num_dense_layers < num_layers;
  if (has_moe) {
    require_in("num_routed_experts", num_routed_experts, 1, kMaxExperts);
    require_in("num_shared_experts", num_shared_experts, 0, kMaxExperts);
    require(top_k >= 1 && top_k <= num_routed_experts, "top_k", top_k,
            str("must be in [1, model.num_routed_experts (", num_routed_experts, ")]"));
    require_in("moe_intermediate_size", moe_intermediate_size, 1, kMaxInner);
  }
  if (scoring != "sigmoid" && scoring != "softmax") {
    throw ConfigError(str("model.scoring = '", scoring, "': must be one of sigmoid | softmax"));
  }
  require(num_groups >= 1 && num_routed_experts % num_groups == 0, "num_groups", num_groups,
          str("must be >= 1 and divide model.num_routed_experts (", num_routed_experts, ")"));
  require(topk_groups >= 1 && topk_groups <= num_groups, "topk_groups", topk_groups,
          str("must be in [1, model.num_groups (", num_groups, ")]"));
  if (num_groups > 1) {
    int64_t per_group = num_routed_experts / num_groups;
    require(topk_groups * per_group >= top_k, "topk_groups", topk_groups,
            str("topk_groups x experts per group (", topk_groups * per_group,
                ") must be >= model.top_k (", top_k, ")"));
    if (router_bias) {
      require(per_group >= 2, "num_groups", num_groups,
              "with router_bias a group's score is the sum of its top-2 scores: groups need >= 2 "
              "experts");
    }
  }
  // Loss weights and scales: beyond these the first step overflows fp32.
  require(route_scale > 0 && route_scale <= 100, "route_scale", route_scale, "must be in (0, 100]");
  require(bias_update_rate >= 0 && bias_update_rate <= 1, "bias_update_rate", bias_update_rate,
          "must be in [0, 1]");
  require(seq_aux_alpha >= 0 && seq_aux_alpha <= 100, "seq_aux_alpha", seq_aux_alpha,
          "must be in [0, 100]");
  require(z_loss_coef >= 0 && z_loss_coef <= 100, "z_loss_coef", z_loss_coef,
          "must be in [0, 100]");
  require(bias_update_until_step >= -1 && bias_update_until_step <= kMaxStep,
          "bias_update_until_step", bias_update_until_step,
          str("must be in [-1, ", kMaxStep, "] (-1 = all steps)"));
  // At capacity_factor = num_routed_experts an expert holds every token: larger is dropless.
  require(capacity_factor == 0 || (capacity_factor >= 1.0 / num_routed_experts &&
                                   capacity_factor <= static_cast<double>(num_routed_experts)),
          "capacity_factor", capacity_factor,
          str("must be 0 (dropless) or in [1 / model.num_routed_experts, model.num_routed_experts "
              "(",
              num_routed_experts, ")]"));
  require_in("max_nodes_per_token", max_nodes_per_token, 0, kMaxWidth, "(0 = off)");
  require_in("mtp_depth", mtp_depth, 0, kMaxMtpDepth);
  require(mtp_loss_weight >= 0 && mtp_loss_weight <= 100, "mtp_loss_weight", mtp_loss_weight,
          "must be in [0, 100]");
  require(mtp_loss_weight_until_step >= -1 && mtp_loss_weight_until_step <= kMaxStep,
          "mtp_loss_weight_until_step", mtp_loss_weight_until_step,
          str("must be in [-1, ", kMaxStep, "] (-1 = all steps)"));
  require(mtp_loss_weight_after >= 0 && mtp_loss_weight_after <= 100, "mtp_loss_weight_after",
          mtp_loss_weight_after, "must be in [0, 100]");
  if (recompute != "none" && recompute != "norm_up" && recompute != "full") {
    throw ConfigError(
        str("model.recompute = '", recompute, "': must be one of none | norm_up | full"));
  }
  if (attention_impl != "sdpa" && attention_impl != "explicit") {
    throw ConfigError(
        str("model.attention_impl = '", attention_impl, "': must be one of sdpa | explicit"));
  }
  if (experts_impl != "auto" && experts_impl != "loop" && experts_impl != "grouped") {
    throw ConfigError(
        str("model.experts_impl = '", experts_impl, "': must be one of auto | loop | grouped"));
  }
  if (cpu_bf16_products != "auto" && cpu_bf16_products != "native" &&
      cpu_bf16_products != "widened") {
    throw ConfigError(str("model.cpu_bf16_products = '", cpu_bf16_products,
                          "': must be one of auto | native | widened"));
  }
}

}  // namespace condensa::model
