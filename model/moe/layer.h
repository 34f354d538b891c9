// The DeepSeekMoE layer: route -> dispatch -> experts -> combine, plus shared experts.
//
// The layer owns a router, this rank's slice of the routed experts (stacked weights, one
// slice per local expert, so expert e of the layer is a global index) and the shared
// experts; a TokenDispatcher (local, or all-to-all over an expert-parallel group) is given to
// it and is the only thing that moves tokens (and tells the router the node of each expert).
// The balance and z-losses go to the caller through `aux_loss`; routing statistics are kept
// by the router (RoutingStats, on the device) and read through the model-level API.
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
};
TORCH_MODULE(MoELayer);

}  // namespace condensa::model
