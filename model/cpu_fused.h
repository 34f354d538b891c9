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

#include <string>

namespace condensa::model {

// True when the fused kernels take x: a CPU tensor in fp32 or fp64 (bf16 under CPU autocast
// and every CUDA tensor use the ATen compositions).
bool cpu_fused_applies(const torch::Tensor& x);
// True when the kernels that also take bf16 (CPU autocast) take x: a CPU tensor in fp32, fp64
// or bf16. Those are SwiGLU and the rope heads (fused_rope_tail, fused_mla_key: bf16 data with
// fp32 tables, computed in fp32 and rounded once).
bool cpu_fused_bf16_applies(const torch::Tensor& x);

// Which instructions compute the products of bf16 operands on the CPU (bf16 autocast) in the
// experts' function, the attention kernel and the linear layers: LibTorch's bf16 kernels (oneDNN:
// AMX tiles, or AVX512-BF16 dot products) or fp32 GEMMs on the operands widened to fp32. Both
// take bf16 operands (exact in fp32), accumulate in fp32 and round each result to bf16 once;
// they differ in summation order. Without AMX the fp32 FMAs run about twice the rate of the bf16
// dot products (docs/performance.md), so kAuto widens unless the x86 CPU has AMX-BF16 (other
// architectures: native). Set from `model.cpu_bf16_products` when a model is built.
enum class CpuBf16Products { kAuto, kNative, kWidened };
// "auto" | "native" | "widened"; throws std::invalid_argument naming any other value.
CpuBf16Products parse_cpu_bf16_products(const std::string& name);
void set_cpu_bf16_products(CpuBf16Products policy);
// Whether bf16 products are widened now, or under `policy` (kAuto resolved for this CPU).
bool cpu_bf16_products_widened();
bool cpu_bf16_products_widened(CpuBf16Products policy);
// True when x is a CPU bf16 tensor and bf16 products are widened.
bool cpu_widens_bf16(const torch::Tensor& x);

// t rounded to bf16 (to nearest even) and widened to fp32: a new contiguous fp32 tensor, in one
// pass for CPU fp32 and bf16 tensors (bit for bit t.to(bf16).to(fp32)). No autograd: for use
// inside autograd functions.
torch::Tensor bf16_widened(const torch::Tensor& t);

// y = x w^T for a CPU x [..., K] and w [N, K] under bf16 CPU autocast with widened products:
// x and w rounded to bf16, the product of their fp32 widenings rounded to bf16 once; backward
// gives dx rounded to bf16 and dw in fp32 (w's dtype) from the widened operands. Any other case
// (no autocast, native products, another device) is torch::nn::functional::linear.
torch::Tensor cpu_bf16_linear(const torch::Tensor& x, const torch::Tensor& w);

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
// (CPU autocast) are computed in fp32 and rounded once, at the result; `widened` returns that
// bf16 result widened to fp32 (bit for bit its .to(kFloat32)) in the same pass, for products
// that take widened operands (cpu_bf16_products_widened). fp32/fp64 ignore `widened`.
torch::Tensor fused_swiglu(const torch::Tensor& g, const torch::Tensor& u, bool widened = false);
// Its gradients from dh, in one pass: {dg, du} = {dh u s (1 + g (1 - s)), dh g s}, s = sigmoid(g);
// `widened` as above.
std::pair<torch::Tensor, torch::Tensor> fused_swiglu_backward(const torch::Tensor& g,
                                                              const torch::Tensor& u,
                                                              const torch::Tensor& dh,
                                                              bool widened = false);

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
