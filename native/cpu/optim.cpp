// cpu/optim.cpp: fused optimizer updates in float, parallel over chunks (the formulas of ref/optim.cpp:
// torch.optim.AdamW, timm Lamb, torch.optim.SGD). Bias corrections are computed once per call.
#include <cmath>
#include <vector>

#include "cpu.h"

namespace mf::cpu {
namespace {

constexpr int64_t kChunk = 8192;

void adamw_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], b2 = a.attr[2], eps = a.attr[3], wd = a.attr[4], t = a.attr[5];
  float gs = static_cast<float>(a.attr[6]);
  float step = static_cast<float>(lr / (1 - std::pow(b1, t)));
  float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1 - std::pow(b2, t)));
  float decay = static_cast<float>(1 - lr * wd), fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2);
  float feps = static_cast<float>(eps);
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *M = a.out[1].f(), *V = a.out[2].f();
  parallel_for(a.in[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float g = G[i] * gs;
      float m = fb1 * M[i] + (1 - fb1) * g;
      float v = fb2 * V[i] + (1 - fb2) * g * g;
      M[i] = m;
      V[i] = v;
      P[i] = P[i] * decay - step * m / (std::sqrt(v) * inv_sqrt_bc2 + feps);
    }
  });
}

void lamb_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], b2 = a.attr[2], eps = a.attr[3], wd = a.attr[4], t = a.attr[5];
  float gs = static_cast<float>(a.attr[6]);
  double max_trust = a.attr[7];
  float inv_bc1 = static_cast<float>(1.0 / (1 - std::pow(b1, t)));
  float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1 - std::pow(b2, t)));
  float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2), feps = static_cast<float>(eps), fwd = static_cast<float>(wd);
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *M = a.out[1].f(), *V = a.out[2].f();
  int64_t n = a.in[0].numel();
  auto update = [&](int64_t i) { return (M[i] * inv_bc1) / (std::sqrt(V[i]) * inv_sqrt_bc2 + feps) + fwd * P[i]; };
  int nt = num_threads();
  std::vector<double> pn(static_cast<size_t>(nt), 0.0), un(static_cast<size_t>(nt), 0.0);
  parallel_for(n, kChunk, [&](int64_t i0, int64_t i1) {
    double sp = 0, su = 0;
    for (int64_t i = i0; i < i1; ++i) {
      float g = G[i] * gs;
      M[i] = fb1 * M[i] + (1 - fb1) * g;
      V[i] = fb2 * V[i] + (1 - fb2) * g * g;
      float u = update(i);
      sp += static_cast<double>(P[i]) * P[i];
      su += static_cast<double>(u) * u;
    }
    pn[static_cast<size_t>(omp_get_thread_num())] += sp;
    un[static_cast<size_t>(omp_get_thread_num())] += su;
  });
  double trust = 1;
  if (wd != 0) {
    double p = 0, u = 0;
    for (int i = 0; i < nt; ++i) {
      p += pn[static_cast<size_t>(i)];
      u += un[static_cast<size_t>(i)];
    }
    p = std::sqrt(p);
    u = std::sqrt(u);
    trust = (p > 0 && u > 0) ? p / u : 1.0;
    if (max_trust > 0 && trust > max_trust) trust = max_trust;
  }
  float k = static_cast<float>(lr * trust);
  parallel_for(n, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) P[i] -= k * update(i);
  });
}

void sgd_fwd(const OpArgs& a) {
  float lr = static_cast<float>(a.attr[0]), mu = static_cast<float>(a.attr[1]), damp = static_cast<float>(a.attr[2]);
  float wd = static_cast<float>(a.attr[3]), gs = static_cast<float>(a.attr[5]);
  bool nesterov = a.attr[4] != 0, first = a.attr[6] != 0;
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *BUF = a.out[1].present() ? a.out[1].f() : nullptr;
  parallel_for(a.in[0].numel(), kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float g = G[i] * gs + wd * P[i];
      if (BUF && mu != 0) {
        float b = first ? g : mu * BUF[i] + (1 - damp) * g;
        BUF[i] = b;
        g = nesterov ? g + mu * b : b;
      }
      P[i] -= lr * g;
    }
  });
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, adamw, mf::cpu::adamw_fwd, nullptr);
MF_REGISTER(cpu, lamb, mf::cpu::lamb_fwd, nullptr);
MF_REGISTER(cpu, sgd, mf::cpu::sgd_fwd, nullptr);
