// Routed experts: this rank's slice of the experts of one MoE layer, as stacked SwiGLU weights
// (slice e is global expert first_expert + e).
//
// Shape legend: N rows grouped by local expert, D hidden, E local experts, F expert hidden.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace condensa::model {

struct GroupedExpertsImpl : torch::nn::Module {
  GroupedExpertsImpl(int64_t num_local_experts, int64_t first_expert, int64_t dim, int64_t inter);
  // x_ND rows grouped by local expert -> y_ND. SwiGLU per expert.
  torch::Tensor forward(const torch::Tensor& x_ND, const std::vector<int64_t>& rows_per_expert);

  int64_t num_local_experts, first_expert;
  torch::Tensor gate_proj, up_proj;  // [E, F, D]
  torch::Tensor down_proj;           // [E, D, F]
};
TORCH_MODULE(GroupedExperts);

}  // namespace condensa::model
