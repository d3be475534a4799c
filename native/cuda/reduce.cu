// cuda/reduce.cu: deterministic reductions shared by the kernels (see cuda_common.h). A kernel that
// reduces over many elements writes one partial per block ([P, n]); add_partials sums the P partials of
// each column in a fixed order (in double) and adds the result into a gradient. colsum_add is the
// common column reduction of parameter gradients (bias, per-channel scale): out[c] += sum_r a*b.
#include "cuda_common.h"

namespace mf::cuda {
namespace {

// One warp per column j: lanes stride over p, then a fixed-shape warp reduction.
__global__ void add_partials_kernel(const float* __restrict__ partial,  // [P, n]
                                    int64_t P, int64_t n,
                                    float* __restrict__ out) {  // [n], +=
  int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  int lane = threadIdx.x & 31;
  for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; j < n; j += warps) {
    double acc = 0;
    for (int64_t p = lane; p < P; p += 32) acc += partial[p * n + j];
    acc = warp_sum(acc);
    if (lane == 0) out[j] = static_cast<float>(static_cast<double>(out[j]) + acc);
  }
}

__global__ void sum_partials_f64_kernel(const double* __restrict__ partial,  // [P, n]
                                        int64_t P, int64_t n,
                                        double* __restrict__ out) {  // [n], =
  int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  int lane = threadIdx.x & 31;
  for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; j < n; j += warps) {
    double acc = 0;
    for (int64_t p = lane; p < P; p += 32) acc += partial[p * n + j];
    acc = warp_sum(acc);
    if (lane == 0) out[j] = acc;
  }
}

// Block (32 x 8): column c = blockIdx.x * 32 + tx, rows of chunk blockIdx.y strided by 8; the 8 row
// lanes are summed in shared memory and one partial per (chunk, column) is written.
__global__ void colsum_partial_kernel(const float* __restrict__ a,  // [R, C]
                                      const float* __restrict__ b,  // [R, C] or null
                                      int64_t R, int64_t C, int64_t rows_per_chunk,
                                      float* __restrict__ partial) {  // [P, C]
  __shared__ double acc_s[8][33];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  int64_t r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
  double acc = 0;
  if (c < C)
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      float v = a[r * C + c];
      acc += b ? static_cast<double>(v) * b[r * C + c] : static_cast<double>(v);
    }
  acc_s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < C) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += acc_s[i][tx];
    partial[static_cast<int64_t>(blockIdx.y) * C + c] = static_cast<float>(s);
  }
}

}  // namespace

void colsum_add(const float* a, const float* b, int64_t R, int64_t C, float* out) {
  if (C == 0 || R == 0) return;
  int64_t ctiles = ceil_div(C, 32);
  int64_t P = ceil_div(static_cast<int64_t>(sm_count()) * 4, ctiles);
  int64_t max_p = ceil_div(R, 64);  // at least 64 rows per chunk
  if (P > max_p) P = max_p;
  if (P > 65535) P = 65535;
  if (P < 1) P = 1;
  int64_t rows_per_chunk = ceil_div(R, P);
  P = ceil_div(R, rows_per_chunk);
  Scratch partial(static_cast<size_t>(P * C) * sizeof(float));
  colsum_partial_kernel<<<dim3(static_cast<unsigned>(ctiles), static_cast<unsigned>(P)), dim3(32, 8), 0, stream()>>>(
      a, b, R, C, rows_per_chunk, partial.as<float>());
  after_launch("colsum_add");
  add_partials(partial.as<float>(), P, C, out);
}

void add_partials(const float* partial, int64_t P, int64_t n, float* out) {
  if (n == 0) return;
  add_partials_kernel<<<grid_for(n * 32, 256), 256, 0, stream()>>>(partial, P, n, out);
  after_launch("add_partials");
}

void sum_partials_f64(const double* partial, int64_t P, int64_t n, double* out) {
  if (n == 0) return;
  sum_partials_f64_kernel<<<grid_for(n * 32, 256), 256, 0, stream()>>>(partial, P, n, out);
  after_launch("sum_partials_f64");
}

}  // namespace mf::cuda
