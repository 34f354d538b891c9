// Load balancing for DeepSeekMoE: the auxiliary-loss-free bias update, the complementary
// sequence-wise balance loss and the router z-loss.
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

}  // namespace condensa::model
