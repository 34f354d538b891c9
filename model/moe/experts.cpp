#include "model/moe/experts.h"

#include <ATen/autocast_mode.h>

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
  // One unbind per weight: its backward stacks the per-expert gradients once. (Indexing
  // gate_proj[e] would make each expert's backward write a zero-filled copy of the whole stack.)
  auto gate = gate_proj.unbind(0), up = up_proj.unbind(0), down = down_proj.unbind(0);
  int64_t offset = 0;
  for (int64_t e = 0; e < num_local_experts; ++e) {
    if (rows[e] == 0) continue;
    auto x = x_ND.narrow(0, offset, rows[e]);
    auto h = torch::silu(torch::matmul(x, gate[e].t())) * torch::matmul(x, up[e].t());
    outs.push_back(torch::matmul(h, down[e].t()));
    offset += rows[e];
  }
  if (outs.empty()) {
    // Keep the graph connected to every expert weight so that gradients exist (as zeros).
    return x_ND.narrow(0, 0, 0) + (gate_proj.sum() + up_proj.sum() + down_proj.sum()) * 0;
  }
  return torch::cat(outs, 0);
}

torch::Tensor GroupedExpertsImpl::forward_grouped(const torch::Tensor& x_ND,
                                                  const torch::Tensor& rows_per_expert_E) {
  // Cumulative row ends per expert; rows past the last end are never read or written.
  auto offs = rows_per_expert_E.cumsum(0).to(torch::kInt32);
  auto dtype = x_ND.scalar_type();
  const auto device_type = x_ND.device().type();
  if (at::autocast::is_autocast_enabled(device_type))
    dtype = at::autocast::get_autocast_dtype(device_type);
  auto x = x_ND.to(dtype);
  // Weights [E, out, in] transposed to [E, in, out] views (column-major, as the kernel wants).
  auto w = [&](const torch::Tensor& t) { return t.to(dtype).transpose(-2, -1); };
  auto gate = at::_grouped_mm(x, w(gate_proj), offs);
  auto up = at::_grouped_mm(x, w(up_proj), offs);
  return at::_grouped_mm(torch::silu(gate) * up, w(down_proj), offs);
}

bool use_grouped_gemm(const std::string& experts_impl, torch::Device device, bool bf16) {
  if (experts_impl == "grouped") return true;
  if (experts_impl == "loop") return false;
  return device.is_cuda() && bf16;  // auto: the CPU kernel is a loop itself (measured no faster)
}

}  // namespace condensa::model
