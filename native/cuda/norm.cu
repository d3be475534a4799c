// cuda/norm.cu: layer normalisation over groups of `group` consecutive elements with a per-channel affine
// (channel = index % C), forward and backward; group = C is LayerNorm over channels, group = H*W*C the
// "modified LayerNorm" (GroupNorm with one group).
//   y = (x - mean) * rstd * w[c] + b[c],  rstd = 1 / sqrt(var + eps), var biased
//   backward, with xhat = (x - mean) * rstd and g = dy * w[c]:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw[c] += sum dy * xhat,  db[c] += sum dy
//
// LayerNorm over channels (group = C) with C % 4 == 0 and C <= 1024, 16-byte aligned tensors: the
// forward holds each row in registers as float4 (16 lanes per row up to 64 channels, else a warp), so
// x is read once with 16-byte loads; the same statistics in double. Other groups of up to kWarpMax
// elements: one warp per group, two passes over the group (mean, then the centred variance, both in
// double), the row staying in L1. Larger groups (few, long rows): per-chunk partial sums in
// double over many blocks, then one small kernel per row, then an elementwise pass. dw/db are
// deterministic column reductions over the [numel / C, C] view.
#include <algorithm>
#include <cmath>

#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int64_t kWarpMax = 8192;
constexpr int kChunk = 4096;  // elements per block in the long-row kernels

// ---- forward, one warp per group ------------------------------------------------------------------
// Statistics and the normalisation use double, as the reference does: with a large mean and a variance
// near eps (the "small var" fixtures), a float mean alone shifts xhat by about 1e-4.
__global__ void ln_fwd_warp_kernel(const float* __restrict__ x,  // [R, G]
                                   const float* __restrict__ w,  // [C] or null
                                   const float* __restrict__ b,  // [C] or null
                                   float* __restrict__ y,        // [R, G]
                                   float* __restrict__ mean_out, // [R] or null
                                   float* __restrict__ rstd_out, // [R] or null
                                   int64_t R, int G, int C, double eps) {
  int lane = threadIdx.x & 31;
  int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < R; r += warps) {
    const float* xr = x + r * G;
    double s = 0.0;
    for (int i = lane; i < G; i += 32) s += xr[i];
    const double mean = warp_sum(s) / G;
    double v = 0.0;
    for (int i = lane; i < G; i += 32) {
      double d = xr[i] - mean;
      v += d * d;
    }
    const double rstd = 1.0 / sqrt(warp_sum(v) / G + eps);
    float* yr = y + r * G;
    for (int i = lane; i < G; i += 32) {
      int c = i % C;
      float t = static_cast<float>((xr[i] - mean) * rstd);
      if (w) t *= w[c];
      if (b) t += b[c];
      yr[i] = t;
    }
    if (lane == 0) {
      if (mean_out) mean_out[r] = static_cast<float>(mean);
      if (rstd_out) rstd_out[r] = static_cast<float>(rstd);
    }
  }
}

// ---- forward, rows in registers (group = C, C % 4 == 0, C / 4 <= TPR * NV) ----------------------------
template <int TPR>
__device__ __forceinline__ double group_sum(double v) {  // over the TPR lanes of a row (TPR divides 32)
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int NV, int TPR>
__global__ void ln_fwd_rows_kernel(const float4* __restrict__ x,  // [R, C4]
                                   const float4* __restrict__ w,  // [C4] or null
                                   const float4* __restrict__ b,  // [C4] or null
                                   float4* __restrict__ y,        // [R, C4]
                                   float* __restrict__ mean_out,  // [R] or null
                                   float* __restrict__ rstd_out,  // [R] or null
                                   int64_t R, int C4, double eps) {
  constexpr int RPW = 32 / TPR;  // rows per warp
  const int lane = threadIdx.x & 31, sub = lane % TPR;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const double inv_n = 1.0 / (4.0 * C4);
  for (int64_t rb = warp * RPW; rb < R; rb += warps * RPW) {  // warp-uniform: every lane shuffles
    const int64_t r = rb + lane / TPR;
    const bool ok = r < R;
    float4 v[NV];
    double s = 0.0;
#pragma unroll
    for (int t = 0; t < NV; ++t) {
      const int i = sub + t * TPR;
      v[t] = ok && i < C4 ? x[r * C4 + i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      s += (static_cast<double>(v[t].x) + v[t].y) + (static_cast<double>(v[t].z) + v[t].w);
    }
    const double mean = group_sum<TPR>(s) * inv_n;
    double q = 0.0;
#pragma unroll
    for (int t = 0; t < NV; ++t) {
      if (sub + t * TPR < C4) {
        const double d0 = v[t].x - mean, d1 = v[t].y - mean, d2 = v[t].z - mean, d3 = v[t].w - mean;
        q += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
      }
    }
    const double rstd = 1.0 / sqrt(group_sum<TPR>(q) * inv_n + eps);
    if (!ok) continue;
#pragma unroll
    for (int t = 0; t < NV; ++t) {
      const int i = sub + t * TPR;
      if (i >= C4) continue;
      float4 o = make_float4(static_cast<float>((v[t].x - mean) * rstd), static_cast<float>((v[t].y - mean) * rstd),
                             static_cast<float>((v[t].z - mean) * rstd), static_cast<float>((v[t].w - mean) * rstd));
      if (w) {
        const float4 wv = w[i];
        o.x *= wv.x, o.y *= wv.y, o.z *= wv.z, o.w *= wv.w;
      }
      if (b) {
        const float4 bv = b[i];
        o.x += bv.x, o.y += bv.y, o.z += bv.z, o.w += bv.w;
      }
      y[r * C4 + i] = o;
    }
    if (sub == 0) {
      if (mean_out) mean_out[r] = static_cast<float>(mean);
      if (rstd_out) rstd_out[r] = static_cast<float>(rstd);
    }
  }
}

// ---- long groups: partial sums per chunk -----------------------------------------------------------
// grid (chunks, R). mode 0: (sum x, sum x^2); mode 1: (sum g, sum g * xhat) with g = dy * w[c].
__global__ void ln_partials_kernel(const float* __restrict__ x,     // [R, G]
                                   const float* __restrict__ dy,    // [R, G] (mode 1)
                                   const float* __restrict__ w,     // [C] or null (mode 1)
                                   const float* __restrict__ mean,  // [R] (mode 1)
                                   const float* __restrict__ rstd,  // [R] (mode 1)
                                   int64_t G, int C, int mode,
                                   double* __restrict__ part) {  // [R, chunks, 2]
  __shared__ double red[32];
  int64_t r = blockIdx.y;
  int64_t i0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  int64_t i1 = i0 + kChunk < G ? i0 + kChunk : G;
  const float* xr = x + r * G;
  double s1 = 0, s2 = 0;
  if (mode == 0) {
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
      double v = xr[i];
      s1 += v;
      s2 += v * v;
    }
  } else {
    const float* dyr = dy + r * G;
    double mu = mean[r], rs = rstd[r];
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
      double g = static_cast<double>(dyr[i]) * (w ? static_cast<double>(w[i % C]) : 1.0);
      s1 += g;
      s2 += g * ((xr[i] - mu) * rs);
    }
  }
  s1 = block_sum(s1, red);
  s2 = block_sum(s2, red);
  if (threadIdx.x == 0) {
    double* p = part + (r * gridDim.x + blockIdx.x) * 2;
    p[0] = s1;
    p[1] = s2;
  }
}

// One thread per row: folds the chunk partials. mode 0: mean, rstd (in double into d1, d2, and as float
// into o1, o2 when given); mode 1: mean(g), mean(g * xhat) into o1, o2.
__global__ void ln_finish_kernel(const double* __restrict__ part,  // [R, chunks, 2]
                                 int64_t R, int chunks, int64_t G, double eps, int mode,
                                 double* __restrict__ d1, double* __restrict__ d2,  // [R] each (mode 0)
                                 float* __restrict__ o1, float* __restrict__ o2) {  // [R] each or null
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < R;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s1 = 0, s2 = 0;
    for (int k = 0; k < chunks; ++k) {
      s1 += part[(r * chunks + k) * 2];
      s2 += part[(r * chunks + k) * 2 + 1];
    }
    double n = static_cast<double>(G);
    if (mode == 0) {
      double mu = s1 / n;
      double var = s2 / n - mu * mu;
      if (var < 0) var = 0;
      double rs = 1.0 / sqrt(var + eps);
      d1[r] = mu;
      d2[r] = rs;
      if (o1) o1[r] = static_cast<float>(mu);
      if (o2) o2[r] = static_cast<float>(rs);
    } else {
      o1[r] = static_cast<float>(s1 / n);
      o2[r] = static_cast<float>(s2 / n);
    }
  }
}

__global__ void ln_apply_kernel(const float* __restrict__ x,      // [R, G]
                                const float* __restrict__ w,      // [C] or null
                                const float* __restrict__ b,      // [C] or null
                                const double* __restrict__ mean,  // [R]
                                const double* __restrict__ rstd,  // [R]
                                int64_t total, int64_t G, int C,
                                float* __restrict__ y) {  // [R, G]
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = e / G;
    int c = static_cast<int>(e % C);
    float t = static_cast<float>((x[e] - mean[r]) * rstd[r]);
    if (w) t *= w[c];
    if (b) t += b[c];
    y[e] = t;
  }
}

// ---- backward ------------------------------------------------------------------------------------
__global__ void ln_bwd_dx_warp_kernel(const float* __restrict__ dy,    // [R, G]
                                      const float* __restrict__ x,     // [R, G]
                                      const float* __restrict__ w,     // [C] or null
                                      const float* __restrict__ mean,  // [R]
                                      const float* __restrict__ rstd,  // [R]
                                      float* __restrict__ dx,          // [R, G]
                                      int64_t R, int G, int C) {
  int lane = threadIdx.x & 31;
  int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < R; r += warps) {
    const float *xr = x + r * G, *dyr = dy + r * G;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < G; i += 32) {
      float g = dyr[i] * (w ? w[i % C] : 1.0f);
      sg += g;
      sgx = fmaf(g, (xr[i] - mu) * rs, sgx);
    }
    sg = warp_sum(sg) / static_cast<float>(G);
    sgx = warp_sum(sgx) / static_cast<float>(G);
    float* dxr = dx + r * G;
    for (int i = lane; i < G; i += 32) {
      float g = dyr[i] * (w ? w[i % C] : 1.0f);
      float xhat = (xr[i] - mu) * rs;
      dxr[i] = rs * (g - sg - xhat * sgx);
    }
  }
}

__global__ void ln_bwd_dx_apply_kernel(const float* __restrict__ dy,    // [R, G]
                                       const float* __restrict__ x,     // [R, G]
                                       const float* __restrict__ w,     // [C] or null
                                       const float* __restrict__ mean,  // [R]
                                       const float* __restrict__ rstd,  // [R]
                                       const float* __restrict__ mg,    // [R] mean(g)
                                       const float* __restrict__ mgx,   // [R] mean(g * xhat)
                                       int64_t total, int64_t G, int C,
                                       float* __restrict__ dx) {  // [R, G]
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = e / G;
    float g = dy[e] * (w ? w[e % C] : 1.0f);
    float xhat = (x[e] - mean[r]) * rstd[r];
    dx[e] = rstd[r] * (g - mg[r] - xhat * mgx[r]);
  }
}

// dw partials over the [T, C] view (T = numel / C): partial[p, c] = sum over rows t of chunk p of
// dy[t, c] * xhat[t, c]; the group of row t is t / (G / C). Block (32, 8) as in colsum_add.
__global__ void ln_dw_partial_kernel(const float* __restrict__ dy,    // [T, C]
                                     const float* __restrict__ x,     // [T, C]
                                     const float* __restrict__ mean,  // [R]
                                     const float* __restrict__ rstd,  // [R]
                                     int64_t T, int C, int64_t rows_per_group, int64_t rows_per_chunk,
                                     float* __restrict__ partial) {  // [P, C]
  __shared__ double acc_s[8][33];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  int64_t t0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  int64_t t1 = t0 + rows_per_chunk < T ? t0 + rows_per_chunk : T;
  double acc = 0;
  if (c < C)
    for (int64_t t = t0 + ty; t < t1; t += 8) {
      int64_t r = t / rows_per_group;
      acc += static_cast<double>(dy[t * C + c]) * ((x[t * C + c] - mean[r]) * rstd[r]);
    }
  acc_s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < C) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += acc_s[i][tx];
    partial[static_cast<int64_t>(blockIdx.y) * C + c] = static_cast<float>(s);
  }
}

struct Dims {
  int64_t R, G, total;
  int C;
};

Dims dims_of(const TensorView& x, const OpArgs& a) {
  Dims d{};
  d.G = static_cast<int64_t>(a.attr[1]);
  d.C = static_cast<int>(x.dim(-1));
  d.total = x.numel();
  d.R = d.total / d.G;
  return d;
}

// Long-row statistics: mode 0 -> (mean, rstd) of x into d1, d2 (double) and o1, o2 (float, optional);
// mode 1 -> (mean g, mean g*xhat) into o1, o2.
void long_row_stats(const Dims& d, const float* x, const float* dy, const float* w, const float* mean,
                    const float* rstd, double eps, int mode, double* d1, double* d2, float* o1, float* o2,
                    const char* what) {
  int64_t chunks = ceil_div(d.G, kChunk);
  if (chunks > 2147483647 || d.R > 65535)
    throw Error(ErrorKind::range, "layernorm: expected at most 65535 groups of long rows for x");
  Scratch part(static_cast<size_t>(d.R * chunks * 2) * sizeof(double));
  ln_partials_kernel<<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(d.R)), 256, 0, stream()>>>(
      x, dy, w, mean, rstd, d.G, d.C, mode, part.as<double>());
  after_launch(what);
  ln_finish_kernel<<<grid_for(d.R, 128), 128, 0, stream()>>>(part.as<double>(), d.R, static_cast<int>(chunks), d.G,
                                                            eps, mode, d1, d2, o1, o2);
  after_launch(what);
}

template <int NV, int TPR>
void rows_fwd(const Dims& d, const float* x, const float* w, const float* b, float* y, float* mo, float* ro,
              double eps) {
  const int64_t warps = ceil_div(d.R, 32 / TPR);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(warps, 8), int64_t(sm_count()) * 16));
  ln_fwd_rows_kernel<NV, TPR><<<blocks, 256, 0, stream()>>>(
      reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(w), reinterpret_cast<const float4*>(b),
      reinterpret_cast<float4*>(y), mo, ro, d.R, static_cast<int>(d.G / 4), eps);
  after_launch("layernorm forward");
}

// The register-row forward where it applies (see the header); false otherwise.
bool launch_rows_fwd(const Dims& d, const float* x, const float* w, const float* b, float* y, float* mo, float* ro,
                     double eps) {
  auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (d.G != d.C || d.G % 4 != 0 || d.G > 1024 || !aligned(x) || !aligned(y) || (w && !aligned(w)) || (b && !aligned(b)))
    return false;
  const int64_t c4 = d.G / 4;
  if (c4 <= 16) rows_fwd<1, 16>(d, x, w, b, y, mo, ro, eps);
  else if (c4 <= 32) rows_fwd<1, 32>(d, x, w, b, y, mo, ro, eps);
  else if (c4 <= 64) rows_fwd<2, 32>(d, x, w, b, y, mo, ro, eps);
  else if (c4 <= 96) rows_fwd<3, 32>(d, x, w, b, y, mo, ro, eps);
  else if (c4 <= 128) rows_fwd<4, 32>(d, x, w, b, y, mo, ro, eps);
  else if (c4 <= 192) rows_fwd<6, 32>(d, x, w, b, y, mo, ro, eps);
  else rows_fwd<8, 32>(d, x, w, b, y, mo, ro, eps);
  return true;
}

void layernorm_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];  // x[R*G] w[C]? b[C]?
  const TensorView &y = a.out[0], &mo = a.out[1], &ro = a.out[2];  // y like x, mean[R]? rstd[R]?
  Dims d = dims_of(x, a);
  if (d.total == 0) return;
  double eps = a.attr[0];
  const float* W = w.present() ? w.f() : nullptr;
  const float* Bs = b.present() ? b.f() : nullptr;
  if (launch_rows_fwd(d, x.f(), W, Bs, y.f(), mo.present() ? mo.f() : nullptr, ro.present() ? ro.f() : nullptr, eps))
    return;
  if (d.G <= kWarpMax) {
    ln_fwd_warp_kernel<<<grid_for(d.R * 32, 256), 256, 0, stream()>>>(x.f(), W, Bs, y.f(), mo.present() ? mo.f() : nullptr,
                                                                      ro.present() ? ro.f() : nullptr, d.R,
                                                                      static_cast<int>(d.G), d.C, eps);
    after_launch("layernorm forward");
    return;
  }
  Scratch stats(static_cast<size_t>(2 * d.R) * sizeof(double));
  double *mean = stats.as<double>(), *rstd = stats.as<double>() + d.R;
  long_row_stats(d, x.f(), nullptr, nullptr, nullptr, nullptr, eps, 0, mean, rstd, mo.present() ? mo.f() : nullptr,
                 ro.present() ? ro.f() : nullptr, "layernorm forward");
  ln_apply_kernel<<<grid_for(d.total, 256), 256, 0, stream()>>>(x.f(), W, Bs, mean, rstd, d.total, d.G, d.C, y.f());
  after_launch("layernorm forward");
}

void layernorm_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2], &mean = a.in[3], &rstd = a.in[4];  // mean,rstd [R]
  const TensorView &dx = a.out[0], &dw = a.out[1], &db = a.out[2];  // dx like x, dw[C]?, db[C]?
  Dims d = dims_of(x, a);
  if (d.total == 0) return;
  const float* W = w.present() ? w.f() : nullptr;
  if (dx.present()) {
    if (d.G <= kWarpMax) {
      ln_bwd_dx_warp_kernel<<<grid_for(d.R * 32, 256), 256, 0, stream()>>>(dy.f(), x.f(), W, mean.f(), rstd.f(), dx.f(),
                                                                           d.R, static_cast<int>(d.G), d.C);
      after_launch("layernorm backward (dx)");
    } else {
      Scratch s(static_cast<size_t>(2 * d.R) * sizeof(float));
      float *mg = s.as<float>(), *mgx = s.as<float>() + d.R;
      long_row_stats(d, x.f(), dy.f(), W, mean.f(), rstd.f(), 0.0, 1, nullptr, nullptr, mg, mgx,
                     "layernorm backward (dx)");
      ln_bwd_dx_apply_kernel<<<grid_for(d.total, 256), 256, 0, stream()>>>(dy.f(), x.f(), W, mean.f(), rstd.f(), mg,
                                                                           mgx, d.total, d.G, d.C, dx.f());
      after_launch("layernorm backward (dx)");
    }
  }
  int64_t T = d.total / d.C;
  if (dw.present()) {
    int64_t ctiles = ceil_div(d.C, 32);
    int64_t P = ceil_div(static_cast<int64_t>(sm_count()) * 4, ctiles);
    int64_t max_p = ceil_div(T, 64);
    if (P > max_p) P = max_p;
    if (P > 65535) P = 65535;
    if (P < 1) P = 1;
    int64_t rows_per_chunk = ceil_div(T, P);
    P = ceil_div(T, rows_per_chunk);
    Scratch partial(static_cast<size_t>(P * d.C) * sizeof(float));
    ln_dw_partial_kernel<<<dim3(static_cast<unsigned>(ctiles), static_cast<unsigned>(P)), dim3(32, 8), 0, stream()>>>(
        dy.f(), x.f(), mean.f(), rstd.f(), T, d.C, d.G / d.C, rows_per_chunk, partial.as<float>());
    after_launch("layernorm backward (dw)");
    add_partials(partial.as<float>(), P, d.C, dw.f());
  }
  if (db.present()) colsum_add(dy.f(), nullptr, T, d.C, db.f());
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, layernorm, mf::cuda::layernorm_fwd, mf::cuda::layernorm_bwd);
