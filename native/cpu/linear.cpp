// cpu/linear.cpp: nn.Linear on oneDNN matmul. y[M,N] = x[M,K] w[N,K]^T + b.
//   dx = dy w (written), dw += dy^T x, db += column sums of dy.
#include <vector>

#include "cpu.h"
#include "gemm.h"

namespace mf::cpu {

void col_sum_accumulate(const float* dy, int64_t M, int64_t N, float* db) {
  // Sums in double (a float running sum over tens of thousands of rows loses ~sqrt(M) ulps).
  int nt = num_threads();
  int64_t chunks = std::min<int64_t>(nt, std::max<int64_t>(1, M / 64));
  std::vector<double> part(static_cast<size_t>(chunks * N), 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* acc = part.data() + c * N;
      for (int64_t m = M * c / chunks; m < M * (c + 1) / chunks; ++m) {
        const float* row = dy + m * N;
        int64_t n = 0;
        for (; n + 8 <= N; n += 8) {
          __m256d lo = _mm256_loadu_pd(acc + n), hi = _mm256_loadu_pd(acc + n + 4);
          add_widened(lo, hi, _mm256_loadu_ps(row + n));
          _mm256_storeu_pd(acc + n, lo);
          _mm256_storeu_pd(acc + n + 4, hi);
        }
        for (; n < N; ++n) acc[n] += row[n];
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    double sum = db[n];
    for (int64_t c = 0; c < chunks; ++c) sum += part[static_cast<size_t>(c * N + n)];
    db[n] = static_cast<float>(sum);
  }
}

namespace {

void linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];  // x[M,K] w[N,K] b[N]
  gemm_xwT(x.rows(), w.shape[0], w.shape[1], x.f(), w.f(), a.out[0].f(), b.present() ? b.f() : nullptr, false);
}

void linear_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];  // dy[M,N] x[M,K] w[N,K]
  int64_t M = x.rows(), N = w.shape[0], K = w.shape[1];
  if (a.out[0].present()) {  // dx[M,K] = dy[M,N] w[N,K]
    GemmShape s;
    s.M = M, s.N = K, s.K = N;
    s.a_m = N, s.a_k = 1;
    s.b_k = K, s.b_n = 1;
    s.c_m = K, s.c_n = 1;
    gemm(s, dy.f(), w.f(), a.out[0].f());
  }
  if (a.out[1].present()) {  // dw[N,K] += dy^T[N,M] x[M,K]
    GemmShape s;
    s.M = N, s.N = K, s.K = M;
    s.a_m = 1, s.a_k = N;
    s.b_k = K, s.b_n = 1;
    s.c_m = K, s.c_n = 1;
    s.accumulate = true;
    gemm(s, dy.f(), x.f(), a.out[1].f());
  }
  if (a.out[2].present()) col_sum_accumulate(dy.f(), M, N, a.out[2].f());
}

// y (+)= act(x w^T + b) in one oneDNN matmul: the activation and the residual accumulation are
// post-ops of the GEMM epilogue, so the hidden activation is written once.
void fused_linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2];
  GemmShape s;
  s.M = x.rows(), s.N = w.shape[0], s.K = w.shape[1];
  s.a_m = s.K, s.a_k = 1;
  s.b_k = 1, s.b_n = s.K;
  s.c_m = s.N, s.c_n = 1;
  s.bias = b.present();
  s.act = static_cast<int>(a.attr[0]);
  s.accumulate = a.attr[1] != 0;
  if (s.act == 1) {
    s.act_s = a.in[3].f()[0];
    s.act_b = a.in[4].f()[0];
  }
  gemm(s, x.f(), w.f(), a.out[0].f(), b.present() ? b.f() : nullptr);
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, linear, mf::cpu::linear_fwd, mf::cpu::linear_bwd);
MF_REGISTER(cpu, fused_linear, mf::cpu::fused_linear_fwd, nullptr);
