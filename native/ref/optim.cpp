// ref/optim.cpp: optimizer updates, in place, following PyTorch / timm exactly.
//   adamw (torch.optim.AdamW): p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//          p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   lamb (timm.optim.Lamb): u = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) + wd p;
//          when wd != 0: u *= trust = (|p| > 0 and |u| > 0) ? |p| / |u| : 1, clipped at max_trust if > 0;
//          p -= lr u
//   sgd (torch.optim.SGD): g += wd p; buf = first ? g : mu buf + (1 - dampening) g;
//          g = nesterov ? g + mu buf : buf; p -= lr g
// g is grad * grad_scale (gradient accumulation and global clipping fold into grad_scale).
#include <cmath>

#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void adamw_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], b2 = a.attr[2], eps = a.attr[3], wd = a.attr[4], t = a.attr[5];
  double gs = a.attr[6];
  const T* G = ptr<T>(a.in[0]);
  T *P = ptr<T>(a.out[0]), *M = ptr<T>(a.out[1]), *V = ptr<T>(a.out[2]);
  double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  for (int64_t i = 0; i < a.in[0].numel(); ++i) {
    double g = G[i] * gs;
    double p = P[i] * (1 - lr * wd);
    double m = b1 * M[i] + (1 - b1) * g;
    double v = b2 * V[i] + (1 - b2) * g * g;
    p -= lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + eps);
    P[i] = static_cast<T>(p);
    M[i] = static_cast<T>(m);
    V[i] = static_cast<T>(v);
  }
}

template <typename T>
void lamb_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], b2 = a.attr[2], eps = a.attr[3], wd = a.attr[4], t = a.attr[5];
  double gs = a.attr[6], max_trust = a.attr[7];
  const T* G = ptr<T>(a.in[0]);
  T *P = ptr<T>(a.out[0]), *M = ptr<T>(a.out[1]), *V = ptr<T>(a.out[2]);
  int64_t n = a.in[0].numel();
  double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  auto update = [&](int64_t i) {
    return (M[i] / bc1) / (std::sqrt(static_cast<double>(V[i])) / std::sqrt(bc2) + eps) + wd * P[i];
  };
  double pn = 0, un = 0;
  for (int64_t i = 0; i < n; ++i) {
    double g = G[i] * gs;
    M[i] = static_cast<T>(b1 * M[i] + (1 - b1) * g);
    V[i] = static_cast<T>(b2 * V[i] + (1 - b2) * g * g);
    double u = update(i);
    pn += static_cast<double>(P[i]) * P[i];
    un += u * u;
  }
  double trust = 1;
  if (wd != 0) {
    pn = std::sqrt(pn);
    un = std::sqrt(un);
    trust = (pn > 0 && un > 0) ? pn / un : 1.0;
    if (max_trust > 0 && trust > max_trust) trust = max_trust;
  }
  for (int64_t i = 0; i < n; ++i) P[i] = static_cast<T>(P[i] - lr * trust * update(i));
}

template <typename T>
void sgd_fwd(const OpArgs& a) {
  double lr = a.attr[0], mu = a.attr[1], damp = a.attr[2], wd = a.attr[3];
  bool nesterov = a.attr[4] != 0, first = a.attr[6] != 0;
  double gs = a.attr[5];
  const T* G = ptr<T>(a.in[0]);
  T *P = ptr<T>(a.out[0]), *BUF = ptr<T>(a.out[1]);
  for (int64_t i = 0; i < a.in[0].numel(); ++i) {
    double g = G[i] * gs + wd * P[i];
    if (BUF && mu != 0) {
      double b = first ? g : mu * BUF[i] + (1 - damp) * g;
      BUF[i] = static_cast<T>(b);
      g = nesterov ? g + mu * b : b;
    }
    P[i] = static_cast<T>(P[i] - lr * g);
  }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, adamw, MF_REF_KERNEL(mf::ref::adamw_fwd), nullptr);
MF_REGISTER(ref, lamb, MF_REF_KERNEL(mf::ref::lamb_fwd), nullptr);
MF_REGISTER(ref, sgd, MF_REF_KERNEL(mf::ref::sgd_fwd), nullptr);
