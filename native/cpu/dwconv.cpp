// cpu/dwconv.cpp: depthwise convolution, channels-last, stride 1, padding k/2, AVX2 + FMA.
//
// Channels are handled in 16-channel blocks (two AVX2 vectors), each block's input copied into
// zero-padded rows (W padded to whole tiles + kw - 1) so the inner loops have no bounds checks.
//   forward:  y = conv(x, w) + b. Tasks are (group of blocks, image), a group's row rings within 256
//             KiB; each block keeps a ring of kh + 1 padded rows, refilled one input row at a time, and
//             outputs are computed in register tiles of 2 rows x 7 pixels x 8 channels (14
//             accumulators): per tap one weight vector and 14 FMAs reading their inputs from L1.
//   dx:       conv(dy, w flipped in both axes)  (the same kernel)
//   dw[c,i,j] += sum_{b,h,w} dy[b,h,w,c] x[b,h-ph+i,w-pw+j,c]: one task per block over all images (a
//             whole padded image per block), up to 7 taps of a kernel row at a time in registers, a
//             sliding window over the row (each x vector loaded once for all of them).
#include <algorithm>
#include <vector>

#include "cpu.h"

namespace mf::cpu {
namespace {

constexpr int64_t CB = 16;  // channels per block (two AVX2 vectors)

// Output rows are computed in tiles of 7 or 8 pixels (tile_width: whichever wastes less of the row); the
// scratch rows are padded to whole tiles, so the last tile of a row reads zeros, not out of bounds.
// The weight gradient takes up to JMAX kernel columns at a time (JMAX accumulators in registers).
constexpr int JMAX = 7;

int64_t tile_width(int64_t W) { return (W + 7) / 8 * 8 <= (W + 6) / 7 * 7 ? 8 : 7; }

struct Geom {
  int64_t B, H, W, C, kh, kw, ph, pw, nblk;
  int64_t tw, Hp, tc, cols;  // tile width; padded rows; W padded to whole tiles; padded width of x rows
};

Geom geom(const TensorView& x, const TensorView& w) {
  Geom g{};
  g.B = x.shape[0], g.H = x.shape[1], g.W = x.shape[2], g.C = x.shape[3];
  g.kh = w.shape[2], g.kw = w.shape[3], g.ph = g.kh / 2, g.pw = g.kw / 2;
  g.tw = tile_width(g.W), g.Hp = g.H + g.kh - 1, g.tc = (g.W + g.tw - 1) / g.tw * g.tw, g.cols = g.tc + g.kw - 1;
  g.nblk = (g.C + CB - 1) / CB;
  return g;
}

// Weights [C,1,kh,kw] of channel block blk -> wb[i][j][16] (zero beyond C); flipped in both axes
// (the tap index reversed) when `flip`.
void pack_block(const Geom& g, const float* w, int64_t blk, bool flip, float* wb) {
  const int64_t taps = g.kh * g.kw, c0 = blk * CB, nc = std::min(CB, g.C - c0);
  std::memset(wb, 0, sizeof(float) * static_cast<size_t>(taps * CB));
  for (int64_t c = 0; c < nc; ++c) {
    const float* wc = w + (c0 + c) * taps;
    for (int64_t t = 0; t < taps; ++t) wb[t * CB + c] = wc[flip ? taps - 1 - t : t];
  }
}

// Copies channels [c0, c0 + 16) of image b of src [B,H,W,C] into dst [rows][cols][16] at offset
// (r0, q0); everything else in dst (borders, the tile tail, channels beyond C) is zero.
void load_block(const Geom& g, const float* src, int64_t b, int64_t c0, float* dst, int64_t rows, int64_t cols,
                int64_t r0, int64_t q0) {
  const int64_t nc = std::min(CB, g.C - c0);
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(cols * CB);
  std::memset(dst, 0, row_bytes * static_cast<size_t>(r0));
  for (int64_t h = 0; h < g.H; ++h) {
    const float* s = src + ((b * g.H + h) * g.W) * g.C + c0;
    float* d = dst + (h + r0) * cols * CB;
    std::memset(d, 0, sizeof(float) * static_cast<size_t>(q0 * CB));
    float* di = d + q0 * CB;
    if (nc == CB) {
      for (int64_t w = 0; w < g.W; ++w) {
        _mm256_storeu_ps(di + w * CB, _mm256_loadu_ps(s + w * g.C));
        _mm256_storeu_ps(di + w * CB + 8, _mm256_loadu_ps(s + w * g.C + 8));
      }
    } else {
      std::memset(di, 0, sizeof(float) * static_cast<size_t>(g.W * CB));
      for (int64_t w = 0; w < g.W; ++w) std::memcpy(di + w * CB, s + w * g.C, sizeof(float) * static_cast<size_t>(nc));
    }
    std::memset(di + g.W * CB, 0, sizeof(float) * static_cast<size_t>((cols - q0 - g.W) * CB));
  }
  std::memset(dst + (g.H + r0) * cols * CB, 0, row_bytes * static_cast<size_t>(rows - g.H - r0));
}

inline void store8(float* dst, __m256 v, int64_t nc) {
  if (nc >= 8) _mm256_storeu_ps(dst, v);
  else _mm256_maskstore_ps(dst, tail_mask(nc), v);
}

// acc[j] += sum_{o in [O0, O0 + NO)} dy[o] * in[o + j] for j < JW, in increasing o (pixel order).
template <int JW, int O0, int NO>
__attribute__((always_inline)) inline void slide_dw(const float* in, const float* dy, __m256 (&acc)[JMAX]) {
  __m256 dv[NO];
#pragma GCC unroll 8
  for (int o = 0; o < NO; ++o) dv[o] = _mm256_loadu_ps(dy + (O0 + o) * CB);
#pragma GCC unroll 16
  for (int q = O0; q < O0 + NO + JW - 1; ++q) {
    const __m256 xv = _mm256_loadu_ps(in + q * CB);
#pragma GCC unroll 8
    for (int o = 0; o < NO; ++o)
      if (q - O0 - o >= 0 && q - O0 - o < JW) acc[q - O0 - o] = _mm256_fmadd_ps(dv[o], xv, acc[q - O0 - o]);
  }
}

// Dispatches a kernel-column chunk of runtime width jw (1..JMAX) to its unrolled form.
template <template <int> class K, class... A>
__attribute__((always_inline)) inline void by_width(int64_t jw, A&&... a) {
  switch (jw) {
    case 7: K<7>::run(a...); break;
    case 6: K<6>::run(a...); break;
    case 5: K<5>::run(a...); break;
    case 4: K<4>::run(a...); break;
    case 3: K<3>::run(a...); break;
    case 2: K<2>::run(a...); break;
    default: K<1>::run(a...); break;
  }
}

// Output tiles of R rows x T pixels x 8 channels, R * T accumulators (at most 14) + 1 weight vector:
// per tap one weight load feeds R * T FMAs, each reading its input from L1. rows[r + i] points at the
// ring row holding padded input row (oh + r + i) of this block; `off` selects column ow and the channel half.
// Each output sums bias then its taps in row-major order, like the reference.
template <int R, int T>
__attribute__((always_inline)) inline void conv_tile(const float* const* rows, int64_t off, const float* wb, __m256 bv,
                                                     int64_t kh, int64_t kw, __m256 (&acc)[R][T]) {
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int o = 0; o < T; ++o) acc[r][o] = bv;
  for (int64_t i = 0; i < kh; ++i) {
    const float* wi = wb + i * kw * CB;
    const float* in0 = rows[i] + off;
    const float* in1 = rows[i + R - 1] + off;
    for (int64_t j = 0; j < kw; ++j) {
      const __m256 wv = _mm256_load_ps(wi + j * CB);
#pragma GCC unroll 8
      for (int o = 0; o < T; ++o) acc[0][o] = _mm256_fmadd_ps(_mm256_load_ps(in0 + (o + j) * 8), wv, acc[0][o]);
      if constexpr (R == 2) {
#pragma GCC unroll 8
        for (int o = 0; o < T; ++o) acc[R - 1][o] = _mm256_fmadd_ps(_mm256_load_ps(in1 + (o + j) * 8), wv, acc[R - 1][o]);
      }
    }
  }
}

// Output rows [oh, oh + R) of channel block `c0`: rows[0 .. kh + R - 1) point at the ring rows holding
// padded input rows oh .. oh + kh + R - 2 of the block ([half][..][cols][8], halves hs floats apart),
// in tiles of T pixels. (Measured: storing both halves of a tile back to back as whole streamed
// 64-byte lines for large outputs was 5-9% slower.)
template <int R, int T>
__attribute__((noinline)) void conv_rows(const Geom& g, const float* const* rows, int64_t hs, const float* wb,
                                         const float* bias16, float* y, int64_t b, int64_t oh, int64_t c0) {
  const int64_t nc = std::min(CB, g.C - c0);
  for (int64_t half = 0; half * 8 < nc; ++half) {
    const __m256 bv = _mm256_load_ps(bias16 + half * 8);
    for (int64_t ow = 0; ow < g.W; ow += T) {
      const int64_t nw = std::min<int64_t>(T, g.W - ow);
      __m256 acc[R][T];
      conv_tile<R, T>(rows, ow * 8 + half * hs, wb + half * 8, bv, g.kh, g.kw, acc);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) {
        float* yt = y + ((b * g.H + oh + r) * g.W + ow) * g.C + c0 + half * 8;
#pragma GCC unroll 8
        for (int o = 0; o < T; ++o)  // constant indices keep acc[] in registers
          if (o < nw) store8(yt + o * g.C, acc[r][o], nc - half * 8);
      }
    }
  }
}

constexpr int64_t kTileW = 7;  // output pixels per forward register tile

// Channel blocks per task: as many as keep the task's rings within ~256 KiB (L2), so each input row is
// read as one contiguous run of all the group's channels; fewer when that would leave under 4 tasks
// per thread. Groups are then evened out (e.g. 40 blocks in 3 groups of 14, 13, 13, not 16, 16, 8).
int64_t group_blocks(const Geom& g, int64_t ring_floats) {
  int64_t G = std::max<int64_t>(1, (int64_t(256) << 10) / (ring_floats * int64_t(sizeof(float))));
  G = std::min(G, g.nblk);
  while (G > 1 && (g.nblk + G - 1) / G * g.B < 4 * num_threads()) G = (G + 1) / 2;
  const int64_t ngrp = (g.nblk + G - 1) / G;
  return (g.nblk + ngrp - 1) / ngrp;
}

// y = depthwise(x, w [+ bias]), w flipped when `flip`; used by forward and by dx. Tasks are (group of
// channel blocks, image) pairs, group-major, so a thread packs a group's weights once for its images.
// Each block keeps a ring of kh + 1 padded input rows, [channel half][slot][cols][8] (31 KiB at 56
// columns), filled one input row at a time as the output rows advance (input read in row order, all
// of the group's channels at once), so no whole padded image is ever written.
void run_conv(const Geom& g, const float* x, const float* w, bool flip, const float* bias, float* y) {
  if (g.B * g.H * g.W * g.C == 0) return;  // an empty output (and no channel blocks to group)
  const int64_t RS = g.kh + 1, taps = g.kh * g.kw;
  const int64_t cols = (g.W + kTileW - 1) / kTileW * kTileW + g.kw - 1;  // whole tiles plus the kernel's reach
  const int64_t hs = RS * cols * 8, plane = 2 * hs;      // one block's ring: [half][RS][cols][8]
  const int64_t G = group_blocks(g, plane), ngrp = (g.nblk + G - 1) / G;
  parallel_for(ngrp * g.B, 1, [&](int64_t t0, int64_t t1) {
    Scratch ring(static_cast<size_t>(G * plane));
    Scratch wb(static_cast<size_t>(G * taps * CB));
    Scratch b16(static_cast<size_t>(G * CB));
    std::vector<const float*> rows(static_cast<size_t>(g.kh + 1));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t grp = t / g.B, b = t % g.B, blk0 = grp * G, nb = std::min(G, g.nblk - blk0);
      const int64_t cg0 = blk0 * CB, ncg = std::min(nb * CB, g.C - cg0);  // the group's channels
      if (t == t0 || b == 0) {
        for (int64_t k = 0; k < nb; ++k) pack_block(g, w, blk0 + k, flip, wb.get() + k * taps * CB);
        for (int64_t c = 0; c < nb * CB; ++c) b16.get()[c] = (bias && c < ncg) ? bias[cg0 + c] : 0.0f;
      }
      // Column borders, the tile tail and channels beyond C stay zero; row slots are refilled below.
      std::memset(ring.get(), 0, sizeof(float) * static_cast<size_t>(nb * plane));
      auto fill = [&](int64_t r) {  // padded row r -> slot r % RS of every block
        const int64_t h = r - g.ph;
        for (int64_t k = 0; k < nb; ++k) {
          float* d0 = ring.get() + k * plane + (r % RS) * cols * 8 + g.pw * 8;
          float* d1 = d0 + hs;
          if (h < 0 || h >= g.H) {
            std::memset(d0, 0, sizeof(float) * static_cast<size_t>(g.W * 8));
            std::memset(d1, 0, sizeof(float) * static_cast<size_t>(g.W * 8));
            continue;
          }
          const float* s = x + ((b * g.H + h) * g.W) * g.C + cg0 + k * CB;
          const int64_t nc = std::min(CB, ncg - k * CB);
          if (nc == CB) {
            for (int64_t q = 0; q < g.W; ++q) {
              _mm256_store_ps(d0 + q * 8, _mm256_loadu_ps(s + q * g.C));
              _mm256_store_ps(d1 + q * 8, _mm256_loadu_ps(s + q * g.C + 8));
            }
          } else {
            const size_t n0 = sizeof(float) * static_cast<size_t>(std::min<int64_t>(8, nc));
            const size_t n1 = sizeof(float) * static_cast<size_t>(std::max<int64_t>(0, nc - 8));
            for (int64_t q = 0; q < g.W; ++q) {
              std::memcpy(d0 + q * 8, s + q * g.C, n0);
              if (n1) std::memcpy(d1 + q * 8, s + q * g.C + 8, n1);
            }
          }
        }
      };
      int64_t filled = 0;  // padded rows [0, filled) have been written
      for (int64_t oh = 0; oh < g.H; oh += 2) {
        const int64_t R = std::min<int64_t>(2, g.H - oh);
        for (; filled < oh + g.kh + R - 1; ++filled) fill(filled);
        for (int64_t k = 0; k < nb; ++k) {
          for (int64_t i = 0; i < g.kh + R - 1; ++i)
            rows[static_cast<size_t>(i)] = ring.get() + k * plane + ((oh + i) % RS) * cols * 8;
          const float* wk = wb.get() + k * taps * CB;
          const float* bk = b16.get() + k * CB;
          const int64_t c0 = cg0 + k * CB;
          if (R == 2) conv_rows<2, kTileW>(g, rows.data(), hs, wk, bk, y, b, oh, c0);
          else conv_rows<1, kTileW>(g, rows.data(), hs, wk, bk, y, b, oh, c0);
        }
      }
    }
  });
}

// av[j * 16 + half * 8] += sum over the image of dy * x shifted by kernel tap (i, j0 + j), j < JW.
template <int JW>
struct WeightGrad {
  static void run(const Geom& g, const float* pad, const float* dyp, int64_t i, int64_t j0, int64_t half, float* av) {
    const int64_t tc = g.tc, cols = g.cols;
    __m256 acc[JMAX];
    for (int j = 0; j < JMAX; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t h = 0; h < g.H; ++h) {
      const float* in = pad + ((h + i) * cols + j0) * CB + half * 8;
      const float* d = dyp + h * tc * CB + half * 8;
      if (g.tw == 8) {
        for (int64_t ow = 0; ow < tc; ow += 8) {
          slide_dw<JW, 0, 4>(in + ow * CB, d + ow * CB, acc);
          slide_dw<JW, 4, 4>(in + ow * CB, d + ow * CB, acc);
        }
      } else {
        for (int64_t ow = 0; ow < tc; ow += 7) {
          slide_dw<JW, 0, 4>(in + ow * CB, d + ow * CB, acc);
          slide_dw<JW, 4, 3>(in + ow * CB, d + ow * CB, acc);
        }
      }
    }
    for (int j = 0; j < JW; ++j) _mm256_storeu_ps(av + j * CB, _mm256_add_ps(_mm256_loadu_ps(av + j * CB), acc[j]));
  }
};

void dwconv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  Geom g = geom(x, w);
  run_conv(g, x.f(), w.f(), false, b.present() ? b.f() : nullptr, a.out[0].f());
}

void dwconv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  Geom g = geom(x, w);
  if (a.out[0].present()) run_conv(g, dy.f(), w.f(), true, nullptr, a.out[0].f());
  if (a.out[2].present()) col_sum_accumulate(dy.f(), g.B * g.H * g.W, g.C, a.out[2].f());
  if (!a.out[1].present()) return;
  float* DW = a.out[1].f();
  const int64_t tc = g.tc, cols = g.cols;
  // One task per channel block (all images), so every task owns its slice of dw.
  parallel_for(g.nblk, 1, [&](int64_t k0, int64_t k1) {
    Scratch pad(static_cast<size_t>(g.Hp * cols * CB));
    Scratch dyp(static_cast<size_t>(g.H * tc * CB));
    Scratch acc(static_cast<size_t>(g.kh * g.kw * CB));
    for (int64_t blk = k0; blk < k1; ++blk) {
      int64_t c0 = blk * CB, nc = std::min(CB, g.C - c0);
      std::memset(acc.get(), 0, sizeof(float) * static_cast<size_t>(g.kh * g.kw * CB));
      for (int64_t b = 0; b < g.B; ++b) {
        load_block(g, x.f(), b, c0, pad.get(), g.Hp, cols, g.ph, g.pw);
        load_block(g, dy.f(), b, c0, dyp.get(), g.H, tc, 0, 0);
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t half = 0; half * 8 < nc; ++half)
            for (int64_t j0 = 0; j0 < g.kw; j0 += JMAX)
              by_width<WeightGrad>(std::min<int64_t>(JMAX, g.kw - j0), g, pad.get(), dyp.get(), i, j0, half,
                                   acc.get() + (i * g.kw + j0) * CB + half * 8);
      }
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t t = 0; t < g.kh * g.kw; ++t) DW[(c0 + c) * g.kh * g.kw + t] += acc.get()[t * CB + c];
    }
  });
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, dwconv2d, mf::cpu::dwconv2d_fwd, mf::cpu::dwconv2d_bwd);
