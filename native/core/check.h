// check.h: throwing checks. Native code never aborts: a failed check throws mf::Error carrying the op
// name, what was expected and what was received; the binding turns it into a JS TypeError/RangeError.
#pragma once
#include <stdexcept>
#include <string>
#include <type_traits>

#include "tensor.h"

namespace mf {

enum class ErrorKind { type, range, generic };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// "<op>: expected <what> for <name> but received <got>"
[[noreturn]] void fail(ErrorKind kind, const char* op, const std::string& what, const char* name,
                       const std::string& got);

// Shape-checking helpers used by the op checks in core/ops.cpp. `name` is the argument's role.
void expect_present(const char* op, const char* name, const TensorView& t);
void expect_dtype(const char* op, const char* name, const TensorView& t, DType d);
void expect_float(const char* op, const char* name, const TensorView& t);  // f32 or f64
void expect_rank(const char* op, const char* name, const TensorView& t, int ndim);
void expect_min_rank(const char* op, const char* name, const TensorView& t, int ndim);
void expect_shape(const char* op, const char* name, const TensorView& t, std::initializer_list<int64_t> shape);
void expect_same_shape(const char* op, const char* name, const TensorView& t, const TensorView& like);
void expect_numel(const char* op, const char* name, const TensorView& t, int64_t n);
void expect_same_dtype(const char* op, const char* name, const TensorView& t, const TensorView& like);
void expect_finite(const char* op, const char* name, double v);

namespace detail {
template <class S>
std::string message_part(const S& s) {
  if constexpr (std::is_invocable_v<const S&>) return s();
  else return std::string(s);
}
}  // namespace detail

// Fails unless cond. `what` and `got` are strings or callables returning one: callers pass a lambda
// for a part that takes formatting, so a check that passes (every op call) formats nothing.
template <class What, class Got>
void expect_true(bool cond, ErrorKind kind, const char* op, const What& what, const char* name, const Got& got) {
  if (!cond) fail(kind, op, detail::message_part(what), name, detail::message_part(got));
}

}  // namespace mf
