// Balance losses, the bias update and the routing statistics (see balance.h).
#include "model/moe/balance.h"

namespace condensa::model {

torch::Tensor sequence_balance_loss(const torch::Tensor& scores_TE,
                                    const torch::Tensor& topk_idx_TK,
                                    int64_t batch,
                                    int64_t top_k) {
  const int64_t T = scores_TE.size(0), E = scores_TE.size(1), S = T / batch;
  auto norm_scores = scores_TE / (scores_TE.sum(-1, true) + 1e-20);
  auto P_BE = norm_scores.view({batch, S, E}).mean(1);
  auto idx = topk_idx_TK.clamp_min(0);
  auto valid = (topk_idx_TK >= 0);
  auto counts = torch::zeros({T, E}, scores_TE.options())
                    .scatter_add(1, idx, valid.to(scores_TE.scalar_type()));
  auto f_BE = counts.view({batch, S, E}).sum(1) * (static_cast<double>(E) / (top_k * S));
  return (f_BE.detach() * P_BE).sum(-1).mean();
}

void update_balance_bias(torch::Tensor& bias_E, const torch::Tensor& load_E, double gamma) {
  torch::NoGradGuard no_grad;
  auto load = load_E.to(torch::kFloat64);
  bias_E.add_((torch::sign(load.mean() - load) * gamma).to(bias_E.options()));
}

torch::Tensor router_z_loss(const torch::Tensor& logits_TE) {
  return torch::logsumexp(logits_TE, -1).pow(2).mean();
}

void RoutingStats::reset(int64_t num_experts, torch::Device device) {
  const auto options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  tokens_per_expert_E = torch::zeros({num_experts}, options);
  dropped = torch::zeros({}, options);
  last_topk_idx_TK = torch::Tensor();
}

void RoutingStats::add(const torch::Tensor& counts_E, const torch::Tensor& topk_idx_TK) {
  torch::NoGradGuard no_grad;
  const auto device = counts_E.device();
  if (tokens_per_expert_E.device() != device) {
    tokens_per_expert_E = tokens_per_expert_E.to(device);
    dropped = dropped.to(device);
  }
  tokens_per_expert_E.add_(counts_E);
  dropped.add_((topk_idx_TK < 0).sum());
  last_topk_idx_TK = keep_assignments ? topk_idx_TK : torch::Tensor();
}

}  // namespace condensa::model
