#include "model/cpu_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "model/cpu_vec.h"

namespace condensa::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Query rows per block: a [64, S] block of scores stays in L2 for S up to a few thousand, and the
// blocks skip (1 - 1/n_blocks) / 2 of the square.
constexpr int64_t kQueryBlock = 64;

// x[j] = exp(x[j] * mul - sub) for j < n, where every argument is <= 0.
inline void exp_affine(float* x, int64_t n, float mul, float sub) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    v4f v;
    std::memcpy(&v, x + j, sizeof(v));
    v = exp_nonpositive<v4f, v4i>(v * mul - sub);
    std::memcpy(x + j, &v, sizeof(v));
  }
  for (; j < n; ++j) {
    v1f v = {x[j] * mul - sub};
    x[j] = exp_nonpositive<v1f, v1i>(v)[0];
  }
}
inline void exp_affine(double* x, int64_t n, double mul, double sub) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j] * mul - sub);
}

inline float row_max(const float* x, int64_t n) {
  v4f m = v4f{} - std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    v4f v;
    std::memcpy(&v, x + j, sizeof(v));
    m = m < v ? v : m;
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < 4; ++l) r = m[l] > r ? m[l] : r;
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}
inline double row_max(const double* x, int64_t n) {
  double r = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

// Sum of x[0..n) with eight independent lanes (vectorizable without reassociation).
template <typename T>
T row_sum(const T* x, int64_t n) {
  T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) s[l] += x[j + l];
  for (; j < n; ++j) s[0] += x[j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Raw scores s[0..e) of one query row -> probabilities, in place: keys [0, valid) are softmaxed
// with the scores scaled by `scale` (> 0), keys [valid, e) are masked to 0. Returns the
// log-sum-exp of the scaled scores.
template <typename T>
T softmax_row(T* s, int64_t valid, int64_t e, T scale) {
  const T m = row_max(s, valid) * scale;
  exp_affine(s, valid, scale, m);
  const T l = row_sum(s, valid);
  const T inv = T(1) / l;
  for (int64_t j = 0; j < valid; ++j) s[j] *= inv;
  for (int64_t j = valid; j < e; ++j) s[j] = 0;
  return m + std::log(l);
}

// [S, D] view of head h of batch b in a [B, S, H, D] tensor (row stride H * D).
torch::Tensor head(const torch::Tensor& t, int64_t b, int64_t h) {
  return t.select(0, b).select(1, h);
}

torch::Tensor unit_last_stride(const torch::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

struct CausalAttentionFn : torch::autograd::Function<CausalAttentionFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& q_in,
                               const torch::Tensor& k_in,
                               const torch::Tensor& v_in,
                               double scale) {
    auto q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
    const int64_t B = q.size(0), S = q.size(1), H = q.size(2), Dv = v.size(3);
    auto out = torch::empty({B, S, H, Dv}, v.options());
    auto lse = torch::empty({B * H, S}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "cpu_causal_attention", [&] {
      scalar_t* lse_p = lse.data_ptr<scalar_t>();
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        auto scratch = torch::empty({kQueryBlock * S}, q.options());
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          auto Q = head(q, b, h), K = head(k, b, h), V = head(v, b, h), O = head(out, b, h);
          for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
            const int64_t n = std::min(kQueryBlock, S - i0), e = i0 + n;
            auto P = scratch.narrow(0, 0, n * e).view({n, e});
            at::mm_out(P, Q.narrow(0, i0, n), K.narrow(0, 0, e).t());
            scalar_t* p = P.data_ptr<scalar_t>();
            for (int64_t r = 0; r < n; ++r)
              lse_p[bh * S + i0 + r] =
                  softmax_row(p + r * e, i0 + r + 1, e, static_cast<scalar_t>(scale));
            auto O_blk = O.narrow(0, i0, n);
            at::mm_out(O_blk, P, V.narrow(0, 0, e));
          }
        }
      });
    });
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    auto dout = unit_last_stride(grads[0].to(out.scalar_type()));
    const int64_t B = q.size(0), S = q.size(1), H = q.size(2), Dv = v.size(3);
    auto dq = torch::empty(q.sizes(), q.options());
    auto dk = torch::zeros(k.sizes(), k.options()), dv = torch::zeros(v.sizes(), v.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "cpu_causal_attention_backward", [&] {
      const scalar_t* lse_p = lse.data_ptr<scalar_t>();
      const auto sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        auto p_buf = torch::empty({kQueryBlock * S}, q.options());
        auto ds_buf = torch::empty({kQueryBlock * S}, q.options());
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          auto Q = head(q, b, h), K = head(k, b, h), V = head(v, b, h), O = head(out, b, h);
          auto dO = head(dout, b, h), dQ = head(dq, b, h), dK = head(dk, b, h);
          auto dV = head(dv, b, h);
          const scalar_t* o_p = O.data_ptr<scalar_t>();
          const scalar_t* do_p = dO.data_ptr<scalar_t>();
          for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
            const int64_t n = std::min(kQueryBlock, S - i0), e = i0 + n;
            auto Q_blk = Q.narrow(0, i0, n), dO_blk = dO.narrow(0, i0, n);
            // P recomputed from the log-sum-exp; masked keys are 0.
            auto P = p_buf.narrow(0, 0, n * e).view({n, e});
            at::mm_out(P, Q_blk, K.narrow(0, 0, e).t());
            scalar_t* p = P.data_ptr<scalar_t>();
            for (int64_t r = 0; r < n; ++r) {
              scalar_t* row = p + r * e;
              const int64_t valid = i0 + r + 1;
              const scalar_t m = lse_p[bh * S + i0 + r];
              exp_affine(row, valid, sc, m);
              for (int64_t j = valid; j < e; ++j) row[j] = 0;
            }
            dV.narrow(0, 0, e).addmm_(P.t(), dO_blk);
            // dS = P * (dP - rowsum(dO * O)) * scale, with dP = dO V^T.
            auto dS = ds_buf.narrow(0, 0, n * e).view({n, e});
            at::mm_out(dS, dO_blk, V.narrow(0, 0, e).t());
            scalar_t* ds = dS.data_ptr<scalar_t>();
            for (int64_t r = 0; r < n; ++r) {
              const scalar_t* o_row = o_p + (i0 + r) * O.stride(0);
              const scalar_t* do_row = do_p + (i0 + r) * dO.stride(0);
              double dot = 0;
              for (int64_t j = 0; j < Dv; ++j) dot += static_cast<double>(o_row[j]) * do_row[j];
              const auto d = static_cast<scalar_t>(dot);
              scalar_t* __restrict ds_row = ds + r * e;
              const scalar_t* __restrict p_row = p + r * e;
              for (int64_t j = 0; j < e; ++j) ds_row[j] = p_row[j] * (ds_row[j] - d) * sc;
            }
            auto dQ_blk = dQ.narrow(0, i0, n);
            at::mm_out(dQ_blk, dS, K.narrow(0, 0, e));
            dK.narrow(0, 0, e).addmm_(dS.t(), Q_blk);
          }
        }
      });
    });
    return {dq, dk, dv, torch::Tensor()};
  }
};

}  // namespace

bool cpu_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto t = q.scalar_type();
  // Under CPU autocast, scaled_dot_product_attention runs (and casts) in the autocast dtype.
  return q.device().is_cpu() && !at::autocast::is_autocast_enabled(at::kCPU) &&
         (t == torch::kFloat32 || t == torch::kFloat64) && k.scalar_type() == t &&
         v.scalar_type() == t && k.device().is_cpu() && v.device().is_cpu();
}

torch::Tensor cpu_causal_attention(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   double scale) {
  TORCH_CHECK(cpu_attention_applies(q, k, v),
              "cpu_causal_attention: needs CPU q, k, v of one dtype, fp32 or fp64; got ",
              q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(scale > 0, "cpu_causal_attention: the softmax scale must be > 0, got ", scale);
  TORCH_CHECK(q.dim() == 4 && q.sizes() == k.sizes() && v.dim() == 4 &&
                  v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
              "cpu_causal_attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
              " must be [B, S, H, Dqk], [B, S, H, Dqk], [B, S, H, Dv]");
  return CausalAttentionFn::apply(q, k, v, scale);
}

}  // namespace condensa::model
