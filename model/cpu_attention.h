// Causal attention on the CPU (fp32/fp64, and bf16 through fp32) for full sequences, with MLA's
// unequal query/key and value head dims taken as they are.
//
// Key design choice: per (batch, head), blocks of query rows against the keys up to the block's
// last row, so the blocks above the diagonal are never multiplied; softmax, masking and the
// backward's dS = P * (dP - rowsum(dO * O)) run as row loops over a block that stays in cache,
// between BLAS products on strided [S, D] views of the [B, S, H, D] tensors (no transposed
// copies). Backward takes the probabilities forward kept, or, for long sequences, recomputes
// them from the saved log-sum-exp, so that the memory kept is O(B H S), as in the flash kernels
// (cpu_attention_set_probs below). LibTorch's CPU flash kernel needs equal head dims
// (MLA's v is padded to the query's, 1.5x the products that involve v) and computed this
// shape's attention about 1.5x slower (docs/performance.md).
//
// Shape legend: B batch, S sequence (queries and keys), H heads, Dqk query/key dim, Dv value dim.
#pragma once

#include <torch/torch.h>

namespace condensa::model {

// Whether cpu_causal_attention takes these tensors: CPU, all one dtype, fp32 or fp64 with CPU
// autocast off; bf16 (fp32 or bf16 under bf16 CPU autocast) while bf16 products are widened
// (cpu_fused.h; otherwise LibTorch's bf16 flash kernel serves bf16).
bool cpu_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// softmax(q k^T * scale + causal mask) v. q, k [B, S, H, Dqk], v [B, S, H, Dv] (any strides with
// a unit last stride, else copied) -> [B, S, H, Dv]; query i sees keys 0..i. bf16 (bf16 inputs,
// or any under CPU autocast): the inputs rounded to bf16, computed in fp32, the output and the
// input gradients rounded to bf16 once.
torch::Tensor cpu_causal_attention(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   double scale);

// Whether forward keeps the probabilities for backward (skipping backward's Q K^T products and
// exponentials) or backward recomputes them from the log-sum-exp. By size (the default): kept
// while they take no more memory than q, k, v and the output together, i.e. for S up to about
// 4 (Dqk + Dv) - 64 (576 keys at Dqk 96, Dv 64; 1,216 at DeepSeek-V3's 192 and 128); recomputed
// above that, so that long sequences keep O(B H S) memory as in the flash kernels. kKeep and
// kRecompute force one way (tests compare both with the explicit reference).
enum class CpuAttentionProbs { kBySize, kKeep, kRecompute };
void cpu_attention_set_probs(CpuAttentionProbs policy);
bool cpu_attention_keeps_probs(int64_t S, int64_t Dqk, int64_t Dv);

// The kernel's products call the BLAS's Fortran gemm (`sgemm_`/`dgemm_`, found in the loaded
// libraries) on raw pointers, or at::mm_out where there is none. Whether the BLAS is used, and,
// for tests, a switch to force the at::mm_out path.
bool cpu_attention_uses_blas_gemm();
void cpu_attention_force_aten_products(bool force);

}  // namespace condensa::model
