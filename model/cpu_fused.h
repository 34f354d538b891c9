// Fused CPU kernels for the element-wise parts of a block: RMSNorm, MLA's rope applied while
// assembling the query and key heads, and SwiGLU's product.
//
// Key design choice: each is one autograd function whose forward and backward are single
// passes over contiguous rows. The ATen compositions they replace (layers.cpp: upcast, square,
// mean, rsqrt, two products; rope as strided pair products, a stack and a concatenation per
// tensor) run 6-10 passes in backward, several of them over strided views, which took about
// 6% of a one-thread training step on the d512 shape (docs/performance.md). The compositions
// stay as the reference: they serve every other device and dtype, and the tests compare the
// two (tests/unit/model/cpu_fused_test.cpp).
//
// Shape legend: B batch, S sequence, H heads, N nope dims, R rope dims (P = R/2 pairs).
#pragma once

#include <torch/torch.h>

namespace condensa::model {

// True when the fused kernels take x: a CPU tensor in fp32 or fp64 (bf16 under CPU autocast
// and every CUDA tensor use the ATen compositions).
bool cpu_fused_applies(const torch::Tensor& x);
// True when the kernels that also take bf16 (CPU autocast) take x: a CPU tensor in fp32, fp64
// or bf16. Those are SwiGLU and the rope heads (fused_rope_tail, fused_mla_key: bf16 data with
// fp32 tables, computed in fp32 and rounded once).
bool cpu_fused_bf16_applies(const torch::Tensor& x);

// RMSNorm over the last dim: y = x * rsqrt(mean(x^2) + eps) * w, in x's dtype. x [..., D] with a
// unit stride in the last dim or any layout (copied once then); w [D].
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);

// q [B, S, H, N+R] -> a new [B, S, H, N+R]: the first N dims copied, the trailing R dims
// rotated as interleaved pairs (2i, 2i+1) by cos/sin [S, P] (the rows of the positions; fp32
// for a bf16 q, q's dtype otherwise).
torch::Tensor fused_rope_tail(const torch::Tensor& q_BSHD,
                              const torch::Tensor& cos_SP,
                              const torch::Tensor& sin_SP);

// MLA's key heads: k_nope [B, S, H, N] and one shared rope key k_rope [B, S, R] (not yet
// rotated) -> [B, S, H, N+R] = cat(k_nope, rope(k_rope) for every head).
torch::Tensor fused_mla_key(const torch::Tensor& k_nope_BSHN,
                            const torch::Tensor& k_rope_BSR,
                            const torch::Tensor& cos_SP,
                            const torch::Tensor& sin_SP);

// SwiGLU's product h = silu(g) * u, element-wise over same-shape contiguous CPU fp32/fp64/bf16
// tensors, in one pass (no autograd: the experts' autograd function calls it). bf16 tensors
// (CPU autocast) are computed in fp32 and rounded once, at the result.
torch::Tensor fused_swiglu(const torch::Tensor& g, const torch::Tensor& u);
// Its gradients from dh, in one pass: {dg, du} = {dh u s (1 + g (1 - s)), dh g s}, s = sigmoid(g).
std::pair<torch::Tensor, torch::Tensor> fused_swiglu_backward(const torch::Tensor& g,
                                                              const torch::Tensor& u,
                                                              const torch::Tensor& dh);

// dst += src for an fp32 dst and a bf16 src (contiguous, same shape, CPU) in one pass, the
// conversion fused into the add; any other pair goes to dst.add_(src). ATen's mixed-dtype add_
// converts through a temporary.
void add_converted(torch::Tensor& dst, const torch::Tensor& src);

// The MoE combine: out [T, D] with out[token[r]] += prob[r] * y[r] for every row r of y [N, D]
// (token [N] int64 in [0, T), prob [N] floating; y contiguous CPU fp32/fp64). One autograd
// function: backward gives dy[r] = prob[r] dout[token[r]] and dprob[r] = <dout[token[r]], y[r]>
// in single passes, where the ATen composition (dispatcher.cpp's reference: a weighted copy of
// y, index_add, and in backward index_select, two products and a row sum) makes four [N, D]
// temporaries. Rows are added to a token in row order, as index_add does.
torch::Tensor fused_weighted_combine(const torch::Tensor& y_ND,
                                     const torch::Tensor& token_N,
                                     const torch::Tensor& prob_N,
                                     int64_t num_tokens);

}  // namespace condensa::model
