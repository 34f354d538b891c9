#include "model/moe/dispatcher.h"

#include "model/cpu_fused.h"

namespace condensa::model {
namespace {
struct LocalHandle : DispatchHandle {
  PermutationPlan plan;
};
}  // namespace

PermutationPlan plan_permutation(const torch::Tensor& topk_idx_TK,
                                 const torch::Tensor& probs_TK,
                                 bool may_drop) {
  PermutationPlan plan;
  const int64_t T = topk_idx_TK.size(0), K = topk_idx_TK.size(1);
  plan.num_tokens = T;
  auto flat_idx = topk_idx_TK.reshape({-1});
  auto kept = may_drop ? torch::nonzero(flat_idx >= 0).squeeze(1)
                       : torch::arange(T * K, flat_idx.options().dtype(torch::kInt64));
  auto experts = may_drop ? flat_idx.index_select(0, kept) : flat_idx;
  // Stable sort by expert keeps token order inside each expert (deterministic).
  auto order = std::get<1>(experts.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto flat_pos = kept.index_select(0, order);
  plan.expert_of_row = experts.index_select(0, order);
  plan.token_of_row = torch::div(flat_pos, K, "floor");
  plan.prob_of_row = probs_TK.reshape({-1}).index_select(0, flat_pos);
  return plan;
}

torch::Tensor count_rows(const torch::Tensor& expert_of_row, int64_t first, int64_t num_experts) {
  auto local = expert_of_row - first;
  return torch::zeros({num_experts}, expert_of_row.options().dtype(torch::kInt64))
      .scatter_add_(0, local, torch::ones_like(local, torch::kInt64));
}

torch::Tensor unpermute_weighted(const torch::Tensor& y_ND,
                                 const torch::Tensor& token_of_row,
                                 const torch::Tensor& prob_of_row,
                                 int64_t num_tokens) {
  if (cpu_fused_applies(y_ND))
    return fused_weighted_combine(y_ND, token_of_row, prob_of_row, num_tokens);
  return unpermute_weighted_reference(y_ND, token_of_row, prob_of_row, num_tokens);
}

torch::Tensor unpermute_weighted_reference(const torch::Tensor& y_ND,
                                           const torch::Tensor& token_of_row,
                                           const torch::Tensor& prob_of_row,
                                           int64_t num_tokens) {
  auto weighted = y_ND * prob_of_row.to(y_ND.scalar_type()).unsqueeze(1);
  auto out = torch::zeros({num_tokens, y_ND.size(1)}, y_ND.options());
  return out.index_add(0, token_of_row, weighted);
}

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x_TD,
                                     const torch::Tensor& topk_idx_TK,
                                     const torch::Tensor& probs_TK) {
  auto handle = std::make_shared<LocalHandle>();
  handle->plan = plan_permutation(topk_idx_TK, probs_TK, options.may_drop);
  Dispatched d;
  d.x_ND = x_TD.index_select(0, handle->plan.token_of_row);
  d.rows_per_expert_E = count_rows(handle->plan.expert_of_row, 0, num_experts_);
  if (options.host_counts) {
    auto counts = d.rows_per_expert_E.cpu();
    d.rows_per_expert.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts_);
  }
  d.handle = handle;
  return d;
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& y_ND, const DispatchHandle& handle) {
  const auto& plan = static_cast<const LocalHandle&>(handle).plan;
  return unpermute_weighted(y_ND, plan.token_of_row, plan.prob_of_row, plan.num_tokens);
}

}  // namespace condensa::model
