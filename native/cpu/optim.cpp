// cpu/optim.cpp: fused optimizer updates in float, parallel over chunks (the formulas of ref/optim.cpp:
// torch.optim.AdamW, timm Lamb, torch.optim.SGD). Bias corrections are computed once per call.
#include <cmath>
#include <vector>

#include "cpu.h"

namespace mf::cpu {
namespace {

constexpr int64_t kChunk = 8192;

// The constants of one AdamW / LAMB update, in float as the scalar formulas use them.
struct AdamConsts {
  float gs, b1, c1, b2, c2, eps, inv_sqrt_bc2;
};

// m, v <- the moving averages of g = G * gs; returns m and writes v (8 lanes). Same operation order as
// the scalar tails: m = b1*M + (1-b1)*g, v = b2*V + ((1-b2)*g)*g.
inline __m256 adam_moments(const AdamConsts& k, const float* G, float* M, float* V, __m256& v) {
  __m256 g = _mm256_mul_ps(_mm256_loadu_ps(G), _mm256_set1_ps(k.gs));
  __m256 m = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(k.b1), _mm256_loadu_ps(M)), _mm256_mul_ps(_mm256_set1_ps(k.c1), g));
  v = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(k.b2), _mm256_loadu_ps(V)), _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(k.c2), g), g));
  _mm256_storeu_ps(M, m);
  _mm256_storeu_ps(V, v);
  return m;
}

inline float adam_moments(const AdamConsts& k, float G, float& M, float& V, float& v) {
  float g = G * k.gs;
  float m = k.b1 * M + k.c1 * g;
  v = k.b2 * V + k.c2 * g * g;
  M = m;
  V = v;
  return m;
}

// denominator sqrt(v) * inv_sqrt_bc2 + eps (vsqrtps is correctly rounded, as std::sqrt)
inline __m256 adam_denom(const AdamConsts& k, __m256 v) {
  return _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(v), _mm256_set1_ps(k.inv_sqrt_bc2)), _mm256_set1_ps(k.eps));
}

AdamConsts adam_consts(const OpArgs& a) {
  double b1 = a.attr[1], b2 = a.attr[2], t = a.attr[5];
  AdamConsts k{};
  k.gs = static_cast<float>(a.attr[6]);
  k.b1 = static_cast<float>(b1);
  k.c1 = 1 - k.b1;
  k.b2 = static_cast<float>(b2);
  k.c2 = 1 - k.b2;
  k.eps = static_cast<float>(a.attr[3]);
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1 - std::pow(b2, t)));
  return k;
}

void adamw_span(const AdamConsts& k, float decay, float step, const float* G, float* P, float* M, float* V, int64_t n) {
  int64_t i = 0;
  const __m256 vdecay = _mm256_set1_ps(decay), vstep = _mm256_set1_ps(step);
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    __m256 m = adam_moments(k, G + i, M + i, V + i, v);
    __m256 upd = _mm256_div_ps(_mm256_mul_ps(vstep, m), adam_denom(k, v));
    _mm256_storeu_ps(P + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(P + i), vdecay), upd));
  }
  for (; i < n; ++i) {
    float v;
    float m = adam_moments(k, G[i], M[i], V[i], v);
    P[i] = P[i] * decay - step * m / (std::sqrt(v) * k.inv_sqrt_bc2 + k.eps);
  }
}

void adamw_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], wd = a.attr[4], t = a.attr[5];
  AdamConsts k = adam_consts(a);
  float step = static_cast<float>(lr / (1 - std::pow(b1, t)));
  float decay = static_cast<float>(1 - lr * wd);
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *M = a.out[1].f(), *V = a.out[2].f();
  parallel_for(a.in[0].numel(), kChunk, [=, &k](int64_t i0, int64_t i1) {
    adamw_span(k, decay, step, G + i0, P + i0, M + i0, V + i0, i1 - i0);
  });
}

// LAMB's first pass: moments, and acc[0] += sum P^2, acc[1] += sum u^2 (double), u = the Adam direction
// m / bc1 / (sqrt(v) / sqrt(bc2) + eps) + wd * P.
void lamb_moments_span(const AdamConsts& k, float inv_bc1, float wd, const float* G, const float* P, float* M, float* V,
                       int64_t n, double* acc) {
  __m256d p0 = _mm256_setzero_pd(), p1 = p0, u0 = p0, u1 = p0;
  const __m256 vbc1 = _mm256_set1_ps(inv_bc1), vwd = _mm256_set1_ps(wd);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    __m256 m = adam_moments(k, G + i, M + i, V + i, v);
    __m256 p = _mm256_loadu_ps(P + i);
    __m256 u = _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(m, vbc1), adam_denom(k, v)), _mm256_mul_ps(vwd, p));
    add_products_widened(p0, p1, p, p);
    add_products_widened(u0, u1, u, u);
  }
  double sp = hsum_pd(_mm256_add_pd(p0, p1)), su = hsum_pd(_mm256_add_pd(u0, u1));
  for (; i < n; ++i) {
    float v;
    float m = adam_moments(k, G[i], M[i], V[i], v);
    float u = (m * inv_bc1) / (std::sqrt(v) * k.inv_sqrt_bc2 + k.eps) + wd * P[i];
    sp += static_cast<double>(P[i]) * P[i];
    su += static_cast<double>(u) * u;
  }
  acc[0] += sp;
  acc[1] += su;
}

// LAMB's second pass: P -= lr_trust * u (u recomputed from the stored moments).
void lamb_apply_span(const AdamConsts& k, float inv_bc1, float wd, float lr_trust, float* P, const float* M, const float* V,
                     int64_t n) {
  const __m256 vbc1 = _mm256_set1_ps(inv_bc1), vwd = _mm256_set1_ps(wd), vk = _mm256_set1_ps(lr_trust);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 p = _mm256_loadu_ps(P + i);
    __m256 u = _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(M + i), vbc1), adam_denom(k, _mm256_loadu_ps(V + i))),
                             _mm256_mul_ps(vwd, p));
    _mm256_storeu_ps(P + i, _mm256_sub_ps(p, _mm256_mul_ps(vk, u)));
  }
  for (; i < n; ++i) P[i] -= lr_trust * ((M[i] * inv_bc1) / (std::sqrt(V[i]) * k.inv_sqrt_bc2 + k.eps) + wd * P[i]);
}

void lamb_fwd(const OpArgs& a) {
  double lr = a.attr[0], b1 = a.attr[1], wd = a.attr[4], t = a.attr[5];
  double max_trust = a.attr[7];
  AdamConsts k = adam_consts(a);
  float inv_bc1 = static_cast<float>(1.0 / (1 - std::pow(b1, t)));
  float fwd = static_cast<float>(wd);
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *M = a.out[1].f(), *V = a.out[2].f();
  int64_t n = a.in[0].numel();
  int nt = num_threads();
  std::vector<double> part(static_cast<size_t>(2 * nt), 0.0);
  parallel_for(n, kChunk, [=, &k, &part](int64_t i0, int64_t i1) {
    lamb_moments_span(k, inv_bc1, fwd, G + i0, P + i0, M + i0, V + i0, i1 - i0, part.data() + 2 * omp_get_thread_num());
  });
  double trust = 1;
  if (wd != 0) {
    double p = 0, u = 0;
    for (int i = 0; i < nt; ++i) {
      p += part[static_cast<size_t>(2 * i)];
      u += part[static_cast<size_t>(2 * i + 1)];
    }
    p = std::sqrt(p);
    u = std::sqrt(u);
    trust = (p > 0 && u > 0) ? p / u : 1.0;
    if (max_trust > 0 && trust > max_trust) trust = max_trust;
  }
  float lr_trust = static_cast<float>(lr * trust);
  parallel_for(n, kChunk, [=, &k](int64_t i0, int64_t i1) { lamb_apply_span(k, inv_bc1, fwd, lr_trust, P + i0, M + i0, V + i0, i1 - i0); });
}

// Scalars by value: the loop vectorises.
void sgd_span(float lr, float mu, float damp, float wd, float gs, bool nesterov, bool first, const float* G, float* P, float* BUF,
              int64_t n) {
  if (!BUF || mu == 0) {
    for (int64_t i = 0; i < n; ++i) P[i] -= lr * (G[i] * gs + wd * P[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    float g = G[i] * gs + wd * P[i];
    float b = first ? g : mu * BUF[i] + (1 - damp) * g;
    BUF[i] = b;
    P[i] -= lr * (nesterov ? g + mu * b : b);
  }
}

void sgd_fwd(const OpArgs& a) {
  float lr = static_cast<float>(a.attr[0]), mu = static_cast<float>(a.attr[1]), damp = static_cast<float>(a.attr[2]);
  float wd = static_cast<float>(a.attr[3]), gs = static_cast<float>(a.attr[5]);
  bool nesterov = a.attr[4] != 0, first = a.attr[6] != 0;
  const float* G = a.in[0].f();
  float *P = a.out[0].f(), *BUF = a.out[1].present() ? a.out[1].f() : nullptr;
  parallel_for(a.in[0].numel(), kChunk, [=](int64_t i0, int64_t i1) {
    sgd_span(lr, mu, damp, wd, gs, nesterov, first, G + i0, P + i0, BUF ? BUF + i0 : nullptr, i1 - i0);
  });
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, adamw, mf::cpu::adamw_fwd, nullptr);
MF_REGISTER(cpu, lamb, mf::cpu::lamb_fwd, nullptr);
MF_REGISTER(cpu, sgd, mf::cpu::sgd_fwd, nullptr);
