// cpu/conv.cpp: dense convolution (stem k7 s4 p2 on the NCHW image, downsampling k3 s2 p1 on
// channels-last maps) as im2col + one oneDNN GEMM per chunk of output pixels.
//   columns: col[m = (b, oh, ow)][k = (ci, i, j)], zero where the tap falls in the padding. The
//   (ci, i, j) order is the layout of the weights [Co, Ci, kh, kw], so they are used as they are
//   (no per-call repacking); the gathers cost K * M loads, small next to the GEMM's K * M * Co.
//   y[m, co] = col[m, :] . w[co, :] + b[co]
// Backward: db += col sums of dy; dw += dy^T col; dcol = dy w, scattered back into dx (col2im).
// Channels-last input with more output pixels than output channels (training batches, early stages)
// uses the column order (i, j, ci) instead: each tap is one contiguous copy of Ci channels (the
// (ci, i, j) order is a strided transpose of every pixel), at the price of permuting the weights (and
// dw) once per call, Co * Ci * kh * kw floats, small next to M * Ci * kh * kw when M > Co.
#include <algorithm>

#include "../core/geometry.h"
#include "cpu.h"
#include "gemm.h"

namespace mf::cpu {
namespace {

// Output pixels per GEMM chunk: bounded so the column buffer stays near 16 MB.
int64_t chunk_rows(const ConvGeom& g) {
  int64_t rows = std::max<int64_t>(64, (int64_t(4) << 20) / std::max<int64_t>(1, g.cols()));
  return std::min(rows, g.B * g.Ho * g.Wo);
}

// Calls fn(b, t, ih, iw, inside) for the kh * kw taps (t = i * kw + j) of output pixel m: the input
// pixel (ih, iw) of image b under tap t, and whether it lies inside the map (else it is padding).
template <typename F>
inline void for_each_tap(const ConvGeom& g, int64_t m, F&& fn) {
  int64_t b = m / (g.Ho * g.Wo), oh = (m / g.Wo) % g.Ho, ow = m % g.Wo;
  for (int64_t i = 0; i < g.kh; ++i) {
    int64_t ih = oh * g.stride - g.pad + i;
    for (int64_t j = 0; j < g.kw; ++j) {
      int64_t iw = ow * g.stride - g.pad + j;
      fn(b, i * g.kw + j, ih, iw, ih >= 0 && ih < g.H && iw >= 0 && iw < g.W);
    }
  }
}

// im2col for an NCHW input (the stem): for each (ci, i) the kw taps of one column block are kw
// consecutive pixels of one input row, so each is a short contiguous copy (bounds checked at the edges).
// KW > 0: the kernel width as a constant (the copies become a few register moves); 0: g.kw.
template <int KW>
void im2col_nchw_kw(const ConvGeom& g, const float* x, float* col, int64_t m0, int64_t m1) {
  const int64_t kw = KW > 0 ? KW : g.kw;
  int64_t kk = g.kh * kw;
  parallel_for(m1 - m0, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t m = m0 + r, b = m / (g.Ho * g.Wo), oh = (m / g.Wo) % g.Ho, ow = m % g.Wo;
      int64_t iw0 = ow * g.stride - g.pad;
      bool inner = iw0 >= 0 && iw0 + kw <= g.W;
      for (int64_t ci = 0; ci < g.Ci; ++ci)
        for (int64_t i = 0; i < g.kh; ++i) {
          float* d = col + r * g.cols() + ci * kk + i * kw;
          int64_t ih = oh * g.stride - g.pad + i;
          if (ih < 0 || ih >= g.H) {
            std::memset(d, 0, sizeof(float) * static_cast<size_t>(kw));
            continue;
          }
          const float* src = x + ((b * g.Ci + ci) * g.H + ih) * g.W;
          if (inner) {
            std::memcpy(d, src + iw0, sizeof(float) * static_cast<size_t>(kw));
          } else {
            for (int64_t j = 0; j < kw; ++j) d[j] = (iw0 + j >= 0 && iw0 + j < g.W) ? src[iw0 + j] : 0.0f;
          }
        }
    }
  });
}

void im2col_nchw(const ConvGeom& g, const float* x, float* col, int64_t m0, int64_t m1) {
  if (g.kw == 7) im2col_nchw_kw<7>(g, x, col, m0, m1);  // the official stem
  else im2col_nchw_kw<0>(g, x, col, m0, m1);
}

// Fills col rows [m0, m1) (relative row r = m - m0), column order (ci, i, j).
void im2col(const ConvGeom& g, const float* x, float* col, int64_t m0, int64_t m1) {
  if (g.nchw) {
    im2col_nchw(g, x, col, m0, m1);
    return;
  }
  int64_t kk = g.kh * g.kw;
  parallel_for(m1 - m0, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = col + r * g.cols();
      for_each_tap(g, m0 + r, [&](int64_t b, int64_t t, int64_t ih, int64_t iw, bool inside) {
        if (!inside) {
          for (int64_t ci = 0; ci < g.Ci; ++ci) dst[ci * kk + t] = 0.0f;
          return;
        }
        const float* src = x + ((b * g.H + ih) * g.W + iw) * g.Ci;
        for (int64_t ci = 0; ci < g.Ci; ++ci) dst[ci * kk + t] = src[ci];
      });
    }
  });
}

// dx += scatter of dcol rows [m0, m1). Rows of one image overlap through the kernel window, so this
// runs serially per chunk (cheap next to the GEMMs).
void col2im(const ConvGeom& g, const float* dcol, float* dx, int64_t m0, int64_t m1) {
  int64_t kk = g.kh * g.kw;
  for (int64_t m = m0; m < m1; ++m) {
    const float* src = dcol + (m - m0) * g.cols();
    for_each_tap(g, m, [&](int64_t b, int64_t t, int64_t ih, int64_t iw, bool inside) {
      if (!inside) return;
      for (int64_t ci = 0; ci < g.Ci; ++ci) dx[g.x_index(b, ci, ih, iw)] += src[ci * kk + t];
    });
  }
}

// Whether this call uses the (i, j, ci) column order (see the file comment).
bool tap_major(const ConvGeom& g) { return !g.nchw && g.B * g.Ho * g.Wo > g.Co; }

// w [Co, Ci, kh, kw] -> wt [Co, kh, kw, Ci].
void weights_to_tap_major(const ConvGeom& g, const float* w, float* wt) {
  int64_t kk = g.kh * g.kw;
  parallel_for(g.Co, 4, [&](int64_t c0, int64_t c1) {
    for (int64_t co = c0; co < c1; ++co)
      for (int64_t ci = 0; ci < g.Ci; ++ci)
        for (int64_t t = 0; t < kk; ++t) wt[(co * kk + t) * g.Ci + ci] = w[(co * g.Ci + ci) * kk + t];
  });
}

// dw [Co, Ci, kh, kw] += dwt [Co, kh, kw, Ci].
void add_tap_major_grad(const ConvGeom& g, const float* dwt, float* dw) {
  int64_t kk = g.kh * g.kw;
  parallel_for(g.Co, 4, [&](int64_t c0, int64_t c1) {
    for (int64_t co = c0; co < c1; ++co)
      for (int64_t ci = 0; ci < g.Ci; ++ci)
        for (int64_t t = 0; t < kk; ++t) dw[(co * g.Ci + ci) * kk + t] += dwt[(co * kk + t) * g.Ci + ci];
  });
}

// im2col in (i, j, ci) order for channels-last x: one copy (or zero fill) of Ci floats per tap.
void im2col_taps(const ConvGeom& g, const float* x, float* col, int64_t m0, int64_t m1) {
  size_t row_bytes = sizeof(float) * static_cast<size_t>(g.Ci);
  parallel_for(m1 - m0, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = col + r * g.cols();
      for_each_tap(g, m0 + r, [&](int64_t b, int64_t t, int64_t ih, int64_t iw, bool inside) {
        if (inside) std::memcpy(dst + t * g.Ci, x + ((b * g.H + ih) * g.W + iw) * g.Ci, row_bytes);
        else std::memset(dst + t * g.Ci, 0, row_bytes);
      });
    }
  });
}

// dx += scatter of dcol rows [m0, m1) in (i, j, ci) order (serial: windows of one image overlap).
void col2im_taps(const ConvGeom& g, const float* dcol, float* dx, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* src = dcol + (m - m0) * g.cols();
    for_each_tap(g, m, [&](int64_t b, int64_t t, int64_t ih, int64_t iw, bool inside) {
      if (!inside) return;
      float* d = dx + ((b * g.H + ih) * g.W + iw) * g.Ci;
      const float* s = src + t * g.Ci;
      for (int64_t ci = 0; ci < g.Ci; ++ci) d[ci] += s[ci];
    });
  }
}

void conv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  ConvGeom g = conv_geom(x, w, a.attr);
  int64_t M = g.B * g.Ho * g.Wo, rows = chunk_rows(g);
  Scratch col(static_cast<size_t>(rows * g.cols()));
  const bool taps = tap_major(g);
  Scratch wt(taps ? static_cast<size_t>(g.Co * g.cols()) : 0);
  if (taps) weights_to_tap_major(g, w.f(), wt.get());
  for (int64_t m0 = 0; m0 < M; m0 += rows) {
    int64_t m1 = std::min(M, m0 + rows);
    if (taps) im2col_taps(g, x.f(), col.get(), m0, m1);
    else im2col(g, x.f(), col.get(), m0, m1);
    gemm_xwT(m1 - m0, g.Co, g.cols(), col.get(), taps ? wt.get() : w.f(), a.out[0].f() + m0 * g.Co, b.present() ? b.f() : nullptr,
             false);
  }
}

void conv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  ConvGeom g = conv_geom(x, w, a.attr);
  int64_t M = g.B * g.Ho * g.Wo, rows = chunk_rows(g);
  float *DX = a.out[0].present() ? a.out[0].f() : nullptr, *DW = a.out[1].present() ? a.out[1].f() : nullptr;
  if (a.out[2].present()) col_sum_accumulate(dy.f(), M, g.Co, a.out[2].f());
  if (!DX && !DW) return;
  Scratch col(static_cast<size_t>(rows * g.cols()));
  const bool taps = tap_major(g);
  // tap-major: weights permuted once; dw accumulated in tap-major order, added back at the end
  Scratch wt(taps && DX ? static_cast<size_t>(g.Co * g.cols()) : 0), dwt(taps && DW ? static_cast<size_t>(g.Co * g.cols()) : 0);
  if (taps && DX) weights_to_tap_major(g, w.f(), wt.get());
  if (taps && DW) std::memset(dwt.get(), 0, sizeof(float) * static_cast<size_t>(g.Co * g.cols()));
  if (DX) std::memset(DX, 0, sizeof(float) * static_cast<size_t>(x.numel()));
  for (int64_t m0 = 0; m0 < M; m0 += rows) {
    int64_t m1 = std::min(M, m0 + rows), n = m1 - m0;
    const float* dyc = dy.f() + m0 * g.Co;
    if (DW) {  // dw[Co, Kc] += dy^T[Co, n] col[n, Kc]
      if (taps) im2col_taps(g, x.f(), col.get(), m0, m1);
      else im2col(g, x.f(), col.get(), m0, m1);
      GemmShape s;
      s.M = g.Co, s.N = g.cols(), s.K = n;
      s.a_m = 1, s.a_k = g.Co;
      s.b_k = g.cols(), s.b_n = 1;
      s.c_m = g.cols(), s.c_n = 1;
      s.accumulate = true;
      gemm(s, dyc, col.get(), taps ? dwt.get() : DW);
    }
    if (DX) {  // dcol[n, Kc] = dy[n, Co] w[Co, Kc]
      GemmShape s;
      s.M = n, s.N = g.cols(), s.K = g.Co;
      s.a_m = g.Co, s.a_k = 1;
      s.b_k = g.cols(), s.b_n = 1;
      s.c_m = g.cols(), s.c_n = 1;
      gemm(s, dyc, taps ? wt.get() : w.f(), col.get());
      if (taps) col2im_taps(g, col.get(), DX, m0, m1);
      else col2im(g, col.get(), DX, m0, m1);
    }
  }
  if (taps && DW) add_tap_major_grad(g, dwt.get(), DW);
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, conv2d, mf::cpu::conv2d_fwd, mf::cpu::conv2d_bwd);
