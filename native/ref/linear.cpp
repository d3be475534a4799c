// ref/linear.cpp: y = x w^T + b over the last dimension (PyTorch nn.Linear), forward and backward.
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // x[M,K] w[N,K] b[N] y[M,N]
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  const T *X = ptr<T>(x), *W = ptr<T>(w), *B = ptr<T>(b);
  T* Y = ptr<T>(y);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = B ? static_cast<double>(B[n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(X[m * K + k]) * W[n * K + k];
      Y[m * N + n] = static_cast<T>(acc);
    }
}

template <typename T>
void linear_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];  // dy[M,N] x[M,K] w[N,K]
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  const T *DY = ptr<T>(dy), *X = ptr<T>(x), *W = ptr<T>(w);
  if (T* DX = ptr<T>(a.out[0]))  // dx[M,K] = dy w
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) acc += static_cast<double>(DY[m * N + n]) * W[n * K + k];
        DX[m * K + k] = static_cast<T>(acc);
      }
  if (T* DW = ptr<T>(a.out[1]))  // dw[N,K] += dy^T x
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double acc = 0;
        for (int64_t m = 0; m < M; ++m) acc += static_cast<double>(DY[m * N + n]) * X[m * K + k];
        DW[n * K + k] += static_cast<T>(acc);
      }
  if (T* DB = ptr<T>(a.out[2]))  // db[N] += sum_m dy
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t m = 0; m < M; ++m) acc += DY[m * N + n];
      DB[n] += static_cast<T>(acc);
    }
}

// y (+)= act(x w^T + b): the plan compiler's fusion of linear with its activation and residual add.
template <typename T>
void fused_linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  int act = static_cast<int>(a.attr[0]);
  bool acc = a.attr[1] != 0;
  double s = act == 1 ? static_cast<double>(ptr<T>(a.in[3])[0]) : 1.0, sb = act == 1 ? static_cast<double>(ptr<T>(a.in[4])[0]) : 0.0;
  const T *X = ptr<T>(x), *W = ptr<T>(w), *B = ptr<T>(b);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double v = B ? static_cast<double>(B[n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) v += static_cast<double>(X[m * K + k]) * W[n * K + k];
      if (act != 0) {
        double r = v > 0 ? v : 0.0;
        v = s * r * r + sb;
      }
      Y[m * N + n] = static_cast<T>(acc ? Y[m * N + n] + v : v);
    }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, linear, MF_REF_KERNEL(mf::ref::linear_fwd), MF_REF_KERNEL(mf::ref::linear_bwd));
MF_REGISTER(ref, fused_linear, MF_REF_KERNEL(mf::ref::fused_linear_fwd), nullptr);
