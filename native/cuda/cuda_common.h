// cuda/cuda_common.h: shared pieces of the CUDA kernels: error checks (every CUDA call and launch is
// checked and throws mf::Error, never aborts), the backend stream, launch-size helpers, warp/block
// reductions, a scratch buffer from the caching allocator, and the deterministic two-stage reduction
// used for parameter gradients (per-block partials, then a fixed-order sum added into the gradient).
//
// Kernels are fp32 (the backend declines float64 through run_op). Sizes are int64_t on the host; a
// kernel indexes with int64_t wherever a tensor can exceed 2^31 elements.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../core/backend.h"
#include "../core/check.h"
#include "device.h"

namespace mf::cuda {

[[noreturn]] void throw_cuda(cudaError_t err, const char* what, const char* file, int line);
// Checks the launch that just happened (and, in sync mode, its execution). `what` names the op.
void after_launch(const char* what);
cudaStream_t stream();
int sm_count();
// The device's compute capability as major * 10 + minor (90 for Hopper).
int compute_capability();

// Grid size for a grid-stride loop over n items: enough blocks to fill the device, no more.
inline unsigned grid_for(int64_t n, int threads) {
  int64_t want = (n + threads - 1) / threads;
  int64_t cap = static_cast<int64_t>(sm_count()) * 32;
  if (want > cap) want = cap;
  return static_cast<unsigned>(want < 1 ? 1 : want);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A temporary device buffer (returned to the cache on destruction; the stream orders reuse).
class Scratch {
 public:
  explicit Scratch(size_t bytes) : bytes_(bytes ? bytes : 1), p_(device_alloc(bytes_)) {}
  ~Scratch() { device_free(p_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  size_t bytes_;
  void* p_;
};

// out[j] += sum_p partial[p * n + j] for j < n, summed in double in a fixed order (deterministic).
//   partial: [P, n] device, out: [n] device
void add_partials(const float* partial, int64_t P, int64_t n, float* out);
// out[c] += sum_r a[r, c] * (b ? b[r, c] : 1), deterministic.   a, b: [R, C] device; out: [C] device
void colsum_add(const float* a, const float* b, int64_t R, int64_t C, float* out);
// Same, into a double output that is overwritten: out[j] = sum_p partial[p * n + j].
void sum_partials_f64(const double* partial, int64_t P, int64_t n, double* out);

// Throws mf::Error(range) naming the op when a size does not fit the int the libraries take.
int to_int32(int64_t v, const char* op, const char* what);

}  // namespace mf::cuda

#define MF_CUDA_CHECK(expr)                                                     \
  do {                                                                          \
    cudaError_t mf_err_ = (expr);                                               \
    if (mf_err_ != cudaSuccess) ::mf::cuda::throw_cuda(mf_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#if defined(__CUDACC__)
namespace mf::cuda {

// The column i % n of a grid-stride loop's index i, kept by additions as i advances by `stride`: one
// 64-bit modulo per thread instead of one per element (a 64-bit modulo costs tens of instructions,
// more than a memory-bound element loop can hide).
struct ColumnOf {
  int64_t c, step, n;
  __device__ ColumnOf(int64_t i0, int64_t stride, int64_t n_)
      : c(n_ > 0 ? i0 % n_ : 0), step(n_ > 0 ? stride % n_ : 0), n(n_) {}
  __device__ __forceinline__ void advance() {
    c += step;
    if (c >= n) c -= n;
  }
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `smem` holds at least 32 values. Contains __syncthreads: call from all threads.
template <typename T>
__device__ T block_sum(T v, T* smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = lane < nw ? smem[lane] : T(0);
  return warp_sum(r);
}

__device__ __forceinline__ float block_max(float v, float* smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float r = lane < nw ? smem[lane] : -INFINITY;
  return warp_max(r);
}

}  // namespace mf::cuda
#endif
