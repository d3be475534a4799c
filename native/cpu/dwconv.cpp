// cpu/dwconv.cpp: depthwise convolution, channels-last, stride 1, padding k/2, AVX2 + FMA.
//
// Work is split into (16-channel block, image) tasks. Each task first copies its input block into a
// zero-padded scratch [H + kh - 1][W padded to whole tiles + kw - 1][16] (fits in L2 for 56x56), so
// the inner loops have no bounds checks.
//   forward:  y = conv(x, w) + b, in register tiles of 7 or 8 pixels x 8 channels: per tap one weight
//             vector and one FMA per pixel with its input read from L1 (measured: as fast as a sliding
//             window with the inputs in registers, which GCC spills).
//   dx:       conv(dy, w flipped in both axes)  (the same kernel)
//   dw[c,i,j] += sum_{b,h,w} dy[b,h,w,c] x[b,h-ph+i,w-pw+j,c]: up to 7 taps of a kernel row at a time
//             in registers, a sliding window over the row (each x vector loaded once for all of them).
#include <algorithm>

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

// y[b, :, :, c0:c0+16] = conv(pad, wr block) + bias, pad being [Hp][cols][16], in register tiles of
// T pixels x 8 channels: per tap one weight vector, T FMAs reading their inputs straight from L1 (T
// accumulators + 1 weight: no spills). Each output sums its taps in row-major order, like the reference.
template <int T>
void conv_block(const Geom& g, const float* pad, const float* wb, const float* bias16, float* y, int64_t b, int64_t c0) {
  const int64_t nc = std::min(CB, g.C - c0);
  for (int64_t oh = 0; oh < g.H; ++oh) {
    float* yrow = y + ((b * g.H + oh) * g.W) * g.C + c0;
    for (int64_t ow = 0; ow < g.W; ow += T) {
      const int64_t nw = std::min<int64_t>(T, g.W - ow);
      for (int64_t half = 0; half * 8 < nc; ++half) {
        __m256 acc[T];
        const __m256 bv = _mm256_loadu_ps(bias16 + half * 8);
        for (int o = 0; o < T; ++o) acc[o] = bv;
        for (int64_t i = 0; i < g.kh; ++i) {
          const float* in = pad + ((oh + i) * g.cols + ow) * CB + half * 8;
          const float* wi = wb + i * g.kw * CB + half * 8;
          for (int64_t j = 0; j < g.kw; ++j) {
            const __m256 wv = _mm256_loadu_ps(wi + j * CB);
#pragma GCC unroll 8
            for (int o = 0; o < T; ++o) acc[o] = _mm256_fmadd_ps(_mm256_loadu_ps(in + (o + j) * CB), wv, acc[o]);
          }
        }
        float* yt = yrow + ow * g.C + half * 8;
#pragma GCC unroll 8
        for (int o = 0; o < T; ++o)  // constant indices keep acc[] in registers
          if (o < nw) store8(yt + o * g.C, acc[o], nc - half * 8);
      }
    }
  }
}

// y = depthwise(x, w [+ bias]), w flipped when `flip`; used by forward and by dx. Tasks are (channel
// block, image) pairs, block-major, so a thread packs a block's weights once for all its images.
void run_conv(const Geom& g, const float* x, const float* w, bool flip, const float* bias, float* y) {
  parallel_for(g.nblk * g.B, 1, [&](int64_t t0, int64_t t1) {
    Scratch pad(static_cast<size_t>(g.Hp * g.cols * CB));
    Scratch wb(static_cast<size_t>(g.kh * g.kw * CB));
    alignas(32) float b16[CB];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk = t / g.B, b = t % g.B, c0 = blk * CB;
      if (t == t0 || b == 0) {
        pack_block(g, w, blk, flip, wb.get());
        for (int64_t c = 0; c < CB; ++c) b16[c] = (bias && c0 + c < g.C) ? bias[c0 + c] : 0.0f;
      }
      load_block(g, x, b, c0, pad.get(), g.Hp, g.cols, g.ph, g.pw);
      if (g.tw == 8) conv_block<8>(g, pad.get(), wb.get(), b16, y, b, c0);
      else conv_block<7>(g, pad.get(), wb.get(), b16, y, b, c0);
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
