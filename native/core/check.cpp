// check.cpp: the throwing checks of check.h, all producing one message style:
//   "<op>: expected <what> for <name> but received <got>"
#include "check.h"

#include <cmath>
#include <initializer_list>

namespace mf {

void fail(ErrorKind kind, const char* op, const std::string& what, const char* name, const std::string& got) {
  throw Error(kind, std::string(op) + ": expected " + what + " for " + name + " but received " + got);
}

static std::string describe(const TensorView& t) {
  if (!t.present()) return "null";
  return std::string(dtype_name(t.dtype)) + " tensor of shape " + t.shape_str();
}

void expect_present(const char* op, const char* name, const TensorView& t) {
  if (!t.present()) fail(ErrorKind::type, op, "a tensor", name, "null");
}

void expect_dtype(const char* op, const char* name, const TensorView& t, DType d) {
  expect_present(op, name, t);
  if (t.dtype != d) fail(ErrorKind::type, op, std::string("a ") + dtype_name(d) + " tensor", name, describe(t));
}

void expect_float(const char* op, const char* name, const TensorView& t) {
  expect_present(op, name, t);
  if (t.dtype != DType::f32 && t.dtype != DType::f64)
    fail(ErrorKind::type, op, "a float32 tensor", name, describe(t));
}

void expect_rank(const char* op, const char* name, const TensorView& t, int ndim) {
  expect_present(op, name, t);
  if (t.ndim != ndim) fail(ErrorKind::range, op, "a tensor of rank " + std::to_string(ndim), name, describe(t));
}

void expect_min_rank(const char* op, const char* name, const TensorView& t, int ndim) {
  expect_present(op, name, t);
  if (t.ndim < ndim)
    fail(ErrorKind::range, op, "a tensor of rank >= " + std::to_string(ndim), name, describe(t));
}

void expect_shape(const char* op, const char* name, const TensorView& t, std::initializer_list<int64_t> shape) {
  expect_present(op, name, t);
  bool ok = t.ndim == static_cast<int>(shape.size());
  int i = 0;
  for (int64_t d : shape) {
    if (ok && t.shape[i] != d) ok = false;
    ++i;
  }
  if (!ok) {
    std::string s = "shape [";
    i = 0;
    for (int64_t d : shape) s += (i++ ? ", " : "") + std::to_string(d);
    fail(ErrorKind::range, op, s + "]", name, describe(t));
  }
}

void expect_same_shape(const char* op, const char* name, const TensorView& t, const TensorView& like) {
  expect_present(op, name, t);
  bool ok = t.ndim == like.ndim;
  for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[i] == like.shape[i];
  if (!ok) fail(ErrorKind::range, op, "shape " + like.shape_str(), name, describe(t));
}

void expect_numel(const char* op, const char* name, const TensorView& t, int64_t n) {
  expect_present(op, name, t);
  if (t.numel() != n) fail(ErrorKind::range, op, std::to_string(n) + " elements", name, describe(t));
}

void expect_same_dtype(const char* op, const char* name, const TensorView& t, const TensorView& like) {
  expect_present(op, name, t);
  if (t.dtype != like.dtype)
    fail(ErrorKind::type, op, std::string("a ") + dtype_name(like.dtype) + " tensor", name, describe(t));
}

void expect_finite(const char* op, const char* name, double v) {
  if (!std::isfinite(v)) fail(ErrorKind::range, op, "a finite number", name, std::to_string(v));
}


}  // namespace mf
