// Parameter names are an API: checkpoints, the Hugging Face export and import, the
// initialisation and the optimizer groups all select tensors by name. This file is the one
// place that knows the grammar of our names; everything else asks it.
//
// Our names are torch module paths that mirror Hugging Face DeepseekV3 without the "model."
// prefix:
//   embed_tokens.weight, norm.weight, lm_head.weight
//   layers.N.{input_layernorm,post_attention_layernorm}.weight, layers.N.self_attn.*
//   layers.N.mlp.{gate,up,down}_proj.weight                 dense MLP (first k layers)
//   layers.N.mlp.gate.weight, layers.N.mlp.gate.e_score_correction_bias (router, bias buffer)
//   layers.N.mlp.shared_experts.*
//   layers.N.mlp.experts.{gate,up,down}_proj               routed experts, stacked [E_local, ...]
//   mtp.K.{enorm,hnorm,eh_proj,shared_head_norm}.*, mtp.K.block.<as a layer>
// Stacked expert parameters hold this rank's experts; their layout-independent global names
// (checkpoints, export) put the global expert index after "experts.":
//   layers.N.mlp.experts.gate_proj, expert 5 -> layers.N.mlp.experts.5.gate_proj.
// Hugging Face names: "model." + ours, routed experts with a ".weight" suffix, MTP module K as
// layer num_layers + K ("block." dropped, "shared_head_norm" -> "shared_head.norm"), which also
// carries copies of the shared embedding and head ("embed_tokens", "shared_head.head").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace condensa::model {

inline constexpr const char* kEmbeddingName = "embed_tokens.weight";
inline constexpr const char* kLmHeadName = "lm_head.weight";

// A routed-expert parameter: stacked ("layers.1.mlp.experts.gate_proj") or global per expert
// ("layers.1.mlp.experts.5.gate_proj"), in the main layers or an MTP block.
bool is_expert_param(const std::string& name);
// Global name of slice `expert` of a stacked expert parameter (throws Error for other names).
std::string expert_global_name(const std::string& stacked_name, int64_t expert);
// An RMSNorm weight: initialised to 1, and (being 1-D) without weight decay.
bool is_norm_weight(const std::string& name);
// The router's auxiliary-loss-free balancing bias (a buffer,
// "...mlp.gate.e_score_correction_bias").
bool is_router_bias(const std::string& name);
// A tensor of multi-token-prediction module K ("mtp.K.*").
bool is_mtp_param(const std::string& name);
// "mtp.K." for module k.
std::string mtp_prefix(int64_t k);

// Hugging Face DeepseekV3 name of one of our global tensor names (checkpoint names: experts
// per global index) for a model of `num_layers` main layers.
std::string hf_name(const std::string& global_name, int64_t num_layers);
// Our global name of a Hugging Face tensor name ("model.*" or "lm_head.weight"); nullopt for
// the MTP layers' copies of the shared embedding and head, which we do not store.
std::optional<std::string> global_name_from_hf(const std::string& hf_tensor_name,
                                               int64_t num_layers);
// Hugging Face names of MTP module k's copies of the shared embedding and head, in that order.
std::vector<std::string> hf_mtp_shared_copies(int64_t k, int64_t num_layers);

}  // namespace condensa::model
