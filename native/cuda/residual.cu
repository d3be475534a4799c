// cuda/residual.cu: the residual step y = x * s + r (res_scale on the skip path) and the global mean
// over H and W that feeds the head, forward and backward.
//   scale_add:  dx = dy * s,  ds[c] += sum dy * x (deterministic column reduction),  dr = dy
//   mean_hw:    y[b, c] = mean_n x[b, n, c],  dx[b, n, c] = dy[b, c] / N
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__global__ void scale_add_kernel(const float* __restrict__ x,  // [n] = [rows, C]
                                 const float* __restrict__ s,  // [C] or null
                                 const float* __restrict__ r,  // [n] or null
                                 float* __restrict__ y,        // [n]
                                 int64_t n, int64_t C) {
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, C);
  for (int64_t i = i0; i < n; i += stride, col.advance()) {
    float v = x[i];
    if (s) v *= s[col.c];
    if (r) v += r[i];
    y[i] = v;
  }
}

// dx = dy * s (or dy), dr = dy.
__global__ void scale_add_bwd_kernel(const float* __restrict__ dy,  // [n]
                                     const float* __restrict__ s,   // [C] or null
                                     float* __restrict__ dx,        // [n] or null
                                     float* __restrict__ dr,        // [n] or null
                                     int64_t n, int64_t C) {
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, C);
  for (int64_t i = i0; i < n; i += stride, col.advance()) {
    float d = dy[i];
    if (dx) dx[i] = s ? d * s[col.c] : d;
    if (dr) dr[i] = d;
  }
}

// y[b, c] = mean over n of x[b, n, c]. grid (ceil(C / 32), B), block (32, 8).
__global__ void mean_hw_kernel(const float* __restrict__ x,  // [B, N, C]
                               int64_t N, int64_t C,
                               float* __restrict__ y) {  // [B, C]
  __shared__ double acc_s[8][33];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + tx, b = blockIdx.y;
  double acc = 0;
  if (c < C)
    for (int64_t n = ty; n < N; n += 8) acc += x[(b * N + n) * C + c];
  acc_s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < C) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += acc_s[i][tx];
    y[b * C + c] = static_cast<float>(s / static_cast<double>(N));
  }
}

__global__ void mean_hw_bwd_kernel(const float* __restrict__ dy,  // [B, C]
                                   int64_t B, int64_t N, int64_t C,
                                   float* __restrict__ dx) {  // [B, N, C]
  int64_t total = B * N * C;
  float inv = 1.0f / static_cast<float>(N);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c = e % C, b = e / (N * C);
    dx[e] = dy[b * C + c] * inv;
  }
}

void scale_add_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &s = a.in[1], &r = a.in[2], &y = a.out[0];  // x, r, y [..., C]; s [C]?
  int64_t n = x.numel();
  if (n == 0) return;
  scale_add_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(x.f(), s.present() ? s.f() : nullptr,
                                                           r.present() ? r.f() : nullptr, y.f(), n, x.dim(-1));
  after_launch("scale_add forward");
}

void scale_add_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &s = a.in[2];       // dy, x [..., C]; s [C]?
  const TensorView &dx = a.out[0], &ds = a.out[1], &dr = a.out[2];  // dx, dr like x?; ds [C]?
  int64_t n = x.numel(), C = x.dim(-1);
  if (n == 0) return;
  if (dx.present() || dr.present()) {
    scale_add_bwd_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(dy.f(), s.present() ? s.f() : nullptr,
                                                                 dx.present() ? dx.f() : nullptr,
                                                                 dr.present() ? dr.f() : nullptr, n, C);
    after_launch("scale_add backward");
  }
  if (ds.present()) colsum_add(dy.f(), x.f(), n / C, C, ds.f());
}

void mean_hw_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &y = a.out[0];  // x [B, ..., C], y [B, C]
  int64_t B = x.shape[0], C = x.dim(-1);
  if (B == 0 || C == 0) return;
  int64_t N = x.numel() / (B * C);
  if (B > 65535) throw Error(ErrorKind::range, "mean_hw: expected a batch below 65536 for x");
  mean_hw_kernel<<<dim3(static_cast<unsigned>(ceil_div(C, 32)), static_cast<unsigned>(B)), dim3(32, 8), 0, stream()>>>(
      x.f(), N, C, y.f());
  after_launch("mean_hw forward");
}

void mean_hw_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &dx = a.out[0];  // dy [B, C], dx [B, ..., C]
  int64_t B = dx.shape[0], C = dx.dim(-1);
  if (dx.numel() == 0) return;
  int64_t N = dx.numel() / (B * C);
  mean_hw_bwd_kernel<<<grid_for(dx.numel(), 256), 256, 0, stream()>>>(dy.f(), B, N, C, dx.f());
  after_launch("mean_hw backward");
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, scale_add, mf::cuda::scale_add_fwd, mf::cuda::scale_add_bwd);
MF_REGISTER(cuda, mean_hw, mf::cuda::mean_hw_fwd, mf::cuda::mean_hw_bwd);
