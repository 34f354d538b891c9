// Expert-parallel token dispatcher: all-to-all over the expert-parallel group.
//
// The ep ranks own consecutive blocks of num_routed_experts / ep experts. dispatch():
// permute this rank's (token, k) assignments by global expert (hence by destination rank),
// exchange per-expert counts, all-to-all-v the rows, then regroup the received rows by local
// expert (source-rank order inside each expert). combine() is the exact inverse, followed by
// the weighted sum over k. Both all-to-alls are autograd functions whose backward is the
// all-to-all with send and receive counts swapped, so backward is the mirror image of forward.
//
// NOTE: dispatch() reads the counts on the host (a device-to-host sync on GPUs), which the
// variable-size all-to-all needs anyway.
#pragma once

#include "model/moe/dispatcher.h"
#include "parallel/communicator.h"

namespace condensa::parallel {

class AllToAllDispatcher : public model::TokenDispatcher {
 public:
  AllToAllDispatcher(Communicator& ep_group, int64_t num_experts);
  int64_t num_local_experts() const override { return num_local_; }
  int64_t first_local_expert() const override { return first_local_; }
  model::Dispatched dispatch(const torch::Tensor& x_TD,
                             const torch::Tensor& topk_idx_TK,
                             const torch::Tensor& probs_TK) override;
  torch::Tensor combine(const torch::Tensor& y_ND, const model::DispatchHandle& handle) override;

 private:
  Communicator& comm_;
  int64_t num_experts_, num_local_, first_local_;
};

// Differentiable variable all-to-all over dim 0 (backward: counts swapped).
torch::Tensor all_to_all_autograd(Communicator& comm,
                                  const torch::Tensor& x,
                                  const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows);

}  // namespace condensa::parallel
