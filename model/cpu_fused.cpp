#include "model/cpu_fused.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "model/cpu_vec.h"

namespace condensa::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kRowGrain = 32;  // rows per parallel task

// y = rotate(x) on interleaved pairs: (x0 c - x1 s, x0 s + x1 c); inverse: the transpose.
// Computed in fp64 for fp64 data, fp32 otherwise (bf16 data with fp32 tables: rounded once, when
// stored); x, y and the tables may have different types.
template <typename X, typename Y, typename C>
inline void rotate_pairs(const X* x, Y* y, const C* c, const C* s, int64_t P, bool inverse) {
  using A = std::conditional_t<std::is_same_v<C, double>, double, float>;
  if (!inverse) {
    for (int64_t i = 0; i < P; ++i) {
      const A x0 = x[2 * i], x1 = x[2 * i + 1];
      y[2 * i] = static_cast<Y>(x0 * c[i] - x1 * s[i]);
      y[2 * i + 1] = static_cast<Y>(x0 * s[i] + x1 * c[i]);
    }
  } else {
    for (int64_t i = 0; i < P; ++i) {
      const A g0 = x[2 * i], g1 = x[2 * i + 1];
      y[2 * i] = static_cast<Y>(g0 * c[i] + g1 * s[i]);
      y[2 * i + 1] = static_cast<Y>(g1 * c[i] - g0 * s[i]);
    }
  }
}

// The rope tables' element type for data of type T: fp32 for bf16 data, T otherwise.
template <typename T>
using table_t = std::conditional_t<std::is_same_v<T, c10::BFloat16>, float, T>;

void check_tables(const torch::Tensor& cos_SP,
                  const torch::Tensor& sin_SP,
                  int64_t S,
                  const torch::Tensor& like) {
  TORCH_CHECK(cos_SP.dim() == 2 && cos_SP.sizes() == sin_SP.sizes() && cos_SP.size(0) == S,
              "rope tables: cos ", cos_SP.sizes(), " and sin ", sin_SP.sizes(),
              " must both be [S=", S, ", R/2]");
  const auto want = like.scalar_type() == torch::kBFloat16 ? torch::kFloat32 : like.scalar_type();
  TORCH_CHECK(cos_SP.scalar_type() == want && sin_SP.scalar_type() == want &&
                  cos_SP.is_contiguous() && sin_SP.is_contiguous(),
              "rope tables must be contiguous and ", want, " for a ", like.scalar_type(),
              " input, got ", cos_SP.scalar_type());
}

// ---- RMSNorm -------------------------------------------------------------------------------

struct RMSNormFn : torch::autograd::Function<RMSNormFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& x,
                               const torch::Tensor& w,
                               double eps) {
    const int64_t D = x.size(-1);
    auto x_ND = x.reshape({-1, D});
    if (x_ND.stride(1) != 1 || x_ND.stride(0) < D) x_ND = x_ND.contiguous();
    auto w_D = w.to(x.scalar_type()).contiguous();
    const int64_t N = x_ND.size(0), rs = x_ND.stride(0);
    auto y_ND = torch::empty({N, D}, x.options());
    auto rstd_N = torch::empty({N}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rms_norm", [&] {
      const scalar_t* xp = x_ND.data_ptr<scalar_t>();
      const scalar_t* wp = w_D.data_ptr<scalar_t>();
      scalar_t* yp = y_ND.data_ptr<scalar_t>();
      scalar_t* rp = rstd_N.data_ptr<scalar_t>();
      at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* xi = xp + i * rs;
          double ss = 0;
          for (int64_t j = 0; j < D; ++j) ss += static_cast<double>(xi[j]) * xi[j];
          const auto r = static_cast<scalar_t>(1.0 / std::sqrt(ss / D + eps));
          rp[i] = r;
          scalar_t* yi = yp + i * D;
          for (int64_t j = 0; j < D; ++j) yi[j] = xi[j] * r * wp[j];
        }
      });
    });
    ctx->save_for_backward({x_ND, w_D, rstd_N});
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return y_ND.view(x.sizes());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x_ND = saved[0], &w_D = saved[1], &rstd_N = saved[2];
    const int64_t N = x_ND.size(0), D = x_ND.size(1), rs = x_ND.stride(0);
    auto g_ND = grads[0].reshape({N, D}).to(x_ND.scalar_type()).contiguous();
    auto dx_ND = torch::empty({N, D}, x_ND.options());
    // Weight gradient: per-thread partial sums in fp64, added once.
    const int64_t num_threads = at::get_num_threads();
    auto dw_part = torch::zeros({num_threads, D}, x_ND.options().dtype(torch::kFloat64));
    AT_DISPATCH_FLOATING_TYPES(x_ND.scalar_type(), "fused_rms_norm_backward", [&] {
      const scalar_t* xp = x_ND.data_ptr<scalar_t>();
      const scalar_t* wp = w_D.data_ptr<scalar_t>();
      const scalar_t* rp = rstd_N.data_ptr<scalar_t>();
      const scalar_t* gp = g_ND.data_ptr<scalar_t>();
      scalar_t* dxp = dx_ND.data_ptr<scalar_t>();
      double* dwp = dw_part.data_ptr<double>();
      at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
        double* dw = dwp + std::min<int64_t>(at::get_thread_num(), num_threads - 1) * D;
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* xi = xp + i * rs;
          const scalar_t* gi = gp + i * D;
          const scalar_t r = rp[i];
          double dot = 0;  // sum_j g_j w_j x_j
          for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(gi[j] * wp[j]) * xi[j];
          const auto c = static_cast<scalar_t>(dot * r * r * r / D);
          scalar_t* dxi = dxp + i * D;
          for (int64_t j = 0; j < D; ++j) {
            dxi[j] = r * (gi[j] * wp[j]) - xi[j] * c;
            dw[j] += static_cast<double>(gi[j] * (xi[j] * r));
          }
        }
      });
    });
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    return {dx_ND.view(ctx->saved_data["x_shape"].toIntVector()), dw_part.sum(0).to(w_dtype),
            torch::Tensor()};
  }
};

// ---- rope on the query's trailing dims -----------------------------------------------------

struct RopeTailFn : torch::autograd::Function<RopeTailFn> {
  template <bool kInverse>
  static torch::Tensor run(const torch::Tensor& src,
                           const torch::Tensor& c,
                           const torch::Tensor& s) {
    auto x = src.contiguous();
    const int64_t B = x.size(0), S = x.size(1), H = x.size(2), D = x.size(3);
    const int64_t P = c.size(1), N = D - 2 * P;
    auto y = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fused_rope_tail", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const auto* cp = c.data_ptr<table_t<scalar_t>>();
      const auto* sp = s.data_ptr<table_t<scalar_t>>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      at::parallel_for(0, B * S, kRowGrain / H + 1, [&](int64_t begin, int64_t end) {
        for (int64_t bs = begin; bs < end; ++bs) {
          const int64_t pos = bs % S;
          for (int64_t h = 0; h < H; ++h) {
            const int64_t off = (bs * H + h) * D;
            std::memcpy(yp + off, xp + off, N * sizeof(scalar_t));
            rotate_pairs(xp + off + N, yp + off + N, cp + pos * P, sp + pos * P, P, kInverse);
          }
        }
      });
    });
    return y;
  }

  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& q,
                               const torch::Tensor& cos_SP,
                               const torch::Tensor& sin_SP) {
    ctx->save_for_backward({cos_SP, sin_SP});
    return run<false>(q, cos_SP, sin_SP);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {run<true>(grads[0], saved[0], saved[1]), torch::Tensor(), torch::Tensor()};
  }
};

// ---- MLA key heads: nope per head, one rotated rope key shared by all heads ----------------

struct MLAKeyFn : torch::autograd::Function<MLAKeyFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& k_nope,
                               const torch::Tensor& k_rope,
                               const torch::Tensor& cos_SP,
                               const torch::Tensor& sin_SP) {
    auto kn = k_nope.stride(3) == 1 ? k_nope : k_nope.contiguous();
    auto kr = k_rope.stride(2) == 1 ? k_rope : k_rope.contiguous();
    const int64_t B = kn.size(0), S = kn.size(1), H = kn.size(2), N = kn.size(3);
    const int64_t P = cos_SP.size(1), R = 2 * P, D = N + R;
    auto out = torch::empty({B, S, H, D}, kn.options());
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, kn.scalar_type(), "fused_mla_key", [&] {
      const scalar_t* np = kn.data_ptr<scalar_t>();
      const scalar_t* rp = kr.data_ptr<scalar_t>();
      const auto* cp = cos_SP.data_ptr<table_t<scalar_t>>();
      const auto* sp = sin_SP.data_ptr<table_t<scalar_t>>();
      scalar_t* op = out.data_ptr<scalar_t>();
      const int64_t nb = kn.stride(0), ns = kn.stride(1), nh = kn.stride(2);
      const int64_t rb = kr.stride(0), rsd = kr.stride(1);
      at::parallel_for(0, B * S, kRowGrain / H + 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> rot(R);
        for (int64_t bs = begin; bs < end; ++bs) {
          const int64_t b = bs / S, pos = bs % S;
          rotate_pairs(rp + b * rb + pos * rsd, rot.data(), cp + pos * P, sp + pos * P, P, false);
          for (int64_t h = 0; h < H; ++h) {
            scalar_t* o = op + (bs * H + h) * D;
            std::memcpy(o, np + b * nb + pos * ns + h * nh, N * sizeof(scalar_t));
            std::memcpy(o + N, rot.data(), R * sizeof(scalar_t));
          }
        }
      });
    });
    ctx->save_for_backward({cos_SP, sin_SP});
    ctx->saved_data["N"] = N;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &c = saved[0], &s = saved[1];
    const int64_t N = ctx->saved_data["N"].toInt();
    auto g = grads[0].contiguous();
    const int64_t B = g.size(0), S = g.size(1), H = g.size(2), D = g.size(3);
    const int64_t P = c.size(1), R = 2 * P;
    auto d_rope = torch::empty({B, S, R}, g.options());
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "fused_mla_key_backward", [&] {
      using acc_t = table_t<scalar_t>;  // bf16 gradients summed over heads in fp32
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const auto* cp = c.data_ptr<acc_t>();
      const auto* sp = s.data_ptr<acc_t>();
      scalar_t* dp = d_rope.data_ptr<scalar_t>();
      at::parallel_for(0, B * S, kRowGrain / H + 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sum(R);
        for (int64_t bs = begin; bs < end; ++bs) {
          const int64_t pos = bs % S;
          std::fill(sum.begin(), sum.end(), acc_t(0));
          for (int64_t h = 0; h < H; ++h) {
            const scalar_t* gi = gp + (bs * H + h) * D + N;
            for (int64_t j = 0; j < R; ++j) sum[j] += gi[j];
          }
          rotate_pairs(sum.data(), dp + bs * R, cp + pos * P, sp + pos * P, P, true);
        }
      });
    });
    return {g.narrow(-1, 0, N), d_rope, torch::Tensor(), torch::Tensor()};
  }
};

// ---- SwiGLU ---------------------------------------------------------------------------------

constexpr int64_t kElementGrain = 1 << 14;  // elements per parallel task

template <typename V, typename I>
CONDENSA_INLINE void swiglu_lanes(const float* g, const float* u, float* h, int64_t n) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    V gv, uv;
    std::memcpy(&gv, g + j, sizeof(gv));
    std::memcpy(&uv, u + j, sizeof(uv));
    const V hv = gv * sigmoid<V, I>(gv) * uv;
    std::memcpy(h + j, &hv, sizeof(hv));
  }
  for (; j < n; ++j) h[j] = g[j] * sigmoid<v1f, v1i>(v1f{g[j]})[0] * u[j];
}
CONDENSA_AVX2 void swiglu_wide(const float* g, const float* u, float* h, int64_t n) {
  swiglu_lanes<v8f, v8i>(g, u, h, n);
}
inline void swiglu_span(const float* g, const float* u, float* h, int64_t n) {
  if (cpu_vec_wide())
    swiglu_wide(g, u, h, n);
  else
    swiglu_lanes<v4f, v4i>(g, u, h, n);
}
inline void swiglu_span(const double* g, const double* u, double* h, int64_t n) {
  for (int64_t j = 0; j < n; ++j) h[j] = g[j] / (1 + std::exp(-g[j])) * u[j];
}

template <typename V, typename I>
CONDENSA_INLINE void swiglu_backward_lanes(
    const float* g, const float* u, const float* dh, float* dg, float* du, int64_t n) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    V gv, uv, dv;
    std::memcpy(&gv, g + j, sizeof(gv));
    std::memcpy(&uv, u + j, sizeof(uv));
    std::memcpy(&dv, dh + j, sizeof(dv));
    const V s = sigmoid<V, I>(gv);
    const V dgv = dv * uv * s * (1.0f + gv * (1.0f - s)), duv = dv * gv * s;
    std::memcpy(dg + j, &dgv, sizeof(dgv));
    std::memcpy(du + j, &duv, sizeof(duv));
  }
  for (; j < n; ++j) {
    const float s = sigmoid<v1f, v1i>(v1f{g[j]})[0];
    dg[j] = dh[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
    du[j] = dh[j] * g[j] * s;
  }
}
CONDENSA_AVX2 void swiglu_backward_wide(
    const float* g, const float* u, const float* dh, float* dg, float* du, int64_t n) {
  swiglu_backward_lanes<v8f, v8i>(g, u, dh, dg, du, n);
}
inline void swiglu_backward_span(
    const float* g, const float* u, const float* dh, float* dg, float* du, int64_t n) {
  if (cpu_vec_wide())
    swiglu_backward_wide(g, u, dh, dg, du, n);
  else
    swiglu_backward_lanes<v4f, v4i>(g, u, dh, dg, du, n);
}
inline void swiglu_backward_span(
    const double* g, const double* u, const double* dh, double* dg, double* du, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double s = 1 / (1 + std::exp(-g[j]));
    dg[j] = dh[j] * u[j] * s * (1 + g[j] * (1 - s));
    du[j] = dh[j] * g[j] * s;
  }
}

// bf16 storage (CPU autocast): fp32 arithmetic over chunks converted on the way in and out, so
// the one rounding is that of the result (ATen's bf16 silu(g) * u rounds silu(g) first).
constexpr int64_t kBf16Chunk = 256;

inline void to_float(const c10::BFloat16* x, float* y, int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(x);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = static_cast<uint32_t>(bits[j]) << 16;
    std::memcpy(y + j, &u, sizeof(u));
  }
}

// x's bf16 bits, rounded to nearest even as c10::BFloat16(float) does; NaN stays a (quiet) NaN.
inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return x != x ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

inline void to_bf16(const float* x, c10::BFloat16* y, int64_t n) {
  auto* bits = reinterpret_cast<uint16_t*>(y);
  for (int64_t j = 0; j < n; ++j) bits[j] = bf16_bits(x[j]);
}

// x rounded to bf16, stored as bf16, or widened back: the fp32 value that bf16 holds.
inline void store_rounded(const float* x, c10::BFloat16* y, int64_t n) { to_bf16(x, y, n); }
inline void store_rounded(const float* x, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = static_cast<uint32_t>(bf16_bits(x[j])) << 16;
    std::memcpy(y + j, &u, sizeof(u));
  }
}

template <typename Out>
inline void swiglu_span(const c10::BFloat16* g, const c10::BFloat16* u, Out* h, int64_t n) {
  float gf[kBf16Chunk], uf[kBf16Chunk], hf[kBf16Chunk];
  for (int64_t o = 0; o < n; o += kBf16Chunk) {
    const int64_t m = std::min(kBf16Chunk, n - o);
    to_float(g + o, gf, m);
    to_float(u + o, uf, m);
    swiglu_span(gf, uf, hf, m);
    store_rounded(hf, h + o, m);
  }
}

template <typename Out>
inline void swiglu_backward_span(const c10::BFloat16* g,
                                 const c10::BFloat16* u,
                                 const c10::BFloat16* dh,
                                 Out* dg,
                                 Out* du,
                                 int64_t n) {
  float gf[kBf16Chunk], uf[kBf16Chunk], dhf[kBf16Chunk], dgf[kBf16Chunk], duf[kBf16Chunk];
  for (int64_t o = 0; o < n; o += kBf16Chunk) {
    const int64_t m = std::min(kBf16Chunk, n - o);
    to_float(g + o, gf, m);
    to_float(u + o, uf, m);
    to_float(dh + o, dhf, m);
    swiglu_backward_span(gf, uf, dhf, dgf, duf, m);
    store_rounded(dgf, dg + o, m);
    store_rounded(duf, du + o, m);
  }
}

void check_swiglu(const std::vector<torch::Tensor>& ts) {
  for (const auto& t : ts)
    TORCH_CHECK(cpu_fused_bf16_applies(t) && t.is_contiguous() && t.sizes() == ts[0].sizes() &&
                    t.scalar_type() == ts[0].scalar_type(),
                "fused_swiglu: needs contiguous CPU fp32/fp64/bf16 tensors of one shape and dtype, "
                "got ",
                t.sizes(), " ", t.scalar_type(), " against ", ts[0].sizes(), " ",
                ts[0].scalar_type());
}

// ---- MoE combine ---------------------------------------------------------------------------

constexpr int64_t kColumnGrain = 64;

// sum_j a[j] b[j] with eight independent partial sums (which compile to vector lanes; one
// running sum would be a chain of dependent adds), then the tail.
template <typename T>
inline T dot_lanes(const T* a, const T* b, int64_t n) {
  T acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[j + k] * b[j + k];
  T sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; j < n; ++j) sum += a[j] * b[j];
  return sum;
}  // columns per parallel task in the scatter (no races)

struct WeightedCombineFn : torch::autograd::Function<WeightedCombineFn> {
  static torch::Tensor forward(AutogradContext* ctx,
                               const torch::Tensor& y_ND,
                               const torch::Tensor& token_N,
                               const torch::Tensor& prob_N,
                               int64_t num_tokens) {
    const int64_t N = y_ND.size(0), D = y_ND.size(1);
    auto y = y_ND.contiguous();
    auto token = token_N.contiguous();
    auto p = prob_N.to(y.scalar_type()).contiguous();
    auto out = torch::zeros({num_tokens, D}, y.options());
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fused_weighted_combine", [&] {
      const scalar_t* yp = y.data_ptr<scalar_t>();
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const int64_t* tp = token.data_ptr<int64_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      at::parallel_for(0, D, kColumnGrain, [&](int64_t begin, int64_t end) {
        for (int64_t r = 0; r < N; ++r) {
          const scalar_t w = pp[r];
          const scalar_t* yr = yp + r * D;
          scalar_t* o = op + tp[r] * D;
          for (int64_t j = begin; j < end; ++j) o[j] += w * yr[j];
        }
      });
    });
    ctx->save_for_backward({y, token, p});
    ctx->saved_data["prob_dtype"] = static_cast<int64_t>(prob_N.scalar_type());
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &y = saved[0], &token = saved[1], &p = saved[2];
    const int64_t N = y.size(0), D = y.size(1);
    auto g = grads[0].to(y.scalar_type()).contiguous();
    auto dy = torch::empty_like(y);
    auto dp = torch::empty({N}, y.options());
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fused_weighted_combine_backward", [&] {
      const scalar_t* yp = y.data_ptr<scalar_t>();
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const int64_t* tp = token.data_ptr<int64_t>();
      const scalar_t* gp = g.data_ptr<scalar_t>();
      scalar_t* dyp = dy.data_ptr<scalar_t>();
      scalar_t* dpp = dp.data_ptr<scalar_t>();
      at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t w = pp[r];
          const scalar_t* gr = gp + tp[r] * D;
          const scalar_t* yr = yp + r * D;
          scalar_t* dyr = dyp + r * D;
          for (int64_t j = 0; j < D; ++j) dyr[j] = w * gr[j];
          dpp[r] = dot_lanes(gr, yr, D);
        }
      });
    });
    const auto prob_dtype = static_cast<at::ScalarType>(ctx->saved_data["prob_dtype"].toInt());
    return {dy, torch::Tensor(), dp.to(prob_dtype), torch::Tensor()};
  }
};

}  // namespace

namespace {

// SwiGLU and its gradients over In inputs into Out outputs, split over the threads. Out is In,
// or float for bf16 inputs with widened outputs.
template <typename In, typename Out>
void swiglu_into(const torch::Tensor& g, const torch::Tensor& u, torch::Tensor& h) {
  const In* gp = g.data_ptr<In>();
  const In* up = u.data_ptr<In>();
  Out* hp = h.data_ptr<Out>();
  at::parallel_for(0, g.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    swiglu_span(gp + begin, up + begin, hp + begin, end - begin);
  });
}
template <typename In, typename Out>
void swiglu_backward_into(const torch::Tensor& g,
                          const torch::Tensor& u,
                          const torch::Tensor& dh,
                          torch::Tensor& dg,
                          torch::Tensor& du) {
  const In* gp = g.data_ptr<In>();
  const In* up = u.data_ptr<In>();
  const In* dhp = dh.data_ptr<In>();
  Out* dgp = dg.data_ptr<Out>();
  Out* dup = du.data_ptr<Out>();
  at::parallel_for(0, g.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    swiglu_backward_span(gp + begin, up + begin, dhp + begin, dgp + begin, dup + begin,
                         end - begin);
  });
}

// bf16 inputs with widened outputs (fused_swiglu's `widened`).
bool widens_swiglu(const torch::Tensor& g, bool widened) {
  return widened && g.scalar_type() == torch::kBFloat16;
}

}  // namespace

torch::Tensor fused_swiglu(const torch::Tensor& g, const torch::Tensor& u, bool widened) {
  check_swiglu({g, u});
  if (widens_swiglu(g, widened)) {
    auto h = torch::empty(g.sizes(), g.options().dtype(torch::kFloat32));
    swiglu_into<c10::BFloat16, float>(g, u, h);
    return h;
  }
  auto h = torch::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "fused_swiglu",
                                 [&] { swiglu_into<scalar_t, scalar_t>(g, u, h); });
  return h;
}

std::pair<torch::Tensor, torch::Tensor> fused_swiglu_backward(const torch::Tensor& g,
                                                              const torch::Tensor& u,
                                                              const torch::Tensor& dh,
                                                              bool widened) {
  check_swiglu({g, u, dh});
  if (widens_swiglu(g, widened)) {
    auto dg = torch::empty(g.sizes(), g.options().dtype(torch::kFloat32));
    auto du = torch::empty_like(dg);
    swiglu_backward_into<c10::BFloat16, float>(g, u, dh, dg, du);
    return {dg, du};
  }
  auto dg = torch::empty_like(g), du = torch::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "fused_swiglu_backward", [&] {
    swiglu_backward_into<scalar_t, scalar_t>(g, u, dh, dg, du);
  });
  return {dg, du};
}

bool cpu_fused_applies(const torch::Tensor& x) {
  return x.device().is_cpu() &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64);
}

void add_converted(torch::Tensor& dst, const torch::Tensor& src) {
  const bool fast = dst.device().is_cpu() && src.device().is_cpu() &&
                    dst.scalar_type() == torch::kFloat32 && src.scalar_type() == torch::kBFloat16 &&
                    dst.is_contiguous() && src.is_contiguous() && dst.sizes() == src.sizes();
  if (!fast) {
    dst.add_(src);
    return;
  }
  float* d = dst.data_ptr<float>();
  const c10::BFloat16* x = src.data_ptr<c10::BFloat16>();
  at::parallel_for(0, dst.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    float buf[kBf16Chunk];
    for (int64_t o = begin; o < end; o += kBf16Chunk) {
      const int64_t m = std::min(kBf16Chunk, end - o);
      to_float(x + o, buf, m);
      for (int64_t j = 0; j < m; ++j) d[o + j] += buf[j];
    }
  });
}

bool cpu_fused_bf16_applies(const torch::Tensor& x) {
  return cpu_fused_applies(x) || (x.device().is_cpu() && x.scalar_type() == torch::kBFloat16);
}

torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  TORCH_CHECK(cpu_fused_applies(x), "fused_rms_norm: needs a CPU fp32/fp64 input, got ", x.device(),
              " ", x.scalar_type());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), "fused_rms_norm: weight ", w.sizes(),
              " does not match the input's last dim ", x.size(-1));
  return RMSNormFn::apply(x, w, eps);
}

torch::Tensor fused_rope_tail(const torch::Tensor& q_BSHD,
                              const torch::Tensor& cos_SP,
                              const torch::Tensor& sin_SP) {
  TORCH_CHECK(cpu_fused_bf16_applies(q_BSHD) && q_BSHD.dim() == 4,
              "fused_rope_tail: needs a CPU fp32/fp64/bf16 [B, S, H, D] query, got ",
              q_BSHD.sizes(), " ", q_BSHD.scalar_type());
  check_tables(cos_SP, sin_SP, q_BSHD.size(1), q_BSHD);
  TORCH_CHECK(2 * cos_SP.size(1) <= q_BSHD.size(3), "fused_rope_tail: ", 2 * cos_SP.size(1),
              " rope dims exceed the head dim ", q_BSHD.size(3));
  return RopeTailFn::apply(q_BSHD, cos_SP, sin_SP);
}

torch::Tensor fused_mla_key(const torch::Tensor& k_nope_BSHN,
                            const torch::Tensor& k_rope_BSR,
                            const torch::Tensor& cos_SP,
                            const torch::Tensor& sin_SP) {
  TORCH_CHECK(
      cpu_fused_bf16_applies(k_nope_BSHN) && k_nope_BSHN.dim() == 4 && k_rope_BSR.dim() == 3,
      "fused_mla_key: needs CPU fp32/fp64/bf16 k_nope [B, S, H, N] and k_rope [B, S, R], "
      "got ",
      k_nope_BSHN.sizes(), " and ", k_rope_BSR.sizes());
  TORCH_CHECK(k_rope_BSR.scalar_type() == k_nope_BSHN.scalar_type() &&
                  k_rope_BSR.size(0) == k_nope_BSHN.size(0) &&
                  k_rope_BSR.size(1) == k_nope_BSHN.size(1),
              "fused_mla_key: k_rope ", k_rope_BSR.sizes(), " ", k_rope_BSR.scalar_type(),
              " does not match k_nope ", k_nope_BSHN.sizes(), " ", k_nope_BSHN.scalar_type());
  check_tables(cos_SP, sin_SP, k_nope_BSHN.size(1), k_nope_BSHN);
  TORCH_CHECK(2 * cos_SP.size(1) == k_rope_BSR.size(2), "fused_mla_key: k_rope has ",
              k_rope_BSR.size(2), " dims, the tables ", 2 * cos_SP.size(1));
  return MLAKeyFn::apply(k_nope_BSHN, k_rope_BSR, cos_SP, sin_SP);
}

torch::Tensor fused_weighted_combine(const torch::Tensor& y_ND,
                                     const torch::Tensor& token_N,
                                     const torch::Tensor& prob_N,
                                     int64_t num_tokens) {
  TORCH_CHECK(cpu_fused_applies(y_ND) && y_ND.dim() == 2,
              "fused_weighted_combine: needs a CPU fp32/fp64 [N, D] y, got ", y_ND.sizes(), " ",
              y_ND.scalar_type(), " on ", y_ND.device());
  TORCH_CHECK(token_N.dim() == 1 && token_N.scalar_type() == torch::kInt64 &&
                  token_N.size(0) == y_ND.size(0) && prob_N.dim() == 1 &&
                  prob_N.size(0) == y_ND.size(0) && at::isFloatingType(prob_N.scalar_type()),
              "fused_weighted_combine: token ", token_N.sizes(), " ", token_N.scalar_type(),
              " and prob ", prob_N.sizes(), " ", prob_N.scalar_type(),
              " must be int64 and floating vectors of y's ", y_ND.size(0), " rows");
  if (token_N.numel() > 0) {
    const auto lo = token_N.min().item<int64_t>(), hi = token_N.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_tokens, "fused_weighted_combine: token index ",
                lo < 0 ? lo : hi, " is outside [0, ", num_tokens, ")");
  }
  return WeightedCombineFn::apply(y_ND, token_N, prob_N, num_tokens);
}

// ---- bf16 products ---------------------------------------------------------------------------

namespace {

std::atomic<int> g_bf16_products{static_cast<int>(CpuBf16Products::kAuto)};

bool cpu_has_amx_bf16() {
#if defined(__x86_64__)
  static const bool amx = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    const auto it = caps.find("amx_bf16");
    return it != caps.end() && it->second.isBool() && it->second.toBool() && at::cpu::init_amx();
  }();
  return amx;
#else
  return true;  // other architectures: LibTorch's bf16 kernels
#endif
}

bool bf16_autocast_on() {
  return at::autocast::is_autocast_enabled(at::kCPU) &&
         at::autocast::get_autocast_dtype(at::kCPU) == torch::kBFloat16;
}

// Each fp32 value rounded to bf16's precision (bf16_bits), as fp32.
inline void round_to_bf16_precision(const float* x, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t r = static_cast<uint32_t>(bf16_bits(x[j])) << 16;
    std::memcpy(y + j, &r, sizeof(r));
  }
}

// y[..] = x rounded to bf16 and widened, in one pass; y may be x (in place).
void widen_rounded_into(const torch::Tensor& x, torch::Tensor& y) {
  const int64_t n = x.numel();
  if (x.scalar_type() == torch::kBFloat16) {
    const c10::BFloat16* src = x.data_ptr<c10::BFloat16>();
    float* dst = y.data_ptr<float>();
    at::parallel_for(0, n, kElementGrain, [&](int64_t begin, int64_t end) {
      to_float(src + begin, dst + begin, end - begin);
    });
    return;
  }
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  at::parallel_for(0, n, kElementGrain, [&](int64_t begin, int64_t end) {
    round_to_bf16_precision(src + begin, dst + begin, end - begin);
  });
}

// y = x w^T with widened bf16 operands (cpu_bf16_linear).
struct WidenedLinearFn : torch::autograd::Function<WidenedLinearFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x,
                               const torch::Tensor& w) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t K = w.size(1), N = w.size(0);
    auto sizes = x.sizes().vec();
    sizes.back() = N;
    // One pass each: the operands rounded to bf16 and widened. Backward gets them as they are
    // (a bf16 x as itself, widened again there; an fp32 x's rounded widening, which is no larger).
    auto xw = bf16_widened(x), ww = bf16_widened(w);
    auto y = at::mm(xw.reshape({-1, K}), ww.t());
    ctx->save_for_backward({x.scalar_type() == torch::kBFloat16 ? x : xw, ww});
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(x.scalar_type()),
                                                     static_cast<int64_t>(w.scalar_type())};
    return y.to(torch::kBFloat16).view(sizes);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const auto &xs = saved[0], &ww = saved[1];
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t K = ww.size(1), N = ww.size(0);
    // The upstream gradient rounded to bf16, as the bf16 product's would be.
    auto dy = bf16_widened(grads[0]).view({-1, N});
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      const auto x_dtype = static_cast<at::ScalarType>(dtypes[0]);
      dx = at::mm(dy, ww);
      if (x_dtype == torch::kFloat32)
        widen_rounded_into(dx, dx);  // rounded to bf16 in place, kept fp32
      else
        dx = dx.to(torch::kBFloat16).to(x_dtype);
      dx = dx.view(xs.sizes());
    }
    if (ctx->needs_input_grad(1))
      dw = at::mm(dy.t(),
                  (xs.scalar_type() == torch::kFloat32 ? xs : bf16_widened(xs)).view({-1, K}))
               .to(static_cast<at::ScalarType>(dtypes[1]));
    return {dx, dw};
  }
};

}  // namespace

torch::Tensor bf16_widened(const torch::Tensor& t) {
  const auto st = t.scalar_type();
  if (!t.device().is_cpu() || (st != torch::kFloat32 && st != torch::kBFloat16))
    return t.to(torch::kBFloat16).to(torch::kFloat32);
  auto x = t.contiguous();
  auto y = torch::empty(x.sizes(), x.options().dtype(torch::kFloat32));
  widen_rounded_into(x, y);
  return y;
}

CpuBf16Products parse_cpu_bf16_products(const std::string& name) {
  if (name == "auto") return CpuBf16Products::kAuto;
  if (name == "native") return CpuBf16Products::kNative;
  if (name == "widened") return CpuBf16Products::kWidened;
  throw std::invalid_argument("cpu_bf16_products = '" + name +
                              "': must be one of auto | native | widened");
}

void set_cpu_bf16_products(CpuBf16Products policy) { g_bf16_products = static_cast<int>(policy); }

bool cpu_bf16_products_widened() {
  return cpu_bf16_products_widened(
      static_cast<CpuBf16Products>(g_bf16_products.load(std::memory_order_relaxed)));
}

bool cpu_bf16_products_widened(CpuBf16Products policy) {
  switch (policy) {
    case CpuBf16Products::kNative:
      return false;
    case CpuBf16Products::kWidened:
      return true;
    case CpuBf16Products::kAuto:
      break;
  }
  return !cpu_has_amx_bf16();
}

bool cpu_widens_bf16(const torch::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && cpu_bf16_products_widened();
}

torch::Tensor cpu_bf16_linear(const torch::Tensor& x, const torch::Tensor& w) {
  const bool widen = x.device().is_cpu() && w.device().is_cpu() && bf16_autocast_on() &&
                     at::isFloatingType(x.scalar_type()) && w.dim() == 2 &&
                     x.scalar_type() != torch::kFloat64 && w.scalar_type() != torch::kFloat64 &&
                     cpu_bf16_products_widened();
  if (!widen) return torch::nn::functional::linear(x, w);
  TORCH_CHECK(x.size(-1) == w.size(1), "cpu_bf16_linear: x ", x.sizes(), " against weight ",
              w.sizes());
  return WidenedLinearFn::apply(x, w);
}

}  // namespace condensa::model
