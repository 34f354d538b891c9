// The DeepSeekMoE layer: route -> dispatch -> experts -> combine, plus shared experts.
//
// The layer owns a router, this rank's slice of the routed experts (stacked weights, one
// slice per local expert, so expert e of the layer is a global index) and the shared
// experts; a TokenDispatcher (local, or all-to-all over an expert-parallel group) is given to
// it and is the only thing that moves tokens. Per-step statistics (tokens per expert, the
// sequence-wise balance loss, the z-loss) are left on the layer for the trainer to read.
//
// Shape legend: T tokens, D hidden, E local experts, F expert hidden, K top-k, N rows.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "model/layers.h"
#include "model/moe/dispatcher.h"
#include "model/moe/experts.h"
#include "model/moe/router.h"

namespace condensa::model {

// Statistics of the last forward, summed over forwards until reset (micro-batches).
struct MoEStats {
  torch::Tensor tokens_per_expert_E;            // int64, global experts, before capacity dropping
  torch::Tensor tokens_per_expert_language_LE;  // int64 [num_languages, E], if languages given
  int64_t dropped = 0;
};

struct MoELayerImpl : torch::nn::Module {
  MoELayerImpl(const ModelConfig& cfg, std::shared_ptr<TokenDispatcher> dispatcher);
  // x [B, S, D] -> [B, S, D]. `aux_loss` (if non-null) receives alpha * seq-balance + z-loss.
  torch::Tensor forward(const torch::Tensor& x_BSD, torch::Tensor* aux_loss = nullptr);

  ModelConfig cfg;
  std::shared_ptr<TokenDispatcher> dispatcher;
  Router gate{nullptr};
  GroupedExperts experts{nullptr};
  MLP shared_experts{nullptr};
  bool recompute_experts = false;

  // Filled by forward; the trainer reads and resets them once per step.
  MoEStats stats;
  torch::Tensor token_language_T;  // optional: language id per token for routing reports
  void reset_stats();
};
TORCH_MODULE(MoELayer);

}  // namespace condensa::model
