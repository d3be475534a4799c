// ref/attention.cpp: multi-head self-attention core on a packed qkv projection.
//   qkv[b, n, (which * A) + h * hd + d],  which = 0 (q), 1 (k), 2 (v);  A = heads * hd
//   S = scale * q k^T, P = softmax_rows(S), o[b, n, h * hd + d] = (P v)[n, d], lse = logsumexp_rows(S)
// Backward recomputes P = exp(S - lse):
//   dv = P^T do, dP = do v^T, D_n = sum_d do[n,d] o[n,d], dS = P (dP - D), dq = scale dS k, dk = scale dS^T q
#include <cmath>
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

struct AttnGeom {
  int64_t B, N, A, hd, heads;
  double scale;
  int64_t q(int64_t b, int64_t n, int64_t h, int64_t d, int which) const {
    return (b * N + n) * 3 * A + which * A + h * hd + d;
  }
};

AttnGeom geom(const TensorView& qkv, const OpArgs& a) {
  AttnGeom g{};
  g.B = qkv.shape[0];
  g.N = qkv.shape[1];
  g.A = qkv.shape[2] / 3;
  g.hd = static_cast<int64_t>(a.attr[0]);
  g.heads = g.A / g.hd;
  g.scale = a.attr[1];
  return g;
}

// S[n, m] for one (b, h), in double.
template <typename T>
void scores(const AttnGeom& g, const T* QKV, int64_t b, int64_t h, std::vector<double>& S) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t m = 0; m < g.N; ++m) {
      double acc = 0;
      for (int64_t d = 0; d < g.hd; ++d)
        acc += static_cast<double>(QKV[g.q(b, n, h, d, 0)]) * QKV[g.q(b, m, h, d, 1)];
      S[n * g.N + m] = acc * g.scale;
    }
}

template <typename T>
void attention_fwd(const OpArgs& a) {
  AttnGeom g = geom(a.in[0], a);
  const T* QKV = ptr<T>(a.in[0]);
  T *O = ptr<T>(a.out[0]), *LSE = ptr<T>(a.out[1]);
  std::vector<double> S(g.N * g.N);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t h = 0; h < g.heads; ++h) {
      scores(g, QKV, b, h, S);
      for (int64_t n = 0; n < g.N; ++n) {
        double* s = &S[n * g.N];
        double mx = s[0];
        for (int64_t m = 1; m < g.N; ++m) mx = std::max(mx, s[m]);
        double sum = 0;
        for (int64_t m = 0; m < g.N; ++m) sum += std::exp(s[m] - mx);
        for (int64_t m = 0; m < g.N; ++m) s[m] = std::exp(s[m] - mx) / sum;
        if (LSE) LSE[(b * g.heads + h) * g.N + n] = static_cast<T>(mx + std::log(sum));
        for (int64_t d = 0; d < g.hd; ++d) {
          double acc = 0;
          for (int64_t m = 0; m < g.N; ++m) acc += s[m] * QKV[g.q(b, m, h, d, 2)];
          O[(b * g.N + n) * g.A + h * g.hd + d] = static_cast<T>(acc);
        }
      }
    }
}

template <typename T>
void attention_bwd(const OpArgs& a) {
  const TensorView &dout = a.in[0], &qkv = a.in[1], &o = a.in[2], &lse = a.in[3];
  AttnGeom g = geom(qkv, a);
  const T *DO = ptr<T>(dout), *QKV = ptr<T>(qkv), *O = ptr<T>(o), *LSE = ptr<T>(lse);
  T* DQKV = ptr<T>(a.out[0]);
  std::vector<double> P(g.N * g.N), dS(g.N * g.N);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t h = 0; h < g.heads; ++h) {
      scores(g, QKV, b, h, P);
      for (int64_t n = 0; n < g.N; ++n) {
        double l = LSE[(b * g.heads + h) * g.N + n];
        double D = 0;
        for (int64_t d = 0; d < g.hd; ++d) {
          int64_t oi = (b * g.N + n) * g.A + h * g.hd + d;
          D += static_cast<double>(DO[oi]) * O[oi];
        }
        for (int64_t m = 0; m < g.N; ++m) {
          double p = std::exp(P[n * g.N + m] - l);
          P[n * g.N + m] = p;
          double dp = 0;
          for (int64_t d = 0; d < g.hd; ++d)
            dp += static_cast<double>(DO[(b * g.N + n) * g.A + h * g.hd + d]) * QKV[g.q(b, m, h, d, 2)];
          dS[n * g.N + m] = p * (dp - D);
        }
      }
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t d = 0; d < g.hd; ++d) {
          double dq = 0, dk = 0, dv = 0;
          for (int64_t m = 0; m < g.N; ++m) {
            dq += dS[n * g.N + m] * QKV[g.q(b, m, h, d, 1)];
            dk += dS[m * g.N + n] * QKV[g.q(b, m, h, d, 0)];
            dv += P[m * g.N + n] * DO[(b * g.N + m) * g.A + h * g.hd + d];
          }
          DQKV[g.q(b, n, h, d, 0)] = static_cast<T>(dq * g.scale);
          DQKV[g.q(b, n, h, d, 1)] = static_cast<T>(dk * g.scale);
          DQKV[g.q(b, n, h, d, 2)] = static_cast<T>(dv);
        }
    }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, attention, MF_REF_KERNEL(mf::ref::attention_fwd), MF_REF_KERNEL(mf::ref::attention_bwd));
