// cuda/blas.h: the GEMMs the CUDA kernels need, in row-major terms. Implemented in cuda/blas.cu, the one
// file that includes cuBLAS (so every other .cu file compiles without the cuBLAS headers). fp32 with
// true fp32 arithmetic: TF32 is never used (CUBLAS_COMPUTE_32F; see shared fixtures' tolerances).
//
// gemm:  C[M, N] = alpha * op(A) op(B) + beta * C, all row-major with row strides lda, ldb, ldc;
//        op(A) is A[M, K] (ta = false) or the transpose of a stored A[K, M] (ta = true); likewise
//        op(B) is B[K, N] (tb = false) or the transpose of a stored B[N, K] (tb = true).
// gemm_batched: the same for `batch` problems at element strides sa, sb, sc (sa or sb may be 0).
// Sizes above 2^31 - 1 throw mf::Error naming `op`.
#pragma once
#include <cstdint>

namespace mf::cuda {

void gemm(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

void gemm_batched(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta,
                  float* C, int64_t ldc, int64_t sc, int64_t batch);

// bf16 precision with A already in bfloat16 (a producer wrote it so, e.g. conv2d's im2col):
// C[M, N] = A16[M, K] B^T + beta * C, B stored [N, K] (rounded to bfloat16 here), fp32 C.
void gemm_a16(const char* op, int64_t M, int64_t N, int64_t K, const uint16_t* A16, int64_t lda, const float* B,
              int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace mf::cuda
