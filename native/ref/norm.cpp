// ref/norm.cpp: layer normalisation over groups of `group` consecutive elements with a per-channel
// affine (channel = index % C). group = C is LayerNorm over channels; group = H*W*C is the "modified
// LayerNorm" (GroupNorm with one group) of IdentityFormer / RandFormer / PoolFormerV2.
//   y = (x - mean) * rstd * w[c] + b[c],  rstd = 1 / sqrt(var + eps), var biased
// Backward, with xhat = (x - mean) * rstd and g = dy * w[c]:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw[c] += sum dy * xhat,  db[c] += sum dy
#include <cmath>
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void layernorm_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];  // x[R*G] w[C] b[C]
  double eps = a.attr[0];
  int64_t G = static_cast<int64_t>(a.attr[1]), C = x.dim(-1), R = x.numel() / G;
  const T *X = ptr<T>(x), *Wt = ptr<T>(w), *Bs = ptr<T>(b);
  T *Y = ptr<T>(a.out[0]), *MEAN = ptr<T>(a.out[1]), *RSTD = ptr<T>(a.out[2]);
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = X + r * G;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < G; ++i) mean += xr[i];
    mean /= static_cast<double>(G);
    for (int64_t i = 0; i < G; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= static_cast<double>(G);
    double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < G; ++i) {
      int64_t c = i % C;
      double v = (xr[i] - mean) * rstd;
      if (Wt) v *= Wt[c];
      if (Bs) v += Bs[c];
      Y[r * G + i] = static_cast<T>(v);
    }
    if (MEAN) MEAN[r] = static_cast<T>(mean);
    if (RSTD) RSTD[r] = static_cast<T>(rstd);
  }
}

template <typename T>
void layernorm_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2], &mean_t = a.in[3], &rstd_t = a.in[4];
  int64_t G = static_cast<int64_t>(a.attr[1]), C = x.dim(-1), R = x.numel() / G;
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *Wt = ptr<T>(w), *MEAN = ptr<T>(mean_t), *RSTD = ptr<T>(rstd_t);
  T *DX = ptr<T>(a.out[0]), *DW = ptr<T>(a.out[1]), *DB = ptr<T>(a.out[2]);
  std::vector<double> dw(C, 0.0), db(C, 0.0);
  for (int64_t r = 0; r < R; ++r) {
    double mean = MEAN[r], rstd = RSTD[r];
    const T *xr = X + r * G, *dyr = DY + r * G;
    double sg = 0, sgx = 0;
    for (int64_t i = 0; i < G; ++i) {
      int64_t c = i % C;
      double xhat = (xr[i] - mean) * rstd;
      double g = dyr[i] * (Wt ? static_cast<double>(Wt[c]) : 1.0);
      sg += g;
      sgx += g * xhat;
      dw[c] += dyr[i] * xhat;
      db[c] += dyr[i];
    }
    sg /= static_cast<double>(G);
    sgx /= static_cast<double>(G);
    if (DX)
      for (int64_t i = 0; i < G; ++i) {
        int64_t c = i % C;
        double xhat = (xr[i] - mean) * rstd;
        double g = dyr[i] * (Wt ? static_cast<double>(Wt[c]) : 1.0);
        DX[r * G + i] = static_cast<T>(rstd * (g - sg - xhat * sgx));
      }
  }
  for (int64_t c = 0; c < C; ++c) {
    if (DW) DW[c] += static_cast<T>(dw[c]);
    if (DB) DB[c] += static_cast<T>(db[c]);
  }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, layernorm, MF_REF_KERNEL(mf::ref::layernorm_fwd), MF_REF_KERNEL(mf::ref::layernorm_bwd));
