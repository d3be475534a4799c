// cpu.h: helpers shared by the fast CPU kernels (compiled with AVX2 + FMA; the backend is only used
// on CPUs that have them, see cpu/dispatch.cpp).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../core/backend.h"
#include "../core/check.h"
#include "../core/memory.h"
#include "../core/threading.h"

namespace mf::cpu {

// A scratch buffer from the caching allocator, freed at scope exit.
class Scratch {
 public:
  explicit Scratch(size_t floats) : bytes_(floats * sizeof(float)), p_(static_cast<float*>(host_alloc(bytes_))) {}
  ~Scratch() { host_free(p_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return p_; }

 private:
  size_t bytes_;
  float* p_;
};

// Outputs (or streamed inputs) at least this large are not read back from the caches by the next op:
// kernels write them with non-temporal stores (whole 64-byte lines, no read for ownership) and the
// own GEMM prefetches such an A ahead (sgemm.cpp, norm.cpp).
constexpr int64_t kStreamBytes = int64_t{8} << 20;

// db[n] += sum_m dy[m, n]   (dy [M, N] row-major)
void col_sum_accumulate(const float* dy, int64_t M, int64_t N, float* db);

// Horizontal sum of an AVX register.
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// Adds the 8 floats of v, widened to double, to the lanes of lo (first 4) and hi (last 4).
inline void add_widened(__m256d& lo, __m256d& hi, __m256 v) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// Adds the exact double products a[i] * b[i] of 8 float pairs to the lanes of lo / hi.
inline void add_products_widened(__m256d& lo, __m256d& hi, __m256 a, __m256 b) {
  lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_castps256_ps128(b)), lo);
  hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)), hi);
}

inline double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

}  // namespace mf::cpu

namespace mf::cpu {

// exp(x) for 8 floats: range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// scaling by 2^n through the exponent bits. Relative error about 2e-7 over the float range; inputs
// below -87.3 give 0.
inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Whether this CPU has AVX-512F: the own GEMM's wider tiles, and which float32 GEMM and weight layout
// 'auto' picks (gemm.cpp, sgemm.cpp). Checked once.
inline bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Mask for the first n (0..8) lanes, for loads/stores of row tails.
inline __m256i tail_mask(int64_t n) {
  static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}

// Softmax of each of `rows` rows of length n in place (row stride ld); writes the row log-sum-exp
// to lse (stride lse_stride) when lse is not null. Scores are already scaled.
void softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld, float* lse, int64_t lse_stride);

}  // namespace mf::cpu
