// ref/conv.cpp: dense 2-D convolution (cross-correlation, as PyTorch) for the stem and downsampling
// layers. x is NCHW (the image) or channels-last; y is always channels-last [B, Ho, Wo, Co].
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

struct ConvGeom {
  int64_t B, H, W, Ci, Co, kh, kw, Ho, Wo, stride, pad;
  bool nchw;
  // Offset of x[b, c, h, w] in either layout.
  int64_t xi(int64_t b, int64_t c, int64_t h, int64_t w) const {
    return nchw ? ((b * Ci + c) * H + h) * W + w : ((b * H + h) * W + w) * Ci + c;
  }
};

ConvGeom geom(const TensorView& x, const TensorView& w, const OpArgs& a) {
  ConvGeom g{};
  g.stride = static_cast<int64_t>(a.attr[0]);
  g.pad = static_cast<int64_t>(a.attr[1]);
  g.nchw = a.attr[2] != 0;
  g.B = x.shape[0];
  g.Ci = g.nchw ? x.shape[1] : x.shape[3];
  g.H = g.nchw ? x.shape[2] : x.shape[1];
  g.W = g.nchw ? x.shape[3] : x.shape[2];
  g.Co = w.shape[0];
  g.kh = w.shape[2];
  g.kw = w.shape[3];
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  return g;
}

template <typename T>
void conv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // w[Co,Ci,kh,kw] y[B,Ho,Wo,Co]
  ConvGeom g = geom(x, w, a);
  const T *X = ptr<T>(x), *Wt = ptr<T>(w), *Bs = ptr<T>(b);
  T* Y = ptr<T>(y);
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow)
        for (int64_t co = 0; co < g.Co; ++co) {
          double acc = Bs ? static_cast<double>(Bs[co]) : 0.0;
          for (int64_t ci = 0; ci < g.Ci; ++ci)
            for (int64_t i = 0; i < g.kh; ++i) {
              int64_t ih = oh * g.stride - g.pad + i;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                int64_t iw = ow * g.stride - g.pad + j;
                if (iw < 0 || iw >= g.W) continue;
                acc += static_cast<double>(X[g.xi(bi, ci, ih, iw)]) * Wt[((co * g.Ci + ci) * g.kh + i) * g.kw + j];
              }
            }
          Y[((bi * g.Ho + oh) * g.Wo + ow) * g.Co + co] = static_cast<T>(acc);
        }
}

template <typename T>
void conv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  ConvGeom g = geom(x, w, a);
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *Wt = ptr<T>(w);
  T *DX = ptr<T>(a.out[0]), *DW = ptr<T>(a.out[1]), *DB = ptr<T>(a.out[2]);
  // Accumulate in double, then write dx (=) and add into dw, db (+=).
  std::vector<double> dxa(DX ? x.numel() : 0), dwa(DW ? w.numel() : 0), dba(DB ? g.Co : 0);
  for (int64_t bi = 0; bi < g.B; ++bi)
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow)
        for (int64_t co = 0; co < g.Co; ++co) {
          T d = DY[((bi * g.Ho + oh) * g.Wo + ow) * g.Co + co];
          if (DB) dba[co] += d;
          for (int64_t ci = 0; ci < g.Ci; ++ci)
            for (int64_t i = 0; i < g.kh; ++i) {
              int64_t ih = oh * g.stride - g.pad + i;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                int64_t iw = ow * g.stride - g.pad + j;
                if (iw < 0 || iw >= g.W) continue;
                int64_t wi = ((co * g.Ci + ci) * g.kh + i) * g.kw + j;
                int64_t xi = g.xi(bi, ci, ih, iw);
                if (DW) dwa[wi] += static_cast<double>(d) * X[xi];
                if (DX) dxa[xi] += static_cast<double>(d) * Wt[wi];
              }
            }
        }
  for (size_t i = 0; i < dxa.size(); ++i) DX[i] = static_cast<T>(dxa[i]);
  for (size_t i = 0; i < dwa.size(); ++i) DW[i] += static_cast<T>(dwa[i]);
  for (size_t i = 0; i < dba.size(); ++i) DB[i] += static_cast<T>(dba[i]);
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, conv2d, MF_REF_KERNEL(mf::ref::conv2d_fwd), MF_REF_KERNEL(mf::ref::conv2d_bwd));
