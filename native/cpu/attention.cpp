// cpu/attention.cpp: multi-head self-attention on a packed qkv [B, N, 3A] (q|k|v, head, head_dim).
// Forward, N <= kFusedMaxTokens and head_dim 16/32/64: one fused kernel per head (attention_fused).
// Otherwise images x heads form a batch of GEMMs on oneDNN over strided views of qkv (no copies):
//   S = scale Q K^T  ->  P = softmax(S) in place (lse kept for backward)  ->  O = P V
// Backward recomputes P from lse:  dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(dO o O)),
//   dQ = scale dS K,  dK = scale dS^T Q.
// The score buffer holds heads x N x N per image for a chunk of images (about 4 MB): it stays in cache.
#include <algorithm>
#include <cmath>

#include "cpu.h"
#include "gemm.h"

namespace mf::cpu {

// Softmax of row[0, n) in place; returns its log-sum-exp. All-vector: the last partial vector is
// loaded and stored masked (nothing past n is read or written), its padding lanes kept out of the
// maximum and the sum.
float softmax_row(float* row, int64_t n) {
  const int64_t full = n / 8 * 8;
  const __m256i mk = tail_mask(n - full);
  const __m256 keep = _mm256_castsi256_ps(mk), ninf = _mm256_set1_ps(-INFINITY);
  __m256 vmax = ninf;
  for (int64_t j = 0; j < full; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  if (full < n) vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, _mm256_maskload_ps(row + full, mk), keep));
  const float mx = hmax(vmax);
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    _mm256_storeu_ps(row + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (full < n) {
    const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(row + full, mk), vm)), keep);
    _mm256_maskstore_ps(row + full, mk, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  const float sum = hsum(vsum);
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t j = 0; j < full; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
  if (full < n) _mm256_maskstore_ps(row + full, mk, _mm256_mul_ps(_mm256_maskload_ps(row + full, mk), inv));
  return mx + std::log(sum);
}

void softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld, float* lse, int64_t lse_stride) {
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float l = softmax_row(s + r * ld, n);
      if (lse) lse[r * lse_stride] = l;
    }
  });
}

namespace {

struct Geom {
  int64_t B, N, A, hd, H;
  float scale;
};

Geom geom(const TensorView& qkv, const OpArgs& a) {
  Geom g{};
  g.B = qkv.shape[0];
  g.N = qkv.shape[1];
  g.A = qkv.shape[2] / 3;
  g.hd = static_cast<int64_t>(a.attr[0]);
  g.H = g.A / g.hd;
  g.scale = static_cast<float>(a.attr[1]);
  return g;
}

// Images per batch of GEMM calls: the score buffer (images x heads x N x N) stays near 4 MB, so with
// few tokens (training at small resolutions) many images share each call.
int64_t images_per_chunk(const Geom& g) {
  return std::max<int64_t>(1, std::min<int64_t>(g.B, (int64_t(1) << 20) / std::max<int64_t>(1, g.H * g.N * g.N)));
}

// S[b, h] = alpha * X[b, h] Y[b, h]^T for `nb` images: X, Y [N, hd] head slices (image stride ldb_x /
// ldb_y, row stride ldx / ldy); S [nb, H, N, N] dense.
void gemm_scores(const Geom& g, int64_t nb, const float* X, int64_t ldbx, int64_t ldx, const float* Y, int64_t ldby,
                 int64_t ldy, float* S, float alpha) {
  GemmShape s;
  s.batch[0] = nb, s.batch[1] = g.H;
  s.M = g.N, s.N = g.N, s.K = g.hd;
  s.a_b[0] = ldbx, s.a_b[1] = g.hd, s.a_m = ldx, s.a_k = 1;
  s.b_b[0] = ldby, s.b_b[1] = g.hd, s.b_k = 1, s.b_n = ldy;
  s.c_b[0] = g.H * g.N * g.N, s.c_b[1] = g.N * g.N, s.c_m = g.N, s.c_n = 1;
  s.alpha = alpha;
  gemm(s, X, Y, S);
}

// C[b, h] = alpha * P[b, h] Y[b, h] (P^T when transP): P [nb, H, N, N] dense, Y and C [N, hd] head
// slices with image strides ldby / ldbc and row strides ldy / ldc.
void gemm_apply(const Geom& g, int64_t nb, const float* P, bool transP, const float* Y, int64_t ldby, int64_t ldy,
                float* C, int64_t ldbc, int64_t ldc, float alpha) {
  GemmShape s;
  s.batch[0] = nb, s.batch[1] = g.H;
  s.M = g.N, s.N = g.hd, s.K = g.N;
  s.a_b[0] = g.H * g.N * g.N, s.a_b[1] = g.N * g.N, s.a_m = transP ? 1 : g.N, s.a_k = transP ? g.N : 1;
  s.b_b[0] = ldby, s.b_b[1] = g.hd, s.b_k = ldy, s.b_n = 1;
  s.c_b[0] = ldbc, s.c_b[1] = g.hd, s.c_m = ldc, s.c_n = 1;
  s.alpha = alpha;
  gemm(s, P, Y, C);
}

// Few tokens (N <= kFusedMaxTokens, e.g. the last stages when training at 28x28): one fused kernel per
// (image, head) for head_dim = 8 * NV (16, 32, 64). The batched library GEMMs cost more per head than
// the arithmetic there (measured: N = 4, 128 images: 0.58 -> 0.20 ms; N = 16: 1.5-2.8x), while from
// N = 49 on they are faster (49: 0.08-0.11 vs 0.13-0.14 ms; 196: 0.5-0.63 vs 0.78-0.98 ms), so larger
// N keeps them. Per head:
//   Kt = K^T, zero-padded to Np keys;  Qb = the queries, contiguous, rows padded to a multiple of 4;
//   S = scale Qb Kt in register tiles of 4 rows x 16 keys; softmax per row (lse kept);
//   O = P V in tiles of R rows x head_dim (R * NV = 8 accumulators).
constexpr int64_t kFusedMaxTokens = 32;

template <int NV>
void attention_fused(const Geom& g, const float* QKV, float* O, float* LSE) {
  constexpr int64_t HD = NV * 8, R = 8 / NV;
  const int64_t ld = 3 * g.A, Np = (g.N + 15) / 16 * 16, QB = (g.N + 3) / 4 * 4;
  const __m256 vscale = _mm256_set1_ps(g.scale);
  parallel_for(g.B * g.H, 1, [&](int64_t t0, int64_t t1) {
    Scratch kt(static_cast<size_t>(HD * Np)), S(static_cast<size_t>(QB * Np)), Qb(static_cast<size_t>(QB * HD));
    std::memset(Qb.get(), 0, sizeof(float) * static_cast<size_t>(QB * HD));  // padding rows: finite scores, never used
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t b = bh / g.H, h = bh % g.H;
      const float* base = QKV + b * g.N * ld + h * HD;
      for (int64_t d = 0; d < HD; ++d) {
        float* row = kt.get() + d * Np;
        for (int64_t n = 0; n < g.N; ++n) row[n] = base[n * ld + g.A + d];
        std::fill(row + g.N, row + Np, 0.0f);
      }
      for (int64_t i = 0; i < g.N; ++i) std::memcpy(Qb.get() + i * HD, base + i * ld, sizeof(float) * HD);
      for (int64_t i = 0; i < g.N; i += 4) {
        const float* q = Qb.get() + i * HD;
        float* srow = S.get() + i * Np;
        for (int64_t n = 0; n < Np; n += 16) {
          __m256 acc[4][2];
          for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
          const float* k = kt.get() + n;
          for (int64_t d = 0; d < HD; ++d) {
            const __m256 k0 = _mm256_loadu_ps(k + d * Np), k1 = _mm256_loadu_ps(k + d * Np + 8);
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) {
              const __m256 qv = _mm256_broadcast_ss(q + r * HD + d);
              acc[r][0] = _mm256_fmadd_ps(qv, k0, acc[r][0]);
              acc[r][1] = _mm256_fmadd_ps(qv, k1, acc[r][1]);
            }
          }
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) {
            _mm256_storeu_ps(srow + r * Np + n, _mm256_mul_ps(acc[r][0], vscale));
            _mm256_storeu_ps(srow + r * Np + n + 8, _mm256_mul_ps(acc[r][1], vscale));
          }
        }
      }
      for (int64_t i = 0; i < g.N; ++i) {
        const float l = softmax_row(S.get() + i * Np, g.N);
        if (LSE) LSE[bh * g.N + i] = l;
      }
      const float* V = base + 2 * g.A;
      for (int64_t i = 0; i < g.N; i += R) {  // rows past N (within QB) read finite scores, are not stored
        const float* p = S.get() + i * Np;
        __m256 acc[R][NV];
        for (int r = 0; r < R; ++r)
          for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_setzero_ps();
        const float* vn = V;
        for (int64_t n = 0; n < g.N; ++n, vn += ld) {
          __m256 v[NV];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) v[j] = _mm256_loadu_ps(vn + 8 * j);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const __m256 pv = _mm256_broadcast_ss(p + r * Np + n);
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_fmadd_ps(pv, v[j], acc[r][j]);
          }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {  // constant indices keep acc[] in registers
          if (i + r >= g.N) break;
          float* o = O + (b * g.N + i + r) * g.A + h * HD;
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) _mm256_storeu_ps(o + 8 * j, acc[r][j]);
        }
      }
    }
  });
}

void attention_fwd(const OpArgs& a) {
  Geom g = geom(a.in[0], a);
  const float* QKV = a.in[0].f();
  float *O = a.out[0].f(), *LSE = a.out[1].present() ? a.out[1].f() : nullptr;
  if (g.N <= kFusedMaxTokens) switch (g.hd) {  // the fused kernel; other cases take the batched GEMMs below
    case 16: return attention_fused<2>(g, QKV, O, LSE);
    case 32: return attention_fused<4>(g, QKV, O, LSE);
    case 64: return attention_fused<8>(g, QKV, O, LSE);
    default: break;
  }
  int64_t ld = 3 * g.A, chunk = images_per_chunk(g);
  Scratch S(static_cast<size_t>(chunk * g.H * g.N * g.N));
  for (int64_t b0 = 0; b0 < g.B; b0 += chunk) {
    int64_t nb = std::min(chunk, g.B - b0);
    const float* q = QKV + b0 * g.N * ld;
    gemm_scores(g, nb, q, g.N * ld, ld, q + g.A, g.N * ld, ld, S.get(), g.scale);
    softmax_rows(S.get(), nb * g.H * g.N, g.N, g.N, LSE ? LSE + b0 * g.H * g.N : nullptr, 1);
    gemm_apply(g, nb, S.get(), false, q + 2 * g.A, g.N * ld, ld, O + b0 * g.N * g.A, g.N * g.A, g.A, 1.0f);
  }
}

void attention_bwd(const OpArgs& a) {
  Geom g = geom(a.in[1], a);
  const float *DO = a.in[0].f(), *QKV = a.in[1].f(), *O = a.in[2].f(), *LSE = a.in[3].f();
  float* DQKV = a.out[0].f();
  int64_t ld = 3 * g.A, NN = g.N * g.N, chunk = images_per_chunk(g);
  Scratch P(static_cast<size_t>(chunk * g.H * NN)), dS(static_cast<size_t>(chunk * g.H * NN));
  for (int64_t b0 = 0; b0 < g.B; b0 += chunk) {
    int64_t nb = std::min(chunk, g.B - b0);
    const float *q = QKV + b0 * g.N * ld, *dout = DO + b0 * g.N * g.A, *o = O + b0 * g.N * g.A;
    const float* lse = LSE + b0 * g.H * g.N;
    float* dq = DQKV + b0 * g.N * ld;
    gemm_scores(g, nb, q, g.N * ld, ld, q + g.A, g.N * ld, ld, P.get(), g.scale);
    gemm_scores(g, nb, dout, g.N * g.A, g.A, q + 2 * g.A, g.N * ld, ld, dS.get(), 1.0f);  // dP
    parallel_for(nb * g.H * g.N, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {  // r = (image, head, n)
        int64_t b = r / (g.H * g.N), h = (r / g.N) % g.H, n = r % g.N;
        const float *dor = dout + (b * g.N + n) * g.A + h * g.hd, *orow = o + (b * g.N + n) * g.A + h * g.hd;
        float l = lse[r];
        float D = 0;
        for (int64_t d = 0; d < g.hd; ++d) D += dor[d] * orow[d];
        float *prow = P.get() + r * g.N, *drow = dS.get() + r * g.N;
        __m256 vl = _mm256_set1_ps(l), vD = _mm256_set1_ps(D);
        int64_t m = 0;
        for (; m + 8 <= g.N; m += 8) {
          __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(prow + m), vl));
          _mm256_storeu_ps(prow + m, p);
          _mm256_storeu_ps(drow + m, _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(drow + m), vD)));
        }
        for (; m < g.N; ++m) {
          float p = std::exp(prow[m] - l);
          prow[m] = p;
          drow[m] = p * (drow[m] - D);
        }
      }
    });
    gemm_apply(g, nb, P.get(), true, dout, g.N * g.A, g.A, dq + 2 * g.A, g.N * ld, ld, 1.0f);  // dV = P^T dO
    gemm_apply(g, nb, dS.get(), false, q + g.A, g.N * ld, ld, dq, g.N * ld, ld, g.scale);      // dQ = scale dS K
    gemm_apply(g, nb, dS.get(), true, q, g.N * ld, ld, dq + g.A, g.N * ld, ld, g.scale);       // dK = scale dS^T Q
  }
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, attention, mf::cpu::attention_fwd, mf::cpu::attention_bwd);
