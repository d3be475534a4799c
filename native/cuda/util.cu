// cuda/util.cu: utility ops used by autograd and the optimizers: axpy, scale, sumsq, lerp, fill,
// cast (any dtype to any dtype), permute (any rank, any element size), and the normal initialiser
// (numeric.h's counter RNG and the reference's Box-Muller in double; device log/cos may differ from the
// host's in the last bit of a double, which float results almost never show).
// The arithmetic is done in double exactly as the reference does (memory-bound ops, so it costs nothing),
// which makes these ops bit-identical to the reference. The half-precision conversions mirror
// core/numeric.h (round to nearest even; NaN -> quiet NaN with the same bits).
#include <cstring>

#include "../core/numeric.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

#define MF_GRID_STRIDE(i, n)                                                                       \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void axpy_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, double alpha) {  // [n]
  MF_GRID_STRIDE(i, n) y[i] = static_cast<float>(y[i] + alpha * x[i]);
}
__global__ void scale_kernel(float* __restrict__ y, int64_t n, double alpha) {  // [n]
  MF_GRID_STRIDE(i, n) y[i] = static_cast<float>(y[i] * alpha);
}
__global__ void lerp_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, double wt) {  // [n]
  MF_GRID_STRIDE(i, n) y[i] = static_cast<float>(y[i] + wt * (x[i] - y[i]));
}
__global__ void fill_kernel(float* __restrict__ y, int64_t n, float v) {  // [n]
  MF_GRID_STRIDE(i, n) y[i] = v;
}

template <typename T>
__global__ void sumsq_kernel(const T* __restrict__ x, int64_t n, double* __restrict__ part) {  // x [n], part [grid]
  __shared__ double red[32];
  double acc = 0;
  MF_GRID_STRIDE(i, n) acc += static_cast<double>(x[i]) * x[i];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// ---- cast ------------------------------------------------------------------------------------------
// Conversions: numeric.h's, compiled for the device too (the host code uses the same functions).
__device__ __forceinline__ double load_any(int d, const void* p, int64_t i) {
  switch (d) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return static_cast<const double*>(p)[i];
    case 2: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case 3: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case 4: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case 5: return static_cast<const int32_t*>(p)[i];
    case 6: return static_cast<const int16_t*>(p)[i];
    case 7: return static_cast<const int8_t*>(p)[i];
    case 8: return static_cast<const uint8_t*>(p)[i];
    default: return static_cast<const uint8_t*>(p)[i] != 0;
  }
}

__device__ __forceinline__ void store_any(int d, void* p, int64_t i, double v) {
  switch (d) {
    case 0: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case 1: static_cast<double*>(p)[i] = v; break;
    case 2: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    case 3: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case 4: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case 5: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case 6: static_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case 7: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case 8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    default: static_cast<uint8_t*>(p)[i] = v != 0; break;
  }
}

__global__ void cast_kernel(const void* __restrict__ x, int xd, void* __restrict__ y, int yd, int64_t n) {  // [n] each
  if (xd == 2 && yd == 0) {  // the checkpoint-loading hot paths, as in the reference
    MF_GRID_STRIDE(i, n) static_cast<float*>(y)[i] = f16_to_f32(static_cast<const uint16_t*>(x)[i]);
    return;
  }
  if (xd == 3 && yd == 0) {
    MF_GRID_STRIDE(i, n) static_cast<float*>(y)[i] = bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
    return;
  }
  MF_GRID_STRIDE(i, n) store_any(yd, y, i, load_any(xd, x, i));
}

// ---- permute ---------------------------------------------------------------------------------------
struct PermGeom {
  int nd;
  int64_t yshape[kMaxDims];   // output dims
  int64_t xstride[kMaxDims];  // stride in x (elements) of output dim i
};

template <typename E>
__global__ void permute_kernel(const E* __restrict__ x, E* __restrict__ y, int64_t n, PermGeom g) {  // [n] each
  MF_GRID_STRIDE(o, n) {
    int64_t rem = o, src = 0;
    for (int i = g.nd - 1; i >= 0; --i) {
      int64_t idx = rem % g.yshape[i];
      rem /= g.yshape[i];
      src += idx * g.xstride[i];
    }
    y[o] = x[src];
  }
}

// ---- normal ----------------------------------------------------------------------------------------
__device__ double normal01_device(uint64_t seed, uint64_t index, double limit) {  // as numeric.h normal01
  for (uint64_t round = 0;; ++round) {
    uint64_t base = (index * 2 + round * 0x9e3779b97f4a7c15ull) * 2;
    double u1 = (static_cast<double>(mix64(mix64(seed) ^ base) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = static_cast<double>(mix64(mix64(seed) ^ (base + 1)) >> 11) * (1.0 / 9007199254740992.0);
    double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    if (limit <= 0 || fabs(z) <= limit) return z;
  }
}

__global__ void normal_kernel(float* __restrict__ y, int64_t n, double mean, double sd, uint64_t seed,
                              double limit) {  // y [n]
  MF_GRID_STRIDE(i, n) y[i] = static_cast<float>(mean + sd * normal01_device(seed, static_cast<uint64_t>(i), limit));
}

// ---- host side -------------------------------------------------------------------------------------
void axpy_fwd(const OpArgs& a) {  // x, y [...]
  int64_t n = a.out[0].numel();
  if (!n) return;
  axpy_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.in[0].f(), a.out[0].f(), n, a.attr[0]);
  after_launch("axpy");
}

void scale_fwd(const OpArgs& a) {  // y [...]
  int64_t n = a.out[0].numel();
  if (!n) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.out[0].f(), n, a.attr[0]);
  after_launch("scale");
}

void lerp_fwd(const OpArgs& a) {  // x, y [...]
  int64_t n = a.out[0].numel();
  if (!n) return;
  lerp_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.in[0].f(), a.out[0].f(), n, a.attr[0]);
  after_launch("lerp");
}

void fill_fwd(const OpArgs& a) {  // y [...]
  int64_t n = a.out[0].numel();
  if (!n) return;
  fill_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.out[0].f(), n, static_cast<float>(a.attr[0]));
  after_launch("fill");
}

void sumsq_fwd(const OpArgs& a) {  // x [...] f32 or f64 -> s [1] f64
  const TensorView &x = a.in[0], &s = a.out[0];
  int64_t n = x.numel();
  unsigned grid = grid_for(n > 0 ? n : 1, 256);
  Scratch part(static_cast<size_t>(grid) * sizeof(double));
  if (x.dtype == DType::f64) sumsq_kernel<double><<<grid, 256, 0, stream()>>>(x.as<double>(), n, part.as<double>());
  else sumsq_kernel<float><<<grid, 256, 0, stream()>>>(x.f(), n, part.as<double>());
  after_launch("sumsq");
  sum_partials_f64(part.as<double>(), grid, 1, s.as<double>());
}

void cast_fwd(const OpArgs& a) {  // x [...] any dtype -> y, same element count, any dtype
  const TensorView &x = a.in[0], &y = a.out[0];
  int64_t n = x.numel();
  if (!n) return;
  if (x.dtype == y.dtype) {
    MF_CUDA_CHECK(cudaMemcpyAsync(y.data, x.data, static_cast<size_t>(n) * dtype_size(x.dtype),
                                  cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  cast_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(x.data, static_cast<int>(x.dtype), y.data,
                                                      static_cast<int>(y.dtype), n);
  after_launch("cast");
}

void permute_fwd(const OpArgs& a) {  // x [d0..dk] -> y [d_perm0..d_permk]
  const TensorView &x = a.in[0], &y = a.out[0];
  int64_t n = x.numel();
  if (!n) return;
  PermGeom g{};
  g.nd = x.ndim;
  int64_t xs[kMaxDims], s = 1;
  for (int i = x.ndim - 1; i >= 0; --i) {
    xs[i] = s;
    s *= x.shape[i];
  }
  for (int i = 0; i < x.ndim; ++i) {
    g.yshape[i] = y.shape[i];
    g.xstride[i] = xs[static_cast<int>(a.attr[i])];
  }
  unsigned grid = grid_for(n, 256);
  switch (dtype_size(x.dtype)) {
    case 1: permute_kernel<uint8_t><<<grid, 256, 0, stream()>>>(x.as<uint8_t>(), y.as<uint8_t>(), n, g); break;
    case 2: permute_kernel<uint16_t><<<grid, 256, 0, stream()>>>(x.as<uint16_t>(), y.as<uint16_t>(), n, g); break;
    case 4: permute_kernel<uint32_t><<<grid, 256, 0, stream()>>>(x.as<uint32_t>(), y.as<uint32_t>(), n, g); break;
    default: permute_kernel<uint64_t><<<grid, 256, 0, stream()>>>(x.as<uint64_t>(), y.as<uint64_t>(), n, g); break;
  }
  after_launch("permute");
}

void normal_fwd(const OpArgs& a) {  // -> y [...]; attrs: mean, std, seed, limit
  int64_t n = a.out[0].numel();
  if (!n) return;
  normal_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(a.out[0].f(), n, a.attr[0], a.attr[1],
                                                        static_cast<uint64_t>(a.attr[2]), a.attr[3]);
  after_launch("normal");
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, axpy, mf::cuda::axpy_fwd, nullptr);
MF_REGISTER(cuda, scale, mf::cuda::scale_fwd, nullptr);
MF_REGISTER(cuda, sumsq, mf::cuda::sumsq_fwd, nullptr);
MF_REGISTER(cuda, lerp, mf::cuda::lerp_fwd, nullptr);
MF_REGISTER(cuda, fill, mf::cuda::fill_fwd, nullptr);
MF_REGISTER(cuda, cast, mf::cuda::cast_fwd, nullptr);
MF_REGISTER(cuda, permute, mf::cuda::permute_fwd, nullptr);
MF_REGISTER(cuda, normal, mf::cuda::normal_fwd, nullptr);
