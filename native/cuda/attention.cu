// cuda/attention.cu: fused multi-head self-attention on a packed qkv projection, forward and backward.
//   qkv[b, n, which * A + h * hd + d]  (which: 0 q, 1 k, 2 v; A = heads * hd)
//   S = scale q k^T,  P = softmax_rows(S),  o[b, n, h * hd + d] = (P v)[n, d],  lse[b, h, n] = logsumexp_rows(S)
// Backward (recomputes P = exp(S - lse), as the reference does):
//   D_n = sum_d do[n, d] o[n, d],  dP = do v^T,  dS = P (dP - D),  dq = scale dS k,  dk = scale dS^T q,  dv = P^T do
//
// head_dim 32 (every MetaFormer attention) has the fast kernels: one thread per query (forward, dq) or
// per key (dk, dv) holding its 32-wide rows in registers; the other side's rows stream through shared
// memory in chunks of 64, read as broadcasts. The forward is an online softmax (running max and sum in
// registers, rescaled once per 16 keys), so no N x N matrix ever exists in memory; scores use exp2 with
// q pre-multiplied by scale * log2(e). The backward is two kernels without atomics (deterministic): dq
// (which also writes D) and then dk/dv. Other head sizes use direct kernels (correct, not tuned).
//
// bf16 precision (core's plan context, forward only, head_dim 32): q, k and v are rounded to bfloat16 and
// each probability is rounded before it weights v; scores, the softmax and the accumulation stay fp32, as
// the cpu backend's bf16 mode does with its two matrix products. From compute capability 8.0 both products
// run on the tensor cores (attn32_fwd_tc_kernel: mma.sync m16n8k16, the probabilities never leave
// registers); older GPUs round the operands in the fp32 kernel. Other head sizes and the backward ignore
// the precision (fp32).
#include <cuda_bf16.h>

#include <cmath>

#include "../core/numeric.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int HD = 32;       // the fast path's head_dim
constexpr int CH = 64;       // keys (or queries) per shared-memory chunk
constexpr int SUB = 16;      // keys per online-softmax rescale
constexpr int MAX_T = 128;   // threads per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Geo {
  int N, A, heads;
  int64_t row;  // 3 * A, the qkv row stride
};

// v, or v rounded to the nearest bfloat16 (kBf16).
template <bool kBf16>
__device__ __forceinline__ float rnd(float v) {
  if constexpr (kBf16) return bf16_to_f32(f32_to_bf16(v));
  return v;
}
template <bool kBf16>
__device__ __forceinline__ float4 rnd4(float4 v) {
  return make_float4(rnd<kBf16>(v.x), rnd<kBf16>(v.y), rnd<kBf16>(v.z), rnd<kBf16>(v.w));
}

template <bool kBf16 = false>
__device__ __forceinline__ void load_row32(const float* __restrict__ p, float (&r)[HD], float mul) {
  const float4* p4 = reinterpret_cast<const float4*>(p);
#pragma unroll
  for (int i = 0; i < HD / 4; ++i) {
    float4 v = rnd4<kBf16>(p4[i]);
    r[4 * i] = v.x * mul;
    r[4 * i + 1] = v.y * mul;
    r[4 * i + 2] = v.z * mul;
    r[4 * i + 3] = v.w * mul;
  }
}

__device__ __forceinline__ void store_row32(float* __restrict__ p, const float (&r)[HD], float mul) {
  float4* p4 = reinterpret_cast<float4*>(p);
#pragma unroll
  for (int i = 0; i < HD / 4; ++i) p4[i] = make_float4(r[4 * i] * mul, r[4 * i + 1] * mul, r[4 * i + 2] * mul, r[4 * i + 3] * mul);
}

// Four partial sums: four independent FMA chains instead of one 32-long chain.
__device__ __forceinline__ float dot32(const float (&a)[HD], const float4* __restrict__ s) {
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma unroll
  for (int i = 0; i < HD / 4; ++i) {
    float4 v = s[i];
    a0 = fmaf(a[4 * i], v.x, a0);
    a1 = fmaf(a[4 * i + 1], v.y, a1);
    a2 = fmaf(a[4 * i + 2], v.z, a2);
    a3 = fmaf(a[4 * i + 3], v.w, a3);
  }
  return (a0 + a1) + (a2 + a3);
}

__device__ __forceinline__ void axpy32(float (&acc)[HD], float p, const float4* __restrict__ s) {
#pragma unroll
  for (int i = 0; i < HD / 4; ++i) {
    float4 v = s[i];
    acc[4 * i] = fmaf(p, v.x, acc[4 * i]);
    acc[4 * i + 1] = fmaf(p, v.y, acc[4 * i + 1]);
    acc[4 * i + 2] = fmaf(p, v.z, acc[4 * i + 2]);
    acc[4 * i + 3] = fmaf(p, v.w, acc[4 * i + 3]);
  }
}

// Stages rows [r0, r0 + CH) of two 32-wide column blocks of a [N, ld] matrix set into shared memory
// (zeros past N). off_a / off_b: column offsets of the two blocks. mul_a scales block a. kBf16: both
// blocks rounded to bfloat16 (before the scaling).
template <bool kBf16 = false>
__device__ __forceinline__ void stage_pair(const float* __restrict__ base, int64_t ld, int N, int r0, int64_t off_a,
                                           int64_t off_b, float mul_a, float4 (*sa)[HD / 4], float4 (*sb)[HD / 4]) {
  for (int idx = threadIdx.x; idx < CH * (HD / 4); idx += blockDim.x) {
    int r = idx / (HD / 4), part = idx % (HD / 4);
    int m = r0 + r;
    float4 va = make_float4(0.f, 0.f, 0.f, 0.f), vb = va;
    if (m < N) {
      const float* rowp = base + static_cast<int64_t>(m) * ld;
      va = rnd4<kBf16>(reinterpret_cast<const float4*>(rowp + off_a)[part]);
      vb = rnd4<kBf16>(reinterpret_cast<const float4*>(rowp + off_b)[part]);
      va.x *= mul_a;
      va.y *= mul_a;
      va.z *= mul_a;
      va.w *= mul_a;
    }
    sa[r][part] = va;
    sb[r][part] = vb;
  }
}

// ---------------------------------------------------------------------------------------------------
// head_dim 32 kernels. grid: x = query (or key) blocks, y = heads, z = batch.

template <bool kBf16>
__global__ void __launch_bounds__(MAX_T) attn32_fwd_kernel(const float* __restrict__ qkv,  // [B, N, 3A]
                                                           float* __restrict__ out,        // [B, N, A]
                                                           float* __restrict__ lse,        // [B, heads, N] or null
                                                           Geo g, float qmul) {            // qmul = scale * log2(e)
  __shared__ float4 sK[CH][HD / 4];
  __shared__ float4 sV[CH][HD / 4];
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const float* base = qkv + b * g.N * g.row;
  const bool active = n < g.N;

  float q[HD], acc[HD];
  if (active) load_row32<kBf16>(base + n * g.row + h * HD, q, qmul);
#pragma unroll
  for (int d = 0; d < HD; ++d) acc[d] = 0.0f;
  float mx = -INFINITY, l = 0.0f;

  for (int k0 = 0; k0 < g.N; k0 += CH) {
    __syncthreads();
    stage_pair<kBf16>(base, g.row, g.N, k0, g.A + h * HD, 2 * g.A + h * HD, 1.0f, sK, sV);
    __syncthreads();
    if (!active) continue;
    const int kn = min(CH, g.N - k0);
    for (int s0 = 0; s0 < kn; s0 += SUB) {
      float sc[SUB];
      float m_new = mx;
#pragma unroll
      for (int t = 0; t < SUB; ++t) {
        sc[t] = s0 + t < kn ? dot32(q, sK[s0 + t]) : -INFINITY;
        m_new = fmaxf(m_new, sc[t]);
      }
      const float corr = exp2f(mx - m_new);  // 0 on the first sub-block (mx = -inf)
      l *= corr;
#pragma unroll
      for (int d = 0; d < HD; ++d) acc[d] *= corr;
#pragma unroll
      for (int t = 0; t < SUB; ++t) {
        const float p = exp2f(sc[t] - m_new);  // 0 for the padding keys
        l += p;
        axpy32(acc, rnd<kBf16>(p), sV[s0 + t]);
      }
      mx = m_new;
    }
  }
  if (active) {
    store_row32(out + (b * g.N + n) * g.A + h * HD, acc, 1.0f / l);
    if (lse) lse[(b * g.heads + h) * g.N + n] = mx * kLn2 + logf(l);
  }
}

// ---------------------------------------------------------------------------------------------------
// bf16 forward on the tensor cores (head_dim 32, compute capability 8.0+). A warp owns 16 queries; the 4
// warps of a block share the keys staged in shared memory, up to 256 per round (so one round for the
// MetaFormer token counts 49 and 196), converted to bf16 once. Per chunk of 64 staged keys: S = q k^T
// (2 k-steps x 8 tiles of 8 keys, m16n8k16 with bf16 operands and fp32 accumulators), the online softmax
// on S's accumulator fragments, then O += P v (4 k-steps of 16 keys x 4 tiles of 8 head-dim columns);
// the tiles past the last key are skipped (a warp-uniform test), so 196 keys cost 200, not 256. An
// accumulator fragment of two neighbouring key tiles is exactly the A fragment of the next product, so P
// goes from registers to the tensor cores as it is. Fragment layout (lane = 4 * gr + tig): A regs 0-3
// hold (row gr, k 2tig..+1), (gr + 8, 2tig..), (gr, 8 + 2tig..), (gr + 8, 8 + 2tig..); B regs 0-1 hold
// (k 2tig..+1, col gr), (k 8 + 2tig.., gr); C holds (gr, 2tig), (gr, 2tig + 1), (gr + 8, 2tig), (gr + 8,
// 2tig + 1). k is staged [key][d] and v transposed [d][key], bf16. Bank arithmetic: k rows of 20 words
// and v^T rows of 132 words (4 mod 8) make a warp's fragment loads hit 32 different banks; v^T is
// written as words holding two neighbouring keys, a warp covering 16 key pairs x 2 groups of 4 head-dim
// columns, which also hits 32 banks (and reads whole 32-byte segments of the qkv rows).
constexpr int TC_WARPS = 4;
constexpr int TC_THREADS = 32 * TC_WARPS;
constexpr int TC_ROWS = 16 * TC_WARPS;  // queries per block
constexpr int TC_KEYS = 64;             // keys per compute chunk
constexpr int TC_STAGE = 4 * TC_KEYS;   // keys staged per round
constexpr int TC_KROW = HD + 8;         // bf16 per staged k row
constexpr int TC_VROW = TC_STAGE + 8;   // bf16 per staged v^T row
constexpr int TC_VW = TC_VROW / 2;      // the same in 32-bit words

// Two floats rounded to bfloat16 (to nearest even, as f32_to_bf16), lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// c += a b on one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // attention_fwd launches this kernel from compute capability 8.0 only
#endif
}

__global__ void __launch_bounds__(TC_THREADS) attn32_fwd_tc_kernel(const float* __restrict__ qkv,  // [B, N, 3A]
                                                                   float* __restrict__ out,        // [B, N, A]
                                                                   float* __restrict__ lse,  // [B, heads, N] or null
                                                                   Geo g, float qmul) {  // scale * log2(e)
  __shared__ __align__(16) uint16_t sK[TC_STAGE][TC_KROW];
  __shared__ __align__(16) uint16_t sVt[HD][TC_VROW];
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int gr = lane >> 2, tig = lane & 3;
  const int r0 = static_cast<int>(blockIdx.x) * TC_ROWS + warp * 16;  // the warp's first query
  const int ra = r0 + gr, rb = ra + 8;                                  // this thread's two rows
  const float* base = qkv + b * g.N * g.row;
  const bool active = r0 < g.N;  // the same for the whole warp
  const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  uint32_t qa[2][4];  // q as A fragments, bf16 (the scale goes on the fp32 scores)
#pragma unroll
  for (int kk = 0; kk < 2; ++kk)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = h * HD + kk * 16 + half * 8 + 2 * tig;
      const float2 z = make_float2(0.0f, 0.0f);
      const float2 va = ra < g.N ? *reinterpret_cast<const float2*>(base + ra * g.row + d) : z;
      const float2 vb = rb < g.N ? *reinterpret_cast<const float2*>(base + rb * g.row + d) : z;
      qa[kk][2 * half] = pack_bf16(va.x, va.y);
      qa[kk][2 * half + 1] = pack_bf16(vb.x, vb.y);
    }
  float o[4][4];
#pragma unroll
  for (int jd = 0; jd < 4; ++jd) o[jd][0] = o[jd][1] = o[jd][2] = o[jd][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows ra, rb: running max (log2 units), sum

  for (int s0 = 0; s0 < g.N; s0 += TC_STAGE) {
    const int left = (g.N - s0 + TC_KEYS - 1) / TC_KEYS * TC_KEYS;
    const int staged = left < TC_STAGE ? left : TC_STAGE;  // a multiple of 64; zeros past N
    __syncthreads();  // the previous round is consumed
    // k: a warp copies 4 keys x 8 float4 (128 contiguous bytes of each row)
#pragma unroll 4
    for (int idx = threadIdx.x; idx < staged * (HD / 4); idx += TC_THREADS) {
      const int key = idx >> 3, part = idx & 7, m = s0 + key;
      const float4 kv =
          m < g.N ? *reinterpret_cast<const float4*>(base + static_cast<int64_t>(m) * g.row + g.A + h * HD + 4 * part)
                  : zero4;
      *reinterpret_cast<uint2*>(&sK[key][4 * part]) = make_uint2(pack_bf16(kv.x, kv.y), pack_bf16(kv.z, kv.w));
    }
    // v^T: a thread packs 4 head-dim columns of keys 2 kp and 2 kp + 1 into four words
    const int pair_groups = staged / 32;  // groups of 16 key pairs
#pragma unroll 2
    for (int idx = threadIdx.x; idx < staged * (HD / 8); idx += TC_THREADS) {
      const int rest = idx >> 5;
      const int kp = (rest % pair_groups) * 16 + (idx & 15);
      const int part = (rest / pair_groups) * 2 + ((idx >> 4) & 1);
      const int m = s0 + 2 * kp;
      const float* vp = base + static_cast<int64_t>(m) * g.row + 2 * g.A + h * HD + 4 * part;
      const float4 va = m < g.N ? *reinterpret_cast<const float4*>(vp) : zero4;
      const float4 vb = m + 1 < g.N ? *reinterpret_cast<const float4*>(vp + g.row) : zero4;
      uint32_t* col = reinterpret_cast<uint32_t*>(&sVt[4 * part][2 * kp]);
      col[0] = pack_bf16(va.x, vb.x);
      col[TC_VW] = pack_bf16(va.y, vb.y);
      col[2 * TC_VW] = pack_bf16(va.z, vb.z);
      col[3 * TC_VW] = pack_bf16(va.w, vb.w);
    }
    __syncthreads();
    if (!active) continue;

    for (int c0 = 0; c0 < staged; c0 += TC_KEYS) {
      const int kn = g.N - s0 - c0;  // keys of this chunk that exist (at least 1; may exceed TC_KEYS)
      float s[8][4];                 // scores of 8 tiles of 8 keys
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        if (8 * j < kn) {
          const uint16_t* kr = &sK[c0 + 8 * j + gr][2 * tig];
#pragma unroll
          for (int kk = 0; kk < 2; ++kk) mma_bf16(s[j], qa[kk], ld32(kr + 16 * kk), ld32(kr + 16 * kk + 8));
        }
      }
      float mx0 = m0, mx1 = m1;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool ok = 8 * j + 2 * tig + e < kn;
          s[j][e] = ok ? s[j][e] * qmul : -INFINITY;
          s[j][2 + e] = ok ? s[j][2 + e] * qmul : -INFINITY;
          mx0 = fmaxf(mx0, s[j][e]);
          mx1 = fmaxf(mx1, s[j][2 + e]);
        }
      // a row's 4 threads (same gr) hold its 64 scores between them
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float c0s = exp2f(m0 - mx0), c1s = exp2f(m1 - mx1);  // 0 on the first chunk (m = -inf)
      m0 = mx0;
      m1 = mx1;
      l0 *= c0s;
      l1 *= c1s;
#pragma unroll
      for (int jd = 0; jd < 4; ++jd) {
        o[jd][0] *= c0s;
        o[jd][1] *= c0s;
        o[jd][2] *= c1s;
        o[jd][3] *= c1s;
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {  // keys 16 kk .. 16 kk + 15: score tiles 2 kk and 2 kk + 1
        if (16 * kk >= kn) break;        // the rest of the chunk is past N (probabilities 0)
        float p[2][4];
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          p[t][0] = exp2f(s[2 * kk + t][0] - m0);  // 0 for the keys past N
          p[t][1] = exp2f(s[2 * kk + t][1] - m0);
          p[t][2] = exp2f(s[2 * kk + t][2] - m1);
          p[t][3] = exp2f(s[2 * kk + t][3] - m1);
        }
        l0 += (p[0][0] + p[0][1]) + (p[1][0] + p[1][1]);
        l1 += (p[0][2] + p[0][3]) + (p[1][2] + p[1][3]);
        const uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]),
                                pack_bf16(p[1][0], p[1][1]), pack_bf16(p[1][2], p[1][3])};
#pragma unroll
        for (int jd = 0; jd < 4; ++jd) {
          const uint16_t* vr = &sVt[8 * jd + gr][c0 + 16 * kk + 2 * tig];
          mma_bf16(o[jd], pa, ld32(vr), ld32(vr + 8));
        }
      }
    }
  }
  if (!active) return;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
  for (int jd = 0; jd < 4; ++jd) {
    const int d = h * HD + 8 * jd + 2 * tig;
    if (ra < g.N) *reinterpret_cast<float2*>(out + (b * g.N + ra) * g.A + d) = make_float2(o[jd][0] * i0, o[jd][1] * i0);
    if (rb < g.N) *reinterpret_cast<float2*>(out + (b * g.N + rb) * g.A + d) = make_float2(o[jd][2] * i1, o[jd][3] * i1);
  }
  if (lse && tig == 0) {
    if (ra < g.N) lse[(b * g.heads + h) * g.N + ra] = m0 * kLn2 + logf(l0);
    if (rb < g.N) lse[(b * g.heads + h) * g.N + rb] = m1 * kLn2 + logf(l1);
  }
}

// dq for one query per thread; also writes D[b, h, n] = do . o for the dk/dv kernel.
__global__ void __launch_bounds__(MAX_T) attn32_bwd_dq_kernel(const float* __restrict__ dout,  // [B, N, A]
                                                              const float* __restrict__ qkv,   // [B, N, 3A]
                                                              const float* __restrict__ o,     // [B, N, A]
                                                              const float* __restrict__ lse,   // [B, heads, N]
                                                              float* __restrict__ dqkv,        // [B, N, 3A]
                                                              float* __restrict__ Dbuf,        // [B, heads, N]
                                                              Geo g, float qmul, float scale) {
  __shared__ float4 sK[CH][HD / 4];
  __shared__ float4 sV[CH][HD / 4];
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const float* base = qkv + b * g.N * g.row;
  const bool active = n < g.N;

  float q[HD], dq[HD], dor[HD];
  float D = 0.0f, l2 = 0.0f;
  if (active) {
    load_row32(base + n * g.row + h * HD, q, qmul);
    load_row32(dout + (b * g.N + n) * g.A + h * HD, dor, 1.0f);
    float orow[HD];
    load_row32(o + (b * g.N + n) * g.A + h * HD, orow, 1.0f);
#pragma unroll
    for (int d = 0; d < HD; ++d) D = fmaf(dor[d], orow[d], D);
    l2 = lse[(b * g.heads + h) * g.N + n] * kLog2e;
    Dbuf[(b * g.heads + h) * g.N + n] = D;
  }
#pragma unroll
  for (int d = 0; d < HD; ++d) dq[d] = 0.0f;

  for (int k0 = 0; k0 < g.N; k0 += CH) {
    __syncthreads();
    stage_pair(base, g.row, g.N, k0, g.A + h * HD, 2 * g.A + h * HD, 1.0f, sK, sV);
    __syncthreads();
    if (!active) continue;
    const int kn = min(CH, g.N - k0);
    for (int t = 0; t < kn; ++t) {
      const float p = exp2f(dot32(q, sK[t]) - l2);
      const float dp = dot32(dor, sV[t]);
      axpy32(dq, p * (dp - D), sK[t]);
    }
  }
  if (active) store_row32(dqkv + (b * g.N + n) * g.row + h * HD, dq, scale);
}

// dk and dv for one key per thread; queries (pre-scaled by scale*log2e), do, lse and D stream through
// shared memory.
__global__ void __launch_bounds__(MAX_T) attn32_bwd_dkv_kernel(const float* __restrict__ dout,  // [B, N, A]
                                                               const float* __restrict__ qkv,   // [B, N, 3A]
                                                               const float* __restrict__ lse,   // [B, heads, N]
                                                               const float* __restrict__ Dbuf,  // [B, heads, N]
                                                               float* __restrict__ dqkv,        // [B, N, 3A]
                                                               Geo g, float qmul) {
  __shared__ float4 sQ[CH][HD / 4];
  __shared__ float4 sDO[CH][HD / 4];
  __shared__ float sL[CH], sD[CH];
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int m = blockIdx.x * blockDim.x + threadIdx.x;
  const float* base = qkv + b * g.N * g.row;
  const float* dbase = dout + b * g.N * g.A;
  const bool active = m < g.N;

  float k[HD], v[HD], dk[HD], dv[HD];
  if (active) {
    load_row32(base + m * g.row + g.A + h * HD, k, 1.0f);
    load_row32(base + m * g.row + 2 * g.A + h * HD, v, 1.0f);
  }
#pragma unroll
  for (int d = 0; d < HD; ++d) {
    dk[d] = 0.0f;
    dv[d] = 0.0f;
  }
  for (int n0 = 0; n0 < g.N; n0 += CH) {
    __syncthreads();
    // q rows (scaled) from qkv, do rows from dout: different row strides, so stage separately.
    for (int idx = threadIdx.x; idx < CH * (HD / 4); idx += blockDim.x) {
      int r = idx / (HD / 4), part = idx % (HD / 4), n = n0 + r;
      float4 vq = make_float4(0.f, 0.f, 0.f, 0.f), vd = vq;
      if (n < g.N) {
        vq = reinterpret_cast<const float4*>(base + static_cast<int64_t>(n) * g.row + h * HD)[part];
        vd = reinterpret_cast<const float4*>(dbase + static_cast<int64_t>(n) * g.A + h * HD)[part];
        vq.x *= qmul;
        vq.y *= qmul;
        vq.z *= qmul;
        vq.w *= qmul;
      }
      sQ[r][part] = vq;
      sDO[r][part] = vd;
    }
    for (int r = threadIdx.x; r < CH; r += blockDim.x) {
      int n = n0 + r;
      sL[r] = n < g.N ? lse[(b * g.heads + h) * g.N + n] * kLog2e : INFINITY;  // p = 0 past N
      sD[r] = n < g.N ? Dbuf[(b * g.heads + h) * g.N + n] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    const int qn = min(CH, g.N - n0);
    for (int t = 0; t < qn; ++t) {
      const float p = exp2f(dot32(k, sQ[t]) - sL[t]);
      axpy32(dv, p, sDO[t]);
      const float dp = dot32(v, sDO[t]);
      axpy32(dk, p * (dp - sD[t]), sQ[t]);
    }
  }
  if (active) {
    float* drow = dqkv + (b * g.N + m) * g.row;
    store_row32(drow + g.A + h * HD, dk, 1.0f / kLog2e);  // sQ held scale*log2e*q; dk = scale dS^T q
    store_row32(drow + 2 * g.A + h * HD, dv, 1.0f);
  }
}

// ---------------------------------------------------------------------------------------------------
// Any head_dim: one thread per (b, h, query) or (b, h, key), reading global memory directly.

__global__ void attn_any_fwd_kernel(const float* __restrict__ qkv,  // [B, N, 3A]
                                    float* __restrict__ out,        // [B, N, A]
                                    float* __restrict__ lse,        // [B, heads, N] or null
                                    int64_t B, Geo g, int hd, float scale) {
  int64_t total = B * g.heads * g.N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int n = static_cast<int>(e % g.N);
    int h = static_cast<int>((e / g.N) % g.heads);
    int64_t b = e / (static_cast<int64_t>(g.N) * g.heads);
    const float* base = qkv + b * g.N * g.row;
    const float* q = base + n * g.row + h * hd;
    float mx = -INFINITY;
    for (int m = 0; m < g.N; ++m) {
      const float* k = base + m * g.row + g.A + h * hd;
      float s = 0.0f;
      for (int d = 0; d < hd; ++d) s = fmaf(q[d], k[d], s);
      mx = fmaxf(mx, s * scale);
    }
    float l = 0.0f;
    for (int m = 0; m < g.N; ++m) {
      const float* k = base + m * g.row + g.A + h * hd;
      float s = 0.0f;
      for (int d = 0; d < hd; ++d) s = fmaf(q[d], k[d], s);
      l += expf(s * scale - mx);
    }
    float* o = out + (b * g.N + n) * g.A + h * hd;
    for (int d = 0; d < hd; ++d) o[d] = 0.0f;
    for (int m = 0; m < g.N; ++m) {
      const float* k = base + m * g.row + g.A + h * hd;
      const float* v = base + m * g.row + 2 * g.A + h * hd;
      float s = 0.0f;
      for (int d = 0; d < hd; ++d) s = fmaf(q[d], k[d], s);
      float p = expf(s * scale - mx) / l;
      for (int d = 0; d < hd; ++d) o[d] = fmaf(p, v[d], o[d]);
    }
    if (lse) lse[(b * g.heads + h) * g.N + n] = mx + logf(l);
  }
}

__global__ void attn_any_bwd_dq_kernel(const float* __restrict__ dout,  // [B, N, A]
                                       const float* __restrict__ qkv,   // [B, N, 3A]
                                       const float* __restrict__ o,     // [B, N, A]
                                       const float* __restrict__ lse,   // [B, heads, N]
                                       float* __restrict__ dqkv,        // [B, N, 3A]
                                       float* __restrict__ Dbuf,        // [B, heads, N]
                                       int64_t B, Geo g, int hd, float scale) {
  int64_t total = B * g.heads * g.N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int n = static_cast<int>(e % g.N);
    int h = static_cast<int>((e / g.N) % g.heads);
    int64_t b = e / (static_cast<int64_t>(g.N) * g.heads);
    const float* base = qkv + b * g.N * g.row;
    const float* q = base + n * g.row + h * hd;
    const float* dor = dout + (b * g.N + n) * g.A + h * hd;
    const float* orow = o + (b * g.N + n) * g.A + h * hd;
    float D = 0.0f;
    for (int d = 0; d < hd; ++d) D = fmaf(dor[d], orow[d], D);
    Dbuf[(b * g.heads + h) * g.N + n] = D;
    float L = lse[(b * g.heads + h) * g.N + n];
    float* dq = dqkv + (b * g.N + n) * g.row + h * hd;
    for (int d = 0; d < hd; ++d) dq[d] = 0.0f;
    for (int m = 0; m < g.N; ++m) {
      const float* k = base + m * g.row + g.A + h * hd;
      const float* v = base + m * g.row + 2 * g.A + h * hd;
      float s = 0.0f, dp = 0.0f;
      for (int d = 0; d < hd; ++d) {
        s = fmaf(q[d], k[d], s);
        dp = fmaf(dor[d], v[d], dp);
      }
      float ds = expf(s * scale - L) * (dp - D) * scale;
      for (int d = 0; d < hd; ++d) dq[d] = fmaf(ds, k[d], dq[d]);
    }
  }
}

__global__ void attn_any_bwd_dkv_kernel(const float* __restrict__ dout,  // [B, N, A]
                                        const float* __restrict__ qkv,   // [B, N, 3A]
                                        const float* __restrict__ lse,   // [B, heads, N]
                                        const float* __restrict__ Dbuf,  // [B, heads, N]
                                        float* __restrict__ dqkv,        // [B, N, 3A]
                                        int64_t B, Geo g, int hd, float scale) {
  int64_t total = B * g.heads * g.N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int m = static_cast<int>(e % g.N);
    int h = static_cast<int>((e / g.N) % g.heads);
    int64_t b = e / (static_cast<int64_t>(g.N) * g.heads);
    const float* base = qkv + b * g.N * g.row;
    const float* k = base + m * g.row + g.A + h * hd;
    const float* v = base + m * g.row + 2 * g.A + h * hd;
    float* dk = dqkv + (b * g.N + m) * g.row + g.A + h * hd;
    float* dv = dqkv + (b * g.N + m) * g.row + 2 * g.A + h * hd;
    for (int d = 0; d < hd; ++d) {
      dk[d] = 0.0f;
      dv[d] = 0.0f;
    }
    for (int n = 0; n < g.N; ++n) {
      const float* q = base + n * g.row + h * hd;
      const float* dor = dout + (b * g.N + n) * g.A + h * hd;
      float s = 0.0f, dp = 0.0f;
      for (int d = 0; d < hd; ++d) {
        s = fmaf(q[d], k[d], s);
        dp = fmaf(dor[d], v[d], dp);
      }
      float p = expf(s * scale - lse[(b * g.heads + h) * g.N + n]);
      float ds = p * (dp - Dbuf[(b * g.heads + h) * g.N + n]) * scale;
      for (int d = 0; d < hd; ++d) {
        dv[d] = fmaf(p, dor[d], dv[d]);
        dk[d] = fmaf(ds, q[d], dk[d]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------

Geo geo_of(const TensorView& qkv, int hd) {
  Geo g{};
  g.N = static_cast<int>(qkv.shape[1]);
  g.A = static_cast<int>(qkv.shape[2] / 3);
  g.heads = g.A / hd;
  g.row = 3 * static_cast<int64_t>(g.A);
  return g;
}

void check_sizes(const TensorView& qkv, const char* what) {
  if (qkv.shape[1] > (1 << 24) || qkv.shape[2] > (1 << 24))
    throw Error(ErrorKind::range, std::string("attention: expected fewer than 2^24 tokens and channels for qkv but "
                                              "received ") + qkv.shape_str() + " (" + what + ")");
}

struct Launch {
  dim3 grid, block;
};

Launch launch_of(int64_t B, const Geo& g, const char* op) {
  if (B > 65535 || g.heads > 65535)
    throw Error(ErrorKind::range, std::string(op) + ": expected a batch and head count below 65536 for qkv");
  int t = g.N >= MAX_T ? MAX_T : ((g.N + 31) / 32) * 32;
  return Launch{dim3(static_cast<unsigned>(ceil_div(g.N, t)), static_cast<unsigned>(g.heads), static_cast<unsigned>(B)),
                dim3(static_cast<unsigned>(t))};
}

void attention_fwd(const OpArgs& a) {
  const TensorView &qkv = a.in[0], &o = a.out[0], &lse = a.out[1];  // qkv[B,N,3A] o[B,N,A] lse[B,heads,N]?
  int hd = static_cast<int>(a.attr[0]);
  float scale = static_cast<float>(a.attr[1]);
  int64_t B = qkv.shape[0];
  if (qkv.numel() == 0) return;
  check_sizes(qkv, "forward");
  Geo g = geo_of(qkv, hd);
  float* L = lse.present() ? lse.f() : nullptr;
  if (hd == HD) {
    Launch l = launch_of(B, g, "attention");
    if (gemm_precision() == Precision::f32)
      attn32_fwd_kernel<false><<<l.grid, l.block, 0, stream()>>>(qkv.f(), o.f(), L, g, scale * kLog2e);
    else if (compute_capability() >= 80)
      attn32_fwd_tc_kernel<<<dim3(static_cast<unsigned>(ceil_div(g.N, TC_ROWS)), l.grid.y, l.grid.z), 32 * TC_WARPS, 0,
                             stream()>>>(qkv.f(), o.f(), L, g, scale * kLog2e);
    else
      attn32_fwd_kernel<true><<<l.grid, l.block, 0, stream()>>>(qkv.f(), o.f(), L, g, scale * kLog2e);
  } else {
    attn_any_fwd_kernel<<<grid_for(B * g.heads * g.N, 128), 128, 0, stream()>>>(qkv.f(), o.f(), L, B, g, hd, scale);
  }
  after_launch("attention forward");
}

void attention_bwd(const OpArgs& a) {
  const TensorView &dout = a.in[0], &qkv = a.in[1], &o = a.in[2], &lse = a.in[3];  // do,o [B,N,A] qkv[B,N,3A]
  const TensorView& dqkv = a.out[0];                                                // dqkv [B,N,3A]
  int hd = static_cast<int>(a.attr[0]);
  float scale = static_cast<float>(a.attr[1]);
  int64_t B = qkv.shape[0];
  if (qkv.numel() == 0) return;
  check_sizes(qkv, "backward");
  Geo g = geo_of(qkv, hd);
  Scratch D(static_cast<size_t>(B * g.heads * g.N) * sizeof(float));
  if (hd == HD) {
    Launch l = launch_of(B, g, "attention");
    attn32_bwd_dq_kernel<<<l.grid, l.block, 0, stream()>>>(dout.f(), qkv.f(), o.f(), lse.f(), dqkv.f(), D.as<float>(),
                                                          g, scale * kLog2e, scale);
    after_launch("attention backward (dq)");
    attn32_bwd_dkv_kernel<<<l.grid, l.block, 0, stream()>>>(dout.f(), qkv.f(), lse.f(), D.as<float>(), dqkv.f(), g,
                                                           scale * kLog2e);
    after_launch("attention backward (dk, dv)");
  } else {
    unsigned grid = grid_for(B * g.heads * g.N, 128);
    attn_any_bwd_dq_kernel<<<grid, 128, 0, stream()>>>(dout.f(), qkv.f(), o.f(), lse.f(), dqkv.f(), D.as<float>(), B,
                                                      g, hd, scale);
    after_launch("attention backward (dq)");
    attn_any_bwd_dkv_kernel<<<grid, 128, 0, stream()>>>(dout.f(), qkv.f(), lse.f(), D.as<float>(), dqkv.f(), B, g, hd,
                                                       scale);
    after_launch("attention backward (dk, dv)");
  }
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, attention, mf::cuda::attention_fwd, mf::cuda::attention_bwd);
