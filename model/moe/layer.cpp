#include "model/moe/layer.h"

#include <ATen/autocast_mode.h>

#include "model/moe/balance.h"
#include "model/recompute.h"

namespace condensa::model {

MoELayerImpl::MoELayerImpl(const ModelConfig& c, std::shared_ptr<TokenDispatcher> d)
    : cfg(c), dispatcher(std::move(d)) {
  gate = register_module("gate", Router(cfg));
  experts = register_module(
      "experts", GroupedExperts(dispatcher->num_local_experts(), dispatcher->first_local_expert(),
                                cfg.hidden_size, cfg.moe_intermediate_size));
  if (cfg.num_shared_experts > 0) {
    shared_experts = register_module(
        "shared_experts", MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts));
  }
  gate->routing.expert_node = dispatcher->node_of_expert();
  dispatcher->options.may_drop = cfg.capacity_factor > 0;
  recompute_experts = cfg.recompute == "full";
}

torch::Tensor MoELayerImpl::forward(const torch::Tensor& x_BSD, torch::Tensor* aux_loss) {
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1), D = x_BSD.size(2);
  auto x_TD = x_BSD.reshape({B * S, D});

  // 1. Route (no communication; the router adds to its statistics on the device).
  RouterOutput r = gate(x_TD);
  if (aux_loss) {
    torch::Tensor loss = torch::zeros({}, r.scores_TE.options());
    if (cfg.seq_aux_alpha > 0) {
      loss = loss +
             cfg.seq_aux_alpha * sequence_balance_loss(r.scores_TE, r.topk_idx_TK, B, cfg.top_k);
    }
    if (cfg.z_loss_coef > 0) loss = loss + cfg.z_loss_coef * router_z_loss(r.logits_TE);
    *aux_loss = loss;
  }

  // 2. Dispatch -> 3. experts -> 4. combine.
  const auto device_type = x_TD.device().type();
  const bool bf16 = x_TD.scalar_type() == torch::kBFloat16 ||
                    (at::autocast::is_autocast_enabled(device_type) &&
                     at::autocast::get_autocast_dtype(device_type) == torch::kBFloat16);
  const bool grouped = use_grouped_gemm(cfg.experts_impl, x_TD.device(), bf16);
  dispatcher->options.host_counts = !grouped;
  Dispatched d = dispatcher->dispatch(x_TD, r.topk_idx_TK, r.probs_TK);
  std::function<torch::Tensor(const torch::Tensor&)> run_experts;
  if (grouped) {
    auto counts = d.rows_per_expert_E;
    run_experts = [this, counts](const torch::Tensor& t) {
      return experts->forward_grouped(t, counts);
    };
  } else {
    auto rows = d.rows_per_expert;
    run_experts = [this, rows](const torch::Tensor& t) { return experts->forward(t, rows); };
  }
  torch::Tensor y_ND = recompute_experts && d.x_ND.requires_grad() ? recompute(run_experts, d.x_ND)
                                                                   : run_experts(d.x_ND);
  auto y_TD = dispatcher->combine(y_ND, *d.handle);

  // 5. Shared experts see every token.
  if (shared_experts) y_TD = y_TD + shared_experts(x_TD);
  return y_TD.view({B, S, D});
}

}  // namespace condensa::model
