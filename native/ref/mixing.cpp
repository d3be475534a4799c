// ref/mixing.cpp: RandomMixing, a fixed token-mixing matrix: y[b, m, c] = sum_n r[m, n] x[b, n, c].
//   dx[b, n, c] = sum_m r[m, n] dy[b, m, c],  dr[m, n] += sum_{b,c} dy[b, m, c] x[b, n, c]
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void random_mixing_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &r = a.in[1];  // x[B,N,C] r[N,N]
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  const T *X = ptr<T>(x), *R = ptr<T>(r);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t m = 0; m < N; ++m)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) acc += static_cast<double>(R[m * N + n]) * X[(b * N + n) * C + c];
        Y[(b * N + m) * C + c] = static_cast<T>(acc);
      }
}

template <typename T>
void random_mixing_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &r = a.in[2];
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *R = ptr<T>(r);
  T *DX = ptr<T>(a.out[0]), *DR = ptr<T>(a.out[1]);
  if (DX)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0;
          for (int64_t m = 0; m < N; ++m) acc += static_cast<double>(R[m * N + n]) * DY[(b * N + m) * C + c];
          DX[(b * N + n) * C + c] = static_cast<T>(acc);
        }
  if (DR)
    for (int64_t m = 0; m < N; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < C; ++c) acc += static_cast<double>(DY[(b * N + m) * C + c]) * X[(b * N + n) * C + c];
        DR[m * N + n] += static_cast<T>(acc);
      }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, random_mixing, MF_REF_KERNEL(mf::ref::random_mixing_fwd),
            MF_REF_KERNEL(mf::ref::random_mixing_bwd));
