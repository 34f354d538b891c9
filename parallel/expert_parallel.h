// Expert parallelism: where the experts live, the all-to-all token dispatcher over the
// expert-parallel group, and the one function that applies both to a model being built.
//
// The ep ranks own consecutive blocks of num_routed_experts / ep experts (expert_range, the
// only place that says so). dispatch(): permute this rank's (token, k) assignments by global
// expert (hence by destination rank), exchange per-expert counts, all-to-all-v the rows, then
// regroup the received rows by local expert (source-rank order inside each expert). combine()
// is the exact inverse, followed by the weighted sum over k. Both all-to-alls are autograd
// functions whose backward is the all-to-all with send and receive counts swapped, so
// backward is the mirror image of forward.
//
// Expert parallelism is applied when the model is constructed (a rank allocates only its own
// experts): apply_expert_parallel returns the dispatcher factory the model is built with, and
// each dispatcher carries the expert -> node map that node-limited routing needs.
//
// NOTE: dispatch() reads the counts on the host (a device-to-host sync on GPUs), which the
// variable-size all-to-all needs anyway.
#pragma once

#include <vector>

#include "model/moe/dispatcher.h"
#include "parallel/communicator.h"
#include "parallel/mesh.h"

namespace condensa::parallel {

// Global experts [first, first + count) of one ep rank.
struct ExpertRange {
  int64_t first = 0, count = 0;
};
// Experts are contiguous per ep rank: ep rank r of ep_size owns
// [r * E / ep_size, (r + 1) * E / ep_size). ep_size must divide E (validated in the config).
ExpertRange expert_range(int64_t num_experts, int64_t ep_size, int64_t ep_rank);

class AllToAllDispatcher : public model::TokenDispatcher {
 public:
  // expert_node: node of every global expert (empty when node-limited routing is not used).
  AllToAllDispatcher(Communicator& ep_group,
                     int64_t num_experts,
                     std::vector<int64_t> expert_node = {});
  int64_t num_local_experts() const override { return local_.count; }
  int64_t first_local_expert() const override { return local_.first; }
  std::vector<int64_t> node_of_expert() const override { return expert_node_; }
  model::Dispatched dispatch(const torch::Tensor& x_TD,
                             const torch::Tensor& topk_idx_TK,
                             const torch::Tensor& probs_TK) override;
  torch::Tensor combine(const torch::Tensor& y_ND, const model::DispatchHandle& handle) override;

 private:
  Communicator& comm_;
  int64_t num_experts_;
  ExpertRange local_;
  std::vector<int64_t> expert_node_;
};

// Node of every global expert, numbered densely within this rank's ep group (mesh order).
std::vector<int64_t> expert_node_map(const Mesh& mesh, int64_t num_experts);

// Expert parallelism for a model built on `mesh`: every MoE layer gets an all-to-all
// dispatcher over mesh.ep() that knows the node of each expert (ep > 1), or a local
// dispatcher (ep = 1). Pass the result to the Transformer (or MoELayer) constructor.
model::DispatcherFactory apply_expert_parallel(const Mesh& mesh, int64_t num_experts);

// Differentiable variable all-to-all over dim 0 (backward: counts swapped).
torch::Tensor all_to_all_autograd(Communicator& comm,
                                  const torch::Tensor& x,
                                  const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows);

}  // namespace condensa::parallel
