// cpu/mixing.cpp: RandomMixing as GEMMs per image on oneDNN: y_b = R x_b (R [N, N], x_b [N, C]).
//   dx_b = R^T dy_b,  dR += sum_b dy_b x_b^T
#include "cpu.h"
#include "gemm.h"

namespace mf::cpu {
namespace {

void random_mixing_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &r = a.in[1];  // x[B,N,C] r[N,N]
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  GemmShape s;
  s.M = N, s.N = C, s.K = N;
  s.a_m = N, s.a_k = 1;
  s.b_k = C, s.b_n = 1;
  s.c_m = C, s.c_n = 1;
  for (int64_t b = 0; b < B; ++b) gemm(s, r.f(), x.f() + b * N * C, a.out[0].f() + b * N * C);
}

void random_mixing_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &r = a.in[2];
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  if (a.out[0].present()) {
    GemmShape s;
    s.M = N, s.N = C, s.K = N;
    s.a_m = 1, s.a_k = N;  // R^T
    s.b_k = C, s.b_n = 1;
    s.c_m = C, s.c_n = 1;
    for (int64_t b = 0; b < B; ++b) gemm(s, r.f(), dy.f() + b * N * C, a.out[0].f() + b * N * C);
  }
  if (a.out[1].present()) {
    GemmShape s;
    s.M = N, s.N = N, s.K = C;
    s.a_m = C, s.a_k = 1;  // dy_b [N, C]
    s.b_k = 1, s.b_n = C;  // x_b^T
    s.c_m = N, s.c_n = 1;
    s.accumulate = true;
    for (int64_t b = 0; b < B; ++b) gemm(s, dy.f() + b * N * C, x.f() + b * N * C, a.out[1].f());
  }
}

}  // namespace
}  // namespace mf::cpu

MF_REGISTER(cpu, random_mixing, mf::cpu::random_mixing_fwd, mf::cpu::random_mixing_bwd);
