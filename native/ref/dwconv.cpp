// ref/dwconv.cpp: depthwise 2-D convolution, channels-last, stride 1, padding k/2 (SepConv.dwconv).
// y[b, h, w, c] = bias[c] + sum_{i,j} x[b, h - kh/2 + i, w - kw/2 + j, c] * wt[c, 0, i, j]
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void dwconv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // x,y [B,H,W,C] w[C,1,kh,kw]
  int64_t B = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], kh = w.shape[2], kw = w.shape[3];
  const T *X = ptr<T>(x), *Wt = ptr<T>(w), *Bs = ptr<T>(b);
  T* Y = ptr<T>(y);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t ww = 0; ww < W; ++ww)
        for (int64_t c = 0; c < C; ++c) {
          double acc = Bs ? static_cast<double>(Bs[c]) : 0.0;
          for (int64_t i = 0; i < kh; ++i) {
            int64_t ih = h - kh / 2 + i;
            if (ih < 0 || ih >= H) continue;
            for (int64_t j = 0; j < kw; ++j) {
              int64_t iw = ww - kw / 2 + j;
              if (iw < 0 || iw >= W) continue;
              acc += static_cast<double>(X[((bi * H + ih) * W + iw) * C + c]) * Wt[(c * kh + i) * kw + j];
            }
          }
          Y[((bi * H + h) * W + ww) * C + c] = static_cast<T>(acc);
        }
}

template <typename T>
void dwconv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];
  int64_t B = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], kh = w.shape[2], kw = w.shape[3];
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *Wt = ptr<T>(w);
  T *DX = ptr<T>(a.out[0]), *DW = ptr<T>(a.out[1]), *DB = ptr<T>(a.out[2]);
  // Accumulate in double, then write dx (=) and add into dw, db (+=).
  std::vector<double> dxa(DX ? x.numel() : 0), dwa(DW ? w.numel() : 0), dba(DB ? C : 0);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t ww = 0; ww < W; ++ww)
        for (int64_t c = 0; c < C; ++c) {
          T d = DY[((bi * H + h) * W + ww) * C + c];
          if (DB) dba[c] += d;
          for (int64_t i = 0; i < kh; ++i) {
            int64_t ih = h - kh / 2 + i;
            if (ih < 0 || ih >= H) continue;
            for (int64_t j = 0; j < kw; ++j) {
              int64_t iw = ww - kw / 2 + j;
              if (iw < 0 || iw >= W) continue;
              int64_t xi = ((bi * H + ih) * W + iw) * C + c, wi = (c * kh + i) * kw + j;
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

MF_REGISTER(ref, dwconv2d, MF_REF_KERNEL(mf::ref::dwconv2d_fwd), MF_REF_KERNEL(mf::ref::dwconv2d_bwd));
