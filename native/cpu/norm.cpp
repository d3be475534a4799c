// cpu/norm.cpp: layer normalisation over groups of `group` elements with a per-channel affine
// (see ops.def), AVX2. A group is `group / C` rows of C channels: one row for LayerNorm over channels,
// H*W rows for the modified LayerNorm over (H, W, C).
// Statistics are two-pass (mean, then centred variance), summed per row in float vectors; a group of
// many rows (H*W*C = 200k elements) sums across rows in double, so it keeps full precision.
//   forward:  y = (x - mean) * rstd * w[c] + b[c]
//   backward: g = dy * w[c];  dx = rstd * (g - mean(g) - xhat * mean(g * xhat));
//             dw[c] += sum dy * xhat;  db[c] += sum dy
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu.h"

namespace mf::cpu {
namespace {

inline __m256 load_tail(const float* p, int64_t n) { return _mm256_maskload_ps(p, tail_mask(n)); }

float row_sum(const float* x, int64_t C) {
  __m256 s = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + c));
  if (c < C) s = _mm256_add_ps(s, load_tail(x + c, C - c));
  return hsum(s);
}

float row_sqdev(const float* x, int64_t C, float mean) {
  __m256 s = _mm256_setzero_ps(), m = _mm256_set1_ps(mean);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), m);
    s = _mm256_fmadd_ps(d, d, s);
  }
  if (c < C) {
    __m256i mk = tail_mask(C - c);
    __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + c, mk), m), _mm256_castsi256_ps(mk));
    s = _mm256_fmadd_ps(d, d, s);
  }
  return hsum(s);
}

// y = (x - mean) * rstd * w + b over one row of C; `stream`: non-temporal stores (y 32-byte aligned).
void row_normalize(const float* x, float* y, int64_t C, float mean, float rstd, const float* w, const float* b,
                   bool stream = false) {
  __m256 m = _mm256_set1_ps(mean), r = _mm256_set1_ps(rstd);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), m), r);
    if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + c));
    if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + c));
    if (stream) _mm256_stream_ps(y + c, v);
    else _mm256_storeu_ps(y + c, v);
  }
  for (; c < C; ++c) {
    float v = (x[c] - mean) * rstd;
    if (w) v *= w[c];
    if (b) v += b[c];
    y[c] = v;
  }
}

// row_normalize over 8 consecutive rows (lane q of mu / rs: row q's), inlined into the row loop: the
// same arithmetic as row_normalize per element, each w / b vector loaded once for the 8 rows.
template <bool HasW, bool HasB, bool Stream>
__attribute__((always_inline)) inline void rows8_normalize(const float* x, float* y, int64_t C, __m256 mu, __m256 rs,
                                                           const float* w, const float* b) {
  alignas(32) float m8[8], r8[8];
  _mm256_store_ps(m8, mu);
  _mm256_store_ps(r8, rs);
  const int64_t full = C / 8 * 8;
  auto norm = [&](int q, int64_t c, __m256 wv, __m256 bv) {
    __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + q * C + c), _mm256_set1_ps(m8[q])), _mm256_set1_ps(r8[q]));
    if constexpr (HasW) v = _mm256_mul_ps(v, wv);
    if constexpr (HasB) v = _mm256_add_ps(v, bv);
    return v;
  };
  auto wb = [&](int64_t c, __m256& wv, __m256& bv) {
    wv = HasW ? _mm256_loadu_ps(w + c) : _mm256_setzero_ps();
    bv = HasB ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps();
  };
  if constexpr (Stream) {
    // Row by row: each output row's lines are completed in turn (streaming stores interleaved over
    // 8 rows left partial write-combining lines: 1.9-3.3x slower at batch 32, RESULTS.md log 35).
    for (int q = 0; q < 8; ++q)
      for (int64_t c = 0; c < full; c += 8) {
        __m256 wv, bv;
        wb(c, wv, bv);
        _mm256_stream_ps(y + q * C + c, norm(q, c, wv, bv));
      }
  } else {
    for (int64_t c = 0; c < full; c += 8) {
      __m256 wv, bv;
      wb(c, wv, bv);
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(y + q * C + c, norm(q, c, wv, bv));
    }
  }
  if (full < C)
    for (int q = 0; q < 8; ++q)
      row_normalize(x + q * C + full, y + q * C + full, C - full, m8[q], r8[q], HasW ? w + full : nullptr, HasB ? b + full : nullptr);
}

// Lane q of the result = the sum of the 8 lanes of v[q] (8 horizontal sums at once).
__attribute__((always_inline)) inline __m256 hsum8x8(const __m256 (&v)[8]) {
  const __m256 a01 = _mm256_hadd_ps(v[0], v[1]), a23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a45 = _mm256_hadd_ps(v[4], v[5]), a67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 b0 = _mm256_hadd_ps(a01, a23), b1 = _mm256_hadd_ps(a45, a67);  // [r0 r1 r2 r3 | r0 r1 r2 r3] halves
  const __m256 lo = _mm256_permute2f128_ps(b0, b1, 0x20), hi = _mm256_permute2f128_ps(b0, b1, 0x31);
  return _mm256_add_ps(lo, hi);
}

// Statistics of 8 rows of C at once (LayerNorm over channels: a group is one row): lane q of mu / rs
// is the mean / 1 / sqrt(var + eps) of row x + q * C. Two-pass (mean, then centred squares), each row
// summed in 8 float lanes and the 8 rows' lane sums reduced together, so the rows' dependency chains
// (sum -> mean -> squared deviations -> rstd) overlap; the divisions and square roots run in float on
// vectors (a row is at most a few thousand channels).
__attribute__((always_inline)) inline void rows8_stats(const float* x, int64_t C, float eps, __m256& mu, __m256& rs) {
  const int64_t full = C / 8 * 8;
  const __m256i mk = tail_mask(C - full);
  const __m256 keep = _mm256_castsi256_ps(mk), inv = _mm256_set1_ps(1.0f / static_cast<float>(C));
  __m256 acc[8];
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q) acc[q] = _mm256_setzero_ps();
  for (int64_t c = 0; c < full; c += 8) {
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) acc[q] = _mm256_add_ps(acc[q], _mm256_loadu_ps(x + q * C + c));
  }
  if (full < C) {
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) acc[q] = _mm256_add_ps(acc[q], _mm256_maskload_ps(x + q * C + full, mk));
  }
  mu = _mm256_mul_ps(hsum8x8(acc), inv);
  alignas(32) float m8[8];
  _mm256_store_ps(m8, mu);
  __m256 mq[8];
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q) {
    acc[q] = _mm256_setzero_ps();
    mq[q] = _mm256_set1_ps(m8[q]);
  }
  for (int64_t c = 0; c < full; c += 8) {
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + q * C + c), mq[q]);
      acc[q] = _mm256_fmadd_ps(d, d, acc[q]);
    }
  }
  if (full < C) {
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + q * C + full, mk), mq[q]), keep);
      acc[q] = _mm256_fmadd_ps(d, d, acc[q]);
    }
  }
  const __m256 var = _mm256_add_ps(_mm256_mul_ps(hsum8x8(acc), inv), _mm256_set1_ps(eps));
  rs = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(var));
}

// The backward's first pass over R consecutive rows of C (row q with its own mean[q] / rstd[q]):
// g = dy * w; sg[q] = sum g, sgx[q] = sum g * xhat (8 float lanes, then across lanes); dw[c] += sum_q
// dy * xhat, db[c] += sum_q dy, one update per 8 channels. R = 4 lets independent rows overlap.
template <int R>
void rows_grad_sums(const float* x, const float* dy, const float* w, int64_t C, const float* mean, const float* rstd, float* dw,
                    float* db, float* sg, float* sgx) {
  __m256 m[R], rs[R], vsg[R], vsgx[R];
  for (int q = 0; q < R; ++q) {
    m[q] = _mm256_set1_ps(mean[q]);
    rs[q] = _mm256_set1_ps(rstd[q]);
    vsg[q] = vsgx[q] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < C; c += 8) {
    __m256i mk = tail_mask(std::min<int64_t>(8, C - c));  // masked loads read zeros past the row
    __m256 wv = w ? _mm256_maskload_ps(w + c, mk) : _mm256_setzero_ps();
    __m256 adw = _mm256_setzero_ps(), adb = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int q = 0; q < R; ++q) {
      __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + q * C + c, mk), m[q]), rs[q]);
      xhat = _mm256_and_ps(xhat, _mm256_castsi256_ps(mk));
      __m256 d = _mm256_maskload_ps(dy + q * C + c, mk);
      __m256 gg = w ? _mm256_mul_ps(d, wv) : d;
      vsg[q] = _mm256_add_ps(vsg[q], gg);
      vsgx[q] = _mm256_add_ps(vsgx[q], _mm256_mul_ps(gg, xhat));
      adw = _mm256_add_ps(adw, _mm256_mul_ps(d, xhat));
      adb = _mm256_add_ps(adb, d);
    }
    _mm256_maskstore_ps(dw + c, mk, _mm256_add_ps(_mm256_maskload_ps(dw + c, mk), adw));
    _mm256_maskstore_ps(db + c, mk, _mm256_add_ps(_mm256_maskload_ps(db + c, mk), adb));
  }
  for (int q = 0; q < R; ++q) {
    sg[q] = hsum(vsg[q]);
    sgx[q] = hsum(vsgx[q]);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) over one row.
void row_input_grad(const float* x, const float* dy, const float* w, float* dx, int64_t C, float mean, float rstd, float a1,
                    float a2) {
  const __m256 m = _mm256_set1_ps(mean), rs = _mm256_set1_ps(rstd), va1 = _mm256_set1_ps(a1), va2 = _mm256_set1_ps(a2);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), m), rs);
    __m256 gg = _mm256_loadu_ps(dy + c);
    if (w) gg = _mm256_mul_ps(gg, _mm256_loadu_ps(w + c));
    _mm256_storeu_ps(dx + c, _mm256_mul_ps(rs, _mm256_sub_ps(_mm256_sub_ps(gg, va1), _mm256_mul_ps(xhat, va2))));
  }
  for (; c < C; ++c) {
    float xhat = (x[c] - mean) * rstd;
    float gg = w ? dy[c] * w[c] : dy[c];
    dx[c] = rstd * (gg - a1 - xhat * a2);
  }
}

struct Geom {
  int64_t C, G, R, rows_per_group;
};

Geom geom(const TensorView& x, const OpArgs& a) {
  Geom g{};
  g.C = x.dim(-1);
  g.G = static_cast<int64_t>(a.attr[1]);
  g.R = g.G == 0 ? 0 : x.numel() / g.G;
  g.rows_per_group = g.C == 0 ? 0 : g.G / g.C;
  return g;
}

// mean and rstd of every group. Many small groups: parallel over groups. Few large groups: parallel
// inside each group.
void group_stats(const Geom& g, const float* X, double eps, float* mean, float* rstd) {
  if (g.R >= 2 * num_threads() || g.rows_per_group == 1) {
    parallel_for(g.R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = X + r * g.G;
        double s = 0;
        for (int64_t k = 0; k < g.rows_per_group; ++k) s += row_sum(xr + k * g.C, g.C);
        float mu = static_cast<float>(s / static_cast<double>(g.G));
        double v = 0;
        for (int64_t k = 0; k < g.rows_per_group; ++k) v += row_sqdev(xr + k * g.C, g.C, mu);
        mean[r] = mu;
        rstd[r] = static_cast<float>(1.0 / std::sqrt(v / static_cast<double>(g.G) + eps));
      }
    });
    return;
  }
  int nt = num_threads();
  std::vector<double> part(static_cast<size_t>(nt));
  for (int64_t r = 0; r < g.R; ++r) {
    const float* xr = X + r * g.G;
    std::fill(part.begin(), part.end(), 0.0);
    parallel_for(g.rows_per_group, 16, [&](int64_t k0, int64_t k1) {
      double s = 0;
      for (int64_t k = k0; k < k1; ++k) s += row_sum(xr + k * g.C, g.C);
      part[static_cast<size_t>(omp_get_thread_num())] += s;
    });
    double s = 0;
    for (double p : part) s += p;
    float mu = static_cast<float>(s / static_cast<double>(g.G));
    std::fill(part.begin(), part.end(), 0.0);
    parallel_for(g.rows_per_group, 16, [&](int64_t k0, int64_t k1) {
      double v = 0;
      for (int64_t k = k0; k < k1; ++k) v += row_sqdev(xr + k * g.C, g.C, mu);
      part[static_cast<size_t>(omp_get_thread_num())] += v;
    });
    double v = 0;
    for (double p : part) v += p;
    mean[r] = mu;
    rstd[r] = static_cast<float>(1.0 / std::sqrt(v / static_cast<double>(g.G) + eps));
  }
}

void layernorm_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  Geom g = geom(x, a);
  if (g.R == 0) return;
  const float* X = x.f();
  float* Y = a.out[0].f();
  std::vector<float> mean_buf, rstd_buf;
  float* mean = a.out[1].present() ? a.out[1].f() : (mean_buf.resize(static_cast<size_t>(g.R)), mean_buf.data());
  float* rstd = a.out[2].present() ? a.out[2].f() : (rstd_buf.resize(static_cast<size_t>(g.R)), rstd_buf.data());
  const float *W = w.present() ? w.f() : nullptr, *B = b.present() ? b.f() : nullptr;
  if (g.rows_per_group == 1) {  // LayerNorm over channels: statistics and normalisation in one pass per row
    double eps = a.attr[0];
    // A large output (kStreamBytes) goes to memory in whole 64-byte lines without being read first.
    const bool stream = g.R * g.C * 4 >= kStreamBytes && g.C % 16 == 0 && reinterpret_cast<uintptr_t>(Y) % 64 == 0;
    // Rows in blocks of 8 whose statistics are formed together (rows8_stats), the next block's
    // before this one is normalised (its loads and reductions overlap the normalisation's stores);
    // the rest one at a time, with the same float arithmetic.
    const float feps = static_cast<float>(eps);
    const int64_t C = g.C;
    // Instantiated per affine / streaming combination: no tests inside the normalisation loop.
    auto run = [=](auto has_w, auto has_b, auto stream_y) {
      constexpr bool kW = decltype(has_w)::value, kB = decltype(has_b)::value, kStream = decltype(stream_y)::value;
      parallel_for(g.R, 64, [=](int64_t r0, int64_t r1) {
        int64_t r = r0;
        if (r + 8 <= r1) {
          __m256 mu, rs, next_mu = _mm256_setzero_ps(), next_rs = _mm256_setzero_ps();
          rows8_stats(X + r * C, C, feps, mu, rs);
          for (; r + 8 <= r1; r += 8) {
            _mm256_storeu_ps(mean + r, mu);
            _mm256_storeu_ps(rstd + r, rs);
            if (r + 16 <= r1) rows8_stats(X + (r + 8) * C, C, feps, next_mu, next_rs);
            rows8_normalize<kW, kB, kStream>(X + r * C, Y + r * C, C, mu, rs, W, B);
            mu = next_mu;
            rs = next_rs;
          }
        }
        const float inv = 1.0f / static_cast<float>(C);
        for (; r < r1; ++r) {
          const float mu = row_sum(X + r * C, C) * inv;
          mean[r] = mu;
          rstd[r] = 1.0f / std::sqrt(row_sqdev(X + r * C, C, mu) * inv + feps);
          row_normalize(X + r * C, Y + r * C, C, mu, rstd[r], W, B, kStream);
        }
        if (kStream) _mm_sfence();  // the streamed rows are visible before the region ends
      });
    };
    using T = std::true_type;
    using F = std::false_type;
    auto run_stream = [&](auto has_w, auto has_b) {
      if (stream) run(has_w, has_b, T{});
      else run(has_w, has_b, F{});
    };
    if (W && B) run_stream(T{}, T{});
    else if (W) run_stream(T{}, F{});
    else if (B) run_stream(F{}, T{});
    else run_stream(F{}, F{});
    return;
  }
  group_stats(g, X, a.attr[0], mean, rstd);
  int64_t rows = g.R * g.rows_per_group;
  parallel_for(rows, 32, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t r = k / g.rows_per_group;
      row_normalize(X + k * g.C, Y + k * g.C, g.C, mean[r], rstd[r], W, B);
    }
  });
}

void layernorm_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  Geom g = geom(x, a);
  if (g.R == 0) return;
  const float *DY = dy.f(), *X = x.f(), *W = w.present() ? w.f() : nullptr;
  const float *MEAN = a.in[3].f(), *RSTD = a.in[4].f();
  float *DX = a.out[0].present() ? a.out[0].f() : nullptr, *DW = a.out[1].present() ? a.out[1].f() : nullptr,
        *DB = a.out[2].present() ? a.out[2].f() : nullptr;
  int64_t rows = g.R * g.rows_per_group, C = g.C;
  int nt = num_threads();
  // Per-thread partial sums: per channel (dw, db) and per group (sum g, sum g*xhat). A group of one
  // row (LayerNorm over channels) gets its input gradient in the same pass.
  const bool one_row = g.rows_per_group == 1;
  std::vector<double> pdw(static_cast<size_t>(nt * C), 0.0), pdb(static_cast<size_t>(nt * C), 0.0);
  std::vector<double> psg(one_row ? 0 : static_cast<size_t>(nt * g.R), 0.0), psgx(one_row ? 0 : static_cast<size_t>(nt * g.R), 0.0);
  parallel_for(rows, 32, [&](int64_t k0, int64_t k1) {
    int t = omp_get_thread_num();
    std::vector<float> fdw(static_cast<size_t>(C), 0.0f), fdb(static_cast<size_t>(C), 0.0f);
    // Row k's sums: a one-row group (LayerNorm over channels) gets its input gradient right away, a
    // longer group collects them for the second pass.
    auto finish_row = [&](int64_t k, float sg, float sgx) {
      const int64_t r = k / g.rows_per_group;
      if (!one_row) {
        psg[static_cast<size_t>(t * g.R + r)] += sg;
        psgx[static_cast<size_t>(t * g.R + r)] += sgx;
      } else if (DX) {
        float a1 = static_cast<float>(static_cast<double>(sg) / static_cast<double>(g.G));
        float a2 = static_cast<float>(static_cast<double>(sgx) / static_cast<double>(g.G));
        row_input_grad(X + k * C, DY + k * C, W, DX + k * C, C, MEAN[r], RSTD[r], a1, a2);
      }
    };
    // Blocks of 4 rows: independent chains overlap, and dw/db are updated once per block (per row,
    // the read-modify-write of the same 8 channels was a store-forwarding chain).
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
      float m4[4], r4[4], sg[4], sgx[4];
      for (int q = 0; q < 4; ++q) {
        m4[q] = MEAN[(k + q) / g.rows_per_group];
        r4[q] = RSTD[(k + q) / g.rows_per_group];
      }
      rows_grad_sums<4>(X + k * C, DY + k * C, W, C, m4, r4, fdw.data(), fdb.data(), sg, sgx);
      for (int q = 0; q < 4; ++q) finish_row(k + q, sg[q], sgx[q]);
    }
    for (; k < k1; ++k) {
      const int64_t r = k / g.rows_per_group;
      float sg, sgx;
      rows_grad_sums<1>(X + k * C, DY + k * C, W, C, MEAN + r, RSTD + r, fdw.data(), fdb.data(), &sg, &sgx);
      finish_row(k, sg, sgx);
    }
    for (int64_t c = 0; c < C; ++c) {
      pdw[static_cast<size_t>(t * C + c)] += fdw[static_cast<size_t>(c)];
      pdb[static_cast<size_t>(t * C + c)] += fdb[static_cast<size_t>(c)];
    }
  });
  if (DX && !one_row) {
    std::vector<float> msg(static_cast<size_t>(g.R)), msgx(static_cast<size_t>(g.R));
    for (int64_t r = 0; r < g.R; ++r) {
      double sg = 0, sgx = 0;
      for (int t = 0; t < nt; ++t) {
        sg += psg[static_cast<size_t>(t * g.R + r)];
        sgx += psgx[static_cast<size_t>(t * g.R + r)];
      }
      msg[static_cast<size_t>(r)] = static_cast<float>(sg / static_cast<double>(g.G));
      msgx[static_cast<size_t>(r)] = static_cast<float>(sgx / static_cast<double>(g.G));
    }
    parallel_for(rows, 32, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        int64_t r = k / g.rows_per_group;
        row_input_grad(X + k * C, DY + k * C, W, DX + k * C, C, MEAN[r], RSTD[r], msg[static_cast<size_t>(r)],
                       msgx[static_cast<size_t>(r)]);
      }
    });
  }
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int t = 0; t < nt; ++t) {
      sw += pdw[static_cast<size_t>(t * C + c)];
      sb += pdb[static_cast<size_t>(t * C + c)];
    }
    if (DW) DW[c] += static_cast<float>(sw);
    if (DB) DB[c] += static_cast<float>(sb);
  }
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, layernorm, mf::cpu::layernorm_fwd, mf::cpu::layernorm_bwd);
