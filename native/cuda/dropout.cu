// cuda/dropout.cu: dropout and drop path (stochastic depth), forward and backward (the same masking).
// Element i belongs to group i / group; the group is kept when uniform01(seed, offset + group index) >= p
// and kept values are scaled by 1 / (1 - p), the product taken in double as the reference does. The RNG is
// core/numeric.h's own uniform01 (compiled for the device), so every backend draws bit-identical masks.
#include "../core/numeric.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

__global__ void dropout_kernel(const float* __restrict__ x,  // [n]
                               float* __restrict__ y,        // [n]
                               int64_t n, int64_t group, uint64_t seed, uint64_t offset, float p, double keep_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    bool keep = uniform01(seed, offset + static_cast<uint64_t>(i / group)) >= p;
    y[i] = keep ? static_cast<float>(static_cast<double>(x[i]) * keep_scale) : 0.0f;
  }
}

void dropout_apply(const OpArgs& a) {
  const TensorView &x = a.in[0], &y = a.out[0];  // x, y [...] (dy, dx in backward)
  double p = a.attr[0];
  int64_t group = static_cast<int64_t>(a.attr[1]);
  uint64_t seed = static_cast<uint64_t>(a.attr[2]), offset = static_cast<uint64_t>(a.attr[3]);
  int64_t n = x.numel();
  if (n == 0) return;
  dropout_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(x.f(), y.f(), n, group, seed, offset, static_cast<float>(p),
                                                         1.0 / (1.0 - p));
  after_launch("dropout");
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, dropout, mf::cuda::dropout_apply, mf::cuda::dropout_apply);
