// Parameter counts and training FLOPs computed from a ModelConfig alone, without allocating
// the model: the one accounting that `condensa plan`, the trainer's MFU and docs/model.md use.
//
// total: every parameter of the main model (embedding, all layers, final norm, LM head), not
// counting the MTP modules, which are reported separately (the published "671B" is the main
// model; the released checkpoint adds the MTP module's weights on top).
// active: parameters a single token passes through: everything except the routed experts
// it is not routed to (top_k of num_routed_experts per MoE layer), embedding included.
#pragma once

#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace condensa::model {

struct ParamCounts {
  double total = 0, active = 0;
  double embedding = 0, lm_head = 0;
  double attention = 0;  // all layers
  double dense_mlp = 0;  // all dense layers
  double routed_experts = 0, shared_experts = 0, routers = 0;
  double norms = 0;
  double mtp_total = 0, mtp_active = 0;  // MTP modules (excluding the shared embedding/head)
};

ParamCounts count_parameters(const ModelConfig& cfg);

// Parameters one token passes through in decoder layer `layer` (0-based, main model): the
// attention block, its two norms, and the dense MLP or the router + top_k routed + shared
// experts. Summed over the layers with the embedding, final norm and LM head it is `active`.
double layer_active_params(const ModelConfig& cfg, int64_t layer);

// Model FLOPs per trained token (forward + backward): 6 x activated matmul parameters (MTP
// modules and the LM head included, the embedding lookup not) + 3 x the causal attention
// score and value matmuls (each query sees seq_len / 2 keys on average, 2 FLOPs per MAC).
double training_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

}  // namespace condensa::model
