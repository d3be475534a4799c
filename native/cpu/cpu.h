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

}  // namespace mf::cpu
