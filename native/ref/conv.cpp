// ref/conv.cpp: dense 2-D convolution (cross-correlation, as PyTorch) for the stem and downsampling
// layers. x is NCHW (the image) or channels-last; y is always channels-last [B, Ho, Wo, Co].
#include <vector>

#include "../core/geometry.h"
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void conv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // w[Co,Ci,kh,kw] y[B,Ho,Wo,Co]
  ConvGeom g = conv_geom(x, w, a.attr);
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
                acc += static_cast<double>(X[g.x_index(bi, ci, ih, iw)]) * Wt[((co * g.Ci + ci) * g.kh + i) * g.kw + j];
              }
            }
          Y[((bi * g.Ho + oh) * g.Wo + ow) * g.Co + co] = static_cast<T>(acc);
        }
}

template <typename T>
void conv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  ConvGeom g = conv_geom(x, w, a.attr);
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
                int64_t xi = g.x_index(bi, ci, ih, iw);
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
