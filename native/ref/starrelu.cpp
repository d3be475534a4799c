// ref/starrelu.cpp: StarReLU y = s * relu(x)^2 + b with learnable 1-element s and b; without s and b
// it is SquaredReLU (the MlpHead activation).
//   dx = dy * 2 s relu(x),  ds += sum dy * relu(x)^2,  db += sum dy
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void starrelu_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &s = a.in[1], &b = a.in[2];
  double sv = s.present() ? static_cast<double>(ptr<T>(s)[0]) : 1.0;
  double bv = b.present() ? static_cast<double>(ptr<T>(b)[0]) : 0.0;
  const T* X = ptr<T>(x);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < x.numel(); ++i) {
    double r = X[i] > 0 ? static_cast<double>(X[i]) : 0.0;
    Y[i] = static_cast<T>(sv * r * r + bv);
  }
}

template <typename T>
void starrelu_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &s = a.in[2];
  double sv = s.present() ? static_cast<double>(ptr<T>(s)[0]) : 1.0;
  const T *DY = ptr<T>(dy), *X = ptr<T>(x);
  T *DX = ptr<T>(a.out[0]), *DS = ptr<T>(a.out[1]), *DB = ptr<T>(a.out[2]);
  double ds = 0, db = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    double r = X[i] > 0 ? static_cast<double>(X[i]) : 0.0;
    if (DX) DX[i] = static_cast<T>(DY[i] * 2.0 * sv * r);
    ds += DY[i] * r * r;
    db += DY[i];
  }
  if (DS) DS[0] += static_cast<T>(ds);
  if (DB) DB[0] += static_cast<T>(db);
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, starrelu, MF_REF_KERNEL(mf::ref::starrelu_fwd), MF_REF_KERNEL(mf::ref::starrelu_bwd));
