// ref/util.cpp: utility ops used by autograd and the optimizers: axpy, scale, sumsq, lerp, fill,
// cast (any dtype to any dtype) and permute (any rank).
#include <cmath>
#include <cstring>

#include "../core/numeric.h"
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void axpy_fwd(const OpArgs& a) {  // y += alpha * x
  const T* X = ptr<T>(a.in[0]);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < a.out[0].numel(); ++i) Y[i] = static_cast<T>(Y[i] + a.attr[0] * X[i]);
}

template <typename T>
void scale_fwd(const OpArgs& a) {  // y *= alpha
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < a.out[0].numel(); ++i) Y[i] = static_cast<T>(Y[i] * a.attr[0]);
}

template <typename T>
void sumsq_fwd(const OpArgs& a) {  // s = sum x^2, in double
  const T* X = ptr<T>(a.in[0]);
  double acc = 0;
  for (int64_t i = 0; i < a.in[0].numel(); ++i) acc += static_cast<double>(X[i]) * X[i];
  a.out[0].as<double>()[0] = acc;
}

template <typename T>
void lerp_fwd(const OpArgs& a) {  // y += w * (x - y)
  const T* X = ptr<T>(a.in[0]);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < a.out[0].numel(); ++i) Y[i] = static_cast<T>(Y[i] + a.attr[0] * (X[i] - Y[i]));
}

template <typename T>
void fill_fwd(const OpArgs& a) {
  T* Y = ptr<T>(a.out[0]);
  for (int64_t i = 0; i < a.out[0].numel(); ++i) Y[i] = static_cast<T>(a.attr[0]);
}

double load(DType d, const void* p, int64_t i) {
  switch (d) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f64: return static_cast<const double*>(p)[i];
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::i64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::i32: return static_cast<const int32_t*>(p)[i];
    case DType::i16: return static_cast<const int16_t*>(p)[i];
    case DType::i8: return static_cast<const int8_t*>(p)[i];
    case DType::u8: return static_cast<const uint8_t*>(p)[i];
    case DType::boolean: return static_cast<const uint8_t*>(p)[i] != 0;
  }
  return 0;
}

void store(DType d, void* p, int64_t i, double v) {
  switch (d) {
    case DType::f32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(p)[i] = v; break;
    case DType::f16: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::bf16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::i64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::i32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::i16: static_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case DType::i8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case DType::u8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case DType::boolean: static_cast<uint8_t*>(p)[i] = v != 0; break;
  }
}

void cast_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &y = a.out[0];
  int64_t n = x.numel();
  if (x.dtype == y.dtype) {
    std::memmove(y.data, x.data, static_cast<size_t>(n) * dtype_size(x.dtype));
    return;
  }
  // f16 -> f32 and bf16 -> f32 are the checkpoint-loading hot paths; the rest go through double.
  if (y.dtype == DType::f32 && x.dtype == DType::f16) {
    for (int64_t i = 0; i < n; ++i) y.as<float>()[i] = f16_to_f32(x.as<uint16_t>()[i]);
    return;
  }
  if (y.dtype == DType::f32 && x.dtype == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) y.as<float>()[i] = bf16_to_f32(x.as<uint16_t>()[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(y.dtype, y.data, i, load(x.dtype, x.data, i));
}

void permute_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &y = a.out[0];
  int nd = x.ndim;
  size_t es = dtype_size(x.dtype);
  int64_t xstride[kMaxDims], perm[kMaxDims], idx[kMaxDims] = {0};
  int64_t s = 1;
  for (int i = nd - 1; i >= 0; --i) {
    xstride[i] = s;
    s *= x.shape[i];
  }
  for (int i = 0; i < nd; ++i) perm[i] = static_cast<int64_t>(a.attr[i]);
  const char* X = static_cast<const char*>(x.data);
  char* Y = static_cast<char*>(y.data);
  int64_t n = x.numel();
  for (int64_t o = 0; o < n; ++o) {  // o walks y in row-major order; idx is its multi-index
    int64_t src = 0;
    for (int i = 0; i < nd; ++i) src += idx[i] * xstride[perm[i]];
    std::memcpy(Y + o * es, X + src * es, es);
    for (int i = nd - 1; i >= 0; --i) {
      if (++idx[i] < y.shape[i]) break;
      idx[i] = 0;
    }
  }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, axpy, MF_REF_KERNEL(mf::ref::axpy_fwd), nullptr);
MF_REGISTER(ref, scale, MF_REF_KERNEL(mf::ref::scale_fwd), nullptr);
MF_REGISTER(ref, sumsq, MF_REF_KERNEL(mf::ref::sumsq_fwd), nullptr);
MF_REGISTER(ref, lerp, MF_REF_KERNEL(mf::ref::lerp_fwd), nullptr);
MF_REGISTER(ref, fill, MF_REF_KERNEL(mf::ref::fill_fwd), nullptr);
MF_REGISTER(ref, cast, mf::ref::cast_fwd, nullptr);
MF_REGISTER(ref, permute, mf::ref::permute_fwd, nullptr);

namespace mf::ref {
namespace {
template <typename T>
void normal_fwd(const OpArgs& a) {
  T* Y = ptr<T>(a.out[0]);
  uint64_t seed = static_cast<uint64_t>(a.attr[2]);
  for (int64_t i = 0; i < a.out[0].numel(); ++i)
    Y[i] = static_cast<T>(a.attr[0] + a.attr[1] * normal01(seed, static_cast<uint64_t>(i), a.attr[3]));
}
}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, normal, MF_REF_KERNEL(mf::ref::normal_fwd), nullptr);
