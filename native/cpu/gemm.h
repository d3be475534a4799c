// gemm.h: the one matrix-multiply entry point of the CPU backend: oneDNN's matmul primitive, or for
// float32 products of 128 rows or more the backend's own GEMM (sgemm.cpp).
//
//   C[b] (+)= A[b] * B[b] (+ bias)   for b in batch (up to two batch dimensions)
//
// Every operand is described by element strides, so transposed and strided views (a weight read as
// w^T, one head of a packed qkv tensor) need no copies. Primitives are created once per distinct
// description and cached.
//
// Precision (per calling thread, mf::gemm_precision() in core/backend.h): in bf16 mode A and B are
// rounded to bfloat16 (nearest even) and multiplied with float32 accumulation; bias, epilogue and C
// stay float32. Where oneDNN has a bf16 matmul for this CPU (AVX512-BF16, AMX) that kernel runs on bf16
// copies of A and B; elsewhere the float32 kernel runs on the rounded values, which gives the same
// products (a product of two bf16 values is exact in float32) and differs from native bf16 only in
// summation order. When B is a weight of the running plan (mf::plan_context()), its copy is kept with
// the weight's storage and remade only when the storage's version changes.
#pragma once
#include <cstdint>

#include "../core/backend.h"

namespace mf::cpu {

struct GemmShape {
  int64_t batch[2] = {1, 1};  // batch dims (1 = none)
  int64_t M = 0, N = 0, K = 0;
  // A is [batch..][M][K]: strides per batch dim, per row (m) and per column (k).
  int64_t a_b[2] = {0, 0}, a_m = 0, a_k = 1;
  // B is [batch..][K][N].
  int64_t b_b[2] = {0, 0}, b_k = 0, b_n = 1;
  // C is [batch..][M][N].
  int64_t c_b[2] = {0, 0}, c_m = 0, c_n = 1;
  bool accumulate = false;  // C += A B instead of C = A B
  bool bias = false;        // + bias[N] (broadcast over rows and batches)
  float alpha = 1.0f;       // C = alpha * A B (...)
  // Epilogue activation, applied after the bias and before the accumulation:
  // 0 none, 1 StarReLU act_s * relu(v)^2 + act_b, 2 SquaredReLU relu(v)^2.
  int act = 0;
  float act_s = 1.0f, act_b = 0.0f;
};

void gemm(const GemmShape& s, const float* A, const float* B, float* C, const float* bias = nullptr);

// The own float32 GEMM (sgemm.cpp): whether it takes this product (a CPU without AVX-512; no batch,
// A and C row-major, M >= 128 rows, N >= 96 columns (64 when A is large and streamed), B of at most
// 2^19 floats, enough rows or columns per thread, ...; with B packed in advance from 48 rows, 64
// columns and any size of B), and the product itself. gemm() calls it for float32 when it applies,
// with B packed in advance when B is a weight of the running plan (kept with the weight's storage).
bool own_gemm_applies(const GemmShape& s, bool packed_b = false);
// B in the panel layout own_gemm reads: its size in floats, and the packing (parallel).
size_t own_gemm_packed_floats(const GemmShape& s);
void own_gemm_pack(const GemmShape& s, const float* B, float* out);
// prepacked: own_gemm_pack's output for this B and shape, or null to pack per call.
void own_gemm(const GemmShape& s, const float* A, const float* B, float* C, const float* bias,
              const float* prepacked = nullptr);

// Which float32 GEMM runs (process-wide; for tests and benchmarks): automatic (the rules above),
// own (every product the own kernel can compute: no batch, A and C row-major, alpha 1, no activation
// with accumulation; any size), or onednn (always oneDNN).
enum class GemmPolicy { automatic = 0, own = 1, onednn = 2 };
void set_gemm_policy(GemmPolicy p);
GemmPolicy gemm_policy();

// How oneDNN reads a float32 plan weight (process-wide): blocked (reordered once per weight version
// into the layout the product's primitive prefers, kept with the weight like the own GEMM's panels),
// plain (as it is; oneDNN then repacks it in every call), or automatic (blocked on CPUs with AVX-512,
// where oneDNN runs every float32 product: 1.1-1.2x at batch 1, RESULTS.md log 32; plain elsewhere,
// where it measured 0.7-1.04x, log 30).
enum class WeightLayout { automatic = 0, blocked = 1, plain = 2 };
void set_onednn_weight_layout(WeightLayout l);
WeightLayout onednn_weight_layout();

// Whether oneDNN runs bf16 matmuls natively on this CPU (else bf16 mode emulates the rounding).
bool bf16_native();

// Plain row-major helpers.
// C[M,N] (+)= A[M,K] * W[N,K]^T (+ bias): the nn.Linear layout.
void gemm_xwT(int64_t M, int64_t N, int64_t K, const float* A, const float* W, float* C, const float* bias,
              bool accumulate);

}  // namespace mf::cpu
