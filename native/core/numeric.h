// numeric.h: small numeric helpers shared by every backend: half-precision conversions (round to
// nearest even, as PyTorch does), and the counter-based RNG behind dropout / drop path. Both are also
// compiled for CUDA devices (MF_HOST_DEVICE), so every backend converts and draws the same way.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MF_HOST_DEVICE __host__ __device__
#else
#define MF_HOST_DEVICE
#endif

namespace mf {

// Bit casts and round-half-even that compile for host and device.
MF_HOST_DEVICE inline float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

MF_HOST_DEVICE inline uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MF_HOST_DEVICE inline float round_half_even(float x) {  // in the default rounding mode
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

MF_HOST_DEVICE inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

MF_HOST_DEVICE inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MF_HOST_DEVICE inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400u));
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return bits_to_f32(u);
}

MF_HOST_DEVICE inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow (after rounding) -> inf
  if (a < 0x38800000u) {  // result is subnormal or zero: round at the subnormal grid (2^-24)
    float scaled = bits_to_f32(a) * 16777216.0f;  // exact: |f| < 2^-14, scaled < 1024
    float r = round_half_even(scaled);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  uint32_t exp = (a >> 23) - 127 + 15;
  uint32_t man = a & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

// splitmix64: a strong 64-bit mix; the dropout mask of element group g is u(seed, offset + g).
MF_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits (exact in float32).
MF_HOST_DEVICE inline float uniform01(uint64_t seed, uint64_t index) {
  uint64_t r = mix64(mix64(seed) ^ index);
  return static_cast<float>(r >> 40) * (1.0f / 16777216.0f);
}

// A standard normal draw for element `index` (Box-Muller on two counter-based uniforms, 53-bit).
// With limit > 0, draws beyond +-limit are redrawn from later counters (a truncated normal).
inline double normal01(uint64_t seed, uint64_t index, double limit) {
  for (uint64_t round = 0;; ++round) {
    uint64_t base = (index * 2 + round * 0x9e3779b97f4a7c15ull) * 2;
    double u1 = (static_cast<double>(mix64(mix64(seed) ^ base) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = static_cast<double>(mix64(mix64(seed) ^ (base + 1)) >> 11) * (1.0 / 9007199254740992.0);
    double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    if (limit <= 0 || std::fabs(z) <= limit) return z;
  }
}

}  // namespace mf
