#include "model/moe/experts.h"

#include <ATen/autocast_mode.h>

namespace condensa::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// y = x w^T for one expert, in the autocast dtype when autocast is on for x's device. Its weight
// gradient is computed as g^T x: [out, in] and contiguous like the weight, so the per-expert
// gradients stack (unbind's backward) with plain copies. Autograd's mm(x, w.t()) hands back a
// transposed view, and stacking those was a strided copy of every expert weight per layer.
struct ExpertLinear : torch::autograd::Function<ExpertLinear> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& x,
                               const torch::Tensor& w) {
    auto dtype = x.scalar_type();
    const auto device_type = x.device().type();
    if (at::autocast::is_autocast_enabled(device_type))
      dtype = at::autocast::get_autocast_dtype(device_type);
    // The casts are explicit here; the product runs below autocast.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto xc = x.to(dtype), wc = w.to(dtype);
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    return xc.mm(wc.t());
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& xc = saved[0];
    const auto& wc = saved[1];
    auto g = grads[0].to(xc.scalar_type());
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    return {g.mm(wc).to(x_dtype), g.t().mm(xc).to(w_dtype)};
  }
};

}  // namespace

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
  // One unbind per weight and one split of the rows: their backward stacks the per-expert
  // gradients and concatenates the row gradients once. (Indexing gate_proj[e] or narrowing
  // x_ND per expert would make each expert's backward write a zero-filled copy of the whole
  // tensor.)
  auto gate = gate_proj.unbind(0), up = up_proj.unbind(0), down = down_proj.unbind(0);
  std::vector<int64_t> sizes(rows.begin(), rows.begin() + num_local_experts);
  int64_t total = 0;
  for (int64_t r : sizes) total += r;
  if (total < x_ND.size(0)) sizes.push_back(x_ND.size(0) - total);  // rows past the experts'
  auto xs = x_ND.split_with_sizes(sizes, 0);
  for (int64_t e = 0; e < num_local_experts; ++e) {
    if (rows[e] == 0) continue;
    const auto& x = xs[e];
    auto h = torch::silu(ExpertLinear::apply(x, gate[e])) * ExpertLinear::apply(x, up[e]);
    outs.push_back(ExpertLinear::apply(h, down[e]));
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
