#include "model/model_config.h"

#include "common/error.h"

namespace condensa::model {
namespace {
template <class T>
void require(bool ok, const char* key, const T& value, const std::string& rule) {
  if (!ok) throw ConfigError(str("model.", key, " = ", value, ": ", rule));
}
}  // namespace

void ModelConfig::validate() const {
  require(vocab_size >= 2, "vocab_size", vocab_size, "must be >= 2");
  require(hidden_size >= 1, "hidden_size", hidden_size, "must be >= 1");
  require(num_layers >= 1, "num_layers", num_layers, "must be >= 1");
  require(num_dense_layers >= 0 && num_dense_layers <= num_layers, "num_dense_layers",
          num_dense_layers, str("must be in [0, model.num_layers (", num_layers, ")]"));
  require(intermediate_size >= 1, "intermediate_size", intermediate_size, "must be >= 1");
  require(max_seq_len >= 2, "max_seq_len", max_seq_len, "must be >= 2");
  require(norm_eps > 0, "norm_eps", norm_eps, "must be > 0");
  require(init_std > 0, "init_std", init_std, "must be > 0");
  require(num_heads >= 1, "num_heads", num_heads, "must be >= 1");
  require(q_lora_rank >= 0, "q_lora_rank", q_lora_rank,
          "must be >= 0 (0 = direct query projection)");
  require(kv_lora_rank >= 1, "kv_lora_rank", kv_lora_rank, "must be >= 1");
  require(qk_nope_head_dim >= 0, "qk_nope_head_dim", qk_nope_head_dim, "must be >= 0");
  require(qk_rope_head_dim >= 0 && qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", qk_rope_head_dim,
          "must be even and >= 0");
  require(qk_head_dim() >= 1, "qk_nope_head_dim", qk_nope_head_dim,
          "qk_nope_head_dim + qk_rope_head_dim must be >= 1");
  require(v_head_dim >= 1, "v_head_dim", v_head_dim, "must be >= 1");
  require(rope_theta > 0, "rope_theta", rope_theta, "must be > 0");
  require(rope_factor >= 1, "rope_factor", rope_factor, "must be >= 1 (1 = no scaling)");
  bool has_moe = num_dense_layers < num_layers;
  if (has_moe) {
    require(num_routed_experts >= 1, "num_routed_experts", num_routed_experts, "must be >= 1");
    require(num_shared_experts >= 0, "num_shared_experts", num_shared_experts, "must be >= 0");
    require(top_k >= 1 && top_k <= num_routed_experts, "top_k", top_k,
            str("must be in [1, model.num_routed_experts (", num_routed_experts, ")]"));
    require(moe_intermediate_size >= 1, "moe_intermediate_size", moe_intermediate_size,
            "must be >= 1");
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
  require(route_scale > 0, "route_scale", route_scale, "must be > 0");
  require(bias_update_rate >= 0, "bias_update_rate", bias_update_rate, "must be >= 0");
  require(seq_aux_alpha >= 0, "seq_aux_alpha", seq_aux_alpha, "must be >= 0");
  require(z_loss_coef >= 0, "z_loss_coef", z_loss_coef, "must be >= 0");
  require(capacity_factor == 0 || capacity_factor >= 1.0 / num_routed_experts, "capacity_factor",
          capacity_factor, "must be 0 (dropless) or > 0");
  require(max_nodes_per_token >= 0, "max_nodes_per_token", max_nodes_per_token,
          "must be >= 0 (0 = off)");
  require(mtp_depth >= 0, "mtp_depth", mtp_depth, "must be >= 0");
  require(mtp_loss_weight >= 0, "mtp_loss_weight", mtp_loss_weight, "must be >= 0");
  require(mtp_loss_weight_after >= 0, "mtp_loss_weight_after", mtp_loss_weight_after,
          "must be >= 0");
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
}

}  // namespace condensa::model
