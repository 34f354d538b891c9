// DeepSeekMoE router: affinity scores, biased group/node-limited top-k selection, gate weights.
//
// Glossary (as Megatron-Core): logits = x W^T; scores = sigmoid(logits) or softmax(logits);
// the balancing bias b is added to the scores for *selection only*; probs = the selected
// unbiased scores, normalised to sum 1 (norm_topk_prob) and times route_scale. The router
// never communicates: node-limited routing gets the expert -> node map as a value.
//
// Shape legend: T tokens, D hidden, E routed experts, K top-k, G groups.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/model_config.h"
#include "model/moe/balance.h"

namespace condensa::model {

struct RouterOutput {
  torch::Tensor logits_TE;            // fp32
  torch::Tensor scores_TE;            // unbiased affinities, fp32
  torch::Tensor topk_idx_TK;          // int64 global expert index; -1 = dropped by capacity
  torch::Tensor probs_TK;             // fp32 gate weights (0 where dropped)
  torch::Tensor tokens_per_expert_E;  // int64, assignments before capacity dropping
};

// Pure routing maths on given scores (testable on hand-made tables).
struct RoutingOptions {
  int64_t top_k = 1;
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  bool norm_topk_prob = true;
  double route_scale = 1.0;
  bool bias_in_use = false;
  // Node-limited routing: expert e lives on node expert_node[e]; each token uses at most
  // max_nodes nodes, chosen by the sum of the top (top_k / max_nodes) biased scores per node.
  std::vector<int64_t> expert_node;
  int64_t max_nodes = 0;
};
// scores [T, E] (unbiased), bias [E] or undefined -> (topk_idx [T, K], probs [T, K]).
std::pair<torch::Tensor, torch::Tensor> select_experts(const torch::Tensor& scores_TE,
                                                       const torch::Tensor& bias_E,
                                                       const RoutingOptions& opt);

// Capacity dropping (policy "position": within each expert, the earliest assignments in
// token order are kept, the rest dropped: idx set to -1 and prob to 0).
void apply_capacity(torch::Tensor& topk_idx_TK,
                    torch::Tensor& probs_TK,
                    int64_t num_experts,
                    double capacity_factor);

// Every forward adds its routing to `stats` (on the device, no host sync); read and reset
// them through the model-level API in transformer.h.
struct RouterImpl : torch::nn::Module {
  explicit RouterImpl(const ModelConfig& cfg);
  RouterOutput forward(const torch::Tensor& x_TD);
  // Zero the statistics, on the device of the router's weight.
  void reset_stats();

  ModelConfig cfg;
  RoutingOptions routing;
  torch::Tensor weight;                   // [E, D]  (HF: mlp.gate.weight)
  torch::Tensor e_score_correction_bias;  // [E] buffer (HF name), selection only
  RoutingStats stats;
};
TORCH_MODULE(Router);

}  // namespace condensa::model
