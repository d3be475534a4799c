// ref/loss.cpp: mean softmax cross-entropy with label smoothing (PyTorch F.cross_entropy semantics):
//   q = (1 - ls) * onehot(target) + ls / K   (hard targets)   or   q = target (soft targets, [B, K])
//   loss = mean_b sum_k -q[b, k] * log_softmax(z)[b, k]
//   dz = dloss / B * (softmax(z) - q)
#include <cmath>
#include <vector>

#include "ref.h"

namespace mf::ref {
namespace {

// Target distribution row b into q (length K).
template <typename T>
void target_row(const TensorView& t, int64_t b, int64_t K, double ls, std::vector<double>& q) {
  if (t.dtype == DType::i32 || t.dtype == DType::i64) {
    int64_t id = t.dtype == DType::i32 ? t.as<int32_t>()[b] : t.as<int64_t>()[b];
    for (int64_t k = 0; k < K; ++k) q[k] = ls / static_cast<double>(K);
    q[id] += 1.0 - ls;
  } else {
    for (int64_t k = 0; k < K; ++k) q[k] = ptr<T>(t)[b * K + k];
  }
}

template <typename T>
void log_softmax_row(const T* z, int64_t K, std::vector<double>& lp) {
  double mx = z[0];
  for (int64_t k = 1; k < K; ++k) mx = std::max(mx, static_cast<double>(z[k]));
  double sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += std::exp(z[k] - mx);
  double lse = mx + std::log(sum);
  for (int64_t k = 0; k < K; ++k) lp[k] = z[k] - lse;
}

template <typename T>
void cross_entropy_fwd(const OpArgs& a) {
  const TensorView& z = a.in[0];
  int64_t B = z.shape[0], K = z.shape[1];
  std::vector<double> q(K), lp(K);
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    target_row<T>(a.in[1], b, K, a.attr[0], q);
    log_softmax_row(ptr<T>(z) + b * K, K, lp);
    for (int64_t k = 0; k < K; ++k) total -= q[k] * lp[k];
  }
  ptr<T>(a.out[0])[0] = static_cast<T>(total / static_cast<double>(B));
}

template <typename T>
void cross_entropy_bwd(const OpArgs& a) {
  const TensorView& z = a.in[1];
  int64_t B = z.shape[0], K = z.shape[1];
  double g = static_cast<double>(ptr<T>(a.in[0])[0]) / static_cast<double>(B);
  std::vector<double> q(K), lp(K);
  T* DZ = ptr<T>(a.out[0]);
  for (int64_t b = 0; b < B; ++b) {
    target_row<T>(a.in[2], b, K, a.attr[0], q);
    log_softmax_row(ptr<T>(z) + b * K, K, lp);
    for (int64_t k = 0; k < K; ++k) DZ[b * K + k] = static_cast<T>(g * (std::exp(lp[k]) - q[k]));
  }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, cross_entropy, MF_REF_KERNEL(mf::ref::cross_entropy_fwd),
            MF_REF_KERNEL(mf::ref::cross_entropy_bwd));
