// Load balancing for DeepSeekMoE: the auxiliary-loss-free bias update, the complementary
// sequence-wise balance loss, the router z-loss, and the routing statistics the bias update
// is driven by.
//
// Key design choice: routing statistics stay on the router's device. A forward only adds
// device tensors (no `.item()`, no `.cpu()`), so counting costs no host sync per
// micro-batch; whoever needs the numbers reads them once per step.
//
// Shape legend: T tokens, E routed experts, K top-k.
#pragma once

#include <torch/torch.h>

namespace condensa::model {

// The complementary sequence-wise balance loss of DeepSeek-V3 (without alpha):
// per sequence, f_i = E / (K * S) * #tokens choosing i, P_i = mean over the sequence of the
// scores normalised over all experts; loss = mean over sequences of sum_i f_i * P_i.
torch::Tensor sequence_balance_loss(const torch::Tensor& scores_TE,
                                    const torch::Tensor& topk_idx_TK,
                                    int64_t batch,
                                    int64_t top_k);

// Auxiliary-loss-free balancing update, in place: b_i += gamma * sign(mean(load) - load_i).
// `load_E` is the global tokens-per-expert count of the step.
void update_balance_bias(torch::Tensor& bias_E, const torch::Tensor& load_E, double gamma);

// Router z-loss: mean over tokens of logsumexp(logits)^2.
torch::Tensor router_z_loss(const torch::Tensor& logits_TE);

// Routing statistics of one router, summed over its forwards until reset (the micro-batches
// of a step). Owned by the router; every tensor lives on the device the router runs on.
struct RoutingStats {
  torch::Tensor tokens_per_expert_E;  // int64 [E], assignments before capacity dropping
  torch::Tensor dropped;              // int64 scalar, assignments dropped by capacity
  // When set, the last forward's assignments are kept (topk_idx [T, K], global expert, -1 =
  // dropped), so that a caller can bin them by per-token tags the model knows nothing about.
  bool keep_assignments = false;
  torch::Tensor last_topk_idx_TK;

  explicit RoutingStats(int64_t num_experts = 0) { reset(num_experts, torch::kCPU); }
  // Zero counts on `device` (add() moves them to the device of its inputs if that differs).
  void reset(int64_t num_experts, torch::Device device);
  // One forward: counts before capacity dropping, and the assignments after it. Device only.
  void add(const torch::Tensor& tokens_per_expert_E, const torch::Tensor& topk_idx_TK);
};

}  // namespace condensa::model
