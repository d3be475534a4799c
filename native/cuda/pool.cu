// cuda/pool.cu: the PoolFormer token mixer, channels-last [B, H, W, C], forward and backward:
//   y = avgpool3x3(x, stride 1, padding 1, count_include_pad=False) - x
//   dx[p] = sum over the windows q that contain p of dy[q] / count(q), minus dy[p]
// count(q) is the number of in-image taps of q's window (4 at corners, 6 on edges, 9 inside). One
// thread per element; neighbouring threads are neighbouring channels, so all reads are coalesced.
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__device__ __forceinline__ int taps(int64_t i, int64_t n) { return (i > 0) + 1 + (i + 1 < n); }

__global__ void pool_kernel(const float* __restrict__ in,  // [B, H, W, C]: x (forward) or dy (backward)
                            float* __restrict__ out,       // [B, H, W, C]: y or dx
                            int64_t B, int64_t H, int64_t W, int64_t C, int backward) {
  int64_t total = B * H * W * C;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c = e % C, p = e / C;
    int64_t w = p % W, h = (p / W) % H, b = p / (W * H);
    float acc = 0.0f;
    for (int64_t i = h - 1; i <= h + 1; ++i) {
      if (i < 0 || i >= H) continue;
      for (int64_t j = w - 1; j <= w + 1; ++j) {
        if (j < 0 || j >= W) continue;
        float v = in[((b * H + i) * W + j) * C + c];
        acc += backward ? v / static_cast<float>(taps(i, H) * taps(j, W)) : v;
      }
    }
    if (!backward) acc /= static_cast<float>(taps(h, H) * taps(w, W));
    out[e] = acc - in[e];
  }
}

void run_pool(const OpArgs& a, int backward) {
  const TensorView &in = a.in[0], &out = a.out[0];  // [B, H, W, C] each
  if (in.numel() == 0) return;
  pool_kernel<<<grid_for(in.numel(), 256), 256, 0, stream()>>>(in.f(), out.f(), in.shape[0], in.shape[1], in.shape[2],
                                                               in.shape[3], backward);
  after_launch(backward ? "pool backward" : "pool forward");
}

void pool_fwd(const OpArgs& a) { run_pool(a, 0); }
void pool_bwd(const OpArgs& a) { run_pool(a, 1); }

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, pool, mf::cuda::pool_fwd, mf::cuda::pool_bwd);
