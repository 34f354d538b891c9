#include "model/moe/experts.h"

namespace condensa::model {

GroupedExpertsImpl::GroupedExpertsImpl(int64_t n, int64_t first, int64_t dim, int64_t inter)
    : num_local_experts(n), first_expert(first) {
  gate_proj = register_parameter("gate_proj", torch::empty({n, inter, dim}));
  up_proj = register_parameter("up_proj", torch::empty({n, inter, dim}));
  down_proj = register_parameter("down_proj", torch::empty({n, dim, inter}));
}

torch::Tensor GroupedExpertsImpl::forward(const torch::Tensor& x_ND,
                                          const std::vector<int64_t>& rows) {
  std::vector<torch::Tensor> outs;
  outs.reserve(num_local_experts);
  int64_t offset = 0;
  for (int64_t e = 0; e < num_local_experts; ++e) {
    if (rows[e] == 0) continue;
    auto x = x_ND.narrow(0, offset, rows[e]);
    auto h = torch::silu(torch::matmul(x, gate_proj[e].t())) * torch::matmul(x, up_proj[e].t());
    outs.push_back(torch::matmul(h, down_proj[e].t()));
    offset += rows[e];
  }
  if (outs.empty()) {
    // Keep the graph connected to every expert weight so that gradients exist (as zeros).
    return x_ND.narrow(0, 0, 0) + (gate_proj.sum() + up_proj.sum() + down_proj.sum()) * 0;
  }
  return torch::cat(outs, 0);
}

}  // namespace condensa::model
