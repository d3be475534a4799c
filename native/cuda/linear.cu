// cuda/linear.cu: y = x w^T + b over the last dimension (PyTorch nn.Linear), forward and backward,
// through the row-major GEMMs of blas.h (cuBLAS, fp32 without TF32).
//   forward:  y[M, N] = x[M, K] w[N, K]^T (+ b broadcast: written first, then the GEMM adds with beta 1)
//   backward: dx[M, K] = dy[M, N] w[N, K];  dw[N, K] += dy^T x;  db[N] += sum_m dy[m, :]
// fused_linear (the plan compiler's fusion, forward only): y (+)= act(x w^T + b), act 0 none, 1 StarReLU
//   s * relu(.)^2 + sb (device scalars), 2 SquaredReLU; the GEMM writes x w^T into y (or a scratch when
//   an activation must be applied before adding into y), then one elementwise epilogue adds the bias and
//   applies the activation (no epilogue without an activation or accumulation: the bias goes in first).
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__global__ void broadcast_rows_kernel(const float* __restrict__ b,  // [N]
                                      int64_t M, int64_t N,
                                      float* __restrict__ y) {  // [M, N]
  const int64_t total = M * N, i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, N);
  for (int64_t i = i0; i < total; i += stride, col.advance()) y[i] = b[col.c];
}

// The activation of the epilogues: act 1 StarReLU sv * relu(v)^2 + bv, act 2 SquaredReLU (sv 1, bv 0);
// on one value or four (float4: the same arithmetic per element).
__device__ __forceinline__ float activate(float v, int act, float sv, float bv) {
  if (act == 0) return v;
  const float r = fmaxf(v, 0.0f);
  return fmaf(sv * r, r, bv);
}
__device__ __forceinline__ float4 activate(float4 v, int act, float sv, float bv) {
  return make_float4(activate(v.x, act, sv, bv), activate(v.y, act, sv, bv), activate(v.z, act, sv, bv),
                     activate(v.w, act, sv, bv));
}
__device__ __forceinline__ float plus(float a, float b) { return a + b; }
__device__ __forceinline__ float4 plus(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// y = act(t + b) or y += act(t + b) over [n / N, N] elements of T (float, or float4 when N % 4 == 0 and
// t, y, b are 16-byte aligned: n and N then count float4); t may be y itself (in place, accumulate 0).
template <typename T>
__global__ void act_epilogue_kernel(const T* t,                     // [n]
                                    T* y,                           // [n]
                                    const T* __restrict__ b,        // [N] or null
                                    const float* __restrict__ s,    // [1] or null (act 1)
                                    const float* __restrict__ sb,   // [1] or null (act 1)
                                    int64_t n, int64_t N, int act, int accumulate) {
  const float sv = s ? *s : 1.0f, bv = sb ? *sb : 0.0f;
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, N);
  for (int64_t i = i0; i < n; i += stride, col.advance()) {
    T v = t[i];
    if (b) v = plus(v, b[col.c]);
    v = activate(v, act, sv, bv);
    y[i] = accumulate ? plus(y[i], v) : v;
  }
}

// y[m, n] += b[n]
__global__ void add_rows_kernel(const float* __restrict__ b,  // [N]
                                int64_t M, int64_t N,
                                float* __restrict__ y) {  // [M, N]
  const int64_t total = M * N, i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, N);
  for (int64_t i = i0; i < total; i += stride, col.advance()) y[i] += b[col.c];
}

void fused_linear_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // x[M,K] w[N,K] b[N]? y[M,N]
  const TensorView &s = a.in[3], &sb = a.in[4];                                // s[1]? sb[1]? (act 1)
  int64_t M = x.rows(), K = w.shape[1], N = w.shape[0];
  int act = static_cast<int>(a.attr[0]);
  bool acc = a.attr[1] != 0;
  if (M * N == 0) return;
  const float* S = act == 1 ? s.f() : nullptr;
  const float* SB = act == 1 ? sb.f() : nullptr;
  if (acc && act == 0) {  // y += x w^T + b: bias into y, then the GEMM adds with beta 1
    if (b.present()) {
      add_rows_kernel<<<grid_for(M * N, 256), 256, 0, stream()>>>(b.f(), M, N, y.f());
      after_launch("fused_linear (bias)");
    }
    gemm("fused_linear", false, true, M, N, K, 1.0f, x.f(), K, w.f(), K, 1.0f, y.f(), N);
    return;
  }
  Scratch tmp(acc ? static_cast<size_t>(M * N) * sizeof(float) : 1);
  float* t = acc ? tmp.as<float>() : y.f();
  if (act == 0 && !acc) {  // y = x w^T + b: bias into y, then the GEMM adds with beta 1 (no epilogue pass)
    float beta = 0.0f;
    if (b.present()) {
      broadcast_rows_kernel<<<grid_for(M * N, 256), 256, 0, stream()>>>(b.f(), M, N, t);
      after_launch("fused_linear (bias)");
      beta = 1.0f;
    }
    gemm("fused_linear", false, true, M, N, K, 1.0f, x.f(), K, w.f(), K, beta, t, N);
    return;
  }
  // An epilogue pass runs anyway (activation, or adding into y): the bias joins it, so the GEMM writes
  // its product once (beta 0) instead of reading a broadcast bias back.
  gemm("fused_linear", false, true, M, N, K, 1.0f, x.f(), K, w.f(), K, 0.0f, t, N);
  const float* B = b.present() ? b.f() : nullptr;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (N % 4 == 0 && aligned(t) && aligned(y.f()) && (!B || aligned(B))) {
    act_epilogue_kernel<float4><<<grid_for(M * N / 4, 256), 256, 0, stream()>>>(
        reinterpret_cast<const float4*>(t), reinterpret_cast<float4*>(y.f()), reinterpret_cast<const float4*>(B), S, SB,
        M * N / 4, N / 4, act, acc ? 1 : 0);
  } else {
    act_epilogue_kernel<float><<<grid_for(M * N, 256), 256, 0, stream()>>>(t, y.f(), B, S, SB, M * N, N, act,
                                                                         acc ? 1 : 0);
  }
  after_launch("fused_linear (epilogue)");
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
MF_REGISTER(cuda, fused_linear, mf::cuda::fused_linear_fwd, nullptr);
