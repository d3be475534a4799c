// cuda/blas.cu: the cuBLAS glue, the only file that includes cuBLAS. One handle per process (kernels are
// serialised by core's compute lock), bound to the backend stream, in the default math mode with
// CUBLAS_COMPUTE_32F, so no TF32: the fp32 tolerances of the fixtures need true fp32 products.
//
// Row-major to cuBLAS's column-major: a row-major X[r, c] with row stride ld is the column-major X^T
// with the same ld, so C = op(A) op(B) (row-major) is C^T = op(B)^T op(A)^T (column-major): call cuBLAS
// with the operands swapped and M, N exchanged.
//
// bf16 precision (core's plan context): both operands are rounded to bfloat16 into dense scratch copies
// (one per call; a broadcast operand, batch stride 0, once) and multiplied on the tensor cores with fp32
// accumulation and an fp32 C (cuBLAS's bf16 x bf16 -> fp32, CUBLAS_COMPUTE_32F): the cpu backend's bf16
// mode, the same rounding.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>

#include <mutex>
#include <optional>
#include <string>

#include "../core/numeric.h"
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

void check_blas(cublasStatus_t st, const char* op, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(st == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::range : ErrorKind::generic,
                std::string(op) + ": cuBLAS " + what + " failed: " + cublasGetStatusString(st));
}

// The handle, bound to the current stream (a graph capture records on its own stream). It has its own
// workspace, so cuBLAS allocates nothing while a graph is being captured.
cublasHandle_t handle(const char* op) {
  constexpr size_t kWorkspace = size_t(32) << 20;
  static std::mutex mu;
  static cublasHandle_t h = nullptr;
  static void* ws = nullptr;  // kept for the life of the process, like the handle
  static cudaStream_t bound = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  ensure_device();
  if (!h) {
    cublasHandle_t nh = nullptr;
    check_blas(cublasCreate(&nh), op, "cublasCreate");
    cublasStatus_t st = cublasSetMathMode(nh, CUBLAS_DEFAULT_MATH);  // no TF32
    if (st != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(nh);
      check_blas(st, op, "handle setup");
    }
    if (cudaMalloc(&ws, kWorkspace) != cudaSuccess) ws = nullptr;  // then cuBLAS manages its own
    cudaGetLastError();
    h = nh;
  }
  cudaStream_t s = stream();
  if (s != bound) {  // (setting the stream resets the workspace to cuBLAS's own: set it again)
    check_blas(cublasSetStream(h, s), op, "cublasSetStream");
    if (ws) check_blas(cublasSetWorkspace(h, ws, kWorkspace), op, "cublasSetWorkspace");
    bound = s;
  }
  return h;
}

// C = beta * C for the degenerate K = 0 product (cuBLAS needs K >= 1 for a well-defined call).
__global__ void scale_rows_kernel(float* __restrict__ C,  // [M, ldc] rows, N used columns
                                  int64_t M, int64_t N, int64_t ldc, float beta) {
  int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = i / N, c = i % N;
    C[r * ldc + c] = beta == 0.0f ? 0.0f : beta * C[r * ldc + c];
  }
}

// dst[i] = bf16(src[i]) over a contiguous operand, four at a time (src 16-byte aligned, n4 = n / 4).
__global__ void to_bf16_vec4_kernel(const float4* __restrict__ src, int64_t n4, ushort4* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 v = src[i];
    dst[i] = make_ushort4(f32_to_bf16(v.x), f32_to_bf16(v.y), f32_to_bf16(v.z), f32_to_bf16(v.w));
  }
}

// dst[i] = bf16(src[i]) for i in [from, n).
__global__ void to_bf16_flat_kernel(const float* __restrict__ src, int64_t from, int64_t n, uint16_t* __restrict__ dst) {
  for (int64_t i = from + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = f32_to_bf16(src[i]);
}

// dst[b, r, c] = bf16(src[b * sb + r * ld + c]) for a strided [nb, rows, cols] operand: one row per block
// iteration (its batch and row index computed once), the threads along the row.
__global__ void to_bf16_rows_kernel(const float* __restrict__ src, int64_t rows, int64_t cols, int64_t ld, int64_t sb,
                                    int64_t total_rows, uint16_t* __restrict__ dst) {  // total_rows = nb * rows
  for (int64_t row = blockIdx.x; row < total_rows; row += gridDim.x) {
    const float* s = src + (row / rows) * sb + (row % rows) * ld;
    uint16_t* d = dst + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d[c] = f32_to_bf16(s[c]);
  }
}

// An operand as cuBLAS takes it: data, element type, leading dimension and batch stride.
struct Operand {
  const void* p;
  cudaDataType_t type;
  int64_t ld, stride;
};

// The bf16 copy of a stored [rows, cols] operand (row stride ld, batch stride s; s = 0: shared by the batch).
Operand to_bf16(const float* X, int64_t rows, int64_t cols, int64_t ld, int64_t s, int64_t batch, Scratch& buf,
                const char* op) {
  const int64_t nb = s == 0 ? 1 : batch, total = nb * rows * cols;
  uint16_t* dst = buf.as<uint16_t>();
  if (ld == cols && (nb == 1 || s == rows * cols)) {  // contiguous (the usual case): no index arithmetic
    const bool vec = reinterpret_cast<uintptr_t>(X) % 16 == 0;  // the scratch copy is 256-byte aligned
    const int64_t n4 = vec ? total / 4 : 0;
    if (n4 > 0)
      to_bf16_vec4_kernel<<<grid_for(n4, 256), 256, 0, stream()>>>(reinterpret_cast<const float4*>(X), n4,
                                                                   reinterpret_cast<ushort4*>(dst));
    if (4 * n4 < total) to_bf16_flat_kernel<<<grid_for(total - 4 * n4, 256), 256, 0, stream()>>>(X, 4 * n4, total, dst);
  } else {
    const int64_t total_rows = nb * rows;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(total_rows, int64_t(sm_count()) * 32));
    to_bf16_rows_kernel<<<blocks, 128, 0, stream()>>>(X, rows, cols, ld, s, total_rows, dst);
  }
  after_launch(op);
  return Operand{buf.as<uint16_t>(), CUDA_R_16BF, cols, s == 0 ? 0 : rows * cols};
}

// The cuBLAS call for prepared operands (fp32 or bf16; C fp32), row-major as gemm_batched describes.
void run(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const Operand& a,
         const Operand& b, float beta, float* C, int64_t ldc, int64_t sc, int64_t batch) {
  cublasHandle_t h = handle(op);
  int m = to_int32(N, op, "a GEMM dimension"), n = to_int32(M, op, "a GEMM dimension");
  int k = to_int32(K, op, "a GEMM dimension");
  int la = to_int32(a.ld, op, "a leading dimension"), lb = to_int32(b.ld, op, "a leading dimension");
  int lc = to_int32(ldc, op, "a leading dimension");
  cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (batch == 1) {
    check_blas(cublasGemmEx(h, opb, opa, m, n, k, &alpha, b.p, b.type, lb, a.p, a.type, la, &beta, C,
                            CUDA_R_32F, lc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               op, "cublasGemmEx");
  } else {
    int nb = to_int32(batch, op, "a GEMM batch count");
    check_blas(cublasGemmStridedBatchedEx(h, opb, opa, m, n, k, &alpha, b.p, b.type, lb, b.stride, a.p, a.type, la,
                                          a.stride, &beta, C, CUDA_R_32F, lc, sc, nb, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
               op, "cublasGemmStridedBatchedEx");
  }
}

}  // namespace

void gemm(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_batched(op, ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void gemm_batched(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C,
                  int64_t ldc, int64_t sc, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    for (int64_t b = 0; b < batch; ++b) {
      scale_rows_kernel<<<grid_for(M * N, 256), 256, 0, stream()>>>(C + b * sc, M, N, ldc, beta);
      after_launch(op);
    }
    return;
  }
  Operand a{A, CUDA_R_32F, lda, sa}, b{B, CUDA_R_32F, ldb, sb};
  const bool bf16 = gemm_precision() == Precision::bf16;
  const bool share_a = sa == 0, share_b = sb == 0;
  // stored shapes: A is [M, K] or (ta) [K, M]; B is [K, N] or (tb) [N, K]
  const int64_t ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N;
  std::optional<Scratch> a16, b16;  // the bf16 copies, alive until the GEMM is queued (fp32: none)
  if (bf16) {
    a16.emplace(static_cast<size_t>((share_a ? 1 : batch) * ra * ca) * 2);
    b16.emplace(static_cast<size_t>((share_b ? 1 : batch) * rb * cb) * 2);
    a = to_bf16(A, ra, ca, lda, sa, batch, *a16, op);
    b = to_bf16(B, rb, cb, ldb, sb, batch, *b16, op);
  }
  run(op, ta, tb, M, N, K, alpha, a, b, beta, C, ldc, sc, batch);
}

void gemm_a16(const char* op, int64_t M, int64_t N, int64_t K, const uint16_t* A16, int64_t lda, const float* B,
              int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_rows_kernel<<<grid_for(M * N, 256), 256, 0, stream()>>>(C, M, N, ldc, beta);
    after_launch(op);
    return;
  }
  Scratch b16(static_cast<size_t>(N * K) * 2);
  Operand a{A16, CUDA_R_16BF, lda, 0}, b = to_bf16(B, N, K, ldb, 0, 1, b16, op);
  run(op, false, true, M, N, K, 1.0f, a, b, beta, C, ldc, 0, 1);
}

}  // namespace mf::cuda
