#include "model/moe/experts.h"

#include <ATen/autocast_mode.h>

#include <array>
#include <string>

#include "model/cpu_fused.h"

namespace condensa::model {

namespace {

thread_local bool t_weight_grads_in_place = false;

// The parameter behind an experts' weight input: the input itself when it is a leaf that
// requires grad, or the leaf it is a view of; undefined otherwise.
torch::Tensor parameter_behind(const torch::Tensor& w) {
  torch::Tensor leaf = w;
  if (!w.is_leaf() && w.is_view()) leaf = w._base();
  if (!leaf.defined() || !leaf.is_leaf() || !leaf.requires_grad() || leaf.numel() != w.numel())
    return {};
  return leaf;
}

// Where the gradient of weight input `w` (shape `sizes`) is added in place: a view of its
// parameter's .grad, or undefined (return the gradient) outside a WeightGradsInPlaceScope, or
// when .grad is missing, another dtype, not contiguous, or itself differentiable.
torch::Tensor in_place_grad(const torch::Tensor& param, at::IntArrayRef sizes) {
  if (!t_weight_grads_in_place || !param.defined()) return {};
  const torch::Tensor& g = param.grad();
  if (!g.defined() || g.requires_grad() || !g.is_contiguous() ||
      g.scalar_type() != param.scalar_type() || g.sizes() != param.sizes())
    return {};
  return g.view(sizes);
}

// The saved_data key of weight input i's parameter (0 gate, 1 up, 2 down).
std::string param_key(size_t i) { return "param" + std::to_string(i); }

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// t widened to fp32 when `widen`, else t itself.
torch::Tensor wide(const torch::Tensor& t, bool widen) { return widen ? t.to(torch::kFloat32) : t; }

// out = a b, into out's dtype: the product written in place when the dtypes agree, else computed
// in a's dtype and rounded as it is copied in.
void mm_into(torch::Tensor out, const torch::Tensor& a, const torch::Tensor& b) {
  if (out.scalar_type() == a.scalar_type())
    at::mm_out(out, a, b);
  else
    out.copy_(at::mm(a, b));
}

// silu(g) * u: one fused pass on the CPU in fp32/fp64/bf16 (cpu_fused.h), ATen operators
// otherwise.
torch::Tensor swiglu(const torch::Tensor& g, const torch::Tensor& u) {
  return cpu_fused_bf16_applies(g) ? fused_swiglu(g, u) : torch::silu(g) * u;
}

// All local experts as one autograd function. Forward runs each expert's gate and up products
// into two [M, F] buffers, SwiGLU over all rows at once, and each down product into one [M, D]
// output. Backward writes each expert's weight gradients straight into [E, F, D] / [E, D, F]
// buffers and its row gradients into one [N, D] buffer. Composing per-expert autograd ops
// instead (unbind the weights, split the rows, cat the outputs) makes backward stack the weight
// gradients and concatenate the row gradients, full copies of both per layer; and autograd's
// mm(x, w.t()) returns each weight gradient as a transposed view, so that stack is strided.
// Forward keeps x, the gate and up products and SwiGLU's output h (the down product's input,
// which its weight gradient needs first in backward), as autograd would for the composition.
// Products run in the autocast dtype when autocast is on for x's device (cast explicitly here,
// then below autocast); gradients come back in the inputs' dtypes. CPU bf16 with widened
// products (cpu_fused.h): each product takes the fp32 widenings of its bf16 operands, and its
// result is rounded into the same bf16 buffers (weight gradients added to an fp32 .grad stay
// fp32; dx's two products are summed in fp32, then rounded). x and h are then kept as their
// fp32 widenings, and SwiGLU writes h, dg and du widened in its own pass, so no operand is
// widened twice (x and h cost twice their bf16 bytes while saved).
struct ExpertLoopFn : torch::autograd::Function<ExpertLoopFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& x_ND,
                               const torch::Tensor& gate_EFD,
                               const torch::Tensor& up_EFD,
                               const torch::Tensor& down_EDF,
                               const std::vector<int64_t>& rows) {
    auto dtype = x_ND.scalar_type();
    const auto device_type = x_ND.device().type();
    if (at::autocast::is_autocast_enabled(device_type))
      dtype = at::autocast::get_autocast_dtype(device_type);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto x = x_ND.to(dtype).contiguous();
    const bool widen = cpu_widens_bf16(x);
    // Widened: the weights rounded to bf16 and widened in one pass, and kept so for backward.
    auto weight = [&](const torch::Tensor& t) { return widen ? bf16_widened(t) : t.to(dtype); };
    auto gate = weight(gate_EFD), up = weight(up_EFD), down = weight(down_EDF);
    auto xw = wide(x, widen);
    const int64_t E = gate.size(0), F = gate.size(1), D = gate.size(2);
    int64_t M = 0;
    for (int64_t e = 0; e < E; ++e) M += rows[e];
    auto g_MF = torch::empty({M, F}, x.options()), u_MF = torch::empty({M, F}, x.options());
    for (int64_t e = 0, o = 0; e < E; o += rows[e], ++e) {
      if (rows[e] == 0) continue;
      auto x_e = xw.narrow(0, o, rows[e]);
      auto g_e = g_MF.narrow(0, o, rows[e]), u_e = u_MF.narrow(0, o, rows[e]);
      mm_into(g_e, x_e, gate[e].t());
      mm_into(u_e, x_e, up[e].t());
    }
    // Widened, SwiGLU's bf16 result comes widened (one pass), and h is kept so for backward.
    auto hw = widen ? fused_swiglu(g_MF, u_MF, /*widened=*/true) : swiglu(g_MF, u_MF);
    auto y_MD = torch::empty({M, D}, x.options());
    for (int64_t e = 0, o = 0; e < E; o += rows[e], ++e) {
      if (rows[e] == 0) continue;
      auto y_e = y_MD.narrow(0, o, rows[e]);
      mm_into(y_e, hw.narrow(0, o, rows[e]), down[e].t());
    }
    // Widened, x and h are saved as their fp32 widenings (the values of the bf16 tensors, in
    // twice the bytes): backward's products take them so, and need no second widening.
    ctx->save_for_backward({xw, gate, up, down, g_MF, u_MF, hw});
    ctx->saved_data["widened"] = widen;
    const std::array<const torch::Tensor*, 3> weights = {&gate_EFD, &up_EFD, &down_EDF};
    for (size_t i = 0; i < weights.size(); ++i) {
      auto p = parameter_behind(*weights[i]);
      if (p.defined()) ctx->saved_data[param_key(i)] = p;
    }
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{
        static_cast<int64_t>(x_ND.scalar_type()), static_cast<int64_t>(gate_EFD.scalar_type()),
        static_cast<int64_t>(up_EFD.scalar_type()), static_cast<int64_t>(down_EDF.scalar_type())};
    return y_MD;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    // Backward runs under the forward's autocast state: its products are in the saved dtypes.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    // x and h, widened when the products are (`xw`, `hw` in forward).
    const auto &xw = saved[0], &gate = saved[1], &up = saved[2], &down = saved[3];
    const auto &g_MF = saved[4], &u_MF = saved[5], &hw = saved[6];
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t E = gate.size(0);
    // The compute dtype is g's (x's before widening).
    const auto compute = g_MF.options();
    auto dy_MD = grads[0].defined() ? grads[0].to(g_MF.scalar_type()).contiguous()
                                    : torch::zeros({g_MF.size(0), xw.size(1)}, compute);
    const bool widen = ctx->saved_data["widened"].toBool();
    // Widened, the saved weights, x and h are fp32 already (rounded to bf16's precision).
    auto dyw = wide(dy_MD, widen);
    // Each weight's gradient goes into a returned [E, ...] buffer, or into its parameter's .grad.
    std::array<torch::Tensor, 3> into, ret;
    const std::array<const torch::Tensor*, 3> w = {&gate, &up, &down};
    for (size_t i = 0; i < 3; ++i) {
      const auto key = param_key(i);
      if (ctx->saved_data.count(key))
        into[i] = in_place_grad(ctx->saved_data[key].toTensor(), w[i]->sizes());
      // Widened products return the weight gradient in the weight's own dtype, unrounded.
      if (!into[i].defined())
        ret[i] =
            widen ? torch::empty(w[i]->sizes(),
                                 w[i]->options().dtype(static_cast<at::ScalarType>(dtypes[i + 1])))
                  : torch::empty_like(*w[i]);
    }
    // dW_e = a^T b: written into the returned buffer, or added to .grad (in the product when the
    // dtypes agree; through a product in the compute dtype, converted as it is added, when not).
    auto weight_grad = [&](size_t i, int64_t e, const torch::Tensor& a_t, const torch::Tensor& b) {
      if (!into[i].defined()) {
        mm_into(ret[i][e], a_t, b);
        return;
      }
      auto t = into[i][e];
      if (t.scalar_type() == a_t.scalar_type())
        t.addmm_(a_t, b);
      else
        add_converted(t, at::mm(a_t, b));
    };
    auto dh_MF = torch::empty_like(g_MF);
    for (int64_t e = 0, o = 0; e < E; o += rows[e], ++e) {
      if (rows[e] == 0) {
        for (size_t i = 0; i < 3; ++i)
          if (ret[i].defined()) ret[i][e].zero_();
        continue;
      }
      auto dy_e = dyw.narrow(0, o, rows[e]);
      auto dh_e = dh_MF.narrow(0, o, rows[e]);
      weight_grad(2, e, dy_e.t(), hw.narrow(0, o, rows[e]));
      mm_into(dh_e, dy_e, down[e]);
    }
    // dg and du, widened in the same pass when the products are.
    torch::Tensor dgw, duw;
    if (cpu_fused_bf16_applies(g_MF)) {
      std::tie(dgw, duw) = fused_swiglu_backward(g_MF, u_MF, dh_MF, widen);
    } else {
      duw = dh_MF * torch::silu(g_MF);
      dgw = at::silu_backward(dh_MF.mul_(u_MF), g_MF);
    }
    auto dx = torch::empty({xw.size(0), xw.size(1)}, compute);
    int64_t o = 0;
    for (int64_t e = 0; e < E; o += rows[e], ++e) {
      if (rows[e] == 0) continue;
      auto x_e = xw.narrow(0, o, rows[e]);
      auto dg_e = dgw.narrow(0, o, rows[e]), du_e = duw.narrow(0, o, rows[e]);
      weight_grad(0, e, dg_e.t(), x_e);
      weight_grad(1, e, du_e.t(), x_e);
      auto dx_e = dx.narrow(0, o, rows[e]);
      if (widen) {
        dx_e.copy_(at::mm(dg_e, gate[e]).addmm_(du_e, up[e]));
      } else {
        at::mm_out(dx_e, dg_e, gate[e]);
        dx_e.addmm_(du_e, up[e]);
      }
    }
    if (o < dx.size(0)) dx.narrow(0, o, dx.size(0) - o).zero_();  // rows past the experts'
    auto as = [&](const torch::Tensor& t, int i) {
      return t.defined() ? t.to(static_cast<at::ScalarType>(dtypes[i])) : torch::Tensor();
    };
    return {as(dx, 0), as(ret[0], 1), as(ret[1], 2), as(ret[2], 3), torch::Tensor()};
  }
};

}  // namespace

GroupedExpertsImpl::GroupedExpertsImpl(int64_t n, int64_t first, int64_t dim, int64_t inter)
    : num_local_experts(n), first_expert(first) {
  gate_proj = register_parameter("gate_proj", torch::empty({n, inter, dim}));
  up_proj = register_parameter("up_proj", torch::empty({n, inter, dim}));
  down_proj = register_parameter("down_proj", torch::empty({n, dim, inter}));
}

torch::Tensor swiglu_per_expert(const torch::Tensor& x_ND,
                                const torch::Tensor& gate_EFD,
                                const torch::Tensor& up_EFD,
                                const torch::Tensor& down_EDF,
                                const std::vector<int64_t>& rows) {
  const int64_t E = gate_EFD.size(0);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) >= E, "experts: ", rows.size(), " row counts for ",
              E, " local experts");
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) total += rows[e];
  TORCH_CHECK(total <= x_ND.size(0), "experts: the row counts add up to ", total, " but x has ",
              x_ND.size(0), " rows");
  std::vector<int64_t> local(rows.begin(), rows.begin() + E);
  return ExpertLoopFn::apply(x_ND, gate_EFD, up_EFD, down_EDF, local);
}

torch::Tensor GroupedExpertsImpl::forward(const torch::Tensor& x_ND,
                                          const std::vector<int64_t>& rows) {
  return swiglu_per_expert(x_ND, gate_proj, up_proj, down_proj, rows);
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

WeightGradsInPlaceScope::WeightGradsInPlaceScope() : saved_(t_weight_grads_in_place) {
  t_weight_grads_in_place = true;
}
WeightGradsInPlaceScope::~WeightGradsInPlaceScope() { t_weight_grads_in_place = saved_; }
bool WeightGradsInPlaceScope::active() { return t_weight_grads_in_place; }

bool use_grouped_gemm(const std::string& experts_impl, torch::Device device, bool bf16) {
  if (experts_impl == "grouped") return true;
  if (experts_impl == "loop") return false;
  return device.is_cuda() && bf16;  // auto: the CPU kernel is a loop itself (measured no faster)
}

}  // namespace condensa::model
