// ref.h: shared pieces of the reference backend. Reference kernels are plain loops, written for
// clarity, templated on the element type (float32 and float64), accumulating in double.
#pragma once
#include "../core/backend.h"
#include "../core/check.h"

namespace mf::ref {

// The float dtype of a call: that of its first present float tensor.
inline DType call_dtype(const OpArgs& a) {
  for (int i = 0; i < a.n_in; ++i)
    if (a.in[i].present() && (a.in[i].dtype == DType::f32 || a.in[i].dtype == DType::f64)) return a.in[i].dtype;
  for (int i = 0; i < a.n_out; ++i)
    if (a.out[i].present() && (a.out[i].dtype == DType::f32 || a.out[i].dtype == DType::f64)) return a.out[i].dtype;
  return DType::f32;
}

template <typename T>
inline T* ptr(const TensorView& t) {
  return static_cast<T*>(t.data);
}

}  // namespace mf::ref

// Wraps a kernel template `fn<T>(const OpArgs&)` into a Kernel that picks T from the call's dtype.
#define MF_REF_KERNEL(fn)                                                           \
  [](const ::mf::OpArgs& a) {                                                       \
    if (::mf::ref::call_dtype(a) == ::mf::DType::f64) fn<double>(a); else fn<float>(a); \
  }
