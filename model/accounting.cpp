// Parameter and FLOP accounting from a ModelConfig alone. The counts mirror the modules in
// model/transformer.cpp one for one (tests/unit/model/accounting_test.cpp holds them to an
// allocated model); `plan`, the trainer's MFU and docs/model.md use these two functions and
// no other copy of the arithmetic.
#include "model/accounting.h"

namespace condensa::model {

namespace {
double attention_params(const ModelConfig& m) {
  const double D = m.hidden_size, H = m.num_heads;
  double q = m.q_lora_rank == 0
                 ? D * H * m.qk_head_dim()
                 : D * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * H * m.qk_head_dim();
  double kv = D * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank +
              m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim);
  return q + kv + H * m.v_head_dim * D;
}
}  // namespace

ParamCounts count_parameters(const ModelConfig& m) {
  ParamCounts c;
  const double D = m.hidden_size;
  const double expert = 3.0 * D * m.moe_intermediate_size;
  const double attn = attention_params(m);
  const double dense = 3.0 * D * m.intermediate_size;
  const double router = D * m.num_routed_experts;  // (+ the bias buffer, not a parameter)
  const int64_t moe_layers = m.num_layers - m.num_dense_layers;

  c.embedding = static_cast<double>(m.vocab_size) * D;
  c.lm_head = static_cast<double>(m.vocab_size) * D;
  c.attention = m.num_layers * attn;
  c.dense_mlp = m.num_dense_layers * dense;
  c.routed_experts = moe_layers * m.num_routed_experts * expert;
  c.shared_experts = moe_layers * m.num_shared_experts * expert;
  c.routers = moe_layers * router;
  c.norms = (2.0 * m.num_layers + 1) * D;
  c.total = c.embedding + c.lm_head + c.attention + c.dense_mlp + c.routed_experts +
            c.shared_experts + c.routers + c.norms;
  c.active = c.total - moe_layers * (m.num_routed_experts - m.top_k) * expert;

  for (int64_t k = 0; k < m.mtp_depth; ++k) {
    const bool moe = m.is_moe_layer(m.num_layers + k);
    const double ffn_total =
        moe ? (m.num_routed_experts + m.num_shared_experts) * expert + router : dense;
    const double ffn_active = moe ? (m.top_k + m.num_shared_experts) * expert + router : dense;
    const double common =
        2.0 * D * D + attn + 5.0 * D;  // eh_proj, block, enorm, hnorm, 2 block norms, head norm
    c.mtp_total += common + ffn_total;
    c.mtp_active += common + ffn_active;
  }
  return c;
}

double layer_active_params(const ModelConfig& m, int64_t layer) {
  const double D = m.hidden_size;
  const double expert = 3.0 * D * m.moe_intermediate_size;
  const double ffn = m.is_moe_layer(layer)
                         ? (m.top_k + m.num_shared_experts) * expert + D * m.num_routed_experts
                         : 3.0 * D * m.intermediate_size;
  return attention_params(m) + ffn + 2.0 * D;
}

double training_flops_per_token(const ModelConfig& m, int64_t seq_len) {
  const double D = m.hidden_size, H = m.num_heads;
  const double qk = m.qk_head_dim(), v = m.v_head_dim;
  // Attention projections.
  double attn = m.q_lora_rank == 0 ? D * H * qk : D * m.q_lora_rank + m.q_lora_rank * H * qk;
  attn += D * (m.kv_lora_rank + m.qk_rope_head_dim) +
          m.kv_lora_rank * H * (m.qk_nope_head_dim + v) + H * v * D;
  const double dense_mlp = 3.0 * D * m.intermediate_size;
  const double expert = 3.0 * D * m.moe_intermediate_size;
  const double moe = expert * (m.top_k + m.num_shared_experts) + D * m.num_routed_experts;
  const int64_t moe_layers = m.num_layers - m.num_dense_layers;
  double active =
      m.num_layers * attn + m.num_dense_layers * dense_mlp + moe_layers * moe + D * m.vocab_size;
  // MTP modules: eh_proj + one block each (MoE when past the dense layers) + shared head.
  for (int64_t k = 0; k < m.mtp_depth; ++k) {
    active += 2.0 * D * D + attn + (m.is_moe_layer(m.num_layers + k) ? moe : dense_mlp) +
              D * m.vocab_size;
  }
  // Causal attention scores and weighted values: each query sees seq_len / 2 keys on average.
  const double attention_matmuls = (m.num_layers + m.mtp_depth) * H * (qk + v) * seq_len;
  return 6.0 * active + 3.0 * attention_matmuls;
}

}  // namespace condensa::model
