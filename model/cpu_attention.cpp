#include "model/cpu_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <dlfcn.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "model/cpu_fused.h"
#include "model/cpu_vec.h"

namespace condensa::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Query rows per block: a [64, S] block of scores stays in L2 for S up to a few thousand, and the
// blocks skip (1 - 1/n_blocks) / 2 of the square.
constexpr int64_t kQueryBlock = 64;

// The row loops of a block, on floats V of L = sizeof(V) / 4 lanes (v4f or v8f), or on doubles
// (V = double: scalar code with std::exp).

// x[j] = exp(x[j] * mul - sub) for j < n, where every argument is <= 0.
template <typename V, typename I>
CONDENSA_INLINE void exp_affine(float* x, int64_t n, float mul, float sub) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    V v;
    std::memcpy(&v, x + j, sizeof(v));
    v = exp_nonpositive<V, I>(v * mul - sub);
    std::memcpy(x + j, &v, sizeof(v));
  }
  for (; j < n; ++j) {
    v1f v = {x[j] * mul - sub};
    x[j] = exp_nonpositive<v1f, v1i>(v)[0];
  }
}
template <typename V, typename I>
CONDENSA_INLINE void exp_affine(double* x, int64_t n, double mul, double sub) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j] * mul - sub);
}

template <typename V>
CONDENSA_INLINE float row_max(const float* x, int64_t n) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  V m = V{} - std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    V v;
    std::memcpy(&v, x + j, sizeof(v));
    m = m < v ? v : m;
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < L; ++l) r = m[l] > r ? m[l] : r;
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}
template <typename V>
CONDENSA_INLINE double row_max(const double* x, int64_t n) {
  double r = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

// Sum of x[0..n) with eight independent lanes (vectorizable without reassociation).
template <typename T>
CONDENSA_INLINE T row_sum(const T* x, int64_t n) {
  T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) s[l] += x[j + l];
  for (; j < n; ++j) s[0] += x[j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Raw scores p [n, e] of the query rows i0..i0+n -> probabilities, in place: row r softmaxes
// keys [0, i0 + r] with the scores scaled by `scale` (> 0) and masks the rest to 0; lse[r] gets
// the log-sum-exp of its scaled scores.
template <typename V, typename I, typename T>
CONDENSA_INLINE void softmax_rows(T* p, int64_t n, int64_t e, int64_t i0, T scale, T* lse) {
  for (int64_t r = 0; r < n; ++r) {
    T* s = p + r * e;
    const int64_t valid = i0 + r + 1;
    const T m = row_max<V>(s, valid) * scale;
    exp_affine<V, I>(s, valid, scale, m);
    const T l = row_sum(s, valid);
    const T inv = T(1) / l;
    for (int64_t j = 0; j < valid; ++j) s[j] *= inv;
    for (int64_t j = valid; j < e; ++j) s[j] = 0;
    lse[r] = m + std::log(l);
  }
}

// Backward's recomputation: raw scores p [n, e] -> exp(score * scale - lse[r]), masked keys 0.
template <typename V, typename I, typename T>
CONDENSA_INLINE void exp_rows(T* p, int64_t n, int64_t e, int64_t i0, T scale, const T* lse) {
  for (int64_t r = 0; r < n; ++r) {
    T* row = p + r * e;
    const int64_t valid = i0 + r + 1;
    exp_affine<V, I>(row, valid, scale, lse[r]);
    for (int64_t j = valid; j < e; ++j) row[j] = 0;
  }
}

// dS [n, e] = P * (dP - rowsum(dO * O)) in place of dP, with O and dO rows of Dv values at
// strides ldo and lddo.
template <typename T>
CONDENSA_INLINE void ds_rows(T* ds,
                             const T* p,
                             int64_t n,
                             int64_t e,
                             const T* o,
                             int64_t ldo,
                             const T* d_o,
                             int64_t lddo,
                             int64_t Dv) {
  for (int64_t r = 0; r < n; ++r) {
    const T* o_row = o + r * ldo;
    const T* do_row = d_o + r * lddo;
    double dot = 0;
    for (int64_t j = 0; j < Dv; ++j) dot += static_cast<double>(o_row[j]) * do_row[j];
    const auto d = static_cast<T>(dot);
    T* __restrict ds_row = ds + r * e;
    const T* __restrict p_row = p + r * e;
    for (int64_t j = 0; j < e; ++j) ds_row[j] = p_row[j] * (ds_row[j] - d);
  }
}

// fp32 builds for eight-float registers (cpu_vec.h), and the dispatch to them.
CONDENSA_AVX2 void softmax_rows_wide(
    float* p, int64_t n, int64_t e, int64_t i0, float scale, float* lse) {
  softmax_rows<v8f, v8i>(p, n, e, i0, scale, lse);
}
CONDENSA_AVX2 void exp_rows_wide(
    float* p, int64_t n, int64_t e, int64_t i0, float scale, const float* lse) {
  exp_rows<v8f, v8i>(p, n, e, i0, scale, lse);
}
CONDENSA_AVX2 void ds_rows_wide(float* ds,
                                const float* p,
                                int64_t n,
                                int64_t e,
                                const float* o,
                                int64_t ldo,
                                const float* d_o,
                                int64_t lddo,
                                int64_t Dv) {
  ds_rows(ds, p, n, e, o, ldo, d_o, lddo, Dv);
}

template <typename T>
void softmax_block(T* p, int64_t n, int64_t e, int64_t i0, T scale, T* lse) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_vec_wide()) return softmax_rows_wide(p, n, e, i0, scale, lse);
  softmax_rows<v4f, v4i>(p, n, e, i0, scale, lse);
}
template <typename T>
void exp_block(T* p, int64_t n, int64_t e, int64_t i0, T scale, const T* lse) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_vec_wide()) return exp_rows_wide(p, n, e, i0, scale, lse);
  exp_rows<v4f, v4i>(p, n, e, i0, scale, lse);
}
template <typename T>
void ds_block(T* ds,
              const T* p,
              int64_t n,
              int64_t e,
              const T* o,
              int64_t ldo,
              const T* d_o,
              int64_t lddo,
              int64_t Dv) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_vec_wide()) return ds_rows_wide(ds, p, n, e, o, ldo, d_o, lddo, Dv);
  ds_rows(ds, p, n, e, o, ldo, d_o, lddo, Dv);
}

// ---- products on raw pointers -------------------------------------------------------------
// A forward and backward call make 7 products per (batch, head, query block): 7,168 per step on
// the d512 shape. Through at::mm_out each one also costs a dispatch, shape checks and the
// narrow/select/transpose views that describe its operands; the BLAS's own gemm takes pointers
// and leading dimensions. LibTorch links a BLAS that exports the Fortran `sgemm_`/`dgemm_` (MKL
// in the x86-64 wheels); where the loaded libraries have none, the products go through
// at::mm_out on tensors over the same memory.

template <typename T>
using FortranGemm = void (*)(const char*,
                             const char*,
                             const int*,
                             const int*,
                             const int*,
                             const T*,
                             const T*,
                             const int*,
                             const T*,
                             const int*,
                             const T*,
                             T*,
                             const int*);

std::atomic<bool> g_force_aten_products{false};

template <typename T>
FortranGemm<T> fortran_gemm() {
  static const auto fn = reinterpret_cast<FortranGemm<T>>(
      dlsym(RTLD_DEFAULT, std::is_same_v<T, float> ? "sgemm_" : "dgemm_"));
  return g_force_aten_products.load(std::memory_order_relaxed) ? nullptr : fn;
}

// Row-major C[m, n] = alpha op(A) op(B) + beta C, op(A) [m, k] and op(B) [k, n]; A, B and C have
// unit column stride and row strides lda, ldb, ldc; ta/tb: A is stored [k, m] / B is [n, k].
// (The column-major BLAS computes the transpose: C^T = op(B)^T op(A)^T.)
template <typename T>
void gemm_rows(bool ta,
               bool tb,
               int64_t m,
               int64_t n,
               int64_t k,
               T alpha,
               const T* A,
               int64_t lda,
               const T* B,
               int64_t ldb,
               T beta,
               T* C,
               int64_t ldc) {
  if (auto gemm = fortran_gemm<T>()) {
    const char opb = tb ? 'T' : 'N', opa = ta ? 'T' : 'N';
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int LB = static_cast<int>(ldb), LA = static_cast<int>(lda), LC = static_cast<int>(ldc);
    gemm(&opb, &opa, &M, &N, &K, &alpha, B, &LB, A, &LA, &beta, C, &LC);
    return;
  }
  const auto opts = torch::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool t) {
    auto x = torch::from_blob(const_cast<T*>(p), {t ? cols : rows, t ? rows : cols}, {ld, 1}, opts);
    return t ? x.t() : x;
  };
  auto c = torch::from_blob(C, {m, n}, {ldc, 1}, opts);
  c.addmm_(view(A, m, k, lda, ta), view(B, k, n, ldb, tb), beta, alpha);
}

// Head (b, h) of a [B, S, H, D] tensor with a unit last stride: its first row and row stride.
template <typename T>
struct HeadRows {
  T* p;
  int64_t ld;
  HeadRows(const torch::Tensor& t, int64_t b, int64_t h)
      : p(t.data_ptr<T>() + b * t.stride(0) + h * t.stride(2)), ld(t.stride(1)) {}
  T* row(int64_t i) const { return p + i * ld; }
};

torch::Tensor unit_last_stride(const torch::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

std::atomic<int> g_probs_policy{static_cast<int>(CpuAttentionProbs::kBySize)};

// Elements of one head's probability blocks: sum over the query blocks of rows x keys seen.
int64_t probs_area(int64_t S) {
  int64_t area = 0;
  for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
    const int64_t n = std::min(kQueryBlock, S - i0);
    area += n * (i0 + n);
  }
  return area;
}

bool keep_probs(int64_t S, int64_t Dqk, int64_t Dv) {
  switch (static_cast<CpuAttentionProbs>(g_probs_policy.load(std::memory_order_relaxed))) {
    case CpuAttentionProbs::kKeep:
      return true;
    case CpuAttentionProbs::kRecompute:
      return false;
    case CpuAttentionProbs::kBySize:
      break;
  }
  return probs_area(S) <= S * 2 * (Dqk + Dv);
}

struct CausalAttentionFn : torch::autograd::Function<CausalAttentionFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& q_in,
                               const torch::Tensor& k_in,
                               const torch::Tensor& v_in,
                               double scale) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
    const int64_t B = q.size(0), S = q.size(1), H = q.size(2), Dqk = q.size(3), Dv = v.size(3);
    auto out = torch::empty({B, S, H, Dv}, v.options());
    auto lse = torch::empty({B * H, S}, q.options());
    const int64_t area = probs_area(S);
    auto probs =
        keep_probs(S, Dqk, Dv) ? torch::empty({B * H, area}, q.options()) : torch::Tensor();
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "cpu_causal_attention", [&] {
      scalar_t* lse_p = lse.data_ptr<scalar_t>();
      scalar_t* probs_p = probs.defined() ? probs.data_ptr<scalar_t>() : nullptr;
      const auto sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(probs_p ? 0 : kQueryBlock * S);
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          const HeadRows<scalar_t> Q(q, b, h), K(k, b, h), V(v, b, h), O(out, b, h);
          for (int64_t i0 = 0, off = 0; i0 < S; i0 += kQueryBlock) {
            const int64_t n = std::min(kQueryBlock, S - i0), e = i0 + n;
            scalar_t* p = probs_p ? probs_p + bh * area + off : scratch.data();
            off += n * e;
            // P [n, e] = Q_blk K[0, e)^T, softmaxed row by row; O_blk = P V[0, e).
            gemm_rows<scalar_t>(false, true, n, e, Dqk, 1, Q.row(i0), Q.ld, K.p, K.ld, 0, p, e);
            softmax_block(p, n, e, i0, sc, lse_p + bh * S + i0);
            gemm_rows<scalar_t>(false, false, n, Dv, e, 1, p, e, V.p, V.ld, 0, O.row(i0), O.ld);
          }
        }
      });
    });
    ctx->save_for_backward({q, k, v, out, lse, probs});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const auto& probs = saved[5];
    const double scale = ctx->saved_data["scale"].toDouble();
    auto dout = unit_last_stride(grads[0].to(out.scalar_type()));
    const int64_t B = q.size(0), S = q.size(1), H = q.size(2), Dqk = q.size(3), Dv = v.size(3);
    auto dq = torch::empty(q.sizes(), q.options());
    auto dk = torch::zeros(k.sizes(), k.options()), dv = torch::zeros(v.sizes(), v.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "cpu_causal_attention_backward", [&] {
      const scalar_t* lse_p = lse.data_ptr<scalar_t>();
      const scalar_t* probs_p = probs.defined() ? probs.data_ptr<scalar_t>() : nullptr;
      const int64_t area = probs_area(S);
      const auto sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> p_buf(probs_p ? 0 : kQueryBlock * S), ds_buf(kQueryBlock * S);
        scalar_t* ds = ds_buf.data();
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          const HeadRows<scalar_t> Q(q, b, h), K(k, b, h), V(v, b, h), O(out, b, h);
          const HeadRows<scalar_t> dO(dout, b, h), dQ(dq, b, h), dK(dk, b, h), dV(dv, b, h);
          for (int64_t i0 = 0, off = 0; i0 < S; i0 += kQueryBlock) {
            const int64_t n = std::min(kQueryBlock, S - i0), e = i0 + n;
            // P as forward kept it, or recomputed from the log-sum-exp; masked keys are 0.
            const scalar_t* p = probs_p ? probs_p + bh * area + off : p_buf.data();
            off += n * e;
            if (!probs_p) {
              scalar_t* rows = p_buf.data();
              gemm_rows<scalar_t>(false, true, n, e, Dqk, 1, Q.row(i0), Q.ld, K.p, K.ld, 0, rows,
                                  e);
              exp_block(rows, n, e, i0, sc, lse_p + bh * S + i0);
            }
            // dV[0, e) += P^T dO_blk.
            gemm_rows<scalar_t>(true, false, e, Dv, n, 1, p, e, dO.row(i0), dO.ld, 1, dV.p, dV.ld);
            // dS = P * (dP - rowsum(dO * O)), with dP = dO V^T; the scale goes into the products.
            gemm_rows<scalar_t>(false, true, n, e, Dv, 1, dO.row(i0), dO.ld, V.p, V.ld, 0, ds, e);
            ds_block(ds, p, n, e, O.row(i0), O.ld, dO.row(i0), dO.ld, Dv);
            // dQ_blk = scale dS K[0, e); dK[0, e) += scale dS^T Q_blk.
            gemm_rows<scalar_t>(false, false, n, Dqk, e, sc, ds, e, K.p, K.ld, 0, dQ.row(i0),
                                dQ.ld);
            gemm_rows<scalar_t>(true, false, e, Dqk, n, sc, ds, e, Q.row(i0), Q.ld, 1, dK.p, dK.ld);
          }
        }
      });
    });
    return {dq, dk, dv, torch::Tensor()};
  }
};

}  // namespace

void cpu_attention_force_aten_products(bool force) { g_force_aten_products = force; }

void cpu_attention_set_probs(CpuAttentionProbs policy) {
  g_probs_policy = static_cast<int>(policy);
}

bool cpu_attention_keeps_probs(int64_t S, int64_t Dqk, int64_t Dv) {
  return keep_probs(S, Dqk, Dv);
}

bool cpu_attention_uses_blas_gemm() { return fortran_gemm<float>() && fortran_gemm<double>(); }

bool cpu_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto t = q.scalar_type();
  if (!q.device().is_cpu() || !k.device().is_cpu() || !v.device().is_cpu() ||
      k.scalar_type() != t || v.scalar_type() != t)
    return false;
  // Under CPU autocast, attention runs in the autocast dtype (as scaled_dot_product_attention
  // casts): bf16, from fp32 or bf16 inputs.
  // bf16 goes through the fp32 kernel only while bf16 products are widened (cpu_fused.h).
  if (at::autocast::is_autocast_enabled(at::kCPU))
    return at::autocast::get_autocast_dtype(at::kCPU) == torch::kBFloat16 &&
           (t == torch::kFloat32 || t == torch::kBFloat16) && cpu_bf16_products_widened();
  return t == torch::kFloat32 || t == torch::kFloat64 ||
         (t == torch::kBFloat16 && cpu_bf16_products_widened());
}

torch::Tensor cpu_causal_attention(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   double scale) {
  TORCH_CHECK(cpu_attention_applies(q, k, v),
              "cpu_causal_attention: needs CPU q, k, v of one dtype, fp32 or fp64, or bf16 (fp32 "
              "or bf16 under bf16 CPU autocast) with widened bf16 products; got ",
              q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(scale > 0, "cpu_causal_attention: the softmax scale must be > 0, got ", scale);
  TORCH_CHECK(q.dim() == 4 && q.sizes() == k.sizes() && v.dim() == 4 &&
                  v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
              "cpu_causal_attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
              " must be [B, S, H, Dqk], [B, S, H, Dqk], [B, S, H, Dv]");
  const bool bf16 =
      at::autocast::is_autocast_enabled(at::kCPU) || q.scalar_type() == torch::kBFloat16;
  if (!bf16) return CausalAttentionFn::apply(q, k, v, scale);
  // bf16: the fp32 kernel on the widened inputs (exact), its output rounded to bf16 once; the
  // gradients come back through the casts, rounded once too. The same contract as a bf16 fused
  // kernel (bf16 in and out, fp32 accumulation and softmax), with P V in fp32 as well.
  auto widen = [](const torch::Tensor& x) { return x.to(torch::kBFloat16).to(torch::kFloat32); };
  return CausalAttentionFn::apply(widen(q), widen(k), widen(v), scale).to(torch::kBFloat16);
}

}  // namespace condensa::model
