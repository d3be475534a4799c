// cpu/dwconv.cpp: depthwise convolution, channels-last, stride 1, padding k/2, AVX2 + FMA.
//
// Work is split into (image, 16-channel block) tasks. Each task first copies its input block into a
// zero-padded scratch [(H + kh - 1), (W + kw - 1), 16] (fits in L2 for 56x56), so the inner loops have
// no bounds checks; then every output row is computed in register tiles of 4 pixels x 16 channels
// (8 accumulators), one vector load and one FMA per tap and pixel.
//   forward:  y = conv(x, w) + b
//   dx:       conv(dy, w flipped in both axes)  (the same kernel)
//   dw[c,i,j] += sum_{b,h,w} dy[b,h,w,c] x[b,h-ph+i,w-pw+j,c]   (groups of 4 taps, pixels inner, 8 accumulators)
#include <algorithm>

#include "cpu.h"

namespace mf::cpu {
namespace {

constexpr int64_t CB = 16;  // channels per block (two AVX2 vectors)

struct Geom {
  int64_t B, H, W, C, kh, kw, ph, pw, Hp, Wp, nblk;
};

Geom geom(const TensorView& x, const TensorView& w) {
  Geom g{};
  g.B = x.shape[0], g.H = x.shape[1], g.W = x.shape[2], g.C = x.shape[3];
  g.kh = w.shape[2], g.kw = w.shape[3], g.ph = g.kh / 2, g.pw = g.kw / 2;
  g.Hp = g.H + g.kh - 1, g.Wp = g.W + g.kw - 1;
  g.nblk = (g.C + CB - 1) / CB;
  return g;
}

// Weights [C,1,kh,kw] -> wr[blk][i][j][16] (zero beyond C); flipped in both axes when `flip`.
void pack_weights(const Geom& g, const float* w, float* wr, bool flip) {
  std::memset(wr, 0, sizeof(float) * static_cast<size_t>(g.nblk * g.kh * g.kw * CB));
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        int64_t si = flip ? g.kh - 1 - i : i, sj = flip ? g.kw - 1 - j : j;
        wr[(((c / CB) * g.kh + i) * g.kw + j) * CB + c % CB] = w[(c * g.kh + si) * g.kw + sj];
      }
}

// Copies channels [c0, c0 + 16) of image b of x [B,H,W,C] into pad [Hp][Wp][16] with zero borders.
void load_padded(const Geom& g, const float* x, int64_t b, int64_t c0, float* pad) {
  int64_t nc = std::min(CB, g.C - c0);
  std::memset(pad, 0, sizeof(float) * static_cast<size_t>(g.Hp * g.Wp * CB));
  for (int64_t h = 0; h < g.H; ++h) {
    const float* src = x + ((b * g.H + h) * g.W) * g.C + c0;
    float* dst = pad + ((h + g.ph) * g.Wp + g.pw) * CB;
    if (nc == CB) {
      for (int64_t w = 0; w < g.W; ++w) {
        _mm256_storeu_ps(dst + w * CB, _mm256_loadu_ps(src + w * g.C));
        _mm256_storeu_ps(dst + w * CB + 8, _mm256_loadu_ps(src + w * g.C + 8));
      }
    } else {
      for (int64_t w = 0; w < g.W; ++w) std::memcpy(dst + w * CB, src + w * g.C, sizeof(float) * static_cast<size_t>(nc));
    }
  }
}

inline void store16(float* dst, __m256 lo, __m256 hi, int64_t nc) {
  if (nc == CB) {
    _mm256_storeu_ps(dst, lo);
    _mm256_storeu_ps(dst + 8, hi);
  } else {
    _mm256_maskstore_ps(dst, tail_mask(std::min<int64_t>(nc, 8)), lo);
    if (nc > 8) _mm256_maskstore_ps(dst + 8, tail_mask(nc - 8), hi);
  }
}

// y[b, :, :, c0:c0+16] = conv(pad, wr block) + bias.
void conv_block(const Geom& g, const float* pad, const float* wb, const float* bias16, float* y, int64_t b,
                int64_t c0) {
  int64_t nc = std::min(CB, g.C - c0);
  __m256 b0 = _mm256_loadu_ps(bias16), b1 = _mm256_loadu_ps(bias16 + 8);
  for (int64_t oh = 0; oh < g.H; ++oh) {
    float* yrow = y + ((b * g.H + oh) * g.W) * g.C + c0;
    int64_t ow = 0;
    for (; ow + 4 <= g.W; ow += 4) {
      __m256 a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;
      for (int64_t i = 0; i < g.kh; ++i) {
        const float* prow = pad + ((oh + i) * g.Wp + ow) * CB;
        const float* wrow = wb + i * g.kw * CB;
        for (int64_t j = 0; j < g.kw; ++j) {
          __m256 w0 = _mm256_loadu_ps(wrow + j * CB), w1 = _mm256_loadu_ps(wrow + j * CB + 8);
          const float* p = prow + j * CB;
          a00 = _mm256_fmadd_ps(_mm256_loadu_ps(p), w0, a00);
          a01 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8), w1, a01);
          a10 = _mm256_fmadd_ps(_mm256_loadu_ps(p + CB), w0, a10);
          a11 = _mm256_fmadd_ps(_mm256_loadu_ps(p + CB + 8), w1, a11);
          a20 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * CB), w0, a20);
          a21 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * CB + 8), w1, a21);
          a30 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 3 * CB), w0, a30);
          a31 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 3 * CB + 8), w1, a31);
        }
      }
      store16(yrow + ow * g.C, a00, a01, nc);
      store16(yrow + (ow + 1) * g.C, a10, a11, nc);
      store16(yrow + (ow + 2) * g.C, a20, a21, nc);
      store16(yrow + (ow + 3) * g.C, a30, a31, nc);
    }
    for (; ow < g.W; ++ow) {
      __m256 a0 = b0, a1 = b1;
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const float* p = pad + ((oh + i) * g.Wp + ow + j) * CB;
          const float* wv = wb + (i * g.kw + j) * CB;
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(wv), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8), _mm256_loadu_ps(wv + 8), a1);
        }
      store16(yrow + ow * g.C, a0, a1, nc);
    }
  }
}

constexpr int64_t kTapGroup = 4;

// dw of NJ neighbouring taps (i, j0..j0+NJ-1) of one channel block over one image, added to av[q * 16]:
// each dy vector is loaded once for the NJ taps, and the 2 * NJ independent accumulators hide the FMA
// latency (one tap at a time was latency-bound). Each tap still sums its pixels in row order.
template <int NJ>
void weight_grad_taps(const Geom& g, const float* DY, const float* pad, int64_t b, int64_t c0, int64_t nc, int64_t i, int64_t j0,
                      float* av) {
  __m256 s0[NJ], s1[NJ];
  for (int q = 0; q < NJ; ++q) s0[q] = s1[q] = _mm256_setzero_ps();
  const bool full = nc == CB;
  const __m256i m0 = tail_mask(std::min<int64_t>(nc, 8)), m1 = tail_mask(std::max<int64_t>(nc - 8, 0));
  for (int64_t h = 0; h < g.H; ++h) {
    const float* drow = DY + ((b * g.H + h) * g.W) * g.C + c0;
    const float* prow = pad + ((h + i) * g.Wp + j0) * CB;
    for (int64_t ww = 0; ww < g.W; ++ww) {
      const float* d = drow + ww * g.C;
      __m256 d0 = full ? _mm256_loadu_ps(d) : _mm256_maskload_ps(d, m0);
      __m256 d1 = full ? _mm256_loadu_ps(d + 8) : _mm256_maskload_ps(d + 8, m1);
      const float* p = prow + ww * CB;
#pragma GCC unroll 4
      for (int q = 0; q < NJ; ++q) {
        s0[q] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(p + q * CB), s0[q]);
        s1[q] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(p + q * CB + 8), s1[q]);
      }
    }
  }
  for (int q = 0; q < NJ; ++q) {
    _mm256_storeu_ps(av + q * CB, _mm256_add_ps(_mm256_loadu_ps(av + q * CB), s0[q]));
    _mm256_storeu_ps(av + q * CB + 8, _mm256_add_ps(_mm256_loadu_ps(av + q * CB + 8), s1[q]));
  }
}

// y = depthwise(x, w [+ bias]) with w packed by pack_weights; used by forward and by dx.
void run_conv(const Geom& g, const float* x, const float* wr, const float* bias, float* y) {
  parallel_for(g.B * g.nblk, 1, [&](int64_t t0, int64_t t1) {
    Scratch pad(static_cast<size_t>(g.Hp * g.Wp * CB));
    alignas(32) float b16[CB];
    for (int64_t t = t0; t < t1; ++t) {
      int64_t b = t / g.nblk, blk = t % g.nblk, c0 = blk * CB;
      for (int64_t c = 0; c < CB; ++c) b16[c] = (bias && c0 + c < g.C) ? bias[c0 + c] : 0.0f;
      load_padded(g, x, b, c0, pad.get());
      conv_block(g, pad.get(), wr + blk * g.kh * g.kw * CB, b16, y, b, c0);
    }
  });
}

void dwconv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  Geom g = geom(x, w);
  Scratch wr(static_cast<size_t>(g.nblk * g.kh * g.kw * CB));
  pack_weights(g, w.f(), wr.get(), false);
  run_conv(g, x.f(), wr.get(), b.present() ? b.f() : nullptr, a.out[0].f());
}

void dwconv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  Geom g = geom(x, w);
  if (a.out[0].present()) {
    Scratch wr(static_cast<size_t>(g.nblk * g.kh * g.kw * CB));
    pack_weights(g, w.f(), wr.get(), true);
    run_conv(g, dy.f(), wr.get(), nullptr, a.out[0].f());
  }
  if (a.out[2].present()) col_sum_accumulate(dy.f(), g.B * g.H * g.W, g.C, a.out[2].f());
  if (!a.out[1].present()) return;
  float* DW = a.out[1].f();
  const float* DY = dy.f();
  // One task per channel block (all images), so every task owns its slice of dw.
  parallel_for(g.nblk, 1, [&](int64_t k0, int64_t k1) {
    Scratch pad(static_cast<size_t>(g.Hp * g.Wp * CB));
    Scratch acc(static_cast<size_t>(g.kh * g.kw * CB));
    for (int64_t blk = k0; blk < k1; ++blk) {
      int64_t c0 = blk * CB, nc = std::min(CB, g.C - c0);
      std::memset(acc.get(), 0, sizeof(float) * static_cast<size_t>(g.kh * g.kw * CB));
      for (int64_t b = 0; b < g.B; ++b) {
        load_padded(g, x.f(), b, c0, pad.get());
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j0 = 0; j0 < g.kw; j0 += kTapGroup) {
            float* av = acc.get() + (i * g.kw + j0) * CB;
            switch (std::min<int64_t>(kTapGroup, g.kw - j0)) {
              case 4: weight_grad_taps<4>(g, DY, pad.get(), b, c0, nc, i, j0, av); break;
              case 3: weight_grad_taps<3>(g, DY, pad.get(), b, c0, nc, i, j0, av); break;
              case 2: weight_grad_taps<2>(g, DY, pad.get(), b, c0, nc, i, j0, av); break;
              default: weight_grad_taps<1>(g, DY, pad.get(), b, c0, nc, i, j0, av); break;
            }
          }
      }
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t t = 0; t < g.kh * g.kw; ++t) DW[(c0 + c) * g.kh * g.kw + t] += acc.get()[t * CB + c];
    }
  });
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, dwconv2d, mf::cpu::dwconv2d_fwd, mf::cpu::dwconv2d_bwd);
