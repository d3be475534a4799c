// sgemm.cpp: the CPU backend's own float32 GEMM for products of 128 rows or more (the token rows of
// every MetaFormer stage at 224, batched or not), C[M,N] = A[M,K] B[K,N] (+ bias, activation) or
// C += A B (+ bias).
//
// Used where oneDNN's own kernels are AVX2 too (CPUs without AVX-512). On AVX-512 CPUs the kernel has
// 12 x 32 zmm tiles over the same packed panels (setGemmPolicy('own')); measured there at 0.9-1.1x
// oneDNN in the models (bench/RESULTS.md log 31), so 'auto' keeps oneDNN on those CPUs.
//
// Why, next to oneDNN: oneDNN 2.6's AVX2 matmul applies its post-ops (bias, StarReLU) in a second
// pass over C and writes C through the cache; here the epilogue runs on the accumulator registers and,
// when C is written once and is larger than the caches, with streaming stores (no read for
// ownership). Measured in bench/RESULTS.md (log 20). Products of fewer than 128 rows stay on oneDNN
// (at 49 rows it was faster: it reads the weights from memory while it computes, we pack first), and
// so do those with more than 2 MiB of B (see kMaxPacked).
//
// Structure (GotoBLAS/BLIS): B is packed into 16-column panels [K block][panel][kc][16] (zero-padded
// at the right edge); a 6x16 register tile (12 accumulators) runs over the rows, A read in place
// (row-major), broadcast one element at a time; K blocks of up to 384 keep a panel (24 KiB) in L1
// and a block of A in L2. Tall products (>= 512 rows, >= 4 row blocks per thread) pack B once and
// give each thread a range of 96-row blocks; shorter ones give each thread a range of panels, which
// it packs and multiplies with all rows. When A is large (>= 8 MiB, one K block, rows contiguous: it
// comes from memory), each row block's tiles prefetch the next block into L2; with that, outputs of
// 64 columns (4 panels) run here too (oneDNN kept them below 100 GFLOP/s at batch 32).
//
// Plan weights arrive packed (gemm.cpp keeps the panels with the weight's storage, made once per
// weight version): then no per-call packing, and the kernel also takes the products it would leave to
// oneDNN otherwise, from 48 rows and 64 columns and with any size of B (stage 4's 49-row products
// at batch 1, whose weights come from memory while the tiles run; RESULTS.md log 28).
#include <algorithm>
#include <atomic>

#include "cpu.h"
#include "gemm.h"

namespace mf::cpu {
namespace {

constexpr int64_t kMinRows = 128;    // below: oneDNN (faster at 49 rows: it reads the weights while it computes)
constexpr int64_t kSplitRows = 512;  // from here threads split the rows, below the columns
constexpr int64_t kMinCols = 96;     // narrower outputs (N = 64: 4 panels) measured no faster, except
                                     // when A is streamed from memory (streams_a)
// Larger B (K x N floats; 2 MiB) stay on oneDNN, whose blocking kept 1.2-1.35x ahead there (K, N =
// 512 x 2048, 2048 x 512, 1024 x 1024); every MetaFormer GEMM of stages 1-3 is below.
constexpr int64_t kMaxPacked = int64_t{1} << 19;
constexpr int64_t KC = 384, MC = 96;  // K block, rows per block (a multiple of 6)
// With B packed in advance (a plan weight), from this many rows and kMinPackedCols columns.
constexpr int64_t kMinPackedRows = 48, kMinPackedCols = 64;

struct Epilogue {
  const float* bias;  // of this panel (16 columns), or null
  int act;            // GemmShape::act
  float act_s, act_b;
  bool load_c;        // add the current C (a later K block, or accumulate)
  bool finish;        // last K block: bias and activation
  bool stream;        // non-temporal stores (full aligned panels only)
};

inline __m256 activate(__m256 v, const Epilogue& e) {
  v = _mm256_max_ps(_mm256_setzero_ps(), v);  // relu; a NaN stays NaN (max returns the second operand)
  v = _mm256_mul_ps(v, v);
  if (e.act == 1) v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(e.act_s)), _mm256_set1_ps(e.act_b));
  return v;
}

// One R x 16 tile of C (nc <= 16 valid columns): C (+)= A[R, kc] Bp[kc, 16], then the epilogue.
template <int R>
__attribute__((always_inline)) inline void tile(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C,
                                                int64_t ldc, int nc, const Epilogue& e) {
  __m256 c0[R], c1[R];
  const float* a[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    c0[r] = c1[r] = _mm256_setzero_ps();
    a[r] = A + r * lda;
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(Bp + k * 16), b1 = _mm256_load_ps(Bp + k * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      __m256 av = _mm256_broadcast_ss(a[r] + k);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
  const bool full = nc == 16;
  const __m256i m0 = tail_mask(std::min(nc, 8)), m1 = tail_mask(std::max(nc - 8, 0));
  auto load = [&](const float* p, int half) {
    return full ? _mm256_loadu_ps(p + 8 * half) : _mm256_maskload_ps(p + 8 * half, half ? m1 : m0);
  };
  if (e.load_c) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      c0[r] = _mm256_add_ps(c0[r], load(C + r * ldc, 0));
      c1[r] = _mm256_add_ps(c1[r], load(C + r * ldc, 1));
    }
  }
  if (e.finish) {
    if (e.bias) {
      __m256 b0 = load(e.bias, 0), b1 = load(e.bias, 1);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        c0[r] = _mm256_add_ps(c0[r], b0);
        c1[r] = _mm256_add_ps(c1[r], b1);
      }
    }
    if (e.act != 0) {
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        c0[r] = activate(c0[r], e);
        c1[r] = activate(c1[r], e);
      }
    }
  }
  if (full && e.stream) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      _mm256_stream_ps(C + r * ldc, c0[r]);
      _mm256_stream_ps(C + r * ldc + 8, c1[r]);
    }
  } else if (full) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(C + r * ldc, c0[r]);
      _mm256_storeu_ps(C + r * ldc + 8, c1[r]);
    }
  } else {
    for (int r = 0; r < R; ++r) {
      _mm256_maskstore_ps(C + r * ldc, m0, c0[r]);
      _mm256_maskstore_ps(C + r * ldc + 8, m1, c1[r]);
    }
  }
}

// Rows [m0, m1) of one panel: 6-row tiles, then the remainder.
// PF: pf_step bytes from pf on are prefetched into L2 before each 6-row tile (the next row block of a
// streamed A, or the next panel of a packed weight). A separate instantiation: the prefetch loop next
// to the tile changed the tile's code (8% slower).
template <bool PF>
void panel_rows(int64_t m0, int64_t m1, int64_t kc, const float* A, int64_t lda, const float* Bp, float* C,
                int64_t ldc, int nc, const Epilogue& e, const char* pf, int64_t pf_step) {
  int64_t m = m0;
  for (; m + 6 <= m1; m += 6) {
    if constexpr (PF) {
      for (int64_t i = 0; i < pf_step; i += 64) _mm_prefetch(pf + i, _MM_HINT_T1);
      pf += pf_step;
    }
    tile<6>(kc, A + m * lda, lda, Bp, C + m * ldc, ldc, nc, e);
  }
  const float* a = A + m * lda;
  float* c = C + m * ldc;
  switch (m1 - m) {
    case 5: tile<5>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 4: tile<4>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 3: tile<3>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 2: tile<2>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 1: tile<1>(kc, a, lda, Bp, c, ldc, nc, e); break;
    default: break;
  }
}

// ---- AVX-512 (CPUs that have it): the same packed panels, two at a time -----------------------------
// A 12 x 32 tile (two adjacent 16-column panels, 24 zmm accumulators), or 12 x 16 for a last odd panel;
// the same epilogue. Compiled for AVX-512F through function attributes; chosen at run time.
#define MF_AVX512 __attribute__((target("avx512f")))
// GCC 12 warns about the undefined pass-through operand inside _mm512_max_ps (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

MF_AVX512 inline __m512 activate512(__m512 v, const Epilogue& e) {
  v = _mm512_max_ps(_mm512_setzero_ps(), v);  // relu, as activate()
  v = _mm512_mul_ps(v, v);
  if (e.act == 1) v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.act_s)), _mm512_set1_ps(e.act_b));
  return v;
}

// R rows x P panels (P = 1 or 2; panel 1 follows panel 0 in Bp, kc * 16 floats on); nc[j] valid
// columns of panel j (1..16).
template <int R, int P>
MF_AVX512 __attribute__((always_inline)) inline void tile512(int64_t kc, const float* A, int64_t lda, const float* Bp,
                                                             float* C, int64_t ldc, const int (&nc)[2], const Epilogue& e) {
  __m512 c[P][R];
  const float* a[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    a[r] = A + r * lda;
#pragma GCC unroll 2
    for (int j = 0; j < P; ++j) c[j][r] = _mm512_setzero_ps();
  }
  const float* B1 = Bp + kc * 16;
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(Bp + k * 16);
    const __m512 b1 = P == 2 ? _mm512_loadu_ps(B1 + k * 16) : b0;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r][k]);
      c[0][r] = _mm512_fmadd_ps(av, b0, c[0][r]);
      if constexpr (P == 2) c[1][r] = _mm512_fmadd_ps(av, b1, c[1][r]);
    }
  }
  __mmask16 mk[P];
  bool full = true;
#pragma GCC unroll 2
  for (int j = 0; j < P; ++j) {
    mk[j] = nc[j] >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nc[j]) - 1);
    full = full && nc[j] >= 16;
  }
#pragma GCC unroll 2
  for (int j = 0; j < P; ++j) {
    if (e.load_c) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) c[j][r] = _mm512_add_ps(c[j][r], _mm512_maskz_loadu_ps(mk[j], C + r * ldc + 16 * j));
    }
    if (e.finish) {
      if (e.bias) {
        const __m512 bv = _mm512_maskz_loadu_ps(mk[j], e.bias + 16 * j);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) c[j][r] = _mm512_add_ps(c[j][r], bv);
      }
      if (e.act != 0) {
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) c[j][r] = activate512(c[j][r], e);
      }
    }
    if (full && e.stream) {  // (e.stream: C and ldc 64-byte aligned)
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) _mm512_stream_ps(C + r * ldc + 16 * j, c[j][r]);
    } else {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(C + r * ldc + 16 * j, mk[j], c[j][r]);
    }
  }
}

// Rows [m0, m1) of P panels: 12-row tiles, then the remainder; pf_step > 0: pf_step bytes from pf on
// are prefetched into L2 before each 12-row tile (as panel_rows).
template <int P>
MF_AVX512 void panel_rows512(int64_t m0, int64_t m1, int64_t kc, const float* A, int64_t lda, const float* Bp, float* C,
                             int64_t ldc, const int (&nc)[2], const Epilogue& e, const char* pf, int64_t pf_step) {
  int64_t m = m0;
  for (; m + 12 <= m1; m += 12) {
    for (int64_t i = 0; i < pf_step; i += 64) _mm_prefetch(pf + i, _MM_HINT_T1);
    pf += pf_step;
    tile512<12, P>(kc, A + m * lda, lda, Bp, C + m * ldc, ldc, nc, e);
  }
  const float* a = A + m * lda;
  float* c = C + m * ldc;
  switch (m1 - m) {
    case 11: tile512<11, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 10: tile512<10, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 9: tile512<9, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 8: tile512<8, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 7: tile512<7, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 6: tile512<6, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 5: tile512<5, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 4: tile512<4, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 3: tile512<3, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 2: tile512<2, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    case 1: tile512<1, P>(kc, a, lda, Bp, c, ldc, nc, e); break;
    default: break;
  }
}
#pragma GCC diagnostic pop
#undef MF_AVX512

// Transposes an 8x8 block: rows r[i] (8 consecutive k of column n0 + i) into out[k * 16 + i].
inline void transpose8(const __m256 (&r)[8], float* out) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  const __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                       _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                       _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                       _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  for (int i = 0; i < 8; ++i) _mm256_store_ps(out + i * 16, o[i]);
}

// Packs rows [k0, k0 + kc) and columns [n0, n0 + 16) of B (element strides b_k, b_n) into
// out[kc][16], zeros past column N.
void pack_panel(const float* B, int64_t b_k, int64_t b_n, int64_t k0, int64_t kc, int64_t n0, int64_t N, float* out) {
  const int64_t nn = std::min<int64_t>(16, N - n0);
  const float* src = B + k0 * b_k + n0 * b_n;
  int64_t k = 0;
  if (nn == 16 && b_n == 1) {  // rows of B contiguous over n
    for (; k < kc; ++k) {
      _mm256_store_ps(out + k * 16, _mm256_loadu_ps(src + k * b_k));
      _mm256_store_ps(out + k * 16 + 8, _mm256_loadu_ps(src + k * b_k + 8));
    }
  } else if (nn == 16 && b_k == 1) {  // columns of B contiguous over k (the nn.Linear weight): transpose
    for (; k + 8 <= kc; k += 8) {
      for (int h = 0; h < 2; ++h) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (h * 8 + i) * b_n + k);
        transpose8(r, out + k * 16 + h * 8);
      }
    }
  }
  for (; k < kc; ++k)
    for (int64_t c = 0; c < 16; ++c) out[k * 16 + c] = c < nn ? src[k * b_k + c * b_n] : 0.0f;
}

// Whether threads split the rows (tall products with at least 4 row blocks per thread), else the
// columns.
bool split_rows(const GemmShape& s) { return s.M >= kSplitRows && (s.M + MC - 1) / MC >= 4 * num_threads(); }

// A comes from memory as one stream (rows contiguous, one K block, at least 8 MiB): the next row
// block is prefetched while the current one runs (RESULTS.md log 24).
bool streams_a(const GemmShape& s) { return s.K <= KC && s.a_m == s.K && s.M * s.K * 4 >= kStreamBytes; }

std::atomic<int> g_policy{static_cast<int>(GemmPolicy::automatic)};

}  // namespace

void set_gemm_policy(GemmPolicy p) { g_policy.store(static_cast<int>(p), std::memory_order_relaxed); }
GemmPolicy gemm_policy() { return static_cast<GemmPolicy>(g_policy.load(std::memory_order_relaxed)); }

bool own_gemm_applies(const GemmShape& s, bool packed_b) {
  const GemmPolicy policy = gemm_policy();
  if (policy == GemmPolicy::onednn) return false;
  if (s.batch[0] * s.batch[1] != 1 || s.K < 1 || s.a_k != 1 || s.c_n != 1 || s.alpha != 1.0f || (s.accumulate && s.act != 0))
    return false;
  if (policy == GemmPolicy::own) return true;
  // On CPUs with AVX-512, oneDNN stays (the AVX-512 tiles measured at par with it, log 31).
  if (has_avx512()) return false;
  if (packed_b) {
    if (s.M < kMinPackedRows || s.N < kMinPackedCols) return false;
  } else {
    if (s.M < kMinRows || s.K * s.N > kMaxPacked) return false;
    // Narrow outputs (N = 64: 4 panels) only with A streamed and prefetched (1.3-1.5x oneDNN there).
    if (s.N < kMinCols && !(s.N >= 64 && streams_a(s) && split_rows(s))) return false;
  }
  // Enough work units per thread for one of the two splits to balance (measured on 2 cores only;
  // with many threads and few rows and columns, oneDNN's two-dimensional partitioning stays).
  return split_rows(s) || (s.N + 15) / 16 >= 2 * num_threads();
}

// K block kb starts at float kb * KC * panels * 16 (k0 * panels * 16) and holds kc * panels * 16.
size_t own_gemm_packed_floats(const GemmShape& s) { return static_cast<size_t>(s.K * ((s.N + 15) / 16) * 16); }

namespace {

// B's panels [K block][panel][kc][16] (K blocks KC * panels * 16 floats apart), for K block kb and
// panels [p0, p1).
void pack_panels(const GemmShape& s, const float* B, float* Bp, int64_t kb, int64_t p0, int64_t p1) {
  const int64_t np = (s.N + 15) / 16, k0 = kb * KC, kc = std::min(KC, s.K - k0);
  for (int64_t p = p0; p < p1; ++p) pack_panel(B, s.b_k, s.b_n, k0, kc, p * 16, s.N, Bp + kb * KC * np * 16 + p * kc * 16);
}

}  // namespace

void own_gemm_pack(const GemmShape& s, const float* B, float* out) {
  const int64_t np = (s.N + 15) / 16, nkb = (s.K + KC - 1) / KC;
  parallel_for(nkb * np, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) pack_panels(s, B, out, t / np, t % np, t % np + 1);
  });
}

void own_gemm(const GemmShape& s, const float* A, const float* B, float* C, const float* bias, const float* prepacked) {
  const int64_t M = s.M, N = s.N, K = s.K;
  const int64_t np = (N + 15) / 16, nkb = (K + KC - 1) / KC;
  const int64_t block = KC * np * 16;  // floats per packed K block
  Scratch packed(prepacked ? 0 : own_gemm_packed_floats(s));
  const float* Bp = prepacked ? prepacked : packed.get();
  // AVX-512: 12-row tiles over two panels (zmm stores streamed only to 64-byte aligned rows); AVX2:
  // 6-row tiles over one.
  const bool use512 = has_avx512();
  const int64_t tr = use512 ? 12 : 6, pw = use512 ? 2 : 1;
  const int64_t align = use512 ? 64 : 32;
  const bool aligned = (reinterpret_cast<uintptr_t>(C) % align == 0) && (s.c_m % (align / 4) == 0);
  const bool stream = nkb == 1 && !s.accumulate && aligned && M * N * 4 >= kStreamBytes;
  // While a row block runs, the next one is prefetched into L2, spread over its tiles and panels.
  const bool prefetch_a = streams_a(s);
  const bool pf_panels = prepacked != nullptr && !split_rows(s);
  // Rows [m0, m1) x panels [p0, p1) for K block kb, in row blocks of mc.
  auto compute = [&](int64_t kb, int64_t m0, int64_t m1, int64_t p0, int64_t p1, int64_t mc) {
    int64_t k0 = kb * KC, kc = std::min(KC, K - k0);
    for (int64_t r0 = m0; r0 < m1; r0 += mc) {
      int64_t r1 = std::min(m1, r0 + mc);
      const int64_t row_tiles = (r1 - r0) / tr;
      // The next block's bytes, spread over the (panel groups x row tiles) of this one.
      const int64_t next_bytes = prefetch_a ? std::min(mc, M - r1) * K * 4 : 0;
      const int64_t tiles = (p1 - p0 + pw - 1) / pw * row_tiles;
      const int64_t step = tiles > 0 && next_bytes > 0 ? (next_bytes / tiles + 63) / 64 * 64 : 0;
      const char* pf = reinterpret_cast<const char*>(A + r1 * s.a_m);
      for (int64_t p = p0; p < p1; p += pw) {
        const int64_t panels = std::min(pw, p1 - p);  // in this tile: 1, or 2 with AVX-512
        const int nc[2] = {static_cast<int>(std::min<int64_t>(16, N - p * 16)),
                           panels == 2 ? static_cast<int>(std::min<int64_t>(16, N - p * 16 - 16)) : 0};
        Epilogue e{s.bias ? bias + p * 16 : nullptr, s.act, s.act_s, s.act_b, kb > 0 || s.accumulate, kb == nkb - 1, stream};
        const float* panel = Bp + kb * block + p * kc * 16;
        const char* pf_at = nullptr;  // what this tile column prefetches, pf_step bytes per row tile
        int64_t pf_step = 0;
        if (step > 0) {
          pf_at = pf;
          pf_step = step;
          pf += step * row_tiles;
        } else if (pf_panels && r0 == m0 && row_tiles > 0) {
          // A packed weight comes from memory once per call: the next panels (or the next K block's
          // first) are fetched into L2 while these ones' tiles run.
          const bool last = p + panels == p1;
          const int64_t next_kc = last ? std::min(KC, K - k0 - KC) : kc;  // <= 0: no next K block
          const float* next = last ? Bp + (kb + 1) * block + p0 * next_kc * 16 : panel + panels * kc * 16;
          if (next_kc > 0) {
            pf_at = reinterpret_cast<const char*>(next);
            pf_step = (next_kc * 64 * pw / row_tiles + 63) / 64 * 64;
          }
        }
        float* c = C + p * 16;
        if (use512 && panels == 2) panel_rows512<2>(r0, r1, kc, A + k0, s.a_m, panel, c, s.c_m, nc, e, pf_at, pf_step);
        else if (use512) panel_rows512<1>(r0, r1, kc, A + k0, s.a_m, panel, c, s.c_m, nc, e, pf_at, pf_step);
        else if (pf_step > 0) panel_rows<true>(r0, r1, kc, A + k0, s.a_m, panel, c, s.c_m, nc[0], e, pf_at, pf_step);
        else panel_rows<false>(r0, r1, kc, A + k0, s.a_m, panel, c, s.c_m, nc[0], e, nullptr, 0);
      }
    }
  };
  if (split_rows(s)) {
    // Tall: B packed once by all threads, then each thread takes a contiguous range of row blocks.
    if (!prepacked) own_gemm_pack(s, B, packed.get());
    parallel_for((M + MC - 1) / MC, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t mb = b0; mb < b1; ++mb)  // a block's C stays in cache over the K blocks
        for (int64_t kb = 0; kb < nkb; ++kb) compute(kb, mb * MC, std::min(M, mb * MC + MC), 0, np, MC);
      if (stream) _mm_sfence();
    });
  } else {
    // Short (a few hundred rows): each thread packs and multiplies its own range of panels, all rows
    // (in one block up to 264 rows, so each panel is read once per K block, else in 96-row blocks).
    const int64_t mc = M <= 264 ? M : MC;
    parallel_for(np, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t kb = 0; kb < nkb; ++kb) {
        if (!prepacked) pack_panels(s, B, packed.get(), kb, p0, p1);
        compute(kb, 0, M, p0, p1, mc);
      }
      if (stream) _mm_sfence();
    });
  }
}

}  // namespace mf::cpu
