#include "model/moe/router.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "model/autocast.h"
#include "model/layers.h"

namespace condensa::model {
namespace {

// Discrete part of routing: which experts each token uses. No gradients.
torch::Tensor choose_experts(const torch::Tensor& scores,
                             const torch::Tensor& bias,
                             const RoutingOptions& opt) {
  torch::NoGradGuard no_grad;
  const int64_t T = scores.size(0), E = scores.size(1);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto choice = scores.detach().to(torch::kFloat32);
  if (opt.bias_in_use && bias.defined())
    choice = choice + bias.detach().to(torch::kFloat32).unsqueeze(0);

  if (opt.num_groups > 1) {
    // A group's score: sum of its top-2 biased scores with the bias, else its max score.
    auto grouped = choice.view({T, opt.num_groups, E / opt.num_groups});
    auto group_scores =
        opt.bias_in_use ? std::get<0>(grouped.topk(2, -1)).sum(-1) : std::get<0>(grouped.max(-1));
    auto keep = std::get<1>(group_scores.topk(opt.topk_groups, -1));
    auto mask =
        torch::ones({T, opt.num_groups}, torch::kBool).to(scores.device()).scatter(1, keep, false);
    choice = grouped.masked_fill(mask.unsqueeze(-1), neg_inf).view({T, E});
  }
  if (opt.max_nodes > 0 && !opt.expert_node.empty()) {
    const int64_t num_nodes = *std::max_element(opt.expert_node.begin(), opt.expert_node.end()) + 1;
    if (num_nodes > opt.max_nodes) {
      // A node's affinity: the sum of the highest top_k / max_nodes scores of its experts.
      const int64_t per_node_k = std::max<int64_t>(1, opt.top_k / opt.max_nodes);
      auto node_of = torch::tensor(opt.expert_node, torch::kInt64).to(scores.device());
      std::vector<torch::Tensor> node_scores;
      for (int64_t n = 0; n < num_nodes; ++n) {
        auto cols = torch::nonzero(node_of == n).squeeze(1);
        auto k = std::min<int64_t>(per_node_k, cols.numel());
        node_scores.push_back(std::get<0>(choice.index_select(1, cols).topk(k, -1)).sum(-1));
      }
      auto keep = std::get<1>(torch::stack(node_scores, 1).topk(opt.max_nodes, -1));
      auto node_mask =
          torch::ones({T, num_nodes}, torch::kBool).to(scores.device()).scatter(1, keep, false);
      choice = choice.masked_fill(node_mask.index_select(1, node_of), neg_inf);
    }
  }
  return std::get<1>(choice.topk(opt.top_k, -1));
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> select_experts(const torch::Tensor& scores_TE,
                                                       const torch::Tensor& bias_E,
                                                       const RoutingOptions& opt) {
  auto idx = choose_experts(scores_TE, bias_E, opt);
  auto probs = upcast(scores_TE).gather(1, idx);  // unbiased scores of the chosen experts
  if (opt.norm_topk_prob) probs = probs / (probs.sum(-1, /*keepdim=*/true) + 1e-20);
  probs = probs * opt.route_scale;
  return {idx, probs};
}

void apply_capacity(torch::Tensor& idx,
                    torch::Tensor& probs,
                    int64_t num_experts,
                    double capacity_factor) {
  if (capacity_factor <= 0) return;
  const int64_t T = idx.size(0), K = idx.size(1);
  const int64_t capacity =
      static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(T * K) / num_experts));
  // Rank of each assignment within its expert, in token order (then k order).
  auto flat = idx.reshape({-1});
  auto one_hot = torch::zeros({T * K, num_experts}, idx.options()).scatter(1, flat.unsqueeze(1), 1);
  auto position = (one_hot.cumsum(0) * one_hot).sum(1) - 1;  // [T*K]
  auto dropped = (position >= capacity).view({T, K});
  idx = idx.masked_fill(dropped, -1);
  probs = probs.masked_fill(dropped, 0.0);
}

RouterImpl::RouterImpl(const ModelConfig& c) : cfg(c) {
  weight = register_parameter("weight", torch::empty({cfg.num_routed_experts, cfg.hidden_size}));
  e_score_correction_bias =
      register_buffer("e_score_correction_bias", torch::zeros({cfg.num_routed_experts}));
  routing.top_k = cfg.top_k;
  routing.num_groups = cfg.num_groups;
  routing.topk_groups = cfg.topk_groups;
  routing.norm_topk_prob = cfg.norm_topk_prob;
  routing.route_scale = cfg.route_scale;
  routing.bias_in_use = cfg.router_bias;
  routing.max_nodes = cfg.max_nodes_per_token;
  reset_stats();
}

void RouterImpl::reset_stats() { stats.reset(cfg.num_routed_experts, weight.device()); }

RouterOutput RouterImpl::forward(const torch::Tensor& x_TD) {
  RouterOutput out;
  {
    // The router runs in fp32 even under bf16 autocast (which would otherwise cast this matmul
    // back to bf16): bf16 scores have 8 mantissa bits, so near-equal affinities tie and the
    // selection bias (steps of bias_update_rate, 1e-3) is lost in rounding.
    AutocastScope fp32(AutocastState{});
    out.logits_TE = torch::matmul(upcast(x_TD), upcast(weight).t());
  }
  out.scores_TE =
      cfg.scoring == "sigmoid" ? torch::sigmoid(out.logits_TE) : torch::softmax(out.logits_TE, -1);
  std::tie(out.topk_idx_TK, out.probs_TK) =
      select_experts(out.scores_TE, e_score_correction_bias, routing);
  // NOTE: counted with scatter_add, not bincount: bincount reads its input's range on the host
  // (a device-to-host sync on GPUs). Integer counts, so the result is the same.
  auto flat_idx = out.topk_idx_TK.reshape({-1});
  out.tokens_per_expert_E = torch::zeros({cfg.num_routed_experts}, flat_idx.options())
                                .scatter_add_(0, flat_idx, torch::ones_like(flat_idx));
  apply_capacity(out.topk_idx_TK, out.probs_TK, cfg.num_routed_experts, cfg.capacity_factor);
  stats.add(out.tokens_per_expert_E, out.topk_idx_TK);
  return out;
}

}  // namespace condensa::model
