// cuda/loss.cu: mean softmax cross-entropy with label smoothing (PyTorch F.cross_entropy semantics),
// forward and backward. One block per row of logits.
//   q = (1 - ls) * onehot(target) + ls / K   (class ids, i32 or i64)   or   q = target (soft, [B, K])
//   loss = mean_b sum_k -q[b, k] * log_softmax(z)[b, k];   dz = dloss / B * (softmax(z) - q)
// Class ids live on the device, so core cannot check them: the kernels record the first bad row in a
// device flag, which is read back after the launch (one small synchronous copy) and reported as the
// same RangeError the CPU backends give. The per-row losses are summed in fixed order (deterministic).
#include <string>

#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int kNoBad = 0x7f7f7f7f;  // the flag's initial value (a byte memset of 0x7f)

struct Target {
  const void* p;  // i32 [B], i64 [B] or f32 [B, K]
  int kind;       // 0: i32, 1: i64, 2: soft probabilities
};

__device__ __forceinline__ int64_t class_id(const Target& t, int64_t b) {
  return t.kind == 0 ? static_cast<const int32_t*>(t.p)[b] : static_cast<const int64_t*>(t.p)[b];
}

// Row statistics: max and log-sum-exp of z[b, :], by the whole block.
__device__ float row_lse(const float* __restrict__ z, int64_t K, float* red) {
  float mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, z[k]);
  mx = block_max(mx, red);
  float s = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) s += expf(z[k] - mx);
  s = block_sum(s, red);
  return mx + logf(s);
}

__global__ void ce_fwd_rows_kernel(const float* __restrict__ z,  // [B, K]
                                   Target t, int64_t K, float ls,
                                   double* __restrict__ row_loss,  // [B]
                                   int* __restrict__ bad) {        // [1]: first row with a bad id
  __shared__ float red[32];
  __shared__ double dred[32];
  int64_t b = blockIdx.x;
  const float* zr = z + b * K;
  float lse = row_lse(zr, K, red);
  double acc = 0;
  if (t.kind == 2) {
    const float* q = static_cast<const float*>(t.p) + b * K;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) acc -= static_cast<double>(q[k]) * (zr[k] - lse);
    acc = block_sum(acc, dred);
  } else {
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) acc += zr[k] - lse;  // sum of log-probabilities
    acc = block_sum(acc, dred);
    int64_t id = class_id(t, b);
    if (id < 0 || id >= K) {
      if (threadIdx.x == 0) atomicMin(bad, static_cast<int>(b));
      acc = 0;
    } else {
      acc = -(static_cast<double>(ls) / static_cast<double>(K)) * acc - (1.0 - ls) * (zr[id] - lse);
    }
  }
  if (threadIdx.x == 0) row_loss[b] = acc;
}

__global__ void ce_mean_kernel(const double* __restrict__ row_loss,  // [B]
                               int64_t B,
                               float* __restrict__ loss) {  // [1]
  __shared__ double red[32];
  double acc = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) acc += row_loss[b];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) loss[0] = static_cast<float>(acc / static_cast<double>(B));
}

__global__ void ce_bwd_kernel(const float* __restrict__ dloss,  // [1]
                              const float* __restrict__ z,      // [B, K]
                              Target t, int64_t B, int64_t K, float ls,
                              float* __restrict__ dz,           // [B, K]
                              int* __restrict__ bad) {          // [1]
  __shared__ float red[32];
  int64_t b = blockIdx.x;
  const float* zr = z + b * K;
  float lse = row_lse(zr, K, red);
  float g = dloss[0] / static_cast<float>(B);
  int64_t id = -1;
  if (t.kind != 2) {
    id = class_id(t, b);
    if ((id < 0 || id >= K) && threadIdx.x == 0) atomicMin(bad, static_cast<int>(b));
  }
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    float q = t.kind == 2 ? static_cast<const float*>(t.p)[b * K + k]
                          : ls / static_cast<float>(K) + (k == id ? 1.0f - ls : 0.0f);
    dz[b * K + k] = g * (expf(zr[k] - lse) - q);
  }
}

Target target_of(const TensorView& t) {
  return Target{t.data, t.dtype == DType::i32 ? 0 : t.dtype == DType::i64 ? 1 : 2};
}

// Reads the bad-row flag back and throws the RangeError core would have thrown.
void report_bad_ids(const int* bad_dev, const TensorView& t, int64_t K) {
  int bad = kNoBad;
  copy(&bad, 0, bad_dev, 1, sizeof(int));
  if (bad == kNoBad) return;
  int64_t v = 0;
  if (t.dtype == DType::i32) {
    int32_t v32 = 0;
    copy(&v32, 0, static_cast<const int32_t*>(t.data) + bad, 1, sizeof(int32_t));
    v = v32;
  } else {
    copy(&v, 0, static_cast<const int64_t*>(t.data) + bad, 1, sizeof(int64_t));
  }
  fail(ErrorKind::range, "cross_entropy", "class ids in [0, " + std::to_string(K) + ")", "target",
       std::to_string(v) + " at index " + std::to_string(bad));
}

void check_rows(int64_t B) {
  if (B >= kNoBad) throw Error(ErrorKind::range, "cross_entropy: expected fewer than 2^31 rows for logits");
}

void cross_entropy_fwd(const OpArgs& a) {
  const TensorView &z = a.in[0], &t = a.in[1], &loss = a.out[0];  // z[B,K], t[B] ids or [B,K] probs, loss[1]
  int64_t B = z.shape[0], K = z.shape[1];
  check_rows(B);
  float ls = static_cast<float>(a.attr[0]);
  Scratch rows(static_cast<size_t>(B) * sizeof(double));
  Scratch bad(sizeof(int));
  MF_CUDA_CHECK(cudaMemsetAsync(bad.as<int>(), 0x7f, sizeof(int), stream()));  // kNoBad
  ce_fwd_rows_kernel<<<static_cast<unsigned>(B), 256, 0, stream()>>>(z.f(), target_of(t), K, ls, rows.as<double>(),
                                                                      bad.as<int>());
  after_launch("cross_entropy forward");
  ce_mean_kernel<<<1, 256, 0, stream()>>>(rows.as<double>(), B, loss.f());
  after_launch("cross_entropy forward");
  if (t.dtype != DType::f32) report_bad_ids(bad.as<int>(), t, K);
}

void cross_entropy_bwd(const OpArgs& a) {
  const TensorView &dl = a.in[0], &z = a.in[1], &t = a.in[2], &dz = a.out[0];  // dl[1], z[B,K], dz[B,K]
  int64_t B = z.shape[0], K = z.shape[1];
  check_rows(B);
  float ls = static_cast<float>(a.attr[0]);
  Scratch bad(sizeof(int));
  MF_CUDA_CHECK(cudaMemsetAsync(bad.as<int>(), 0x7f, sizeof(int), stream()));
  ce_bwd_kernel<<<static_cast<unsigned>(B), 256, 0, stream()>>>(dl.f(), z.f(), target_of(t), B, K, ls, dz.f(),
                                                                 bad.as<int>());
  after_launch("cross_entropy backward");
  if (t.dtype != DType::f32) report_bad_ids(bad.as<int>(), t, K);
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, cross_entropy, mf::cuda::cross_entropy_fwd, mf::cuda::cross_entropy_bwd);
