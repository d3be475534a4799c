// tensor.h: the view every kernel sees. A TensorView is a pointer, a dtype and a row-major contiguous
// shape; it owns nothing. Absent optional tensors are views with data == nullptr.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mf {

// Keep in sync with lib/dtype.ts DTYPE_CODE.
enum class DType : int32_t {
  f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i64 = 4, i32 = 5, i16 = 6, i8 = 7, u8 = 8, boolean = 9,
};
constexpr int kNumDTypes = 10;

size_t dtype_size(DType d);
const char* dtype_name(DType d);

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0};
  int32_t device = 0;  // where data lives: 0 host, 1 CUDA device (see memory.h)

  bool present() const { return data != nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // Size of dimension i; negative i counts from the end.
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  // Product of all dimensions but the last: the "rows" of a channels-last activation (also when the
  // last dimension is 0).
  int64_t rows() const {
    int64_t r = 1;
    for (int i = 0; i + 1 < ndim; ++i) r *= shape[i];
    return r;
  }
  template <typename T> T* as() const { return static_cast<T*>(data); }
  float* f() const { return static_cast<float*>(data); }
  std::string shape_str() const;
};

}  // namespace mf
