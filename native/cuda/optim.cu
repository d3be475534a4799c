// cuda/optim.cu: optimizer updates, in place, following PyTorch / timm exactly (see ref/optim.cpp), with
// the arithmetic in double as the reference does.
//   adamw (torch.optim.AdamW): p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//          p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   lamb (timm.optim.Lamb): u = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) + wd p;
//          when wd != 0: u *= trust = (|p| > 0 and |u| > 0) ? |p| / |u| : 1, clipped at max_trust if > 0;
//          p -= lr u.  Three launches: update m, v and per-block partial |p|^2, |u|^2; fold them into the
//          trust ratio on the device; apply. No host round trip.
//   sgd (torch.optim.SGD): g += wd p; buf = first ? g : mu buf + (1 - dampening) g;
//          g = nesterov ? g + mu buf : buf; p -= lr g
// g is grad * grad_scale.
#include <cmath>

#include "cuda_common.h"

namespace mf::cuda {
namespace {

struct Hyper {
  double lr, b1, b2, eps, wd, gs, bc1, bc2, max_trust;
};

Hyper hyper_of(const OpArgs& a, bool lamb) {
  Hyper h{};
  h.lr = a.attr[0];
  h.b1 = a.attr[1];
  h.b2 = a.attr[2];
  h.eps = a.attr[3];
  h.wd = a.attr[4];
  double t = a.attr[5];
  h.gs = a.attr[6];
  h.max_trust = lamb ? a.attr[7] : 0.0;
  h.bc1 = 1 - std::pow(h.b1, t);
  h.bc2 = 1 - std::pow(h.b2, t);
  return h;
}

__global__ void adamw_kernel(const float* __restrict__ G, float* __restrict__ P, float* __restrict__ M,
                             float* __restrict__ V, int64_t n, Hyper h) {  // [n] each
  const double sbc2 = sqrt(h.bc2);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double g = G[i] * h.gs;
    double p = P[i] * (1 - h.lr * h.wd);
    double m = h.b1 * M[i] + (1 - h.b1) * g;
    double v = h.b2 * V[i] + (1 - h.b2) * g * g;
    p -= h.lr / h.bc1 * m / (sqrt(v) / sbc2 + h.eps);
    P[i] = static_cast<float>(p);
    M[i] = static_cast<float>(m);
    V[i] = static_cast<float>(v);
  }
}

__device__ __forceinline__ double lamb_update(float m, float v, float p, const Hyper& h, double sbc2) {
  return (m / h.bc1) / (sqrt(static_cast<double>(v)) / sbc2 + h.eps) + h.wd * p;
}

__global__ void lamb_moments_kernel(const float* __restrict__ G, const float* __restrict__ P, float* __restrict__ M,
                                    float* __restrict__ V, int64_t n, Hyper h,
                                    double* __restrict__ part) {  // [n] each; part [2, grid]
  __shared__ double red[32];
  const double sbc2 = sqrt(h.bc2);
  double pn = 0, un = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double g = G[i] * h.gs;
    float m = static_cast<float>(h.b1 * M[i] + (1 - h.b1) * g);
    float v = static_cast<float>(h.b2 * V[i] + (1 - h.b2) * g * g);
    M[i] = m;
    V[i] = v;
    double u = lamb_update(m, v, P[i], h, sbc2);
    pn += static_cast<double>(P[i]) * P[i];
    un += u * u;
  }
  pn = block_sum(pn, red);
  un = block_sum(un, red);
  if (threadIdx.x == 0) {
    part[blockIdx.x] = pn;
    part[gridDim.x + blockIdx.x] = un;
  }
}

__global__ void lamb_trust_kernel(const double* __restrict__ norms, Hyper h, double* __restrict__ trust) {  // [2] -> [1]
  double t = 1;
  if (h.wd != 0) {
    double pn = sqrt(norms[0]), un = sqrt(norms[1]);
    t = (pn > 0 && un > 0) ? pn / un : 1.0;
    if (h.max_trust > 0 && t > h.max_trust) t = h.max_trust;
  }
  trust[0] = t;
}

__global__ void lamb_apply_kernel(const float* __restrict__ M, const float* __restrict__ V, float* __restrict__ P,
                                  int64_t n, Hyper h, const double* __restrict__ trust) {  // [n] each
  const double sbc2 = sqrt(h.bc2), scale = h.lr * trust[0];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    P[i] = static_cast<float>(P[i] - scale * lamb_update(M[i], V[i], P[i], h, sbc2));
}

__global__ void sgd_kernel(const float* __restrict__ G, float* __restrict__ P, float* __restrict__ BUF, int64_t n,
                           double lr, double mu, double damp, double wd, double gs, int nesterov, int first) {  // [n]
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double g = G[i] * gs + wd * P[i];
    if (BUF && mu != 0) {
      double b = first ? g : mu * BUF[i] + (1 - damp) * g;
      BUF[i] = static_cast<float>(b);
      g = nesterov ? g + mu * b : b;
    }
    P[i] = static_cast<float>(P[i] - lr * g);
  }
}

void adamw_fwd(const OpArgs& a) {  // g -> p, m, v (all the same shape)
  int64_t n = a.in[0].numel();
  if (!n) return;
  adamw_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.in[0].f(), a.out[0].f(), a.out[1].f(), a.out[2].f(), n,
                                                       hyper_of(a, false));
  after_launch("adamw");
}

void lamb_fwd(const OpArgs& a) {  // g -> p, m, v (all the same shape)
  int64_t n = a.in[0].numel();
  if (!n) return;
  Hyper h = hyper_of(a, true);
  unsigned grid = grid_for(n, 256);
  Scratch part(static_cast<size_t>(2 * grid) * sizeof(double));
  Scratch norms(3 * sizeof(double));  // |p|^2, |u|^2, trust
  lamb_moments_kernel<<<grid, 256, 0, stream()>>>(a.in[0].f(), a.out[0].f(), a.out[1].f(), a.out[2].f(), n, h,
                                                  part.as<double>());
  after_launch("lamb");
  sum_partials_f64(part.as<double>(), grid, 1, norms.as<double>());
  sum_partials_f64(part.as<double>() + grid, grid, 1, norms.as<double>() + 1);
  lamb_trust_kernel<<<1, 1, 0, stream()>>>(norms.as<double>(), h, norms.as<double>() + 2);
  after_launch("lamb");
  lamb_apply_kernel<<<grid, 256, 0, stream()>>>(a.out[1].f(), a.out[2].f(), a.out[0].f(), n, h,
                                                norms.as<double>() + 2);
  after_launch("lamb");
}

void sgd_fwd(const OpArgs& a) {  // g -> p, buf? (the same shape)
  int64_t n = a.in[0].numel();
  if (!n) return;
  sgd_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.in[0].f(), a.out[0].f(),
                                                     a.out[1].present() ? a.out[1].f() : nullptr, n, a.attr[0],
                                                     a.attr[1], a.attr[2], a.attr[3], a.attr[5], a.attr[4] != 0,
                                                     a.attr[6] != 0);
  after_launch("sgd");
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, adamw, mf::cuda::adamw_fwd, nullptr);
MF_REGISTER(cuda, lamb, mf::cuda::lamb_fwd, nullptr);
MF_REGISTER(cuda, sgd, mf::cuda::sgd_fwd, nullptr);
