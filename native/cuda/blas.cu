// cuda/blas.cu: the cuBLAS glue, the only file that includes cuBLAS. One handle per process (kernels are
// serialised by core's compute lock), bound to the backend stream, in the default math mode with
// CUBLAS_COMPUTE_32F, so no TF32: the fp32 tolerances of the fixtures need true fp32 products.
//
// Row-major to cuBLAS's column-major: a row-major X[r, c] with row stride ld is the column-major X^T
// with the same ld, so C = op(A) op(B) (row-major) is C^T = op(B)^T op(A)^T (column-major): call cuBLAS
// with the operands swapped and M, N exchanged.
#include <cublas_v2.h>

#include <mutex>
#include <string>

#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

void check_blas(cublasStatus_t st, const char* op, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(st == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::range : ErrorKind::generic,
                std::string(op) + ": cuBLAS " + what + " failed: " + cublasGetStatusString(st));
}

cublasHandle_t handle(const char* op) {
  static std::mutex mu;
  static cublasHandle_t h = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  ensure_device();
  if (!h) {
    cublasHandle_t nh = nullptr;
    check_blas(cublasCreate(&nh), op, "cublasCreate");
    cublasStatus_t st = cublasSetStream(nh, stream());
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetMathMode(nh, CUBLAS_DEFAULT_MATH);  // no TF32
    if (st != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(nh);
      check_blas(st, op, "handle setup");
    }
    h = nh;
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
  cublasHandle_t h = handle(op);
  int m = to_int32(N, op, "a GEMM dimension"), n = to_int32(M, op, "a GEMM dimension");
  int k = to_int32(K, op, "a GEMM dimension");
  int la = to_int32(lda, op, "a leading dimension"), lb = to_int32(ldb, op, "a leading dimension");
  int lc = to_int32(ldc, op, "a leading dimension");
  cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (batch == 1) {
    check_blas(cublasGemmEx(h, opb, opa, m, n, k, &alpha, B, CUDA_R_32F, lb, A, CUDA_R_32F, la, &beta, C,
                            CUDA_R_32F, lc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               op, "cublasGemmEx");
  } else {
    int nb = to_int32(batch, op, "a GEMM batch count");
    check_blas(cublasGemmStridedBatchedEx(h, opb, opa, m, n, k, &alpha, B, CUDA_R_32F, lb, sb, A, CUDA_R_32F, la, sa,
                                          &beta, C, CUDA_R_32F, lc, sc, nb, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               op, "cublasGemmStridedBatchedEx");
  }
}

}  // namespace mf::cuda
