// ref/residual.cpp: the residual step y = x * s + r (res_scale on the skip path, or layer scale),
// and the global mean over H and W that feeds the head.
//   scale_add:  dx = dy * s,  ds[c] += sum dy * x,  dr = dy
//   mean_hw:    y[b, c] = mean_n x[b, n, c],  dx[b, n, c] = dy[b, c] / N
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void scale_add_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &s = a.in[1], &r = a.in[2];
  int64_t C = x.dim(-1), n = x.numel();
  const T *X = ptr<T>(x), *S = ptr<T>(s), *R = ptr<T>(r);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < n; ++i) {
    double v = X[i];
    if (S) v *= S[i % C];
    if (R) v += R[i];
    Y[i] = static_cast<T>(v);
  }
}

template <typename T>
void scale_add_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &s = a.in[2];
  int64_t C = x.dim(-1), n = x.numel();
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *S = ptr<T>(s);
  T *DX = ptr<T>(a.out[0]), *DS = ptr<T>(a.out[1]), *DR = ptr<T>(a.out[2]);
  std::vector<double> ds(DS ? C : 0, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    if (DX) DX[i] = S ? static_cast<T>(static_cast<double>(DY[i]) * S[i % C]) : DY[i];
    if (DS) ds[i % C] += static_cast<double>(DY[i]) * X[i];
    if (DR) DR[i] = DY[i];
  }
  for (size_t c = 0; c < ds.size(); ++c) DS[c] += static_cast<T>(ds[c]);
}

template <typename T>
void mean_hw_fwd(const OpArgs& a) {
  const TensorView& x = a.in[0];  // [B, ..., C]
  int64_t B = x.shape[0], C = x.dim(-1), N = x.numel() / std::max<int64_t>(1, B * C);
  const T* X = ptr<T>(x);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += X[(b * N + n) * C + c];
      Y[b * C + c] = static_cast<T>(acc / static_cast<double>(N));
    }
}

template <typename T>
void mean_hw_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &dx = a.out[0];
  int64_t B = dx.shape[0], C = dx.dim(-1), N = dx.numel() / std::max<int64_t>(1, B * C);
  const T* DY = ptr<T>(dy);
  T* DX = ptr<T>(dx);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        DX[(b * N + n) * C + c] = static_cast<T>(static_cast<double>(DY[b * C + c]) / static_cast<double>(N));
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, scale_add, MF_REF_KERNEL(mf::ref::scale_add_fwd), MF_REF_KERNEL(mf::ref::scale_add_bwd));
MF_REGISTER(ref, mean_hw, MF_REF_KERNEL(mf::ref::mean_hw_fwd), MF_REF_KERNEL(mf::ref::mean_hw_bwd));
