// cuda/starrelu.cu: StarReLU y = s * relu(x)^2 + b with learnable 1-element s and b (device scalars);
// without s and b it is SquaredReLU (the MlpHead activation). Forward and backward.
//   dx = dy * 2 s relu(x),  ds += sum dy * relu(x)^2,  db += sum dy
// The two sums are deterministic: one double partial per block, then add_partials.
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__global__ void starrelu_fwd_kernel(const float* __restrict__ x,  // [n]
                                    const float* __restrict__ s,  // [1] or null
                                    const float* __restrict__ b,  // [1] or null
                                    float* __restrict__ y,        // [n]
                                    int64_t n) {
  const float sv = s ? *s : 1.0f, bv = b ? *b : 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float r = fmaxf(x[i], 0.0f);
    y[i] = fmaf(sv * r, r, bv);
  }
}

__global__ void starrelu_bwd_kernel(const float* __restrict__ dy,  // [n]
                                    const float* __restrict__ x,   // [n]
                                    const float* __restrict__ s,   // [1] or null
                                    float* __restrict__ dx,        // [n] or null
                                    float* __restrict__ part_s,    // [gridDim.x] or null
                                    float* __restrict__ part_b,    // [gridDim.x] or null
                                    int64_t n) {
  __shared__ double red[32];
  const float two_s = 2.0f * (s ? *s : 1.0f);
  double as = 0, ab = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float r = fmaxf(x[i], 0.0f), d = dy[i];
    if (dx) dx[i] = d * two_s * r;
    as += static_cast<double>(d) * r * r;
    ab += d;
  }
  if (part_s) {
    as = block_sum(as, red);
    if (threadIdx.x == 0) part_s[blockIdx.x] = static_cast<float>(as);
  }
  if (part_b) {
    ab = block_sum(ab, red);
    if (threadIdx.x == 0) part_b[blockIdx.x] = static_cast<float>(ab);
  }
}

void starrelu_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &s = a.in[1], &b = a.in[2], &y = a.out[0];  // x, y [...]; s, b [1]?
  int64_t n = x.numel();
  if (n == 0) return;
  starrelu_fwd_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(x.f(), s.present() ? s.f() : nullptr,
                                                              b.present() ? b.f() : nullptr, y.f(), n);
  after_launch("starrelu forward");
}

void starrelu_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &s = a.in[2];       // dy, x [...]; s [1]?
  const TensorView &dx = a.out[0], &ds = a.out[1], &db = a.out[2];  // dx like x?; ds, db [1]?
  int64_t n = x.numel();
  if (n == 0) return;
  unsigned grid = grid_for(n, 256);
  Scratch part(static_cast<size_t>(2 * grid) * sizeof(float));
  float* ps = ds.present() ? part.as<float>() : nullptr;
  float* pb = db.present() ? part.as<float>() + grid : nullptr;
  starrelu_bwd_kernel<<<grid, 256, 0, stream()>>>(dy.f(), x.f(), s.present() ? s.f() : nullptr,
                                                  dx.present() ? dx.f() : nullptr, ps, pb, n);
  after_launch("starrelu backward");
  if (ps) add_partials(ps, grid, 1, ds.f());
  if (pb) add_partials(pb, grid, 1, db.f());
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, starrelu, mf::cuda::starrelu_fwd, mf::cuda::starrelu_bwd);
