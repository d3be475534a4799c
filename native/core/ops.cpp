// ops.cpp: op names, argument checks shared by every backend, the registry and run_op().
// The checks here are the contract of ops.def: kernels may rely on them.
#include <cmath>
#include <cstring>
#include <string>

#include "backend.h"
#include "check.h"

namespace mf {

static const char* const kOpNames[] = {
#define MF_OP(name) #name,
#include "ops.def"
#undef MF_OP
};

const char* op_name(OpId op) {
  int i = static_cast<int>(op);
  return (i >= 0 && i < kNumOps) ? kOpNames[i] : "unknown-op";
}

// ---------------------------------------------------------------------------------------------------
// Registry

static Backend& mutable_backend(const char* name) {
  static Backend ref{"ref", true, {}, {}};
  static Backend cpu{"cpu", false, {}, {}};
  static Backend cuda{"cuda", false, {}, {}, 1};
  if (std::strcmp(name, "ref") == 0) return ref;
  if (std::strcmp(name, "cpu") == 0) return cpu;
  if (std::strcmp(name, "cuda") == 0) return cuda;
  throw Error(ErrorKind::generic, std::string("unknown backend ") + name);
}

static bool& inherit_flag(OpId op) {
  static bool flags[kNumOps] = {};
  return flags[static_cast<int>(op)];
}

Registrar::Registrar(const char* backend, OpId op, Kernel fwd, Kernel bwd) {
  Backend& be = mutable_backend(backend);
  be.fwd[static_cast<int>(op)] = fwd;
  be.bwd[static_cast<int>(op)] = bwd;
}

Inheritor::Inheritor(const char* backend, OpId op) {
  if (std::strcmp(backend, "cpu") != 0) throw Error(ErrorKind::generic, "only the cpu backend inherits kernels");
  inherit_flag(op) = true;
}

const Backend& ref_backend() { return mutable_backend("ref"); }

const Backend& cpu_backend() {
  static bool resolved = [] {
    Backend& cpu = mutable_backend("cpu");
    const Backend& ref = ref_backend();
    // The fast kernels need AVX2 and FMA; without them the cpu backend runs the reference kernels.
    bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    for (int i = 0; i < kNumOps; ++i) {
      if (!fast) {
        cpu.fwd[i] = ref.fwd[i];
        cpu.bwd[i] = ref.bwd[i];
        continue;
      }
      if (!inherit_flag(static_cast<OpId>(i))) continue;
      if (!cpu.fwd[i]) cpu.fwd[i] = ref.fwd[i];
      if (!cpu.bwd[i]) cpu.bwd[i] = ref.bwd[i];
    }
    return true;
  }();
  (void)resolved;
  return mutable_backend("cpu");
}

const Backend& cuda_backend() { return mutable_backend("cuda"); }

void use_cpu_kernels_for_cuda_backend() {
  const Backend& cpu = cpu_backend();
  Backend& cuda = mutable_backend("cuda");
  for (int i = 0; i < kNumOps; ++i) {
    cuda.fwd[i] = cpu.fwd[i];
    cuda.bwd[i] = cpu.bwd[i];
  }
}

bool supports_op(const Backend& be, OpId op, Dir dir) {
  int i = static_cast<int>(op);
  if (i < 0 || i >= kNumOps) return false;
  return (dir == Dir::forward ? be.fwd[i] : be.bwd[i]) != nullptr;
}

// ---------------------------------------------------------------------------------------------------
// Checks

namespace {

std::string shape_of(const TensorView& t) { return t.present() ? t.shape_str() : "null"; }

struct Checker {
  const char* op;
  const OpArgs& a;
  DType ft = DType::f32;  // the float dtype of this call

  void arity(int n_in, int n_out, int n_attr) const {
    if (a.n_in != n_in || a.n_out != n_out || a.n_attr < n_attr)
      throw Error(ErrorKind::type, std::string(op) + ": expected " + std::to_string(n_in) + " inputs, " +
                                       std::to_string(n_out) + " outputs and " + std::to_string(n_attr) +
                                       " attributes but received " + std::to_string(a.n_in) + ", " +
                                       std::to_string(a.n_out) + " and " + std::to_string(a.n_attr));
  }
  // The first float tensor fixes the dtype of the call.
  void set_float(const char* name, const TensorView& t) {
    expect_float(op, name, t);
    ft = t.dtype;
  }
  void flt(const char* name, const TensorView& t) const {
    expect_present(op, name, t);
    if (t.dtype != ft) expect_dtype(op, name, t, ft);
  }
  bool opt_flt(const char* name, const TensorView& t) const {
    if (!t.present()) return false;
    flt(name, t);
    return true;
  }
  void like(const char* name, const TensorView& t, const TensorView& ref) const {
    flt(name, t);
    expect_same_shape(op, name, t, ref);
  }
  void opt_like(const char* name, const TensorView& t, const TensorView& ref) const {
    if (t.present()) like(name, t, ref);
  }
  void vec(const char* name, const TensorView& t, int64_t n) const {
    flt(name, t);
    expect_shape(op, name, t, {n});
  }
  void opt_vec(const char* name, const TensorView& t, int64_t n) const {
    if (t.present()) vec(name, t, n);
  }
  void scalar1(const char* name, const TensorView& t) const {
    flt(name, t);
    expect_numel(op, name, t, 1);
  }
  double attr(int i, const char* name) const {
    expect_finite(op, name, a.attr[i]);
    return a.attr[i];
  }
  int64_t int_attr(int i, const char* name, int64_t lo) const {
    double v = attr(i, name);
    if (v != std::floor(v) || v < static_cast<double>(lo) || v > 9.0e15)
      fail(ErrorKind::range, op, "an integer >= " + std::to_string(lo), name, std::to_string(v));
    return static_cast<int64_t>(v);
  }
  // out must equal `dims`
  void shaped(const char* name, const TensorView& t, const int64_t* dims, int nd) const {
    flt(name, t);
    bool ok = t.ndim == nd;
    for (int i = 0; ok && i < nd; ++i) ok = t.shape[i] == dims[i];
    if (!ok) {
      TensorView want;
      want.data = t.data ? t.data : reinterpret_cast<void*>(1);
      want.ndim = nd;
      for (int i = 0; i < nd; ++i) want.shape[i] = dims[i];
      fail(ErrorKind::range, op, "shape " + want.shape_str(), name, shape_of(t));
    }
  }
};

void check_linear(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(3, fwd ? 1 : 3, 0);
  const TensorView& x = a.in[fwd ? 0 : 1];  // [..., K]
  const TensorView& w = a.in[fwd ? 1 : 2];  // [N, K]
  c.set_float("x", x);
  expect_min_rank(c.op, "x", x, 1);
  c.flt("w", w);
  expect_rank(c.op, "w", w, 2);
  int64_t n = w.shape[0], k = w.shape[1];
  expect_true(x.dim(-1) == k, ErrorKind::range, c.op, [&] { return "last dimension " + std::to_string(k) + " (w is " + w.shape_str() + ")"; },
              "x", [&] { return x.shape_str(); });
  int64_t ydims[kMaxDims];  // [..., N]
  for (int i = 0; i < x.ndim; ++i) ydims[i] = x.shape[i];
  ydims[x.ndim - 1] = n;
  if (fwd) {
    c.opt_vec("b", a.in[2], n);
    c.shaped("y", a.out[0], ydims, x.ndim);
  } else {
    c.shaped("dy", a.in[0], ydims, x.ndim);
    c.opt_like("dx", a.out[0], x);
    c.opt_like("dw", a.out[1], w);
    c.opt_vec("db", a.out[2], n);
  }
}

void check_conv2d(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  c.arity(3, dir == Dir::forward ? 1 : 3, 3);
  const TensorView& x = a.in[dir == Dir::forward ? 0 : 1];
  const TensorView& w = a.in[dir == Dir::forward ? 1 : 2];
  int64_t stride = c.int_attr(0, "stride", 1);
  int64_t pad = c.int_attr(1, "padding", 0);
  int64_t nchw = c.int_attr(2, "in_nchw", 0);
  expect_true(nchw <= 1, ErrorKind::range, c.op, "0 or 1", "in_nchw", [&] { return std::to_string(nchw); });
  c.set_float("x", x);
  expect_rank(c.op, "x", x, 4);
  c.flt("w", w);
  expect_rank(c.op, "w", w, 4);
  int64_t b = x.shape[0], h = nchw ? x.shape[2] : x.shape[1], wd = nchw ? x.shape[3] : x.shape[2];
  int64_t ci = nchw ? x.shape[1] : x.shape[3];
  int64_t co = w.shape[0], kh = w.shape[2], kw = w.shape[3];
  expect_true(w.shape[1] == ci, ErrorKind::range, c.op, [&] { return std::to_string(ci) + " input channels (from x)"; }, "w",
              [&] { return w.shape_str(); });
  int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
  expect_true(h + 2 * pad >= kh && wd + 2 * pad >= kw, ErrorKind::range, c.op,
              "an input at least as large as the kernel after padding", "x", [&] { return x.shape_str(); });
  int64_t ydims[4] = {b, ho, wo, co};
  if (dir == Dir::forward) {
    c.opt_vec("b", a.in[2], co);
    c.shaped("y", a.out[0], ydims, 4);
  } else {
    c.shaped("dy", a.in[0], ydims, 4);
    c.opt_like("dx", a.out[0], x);
    c.opt_like("dw", a.out[1], w);
    c.opt_vec("db", a.out[2], co);
  }
}

void check_dwconv2d(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  c.arity(3, dir == Dir::forward ? 1 : 3, 0);
  const TensorView& x = a.in[dir == Dir::forward ? 0 : 1];
  const TensorView& w = a.in[dir == Dir::forward ? 1 : 2];
  c.set_float("x", x);
  expect_rank(c.op, "x", x, 4);
  int64_t ch = x.shape[3];
  c.flt("w", w);
  expect_rank(c.op, "w", w, 4);
  expect_true(w.shape[0] == ch && w.shape[1] == 1 && (w.shape[2] & 1) && (w.shape[3] & 1), ErrorKind::range,
              c.op, [&] { return "shape [" + std::to_string(ch) + ", 1, k, k] with odd k"; }, "w", [&] { return w.shape_str(); });
  if (dir == Dir::forward) {
    c.opt_vec("b", a.in[2], ch);
    c.like("y", a.out[0], x);
  } else {
    c.like("dy", a.in[0], x);
    c.opt_like("dx", a.out[0], x);
    c.opt_like("dw", a.out[1], w);
    c.opt_vec("db", a.out[2], ch);
  }
}

void check_layernorm(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(fwd ? 3 : 5, 3, 2);
  const TensorView& x = a.in[fwd ? 0 : 1];
  const TensorView& w = a.in[fwd ? 1 : 2];
  double eps = c.attr(0, "eps");
  expect_true(eps >= 0, ErrorKind::range, c.op, "eps >= 0", "eps", [&] { return std::to_string(eps); });
  int64_t group = c.int_attr(1, "group", 1);
  c.set_float("x", x);
  expect_min_rank(c.op, "x", x, 1);
  int64_t ch = x.dim(-1);
  expect_true(ch == 0 || (x.numel() % group == 0 && group % ch == 0), ErrorKind::range, c.op,
              "a group size that divides the input and is a multiple of its last dimension", "group",
              [&] { return std::to_string(group) + " with x " + x.shape_str(); });
  int64_t rows = x.numel() / group;
  c.opt_vec("w", w, ch);
  if (fwd) {
    c.opt_vec("b", a.in[2], ch);
    c.like("y", a.out[0], x);
    c.opt_vec("mean", a.out[1], rows);
    c.opt_vec("rstd", a.out[2], rows);
  } else {
    c.like("dy", a.in[0], x);
    c.vec("mean", a.in[3], rows);
    c.vec("rstd", a.in[4], rows);
    c.opt_like("dx", a.out[0], x);
    c.opt_vec("dw", a.out[1], ch);
    c.opt_vec("db", a.out[2], ch);
    expect_true(!a.out[1].present() || w.present(), ErrorKind::type, c.op, "w when dw is requested", "w", "null");
  }
}

void check_starrelu(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  if (dir == Dir::forward) {
    c.arity(3, 1, 0);
    c.set_float("x", a.in[0]);
    if (a.in[1].present()) c.scalar1("scale", a.in[1]);
    if (a.in[2].present()) c.scalar1("bias", a.in[2]);
    c.like("y", a.out[0], a.in[0]);
  } else {
    c.arity(3, 3, 0);
    c.set_float("x", a.in[1]);
    c.like("dy", a.in[0], a.in[1]);
    if (a.in[2].present()) c.scalar1("scale", a.in[2]);
    c.opt_like("dx", a.out[0], a.in[1]);
    if (a.out[1].present()) c.scalar1("dscale", a.out[1]);
    if (a.out[2].present()) c.scalar1("dbias", a.out[2]);
  }
}

void check_attention(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(fwd ? 1 : 4, fwd ? 2 : 1, 2);
  int64_t hd = c.int_attr(0, "head_dim", 1);
  c.attr(1, "scale");
  const TensorView& qkv = a.in[fwd ? 0 : 1];
  c.set_float("qkv", qkv);
  expect_rank(c.op, "qkv", qkv, 3);
  int64_t b = qkv.shape[0], n = qkv.shape[1], c3 = qkv.shape[2];
  expect_true(c3 % (3 * hd) == 0 && c3 > 0, ErrorKind::range, c.op,
              [&] { return "a last dimension that is a multiple of 3 * head_dim = " + std::to_string(3 * hd); }, "qkv",
              [&] { return qkv.shape_str(); });
  int64_t A = c3 / 3, heads = A / hd;
  int64_t odims[3] = {b, n, A}, ldims[3] = {b, heads, n};
  if (fwd) {
    c.shaped("o", a.out[0], odims, 3);
    if (a.out[1].present()) c.shaped("lse", a.out[1], ldims, 3);
  } else {
    c.shaped("do", a.in[0], odims, 3);
    c.shaped("o", a.in[2], odims, 3);
    c.shaped("lse", a.in[3], ldims, 3);
    c.like("dqkv", a.out[0], qkv);
  }
}

void check_random_mixing(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(fwd ? 2 : 3, fwd ? 1 : 2, 0);
  const TensorView& x = a.in[fwd ? 0 : 1];
  const TensorView& r = a.in[fwd ? 1 : 2];
  c.set_float("x", x);
  expect_rank(c.op, "x", x, 3);
  c.flt("random_matrix", r);
  int64_t n = x.shape[1];
  expect_shape(c.op, "random_matrix", r, {n, n});
  if (fwd) {
    c.like("y", a.out[0], x);
  } else {
    c.like("dy", a.in[0], x);
    c.opt_like("dx", a.out[0], x);
    c.opt_like("drandom_matrix", a.out[1], r);
  }
}

void check_pool(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  c.arity(1, 1, 0);
  c.set_float(dir == Dir::forward ? "x" : "dy", a.in[0]);
  expect_rank(c.op, dir == Dir::forward ? "x" : "dy", a.in[0], 4);
  c.like(dir == Dir::forward ? "y" : "dx", a.out[0], a.in[0]);
}

void check_scale_add(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(fwd ? 3 : 3, fwd ? 1 : 3, 0);
  const TensorView& x = a.in[fwd ? 0 : 1];
  const TensorView& s = a.in[fwd ? 1 : 2];
  c.set_float("x", x);
  expect_min_rank(c.op, "x", x, 1);
  c.opt_vec("scale", s, x.dim(-1));
  if (fwd) {
    c.opt_like("r", a.in[2], x);
    c.like("y", a.out[0], x);
  } else {
    c.like("dy", a.in[0], x);
    c.opt_like("dx", a.out[0], x);
    if (a.out[1].present()) {
      expect_true(s.present(), ErrorKind::type, c.op, "scale when dscale is requested", "scale", "null");
      c.like("dscale", a.out[1], s);
    }
    c.opt_like("dr", a.out[2], x);
  }
}

void check_mean_hw(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  c.arity(1, 1, 0);
  const TensorView& big = dir == Dir::forward ? a.in[0] : a.out[0];
  const TensorView& small = dir == Dir::forward ? a.out[0] : a.in[0];
  c.set_float(dir == Dir::forward ? "x" : "dy", dir == Dir::forward ? big : small);
  expect_min_rank(c.op, dir == Dir::forward ? "x" : "dx", big, 3);
  int64_t dims[2] = {big.shape[0], big.dim(-1)};
  c.shaped(dir == Dir::forward ? "y" : "dy", small, dims, 2);
  c.flt(dir == Dir::forward ? "x" : "dx", big);
}

void check_target(Checker& c, const TensorView& logits, const TensorView& t) {
  expect_present(c.op, "target", t);
  int64_t b = logits.shape[0], k = logits.shape[1];
  if (t.dtype == DType::i32 || t.dtype == DType::i64) {
    expect_shape(c.op, "target", t, {b});
    if (t.device != 0) return;  // device memory: the device kernel checks the ids and reports them
    for (int64_t i = 0; i < b; ++i) {
      int64_t v = t.dtype == DType::i32 ? t.as<int32_t>()[i] : t.as<int64_t>()[i];
      if (v < 0 || v >= k)
        fail(ErrorKind::range, c.op, "class ids in [0, " + std::to_string(k) + ")", "target",
             std::to_string(v) + " at index " + std::to_string(i));
    }
  } else {
    c.flt("target", t);
    expect_shape(c.op, "target", t, {b, k});
  }
}

void check_cross_entropy(Checker& c, Dir dir) {
  const OpArgs& a = c.a;
  bool fwd = dir == Dir::forward;
  c.arity(fwd ? 2 : 3, 1, 1);
  double ls = c.attr(0, "label_smoothing");
  expect_true(ls >= 0 && ls < 1, ErrorKind::range, c.op, "a label smoothing in [0, 1)", "label_smoothing",
              [&] { return std::to_string(ls); });
  const TensorView& logits = a.in[fwd ? 0 : 1];
  c.set_float("logits", logits);
  expect_rank(c.op, "logits", logits, 2);
  expect_true(logits.shape[0] > 0 && logits.shape[1] > 0, ErrorKind::range, c.op, "a non-empty batch",
              "logits", [&] { return logits.shape_str(); });
  check_target(c, logits, a.in[fwd ? 1 : 2]);
  if (fwd) {
    c.scalar1("loss", a.out[0]);
  } else {
    c.scalar1("dloss", a.in[0]);
    c.like("dlogits", a.out[0], logits);
  }
}

void check_dropout(Checker& c, Dir) {
  const OpArgs& a = c.a;
  c.arity(1, 1, 4);
  double p = c.attr(0, "p");
  expect_true(p >= 0 && p < 1, ErrorKind::range, c.op, "a probability in [0, 1)", "p", [&] { return std::to_string(p); });
  int64_t group = c.int_attr(1, "group", 1);
  c.int_attr(2, "seed", 0);
  c.int_attr(3, "offset", 0);
  c.set_float("x", a.in[0]);
  expect_true(a.in[0].numel() % group == 0, ErrorKind::range, c.op, "a group size that divides the input",
              "group", [&] { return std::to_string(group) + " with x " + a.in[0].shape_str(); });
  c.like("y", a.out[0], a.in[0]);
}

void check_inplace_binary(Checker& c, int n_attr) {
  const OpArgs& a = c.a;
  c.arity(1, 1, n_attr);
  for (int i = 0; i < n_attr; ++i) c.attr(i, "a");
  c.set_float("y", a.out[0]);
  c.like("x", a.in[0], a.out[0]);
}

void check_unary_inplace(Checker& c) {
  c.arity(0, 1, 1);
  c.attr(0, "value");
  c.set_float("y", c.a.out[0]);
}

void check_sumsq(Checker& c) {
  c.arity(1, 1, 0);
  c.set_float("x", c.a.in[0]);
  expect_dtype(c.op, "s", c.a.out[0], DType::f64);
  expect_numel(c.op, "s", c.a.out[0], 1);
}

void check_cast(Checker& c) {
  c.arity(1, 1, 0);
  expect_present(c.op, "x", c.a.in[0]);
  expect_present(c.op, "y", c.a.out[0]);
  expect_numel(c.op, "y", c.a.out[0], c.a.in[0].numel());
}

void check_permute(Checker& c) {
  const OpArgs& a = c.a;
  const TensorView& x = a.in[0];
  c.arity(1, 1, 0);
  expect_present(c.op, "x", x);
  expect_true(a.n_attr == x.ndim, ErrorKind::range, c.op, "one permutation entry per dimension of x",
              "perm", [&] { return std::to_string(a.n_attr) + " entries for x " + x.shape_str(); });
  int64_t dims[kMaxDims];
  bool seen[kMaxDims] = {};
  for (int i = 0; i < x.ndim; ++i) {
    int64_t p = c.int_attr(i, "perm", 0);
    expect_true(p < x.ndim && !seen[p], ErrorKind::range, c.op, "a permutation of the dimensions", "perm",
                [&] { return std::to_string(p) + " at position " + std::to_string(i); });
    seen[p] = true;
    dims[i] = x.shape[p];
  }
  expect_same_dtype(c.op, "y", a.out[0], x);
  expect_present(c.op, "y", a.out[0]);
  bool ok = a.out[0].ndim == x.ndim;
  for (int i = 0; ok && i < x.ndim; ++i) ok = a.out[0].shape[i] == dims[i];
  if (!ok) fail(ErrorKind::range, c.op, "the permuted shape of x " + x.shape_str(), "y", a.out[0].shape_str());
}

void check_optimizer(Checker& c, int n_out, int n_attr, bool last_optional) {
  const OpArgs& a = c.a;
  c.arity(1, n_out, n_attr);
  for (int i = 0; i < n_attr; ++i) c.attr(i, "hyper-parameter");
  c.set_float("grad", a.in[0]);
  const char* names[3] = {"param", "state1", "state2"};
  for (int i = 0; i < n_out; ++i) {
    if (last_optional && i == n_out - 1 && !a.out[i].present()) continue;
    c.like(names[i], a.out[i], a.in[0]);
  }
}

}  // namespace

void check_op(OpId op, Dir dir, const OpArgs& args) {
  Checker c{op_name(op), args};
  switch (op) {
    case OpId::linear: return check_linear(c, dir);
    case OpId::conv2d: return check_conv2d(c, dir);
    case OpId::dwconv2d: return check_dwconv2d(c, dir);
    case OpId::layernorm: return check_layernorm(c, dir);
    case OpId::starrelu: return check_starrelu(c, dir);
    case OpId::attention: return check_attention(c, dir);
    case OpId::random_mixing: return check_random_mixing(c, dir);
    case OpId::pool: return check_pool(c, dir);
    case OpId::scale_add: return check_scale_add(c, dir);
    case OpId::mean_hw: return check_mean_hw(c, dir);
    case OpId::cross_entropy: return check_cross_entropy(c, dir);
    case OpId::dropout: return check_dropout(c, dir);
    case OpId::axpy: return check_inplace_binary(c, 1);
    case OpId::lerp: return check_inplace_binary(c, 1);
    case OpId::scale: return check_unary_inplace(c);
    case OpId::fill: return check_unary_inplace(c);
    case OpId::sumsq: return check_sumsq(c);
    case OpId::cast: return check_cast(c);
    case OpId::permute: return check_permute(c);
    case OpId::adamw: return check_optimizer(c, 3, 7, false);
    case OpId::lamb: return check_optimizer(c, 3, 8, false);
    case OpId::sgd: return check_optimizer(c, 2, 7, true);
    case OpId::fused_linear: {
      c.arity(5, 1, 2);
      int64_t act = c.int_attr(0, "act", 0);
      int64_t acc = c.int_attr(1, "accumulate", 0);
      expect_true(act <= 2 && acc <= 1, ErrorKind::range, c.op, "act in {0, 1, 2} and accumulate in {0, 1}", "attrs",
                  [&] { return std::to_string(act) + ", " + std::to_string(acc); });
      OpArgs lin = args;  // x, w, b -> y: the linear checks
      lin.n_in = 3;
      lin.n_attr = 0;
      Checker lc{c.op, lin};
      check_linear(lc, Dir::forward);
      c.ft = lc.ft;
      if (act == 1) {
        c.scalar1("scale", args.in[3]);
        c.scalar1("bias", args.in[4]);
      }
      return;
    }
    case OpId::normal: {
      c.arity(0, 1, 4);
      c.attr(0, "mean");
      double sd = c.attr(1, "std");
      expect_true(sd >= 0, ErrorKind::range, c.op, "std >= 0", "std", [&] { return std::to_string(sd); });
      c.int_attr(2, "seed", 0);
      double lim = c.attr(3, "limit");
      expect_true(lim == 0 || lim >= 0.5, ErrorKind::range, c.op, "0 or a limit >= 0.5", "limit", [&] { return std::to_string(lim); });
      c.set_float("y", args.out[0]);
      return;
    }
    case OpId::count_: break;
  }
  throw Error(ErrorKind::range, "unknown op id " + std::to_string(static_cast<int>(op)));
}

static bool uses_f64(const OpArgs& a) {
  for (int i = 0; i < a.n_in; ++i)
    if (a.in[i].present() && a.in[i].dtype == DType::f64) return true;
  for (int i = 0; i < a.n_out; ++i)
    if (a.out[i].present() && a.out[i].dtype == DType::f64) return true;
  return false;
}

// Every tensor of a call must live where the backend's kernels run.
static void check_devices(const Backend& be, OpId op, const OpArgs& a) {
  static const char* const kDevice[] = {"cpu", "cuda"};
  auto dev = [](int32_t d) { return d == 0 || d == 1 ? kDevice[d] : "unknown-device"; };
  for (int k = 0; k < 2; ++k) {
    const TensorView* ts = k == 0 ? a.in : a.out;
    int n = k == 0 ? a.n_in : a.n_out;
    for (int i = 0; i < n; ++i)
      if (ts[i].present() && ts[i].device != be.device)
        throw Error(ErrorKind::type, std::string(op_name(op)) + ": expected a " + dev(be.device) + " tensor for " +
                                         (k == 0 ? "input " : "output ") + std::to_string(i) + " (the " + be.name +
                                         " backend runs on " + dev(be.device) + ") but received a " +
                                         dev(ts[i].device) + " tensor; move tensors with .to()");
  }
}

namespace {
thread_local PlanContext t_plan_context;
}

const PlanContext& plan_context() { return t_plan_context; }
PlanContextScope::PlanContextScope(const PlanContext& c) : prev_(t_plan_context) { t_plan_context = c; }
PlanContextScope::~PlanContextScope() { t_plan_context = prev_; }

void run_op(const Backend& be, OpId op, Dir dir, const OpArgs& args) {
  check_devices(be, op, args);
  check_op(op, dir, args);
  if (!supports_op(be, op, dir))
    throw Error(ErrorKind::generic, std::string(op_name(op)) + ": the " + be.name + " backend has no " +
                                        (dir == Dir::forward ? "forward" : "backward") + " kernel");
  if (op != OpId::sumsq && op != OpId::cast && !be.supports_f64 && uses_f64(args))
    throw Error(ErrorKind::type, std::string(op_name(op)) + ": expected float32 tensors for the " + be.name +
                                     " backend but received float64 (only the ref backend computes in float64)");
  Kernel k = dir == Dir::forward ? be.fwd[static_cast<int>(op)] : be.bwd[static_cast<int>(op)];
  k(args);
}

}  // namespace mf
