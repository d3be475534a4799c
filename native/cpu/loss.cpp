// cpu/loss.cpp: mean softmax cross-entropy (definition in ref/loss.cpp and ops.def), rows in parallel
// with AVX2. Exponentials in float (exp256, ~2e-7 relative), every sum in double, so loss and gradient
// stay within ~1e-7 of the reference's double-precision rows.
//   loss_b = lse_b - sum_k q_bk z_bk   (sum_k q_bk = 1 for class ids; soft targets as given)
//   dz_bk  = dloss / B * (exp(z_bk - max_b) / sum_b - q_bk)
#include <cmath>
#include <vector>

#include "cpu.h"

namespace mf::cpu {
namespace {

struct RowStats {
  float max;
  double sum;  // sum_k exp(z_k - max)
};

RowStats row_stats(const float* z, int64_t K) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(z + k));
  float mx = hmax(vm);
  for (; k < K; ++k) mx = std::max(mx, z[k]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (k = 0; k + 8 <= K; k += 8) add_widened(s0, s1, exp256(_mm256_sub_ps(_mm256_loadu_ps(z + k), m)));
  double sum = hsum_pd(_mm256_add_pd(s0, s1));
  for (; k < K; ++k) sum += std::exp(static_cast<double>(z[k]) - mx);
  return {mx, sum};
}

// The target row: class id (or -1 for soft targets) and the soft row.
struct TargetRow {
  int64_t id;
  const float* q;
};

TargetRow target_row(const TensorView& t, int64_t b, int64_t K) {
  if (t.dtype == DType::i32) return {t.as<int32_t>()[b], nullptr};
  if (t.dtype == DType::i64) return {t.as<int64_t>()[b], nullptr};
  return {-1, t.f() + b * K};
}

// sum_k q_k z_k in double: (1 - ls) z[id] + ls / K sum_k z_k for a class id, the dot product otherwise.
double target_dot(const float* z, int64_t K, const TargetRow& t, double ls) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t k = 0;
  if (t.q) {
    for (; k + 8 <= K; k += 8) add_products_widened(s0, s1, _mm256_loadu_ps(t.q + k), _mm256_loadu_ps(z + k));
    double s = hsum_pd(_mm256_add_pd(s0, s1));
    for (; k < K; ++k) s += static_cast<double>(t.q[k]) * z[k];
    return s;
  }
  for (; k + 8 <= K; k += 8) add_widened(s0, s1, _mm256_loadu_ps(z + k));
  double s = hsum_pd(_mm256_add_pd(s0, s1));
  for (; k < K; ++k) s += z[k];
  return (1.0 - ls) * z[t.id] + ls / static_cast<double>(K) * s;
}

void cross_entropy_fwd(const OpArgs& a) {
  const TensorView& z = a.in[0];
  const int64_t B = z.shape[0], K = z.shape[1];
  const double ls = a.attr[0];
  std::vector<double> row(static_cast<size_t>(B));
  parallel_for(B, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* zr = z.f() + b * K;
      const TargetRow t = target_row(a.in[1], b, K);
      const RowStats st = row_stats(zr, K);
      double qsum = 1.0;  // soft targets are used as given, so they need not sum to one
      if (t.q) {
        qsum = 0;
        for (int64_t k = 0; k < K; ++k) qsum += t.q[k];
      }
      row[static_cast<size_t>(b)] = (st.max + std::log(st.sum)) * qsum - target_dot(zr, K, t, ls);
    }
  });
  double total = 0;
  for (double v : row) total += v;  // in row order: the same result for any thread count
  a.out[0].f()[0] = static_cast<float>(total / static_cast<double>(B));
}

void cross_entropy_bwd(const OpArgs& a) {
  const TensorView& z = a.in[1];
  const int64_t B = z.shape[0], K = z.shape[1];
  const double ls = a.attr[0];
  const float g = static_cast<float>(static_cast<double>(a.in[0].f()[0]) / static_cast<double>(B));
  const float smooth = static_cast<float>(ls / static_cast<double>(K));
  parallel_for(B, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* zr = z.f() + b * K;
      float* dz = a.out[0].f() + b * K;
      const TargetRow t = target_row(a.in[2], b, K);
      const RowStats st = row_stats(zr, K);
      const float inv = static_cast<float>(1.0 / st.sum);
      const __m256 m = _mm256_set1_ps(st.max), vi = _mm256_set1_ps(inv), vg = _mm256_set1_ps(g), vs = _mm256_set1_ps(smooth);
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) {
        __m256 p = _mm256_mul_ps(exp256(_mm256_sub_ps(_mm256_loadu_ps(zr + k), m)), vi);
        __m256 q = t.q ? _mm256_loadu_ps(t.q + k) : vs;
        _mm256_storeu_ps(dz + k, _mm256_mul_ps(vg, _mm256_sub_ps(p, q)));
      }
      for (; k < K; ++k) {
        float p = static_cast<float>(std::exp(static_cast<double>(zr[k]) - st.max) / st.sum);
        dz[k] = g * (p - (t.q ? t.q[k] : smooth));
      }
      if (!t.q) {  // the class itself: q = 1 - ls + ls / K
        const double p = std::exp(static_cast<double>(zr[t.id]) - st.max) / st.sum;
        dz[t.id] = static_cast<float>(static_cast<double>(g) * (p - (1.0 - ls + ls / static_cast<double>(K))));
      }
    }
  });
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, cross_entropy, mf::cpu::cross_entropy_fwd, mf::cpu::cross_entropy_bwd);
