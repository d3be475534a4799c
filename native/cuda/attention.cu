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
// warps of a block share each chunk of 64 keys staged in shared memory as bf16. Staging goes through
// registers, one chunk ahead: the global loads of chunk c + 1 are in flight while chunk c computes (the
// earlier kernels waited for every load; on an H200 this ran 1.02-1.20x a version staging up to 256 keys
// per barrier, and that one 1.5x the unpipelined 64-key version: bench/RESULTS-gpu.md). Per chunk: S = q
// k^T (2 k-steps x 8 tiles of 8 keys, m16n8k16 with bf16 operands and fp32 accumulators), the online
// softmax on S's accumulator fragments, then O += P v (4 k-steps of 16 keys x 4 tiles of 8 head-dim
// columns); the tiles past the last key are skipped (a warp-uniform test), so 196 keys cost 200, not
// 256. An accumulator fragment of two neighbouring key tiles is exactly the A fragment of the next
// product, so P goes from registers to the tensor cores as it is. Fragment layout (lane = 4 * gr + tig):
// A regs 0-3 hold (row gr, k 2tig..+1), (gr + 8, 2tig..), (gr, 8 + 2tig..), (gr + 8, 8 + 2tig..); B regs
// 0-1 hold (k 2tig..+1, col gr), (k 8 + 2tig.., gr); C holds (gr, 2tig), (gr, 2tig + 1), (gr + 8, 2tig),
// (gr + 8, 2tig + 1). k is staged [key][d] and v transposed [d][key]. Bank arithmetic: k rows of 20
// words and v^T rows of 36 words (4 mod 8) make a warp's fragment loads hit 32 different banks; v^T is
// written as words holding two neighbouring keys, a warp covering 16 key pairs x 2 groups of 4 head-dim
// columns, which also hits 32 banks.
constexpr int TC_WARPS = 4;
constexpr int TC_THREADS = 32 * TC_WARPS;
constexpr int TC_ROWS = 16 * TC_WARPS;  // queries per block
constexpr int TC_KEYS = 64;             // keys per compute chunk
constexpr int TC_KROW = HD + 8;         // bf16 per staged k row (20 words)
constexpr int TC_VROW = TC_KEYS + 8;    // bf16 per staged v^T row (36 words: 4 mod 8)
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

// One warp's state: q as A fragments (bf16; the scale goes on the fp32 scores), the output accumulators,
// and the running max (log2 units) and sum of rows ra = r0 + gr and rb = ra + 8.
struct TcWarp {
  uint32_t qa[2][4];
  float o[4][4];
  float m0, m1, l0, l1;
  int ra, rb, gr, tig;
};

__device__ __forceinline__ void tc_begin(TcWarp& w, const float* base, const Geo& g, int h, int r0) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  w.gr = lane >> 2;
  w.tig = lane & 3;
  w.ra = r0 + w.gr;
  w.rb = w.ra + 8;
#pragma unroll
  for (int kk = 0; kk < 2; ++kk)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = h * HD + kk * 16 + half * 8 + 2 * w.tig;
      const float2 z = make_float2(0.0f, 0.0f);
      const float2 va = w.ra < g.N ? *reinterpret_cast<const float2*>(base + w.ra * g.row + d) : z;
      const float2 vb = w.rb < g.N ? *reinterpret_cast<const float2*>(base + w.rb * g.row + d) : z;
      w.qa[kk][2 * half] = pack_bf16(va.x, va.y);
      w.qa[kk][2 * half + 1] = pack_bf16(vb.x, vb.y);
    }
#pragma unroll
  for (int jd = 0; jd < 4; ++jd) w.o[jd][0] = w.o[jd][1] = w.o[jd][2] = w.o[jd][3] = 0.0f;
  w.m0 = w.m1 = -INFINITY;
  w.l0 = w.l1 = 0.0f;
}

// One chunk of 64 staged keys; kn: the keys of the chunk that exist (at least 1; may exceed 64).
__device__ __forceinline__ void tc_chunk(TcWarp& w, const uint16_t (*sK)[TC_KROW], const uint16_t (*sVt)[TC_VROW],
                                         int kn, float qmul) {
  const int gr = w.gr, tig = w.tig;
  float s[8][4];  // scores of 8 tiles of 8 keys
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    if (8 * j < kn) {
      const uint16_t* kr = &sK[8 * j + gr][2 * tig];
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) mma_bf16(s[j], w.qa[kk], ld32(kr + 16 * kk), ld32(kr + 16 * kk + 8));
    }
  }
  float mx0 = w.m0, mx1 = w.m1;
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
  const float c0s = exp2f(w.m0 - mx0), c1s = exp2f(w.m1 - mx1);  // 0 on the first chunk (m = -inf)
  w.m0 = mx0;
  w.m1 = mx1;
  w.l0 *= c0s;
  w.l1 *= c1s;
#pragma unroll
  for (int jd = 0; jd < 4; ++jd) {
    w.o[jd][0] *= c0s;
    w.o[jd][1] *= c0s;
    w.o[jd][2] *= c1s;
    w.o[jd][3] *= c1s;
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // keys 16 kk .. 16 kk + 15: score tiles 2 kk and 2 kk + 1
    if (16 * kk >= kn) break;        // the rest of the chunk is past N (probabilities 0)
    float p[2][4];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      p[t][0] = exp2f(s[2 * kk + t][0] - mx0);  // 0 for the keys past N
      p[t][1] = exp2f(s[2 * kk + t][1] - mx0);
      p[t][2] = exp2f(s[2 * kk + t][2] - mx1);
      p[t][3] = exp2f(s[2 * kk + t][3] - mx1);
    }
    w.l0 += (p[0][0] + p[0][1]) + (p[1][0] + p[1][1]);
    w.l1 += (p[0][2] + p[0][3]) + (p[1][2] + p[1][3]);
    const uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]), pack_bf16(p[1][0], p[1][1]),
                            pack_bf16(p[1][2], p[1][3])};
#pragma unroll
    for (int jd = 0; jd < 4; ++jd) {
      const uint16_t* vr = &sVt[8 * jd + gr][16 * kk + 2 * tig];
      mma_bf16(w.o[jd], pa, ld32(vr), ld32(vr + 8));
    }
  }
}

__device__ __forceinline__ void tc_end(TcWarp& w, float* out, float* lse, const Geo& g, int64_t b, int h) {
  w.l0 += __shfl_xor_sync(0xffffffffu, w.l0, 1);
  w.l0 += __shfl_xor_sync(0xffffffffu, w.l0, 2);
  w.l1 += __shfl_xor_sync(0xffffffffu, w.l1, 1);
  w.l1 += __shfl_xor_sync(0xffffffffu, w.l1, 2);
  const float i0 = 1.0f / w.l0, i1 = 1.0f / w.l1;
#pragma unroll
  for (int jd = 0; jd < 4; ++jd) {
    const int d = h * HD + 8 * jd + 2 * w.tig;
    if (w.ra < g.N)
      *reinterpret_cast<float2*>(out + (b * g.N + w.ra) * g.A + d) = make_float2(w.o[jd][0] * i0, w.o[jd][1] * i0);
    if (w.rb < g.N)
      *reinterpret_cast<float2*>(out + (b * g.N + w.rb) * g.A + d) = make_float2(w.o[jd][2] * i1, w.o[jd][3] * i1);
  }
  if (lse && w.tig == 0) {
    if (w.ra < g.N) lse[(b * g.heads + h) * g.N + w.ra] = w.m0 * kLn2 + logf(w.l0);
    if (w.rb < g.N) lse[(b * g.heads + h) * g.N + w.rb] = w.m1 * kLn2 + logf(w.l1);
  }
}

// Staging through registers: a thread carries 4 float4 of k (key idx >> 3, float4 idx & 7: a warp reads 4
// keys x 128 contiguous bytes) and 2 x 2 float4 of v (one float4 of keys 2 kp and 2 kp + 1: a warp
// covers 16 key pairs x 2 float4, and writes v^T as words holding two neighbouring keys).

struct TcPrefetch {
  float4 k[4], va[2], vb[2];
};

__device__ __forceinline__ void tp_load(TcPrefetch& f, const float* base, const Geo& g, int h, int k0) {
  const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int idx = static_cast<int>(threadIdx.x) + u * TC_THREADS, m = k0 + (idx >> 3);
    f.k[u] = m < g.N ? *reinterpret_cast<const float4*>(base + static_cast<int64_t>(m) * g.row + g.A + h * HD +
                                                        4 * (idx & 7))
                     : zero4;
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int idx = static_cast<int>(threadIdx.x) + u * TC_THREADS, rest = idx >> 5;
    const int kp = (rest & 1) * 16 + (idx & 15), part = (rest >> 1) * 2 + ((idx >> 4) & 1);
    const int m = k0 + 2 * kp;
    const float* vp = base + static_cast<int64_t>(m) * g.row + 2 * g.A + h * HD + 4 * part;
    f.va[u] = m < g.N ? *reinterpret_cast<const float4*>(vp) : zero4;
    f.vb[u] = m + 1 < g.N ? *reinterpret_cast<const float4*>(vp + g.row) : zero4;
  }
}

__device__ __forceinline__ void tp_store(const TcPrefetch& f, uint16_t (*sK)[TC_KROW], uint16_t (*sVt)[TC_VROW]) {
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int idx = static_cast<int>(threadIdx.x) + u * TC_THREADS;
    *reinterpret_cast<uint2*>(&sK[idx >> 3][4 * (idx & 7)]) =
        make_uint2(pack_bf16(f.k[u].x, f.k[u].y), pack_bf16(f.k[u].z, f.k[u].w));
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int idx = static_cast<int>(threadIdx.x) + u * TC_THREADS, rest = idx >> 5;
    const int kp = (rest & 1) * 16 + (idx & 15), part = (rest >> 1) * 2 + ((idx >> 4) & 1);
    uint32_t* col = reinterpret_cast<uint32_t*>(&sVt[4 * part][2 * kp]);
    col[0] = pack_bf16(f.va[u].x, f.vb[u].x);
    col[TC_VW] = pack_bf16(f.va[u].y, f.vb[u].y);
    col[2 * TC_VW] = pack_bf16(f.va[u].z, f.vb[u].z);
    col[3 * TC_VW] = pack_bf16(f.va[u].w, f.vb[u].w);
  }
}

__global__ void __launch_bounds__(TC_THREADS, 4) attn32_fwd_tc_kernel(const float* __restrict__ qkv,
                                                                          float* __restrict__ out,
                                                                          float* __restrict__ lse, Geo g,
                                                                          float qmul) {
  __shared__ __align__(16) uint16_t sK[TC_KEYS][TC_KROW];
  __shared__ __align__(16) uint16_t sVt[HD][TC_VROW];
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int r0 = static_cast<int>(blockIdx.x) * TC_ROWS + (static_cast<int>(threadIdx.x) >> 5) * 16;
  const float* base = qkv + b * g.N * g.row;
  const bool active = r0 < g.N;  // the same for the whole warp
  TcPrefetch f;
  tp_load(f, base, g, h, 0);
  TcWarp w;
  tc_begin(w, base, g, h, r0);
  for (int k0 = 0; k0 < g.N; k0 += TC_KEYS) {
    __syncthreads();  // the previous chunk is consumed
    tp_store(f, sK, sVt);
    __syncthreads();
    if (k0 + TC_KEYS < g.N) tp_load(f, base, g, h, k0 + TC_KEYS);  // in flight while this chunk computes
    if (active) tc_chunk(w, sK, sVt, g.N - k0, qmul);
  }
  if (active) tc_end(w, out, lse, g, b, h);
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
      attn32_fwd_tc_kernel<<<dim3(static_cast<unsigned>(ceil_div(g.N, TC_ROWS)), l.grid.y, l.grid.z), TC_THREADS, 0,
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
