// cuda/linear.cu: y = x w^T + b over the last dimension (PyTorch nn.Linear), forward and backward,
// through the row-major GEMMs of blas.h (cuBLAS, fp32 without TF32).
//   forward:  y[M, N] = x[M, K] w[N, K]^T (+ b broadcast: written first, then the GEMM adds with beta 1)
//   backward: dx[M, K] = dy[M, N] w[N, K];  dw[N, K] += dy^T x;  db[N] += sum_m dy[m, :]
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__global__ void broadcast_rows_kernel(const float* __restrict__ b,  // [N]
                                      int64_t M, int64_t N,
                                      float* __restrict__ y) {  // [M, N]
  int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = b[i % N];
}

void linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // x[M,K] w[N,K] b[N]? y[M,N]
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  float beta = 0.0f;
  if (b.present() && M * N > 0) {
    broadcast_rows_kernel<<<grid_for(M * N, 256), 256, 0, stream()>>>(b.f(), M, N, y.f());
    after_launch("linear forward (bias)");
    beta = 1.0f;
  }
  gemm("linear", false, true, M, N, K, 1.0f, x.f(), K, w.f(), K, beta, y.f(), N);
}

void linear_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];  // dy[M,N] x[M,K] w[N,K]
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  if (a.out[0].present())  // dx[M,K] = dy w
    gemm("linear", false, false, M, K, N, 1.0f, dy.f(), N, w.f(), K, 0.0f, a.out[0].f(), K);
  if (a.out[1].present())  // dw[N,K] += dy^T x
    gemm("linear", true, false, N, K, M, 1.0f, dy.f(), N, x.f(), K, 1.0f, a.out[1].f(), K);
  if (a.out[2].present())  // db[N] += column sums of dy
    colsum_add(dy.f(), nullptr, M, N, a.out[2].f());
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, linear, mf::cuda::linear_fwd, mf::cuda::linear_bwd);
