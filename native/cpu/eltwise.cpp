// cpu/eltwise.cpp: the memory-bound ops, parallel over rows/chunks, inner loops vectorised by the
// compiler (AVX2): StarReLU/SquaredReLU, the residual step scale_add, the H,W mean, the pooling mixer,
// dropout / drop path, and the utilities axpy, scale, lerp, fill, sumsq.
// Reductions (parameter gradients) are summed per thread, then across threads in double.
#include <cmath>
#include <vector>

#include "../core/numeric.h"
#include "cpu.h"

namespace mf::cpu {
namespace {

constexpr int64_t kChunk = 4096;  // elements per parallel task for streaming ops

// Runs fn(begin, end, thread) over [0, n) and returns per-thread partial results of width `width`.
template <typename F>
std::vector<double> reduce_parallel(int64_t n, int64_t width, F&& fn) {
  int nt = num_threads();
  std::vector<double> part(static_cast<size_t>(nt * width), 0.0);
  parallel_for(n, kChunk, [&](int64_t i0, int64_t i1) { fn(i0, i1, part.data() + omp_get_thread_num() * width); });
  return part;
}

double total(const std::vector<double>& part, int64_t width, int64_t k) {
  double s = 0;
  for (size_t i = static_cast<size_t>(k); i < part.size(); i += static_cast<size_t>(width)) s += part[i];
  return s;
}

// --- StarReLU ------------------------------------------------------------------------------------

// y = s * relu(x)^2 + b over [0, n). max(x, 0) maps NaN to 0, as the reference's x > 0 ? x : 0 does.
void starrelu_span(const float* X, float* Y, int64_t n, float s, float b) {
  const __m256 vs = _mm256_set1_ps(s), vb = _mm256_set1_ps(b), z = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r = _mm256_max_ps(_mm256_loadu_ps(X + i), z);
    _mm256_storeu_ps(Y + i, _mm256_add_ps(_mm256_mul_ps(vs, _mm256_mul_ps(r, r)), vb));
  }
  for (; i < n; ++i) {
    float r = X[i] > 0.0f ? X[i] : 0.0f;
    Y[i] = s * (r * r) + b;
  }
}

void starrelu_fwd(const OpArgs& a) {
  const float* X = a.in[0].f();
  float* Y = a.out[0].f();
  float s = a.in[1].present() ? a.in[1].f()[0] : 1.0f, b = a.in[2].present() ? a.in[2].f()[0] : 0.0f;
  parallel_for(a.in[0].numel(), kChunk, [=](int64_t i0, int64_t i1) { starrelu_span(X + i0, Y + i0, i1 - i0, s, b); });
}

// dx = dy * (2 s r) (when DX), and acc[0] += sum dy * r^2, acc[1] += sum dy in double (when sums):
// these sums cancel heavily, so each term is formed in double too.
void starrelu_bwd_span(const float* DY, const float* X, float* DX, int64_t n, float s, bool sums, double* acc) {
  const __m256 s2 = _mm256_set1_ps(2.0f * s), z = _mm256_setzero_ps();
  __m256d ds0 = _mm256_setzero_pd(), ds1 = ds0, db0 = ds0, db1 = ds0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r = _mm256_max_ps(_mm256_loadu_ps(X + i), z), dy = _mm256_loadu_ps(DY + i);
    if (DX) _mm256_storeu_ps(DX + i, _mm256_mul_ps(dy, _mm256_mul_ps(s2, r)));
    if (sums) {  // dy * r * r in double, as the reference (r * r in float lost up to 6e-8 per term)
      __m256d dlo = _mm256_cvtps_pd(_mm256_castps256_ps128(dy)), dhi = _mm256_cvtps_pd(_mm256_extractf128_ps(dy, 1));
      __m256d rlo = _mm256_cvtps_pd(_mm256_castps256_ps128(r)), rhi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
      ds0 = _mm256_add_pd(ds0, _mm256_mul_pd(_mm256_mul_pd(dlo, rlo), rlo));
      ds1 = _mm256_add_pd(ds1, _mm256_mul_pd(_mm256_mul_pd(dhi, rhi), rhi));
      add_widened(db0, db1, dy);
    }
  }
  double ds = hsum_pd(_mm256_add_pd(ds0, ds1)), db = hsum_pd(_mm256_add_pd(db0, db1));
  for (; i < n; ++i) {
    float r = X[i] > 0.0f ? X[i] : 0.0f;
    if (DX) DX[i] = DY[i] * (2.0f * s * r);
    double rd = r;
    ds += static_cast<double>(DY[i]) * rd * rd;
    db += DY[i];
  }
  if (sums) {
    acc[0] += ds;
    acc[1] += db;
  }
}

void starrelu_bwd(const OpArgs& a) {
  const float *DY = a.in[0].f(), *X = a.in[1].f();
  float s = a.in[2].present() ? a.in[2].f()[0] : 1.0f;
  float* DX = a.out[0].present() ? a.out[0].f() : nullptr;
  bool want = a.out[1].present() || a.out[2].present();
  auto part = reduce_parallel(a.in[1].numel(), 2, [=](int64_t i0, int64_t i1, double* acc) {
    starrelu_bwd_span(DY + i0, X + i0, DX ? DX + i0 : nullptr, i1 - i0, s, want, acc);
  });
  if (a.out[1].present()) a.out[1].f()[0] += static_cast<float>(total(part, 2, 0));
  if (a.out[2].present()) a.out[2].f()[0] += static_cast<float>(total(part, 2, 1));
}

// --- residual ------------------------------------------------------------------------------------

void scale_add_fwd(const OpArgs& a) {
  const TensorView& x = a.in[0];
  int64_t C = x.dim(-1), rows = x.rows();
  const float *X = x.f(), *S = a.in[1].present() ? a.in[1].f() : nullptr, *R = a.in[2].present() ? a.in[2].f() : nullptr;
  float* Y = a.out[0].f();
  parallel_for(rows, std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = X + r * C, *rr = R ? R + r * C : nullptr;
      float* yr = Y + r * C;
      if (S && rr)
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * S[c] + rr[c];
      else if (S)
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * S[c];
      else if (rr)
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] + rr[c];
      else
        std::memcpy(yr, xr, sizeof(float) * static_cast<size_t>(C));
    }
  });
}

// acc[c] += (double) a[c] * b[c] for c < n (the products are exact in double).
// acc[c] += sum_{q < R} a[q * n + c] * b[q * n + c] for R consecutive rows, each product exact in double
// and added in row order (the same roundings as one row at a time); acc is read and written once per
// block of rows (row by row, the read-modify-write of acc was a store-forwarding chain: half the time).
template <int R>
void accumulate_products(double* acc, const float* a, const float* b, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256d lo = _mm256_loadu_pd(acc + c), hi = _mm256_loadu_pd(acc + c + 4);
#pragma GCC unroll 4
    for (int q = 0; q < R; ++q) add_products_widened(lo, hi, _mm256_loadu_ps(a + q * n + c), _mm256_loadu_ps(b + q * n + c));
    _mm256_storeu_pd(acc + c, lo);
    _mm256_storeu_pd(acc + c + 4, hi);
  }
  for (; c < n; ++c)
    for (int q = 0; q < R; ++q) acc[c] += static_cast<double>(a[q * n + c]) * b[q * n + c];
}

void scale_add_bwd(const OpArgs& a) {
  const TensorView& x = a.in[1];
  int64_t C = x.dim(-1), rows = x.rows();
  const float *DY = a.in[0].f(), *X = x.f(), *S = a.in[2].present() ? a.in[2].f() : nullptr;
  float *DX = a.out[0].present() ? a.out[0].f() : nullptr, *DS = a.out[1].present() ? a.out[1].f() : nullptr;
  float* DR = a.out[2].present() ? a.out[2].f() : nullptr;
  int nt = num_threads();
  std::vector<double> part(DS ? static_cast<size_t>(nt * C) : 0, 0.0);
  parallel_for(rows, std::max<int64_t>(1, kChunk / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    double* ds = DS ? part.data() + omp_get_thread_num() * C : nullptr;
    if (ds) {
      int64_t r = r0;
      for (; r + 4 <= r1; r += 4) accumulate_products<4>(ds, DY + r * C, X + r * C, C);
      for (; r < r1; ++r) accumulate_products<1>(ds, DY + r * C, X + r * C, C);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const float* dy = DY + r * C;
      if (DX) {
        float* dx = DX + r * C;
        if (S)
          for (int64_t c = 0; c < C; ++c) dx[c] = dy[c] * S[c];
        else
          std::memcpy(dx, dy, sizeof(float) * static_cast<size_t>(C));
      }
      if (DR) std::memcpy(DR + r * C, dy, sizeof(float) * static_cast<size_t>(C));
    }
  });
  if (DS)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int t = 0; t < nt; ++t) s += part[static_cast<size_t>(t * C + c)];
      DS[c] += static_cast<float>(s);
    }
}

void mean_hw_fwd(const OpArgs& a) {
  const TensorView& x = a.in[0];
  int64_t B = x.shape[0], C = x.dim(-1), N = x.numel() / std::max<int64_t>(1, B * C);
  const float* X = x.f();
  float* Y = a.out[0].f();
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> acc(static_cast<size_t>(C));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += X[(b * N + n) * C + c];
      for (int64_t c = 0; c < C; ++c) Y[b * C + c] = static_cast<float>(acc[static_cast<size_t>(c)] / static_cast<double>(N));
    }
  });
}

void mean_hw_bwd(const OpArgs& a) {
  const TensorView& dx = a.out[0];
  int64_t B = dx.shape[0], C = dx.dim(-1), N = dx.numel() / std::max<int64_t>(1, B * C);
  const float* DY = a.in[0].f();
  float* DX = dx.f();
  float inv = 1.0f / static_cast<float>(N);
  parallel_for(B * N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* dy = DY + (r / N) * C;
      for (int64_t c = 0; c < C; ++c) DX[r * C + c] = dy[c] * inv;
    }
  });
}

// --- pooling mixer -------------------------------------------------------------------------------

inline int64_t taps(int64_t i, int64_t n) { return (i > 0) + 1 + (i + 1 < n); }

// out = avg3x3(in) - in  (forward), or  out = sum_q in[q] / count(q) - in  (backward, scale_by_source),
// with count = the taps inside the map (count_include_pad=False). Separable: per output row, the (scaled)
// sum of the three input rows, then three neighbours of that row sum per pixel: 6 adds per element
// instead of 9 multiply-adds, contiguous over W * C.
void pool_rows(const float* IN, float* OUT, int64_t H, int64_t W, int64_t C, int64_t b, int64_t h, bool scale_by_source,
               float* vsum) {
  const int64_t i0 = std::max<int64_t>(h - 1, 0), i1 = std::min(h + 1, H - 1), n = W * C;
  if (!scale_by_source) {  // plain sum of the (up to) three rows, contiguous over W * C
    const float *r0 = IN + (b * H + i0) * n, *r2 = IN + (b * H + i1) * n, *r1 = i1 - i0 == 2 ? r0 + n : r0;
    if (i1 - i0 == 2)
      for (int64_t e = 0; e < n; ++e) vsum[e] = r0[e] + r1[e] + r2[e];
    else if (i1 > i0)
      for (int64_t e = 0; e < n; ++e) vsum[e] = r0[e] + r2[e];
    else
      std::memcpy(vsum, r0, sizeof(float) * static_cast<size_t>(n));
  } else {  // the three rows scaled by 1/taps(row), then each pixel by 1/taps(column): 1/count = their product
    float a[3] = {0, 0, 0};
    const float* r[3] = {nullptr, nullptr, nullptr};
    for (int64_t i = i0; i <= i1; ++i) {
      r[i - i0] = IN + (b * H + i) * n;
      a[i - i0] = 1.0f / static_cast<float>(taps(i, H));
    }
    for (int64_t w = 0; w < W; ++w) {
      const float bw = 1.0f / static_cast<float>(taps(w, W));
      const int64_t e0 = w * C;
      float* v = vsum + e0;
      if (r[2])
        for (int64_t c = 0; c < C; ++c) v[c] = (r[0][e0 + c] * a[0] + r[1][e0 + c] * a[1] + r[2][e0 + c] * a[2]) * bw;
      else if (r[1])
        for (int64_t c = 0; c < C; ++c) v[c] = (r[0][e0 + c] * a[0] + r[1][e0 + c] * a[1]) * bw;
      else
        for (int64_t c = 0; c < C; ++c) v[c] = r[0][e0 + c] * a[0] * bw;
    }
  }
  const float* self = IN + (b * H + h) * W * C;
  float* dst = OUT + (b * H + h) * W * C;
  for (int64_t w = 0; w < W; ++w) {
    float k = scale_by_source ? 1.0f : 1.0f / static_cast<float>(taps(h, H) * taps(w, W));
    const float* v = vsum + w * C;
    const float* vl = w > 0 ? v - C : nullptr;
    const float* vr = w + 1 < W ? v + C : nullptr;
    const float* x = self + w * C;
    float* y = dst + w * C;
    if (vl && vr)
      for (int64_t c = 0; c < C; ++c) y[c] = (vl[c] + v[c] + vr[c]) * k - x[c];
    else if (vl)
      for (int64_t c = 0; c < C; ++c) y[c] = (vl[c] + v[c]) * k - x[c];
    else if (vr)
      for (int64_t c = 0; c < C; ++c) y[c] = (v[c] + vr[c]) * k - x[c];
    else
      for (int64_t c = 0; c < C; ++c) y[c] = v[c] * k - x[c];
  }
}

void pool_apply(const TensorView& t, const float* IN, float* OUT, bool scale_by_source) {
  int64_t B = t.shape[0], H = t.shape[1], W = t.shape[2], C = t.shape[3];
  parallel_for(B * H, 1, [=](int64_t r0, int64_t r1) {
    std::vector<float> vsum(static_cast<size_t>(W * C));
    for (int64_t r = r0; r < r1; ++r) pool_rows(IN, OUT, H, W, C, r / H, r % H, scale_by_source, vsum.data());
  });
}

void pool_fwd(const OpArgs& a) { pool_apply(a.in[0], a.in[0].f(), a.out[0].f(), false); }
void pool_bwd(const OpArgs& a) { pool_apply(a.in[0], a.in[0].f(), a.out[0].f(), true); }

// --- dropout -------------------------------------------------------------------------------------

// 64-bit lane-wise a * c (mod 2^64) from 32-bit multiplies (AVX2 has no 64-bit multiply).
inline __m256i mul64(__m256i a, uint64_t c) {
  const __m256i clo = _mm256_set1_epi64x(static_cast<int64_t>(c & 0xffffffffu)), chi = _mm256_set1_epi64x(static_cast<int64_t>(c >> 32));
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(a, chi), _mm256_mul_epu32(_mm256_srli_epi64(a, 32), clo));
  return _mm256_add_epi64(_mm256_mul_epu32(a, clo), _mm256_slli_epi64(cross, 32));
}

// numeric.h's mix64 on 4 lanes.
inline __m256i mix64x4(__m256i z) {
  z = _mm256_add_epi64(z, _mm256_set1_epi64x(static_cast<int64_t>(0x9e3779b97f4a7c15ull)));
  z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xbf58476d1ce4e5b9ull);
  z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94d049bb133111ebull);
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

// Keep-mask of 8 consecutive draws u(seed, index0 + 0..7): uniform01 = (r >> 40) * 2^-24 >= p, i.e.
// the 24-bit integer r >> 40 >= threshold (p * 2^24 is exact in float, so the test is the same).
inline __m256 keep_mask8(uint64_t mixed_seed, uint64_t index0, int64_t threshold) {
  const __m256i base = _mm256_set1_epi64x(static_cast<int64_t>(index0));
  const __m256i lo = _mm256_add_epi64(base, _mm256_setr_epi64x(0, 1, 2, 3)), hi = _mm256_add_epi64(base, _mm256_setr_epi64x(4, 5, 6, 7));
  const __m256i s = _mm256_set1_epi64x(static_cast<int64_t>(mixed_seed)), t = _mm256_set1_epi64x(threshold - 1);
  const __m256i klo = _mm256_cmpgt_epi64(_mm256_srli_epi64(mix64x4(_mm256_xor_si256(s, lo)), 40), t);
  const __m256i khi = _mm256_cmpgt_epi64(_mm256_srli_epi64(mix64x4(_mm256_xor_si256(s, hi)), 40), t);
  // 4 + 4 64-bit masks -> 8 32-bit masks, in order.
  const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m128i a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(klo, idx));
  const __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(khi, idx));
  return _mm256_castsi256_ps(_mm256_set_m128i(b, a));
}

void dropout_apply(const OpArgs& a) {
  float p = static_cast<float>(a.attr[0]);
  int64_t group = static_cast<int64_t>(a.attr[1]);
  uint64_t seed = static_cast<uint64_t>(a.attr[2]), offset = static_cast<uint64_t>(a.attr[3]);
  float scale = static_cast<float>(1.0 / (1.0 - a.attr[0]));
  const float* X = a.in[0].f();
  float* Y = a.out[0].f();
  int64_t groups = a.in[0].numel() / group;
  if (group == 1) {  // one draw per element: 8 at a time
    const uint64_t ms = mix64(seed);
    const int64_t threshold = static_cast<int64_t>(std::ceil(static_cast<double>(p) * 16777216.0));
    const __m256 vs = _mm256_set1_ps(scale);
    parallel_for(groups, kChunk, [&](int64_t i0, int64_t i1) {
      int64_t i = i0;
      for (; i + 8 <= i1; i += 8) {
        __m256 keep = keep_mask8(ms, offset + static_cast<uint64_t>(i), threshold);
        _mm256_storeu_ps(Y + i, _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(X + i), vs)));
      }
      for (; i < i1; ++i) Y[i] = uniform01(seed, offset + static_cast<uint64_t>(i)) >= p ? X[i] * scale : 0.0f;
    });
    return;
  }
  parallel_for(groups, std::max<int64_t>(1, kChunk / group), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      bool keep = uniform01(seed, offset + static_cast<uint64_t>(g)) >= p;
      float k = keep ? scale : 0.0f;
      for (int64_t i = g * group; i < (g + 1) * group; ++i) Y[i] = keep ? X[i] * k : 0.0f;
    }
  });
}

// --- utilities -----------------------------------------------------------------------------------

void axpy_fwd(const OpArgs& a) {
  float alpha = static_cast<float>(a.attr[0]);
  const float* X = a.in[0].f();
  float* Y = a.out[0].f();
  parallel_for(a.out[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) Y[i] += alpha * X[i];
  });
}

void scale_fwd(const OpArgs& a) {
  float alpha = static_cast<float>(a.attr[0]);
  float* Y = a.out[0].f();
  parallel_for(a.out[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) Y[i] *= alpha;
  });
}

void lerp_fwd(const OpArgs& a) {
  float wgt = static_cast<float>(a.attr[0]);
  const float* X = a.in[0].f();
  float* Y = a.out[0].f();
  parallel_for(a.out[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) Y[i] += wgt * (X[i] - Y[i]);
  });
}

void fill_fwd(const OpArgs& a) {
  float v = static_cast<float>(a.attr[0]);
  float* Y = a.out[0].f();
  parallel_for(a.out[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) Y[i] = v;
  });
}

void sumsq_fwd(const OpArgs& a) {
  const float* X = a.in[0].f();
  auto part = reduce_parallel(a.in[0].numel(), 1, [&](int64_t i0, int64_t i1, double* acc) {
    // exact double products of the floats, summed in double in 8 lanes
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
      __m256 v = _mm256_loadu_ps(X + i);
      add_products_widened(lo, hi, v, v);
    }
    double s = hsum_pd(_mm256_add_pd(lo, hi));
    for (; i < i1; ++i) s += static_cast<double>(X[i]) * X[i];
    acc[0] += s;
  });
  a.out[0].as<double>()[0] = total(part, 1, 0);
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, starrelu, mf::cpu::starrelu_fwd, mf::cpu::starrelu_bwd);
MF_REGISTER(cpu, scale_add, mf::cpu::scale_add_fwd, mf::cpu::scale_add_bwd);
MF_REGISTER(cpu, mean_hw, mf::cpu::mean_hw_fwd, mf::cpu::mean_hw_bwd);
MF_REGISTER(cpu, pool, mf::cpu::pool_fwd, mf::cpu::pool_bwd);
MF_REGISTER(cpu, dropout, mf::cpu::dropout_apply, mf::cpu::dropout_apply);
MF_REGISTER(cpu, axpy, mf::cpu::axpy_fwd, nullptr);
MF_REGISTER(cpu, scale, mf::cpu::scale_fwd, nullptr);
MF_REGISTER(cpu, lerp, mf::cpu::lerp_fwd, nullptr);
MF_REGISTER(cpu, fill, mf::cpu::fill_fwd, nullptr);
MF_REGISTER(cpu, sumsq, mf::cpu::sumsq_fwd, nullptr);

namespace mf::cpu {
namespace {
void normal_fwd(const OpArgs& a) {  // the reference formula, in parallel
  float* Y = a.out[0].f();
  uint64_t seed = static_cast<uint64_t>(a.attr[2]);
  double mean = a.attr[0], sd = a.attr[1], lim = a.attr[3];
  parallel_for(a.out[0].numel(), 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) Y[i] = static_cast<float>(mean + sd * normal01(seed, static_cast<uint64_t>(i), lim));
  });
}
}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, normal, mf::cpu::normal_fwd, nullptr);
