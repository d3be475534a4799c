// cuda/tests/check_ops.cpp: the CUDA backend against the reference backend, op by op, forward and
// backward, on random shapes that include odd, prime and just-past-tile sizes; plus timings of the
// depthwise-conv and attention kernels at MetaFormer shapes. A standalone program (no Node): core, the
// reference kernels and the CUDA kernels linked together (target metaformer_cuda_check, cmake/cuda.cmake).
//
//   metaformer_cuda_check [--ops] [--bench] [--quick] [--plans DIR] [--time-plans] [--precision fp32|bf16]
//                         [--backend ref|cuda] [--json FILE] [--filter TEXT] [--seed N] [--self-test]
//                         [--profile-targets]
//     --ops        every op and direction, ref vs cuda (the default when nothing else is asked)
//     --bench      kernel timings (CUDA events, median of many runs after warm-up), B = 1, 64, 256
//     --quick      bench with B = 1 and 64 only
//     --profile-targets  one launch of each kernel worth a hardware profile (check.sh's ncu stage)
//     --plans DIR  replay the exported model plans in DIR (run_plan.cpp) on --backend (default cuda),
//                  checking outputs against the expected data; --time-plans also times them;
//                  --precision bf16 replays them in bf16 precision (the logits within 2e-2 of the reference)
//     --json       also write one JSON object per line (checks and timings) to FILE
//     --self-test  run every op case through the reference on both sides, on the host (no GPU): checks
//                  that the cases themselves are valid
//
// Every written output is pre-filled with NaN on both sides, so an element a kernel skips fails; every
// accumulated (+=) output starts from the same random values on both sides. The metric is the relative
// L2 error ||cuda - ref|| / ||ref|| per output, against the tolerance table below (one place); ops with
// tolerance 0 must match bit for bit (the count of differing bytes is reported). Expected
// errors (bad class ids, mixed devices) must throw mf::Error, never crash. Exit status 1 on any failure.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../core/backend.h"
#include "../../core/check.h"
#include "../../core/memory.h"
#include "../../core/numeric.h"
#include "../cuda_common.h"
#include "../device.h"
#include "run_plan.h"

using namespace mf;

namespace {

// ---------------------------------------------------------------------------------------------------
// Tolerances: relative L2 error per output, by op (and direction where they differ). 0 = bit-exact.

double tolerance(OpId op, Dir dir) {
  switch (op) {
    case OpId::dropout:
    case OpId::cast:
    case OpId::permute:
    case OpId::fill:
      return 0.0;  // same arithmetic on both sides
    case OpId::sumsq:
      return 1e-12;  // double accumulation on both sides, different order
    case OpId::normal:  // device log/cos may differ from the host's in a double's last bit
    case OpId::axpy:
    case OpId::scale:
    case OpId::lerp:
    case OpId::adamw:
    case OpId::lamb:
    case OpId::sgd:
      return 1e-6;  // double arithmetic; the device may fuse multiply-adds
    case OpId::attention:
      return dir == Dir::forward ? 1e-5 : 2e-5;
    default:
      return 1e-5;  // fp32 kernels vs the double-accumulating reference
  }
}

// ---------------------------------------------------------------------------------------------------
// Host tensors

struct HT {
  bool present = false;
  DType dt = DType::f32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dt); }
  float* f() { return reinterpret_cast<float*>(bytes.data()); }
  TensorView view(void* data, int32_t device) const {
    TensorView v;
    if (!present) return v;
    v.data = data;
    v.dtype = dt;
    v.ndim = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
    v.device = device;
    return v;
  }
};

std::mt19937_64 g_rng(1234);

HT make(std::vector<int64_t> shape, DType dt = DType::f32) {
  HT t;
  t.present = true;
  t.dt = dt;
  t.shape = std::move(shape);
  t.bytes.assign(t.nbytes() ? t.nbytes() : 1, 0);
  return t;
}

HT randn(std::vector<int64_t> shape, double scale = 1.0, double mean = 0.0) {
  HT t = make(std::move(shape));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f()[i] = static_cast<float>(mean + scale * nd(g_rng));
  return t;
}

// Cheap random values in [-1.5, 1.5) for large timing inputs (a normal generator costs seconds there).
HT bench_random(std::vector<int64_t> shape, float scale = 1.0f) {
  HT t = make(std::move(shape));
  uint64_t z = g_rng();
  for (int64_t i = 0; i < t.numel(); ++i) {
    z ^= z << 13, z ^= z >> 7, z ^= z << 17;
    t.f()[i] = scale * (static_cast<float>(z >> 40) * (3.0f / 16777216.0f) - 1.5f);
  }
  return t;
}

HT uniform(std::vector<int64_t> shape, float lo, float hi) {
  HT t = make(std::move(shape));
  std::uniform_real_distribution<float> ud(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.f()[i] = ud(g_rng);
  return t;
}


HT nan_like(std::vector<int64_t> shape, DType dt = DType::f32) {
  HT t = make(std::move(shape), dt);
  if (dt == DType::f32)
    for (int64_t i = 0; i < t.numel(); ++i) t.f()[i] = std::nanf("");
  else if (dt == DType::f64)
    for (int64_t i = 0; i < t.numel(); ++i) reinterpret_cast<double*>(t.bytes.data())[i] = std::nan("");
  else
    std::fill(t.bytes.begin(), t.bytes.end(), 0xA5);  // a byte pattern a kernel must overwrite
  return t;
}

HT none() { return HT{}; }

// ---------------------------------------------------------------------------------------------------
// Cases

struct Case {
  std::string name;
  OpId op;
  Dir dir;
  std::vector<HT> in, out;
  std::vector<double> attr;
  // bf16 cases: the CUDA side runs in bf16 precision; the reference gets the inputs listed in `rounded`
  // rounded to bfloat16 (the matrix-product operands) and the case its own tolerance (tol >= 0).
  Precision prec = Precision::f32;
  std::vector<int> rounded = {};
  double tol = -1;
};

struct Result {
  int passed = 0, failed = 0;
};

FILE* g_json = nullptr;
std::string g_filter;
bool g_self_test = false;  // --self-test: the reference against itself on the host (checks the cases, no GPU)

void json_line(const std::string& s) {
  if (g_json) std::fprintf(g_json, "%s\n", s.c_str());
}

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

OpArgs args_of(const Case& c, const std::vector<void*>& in_data, const std::vector<void*>& out_data, int32_t device) {
  OpArgs a;
  a.n_in = static_cast<int>(c.in.size());
  a.n_out = static_cast<int>(c.out.size());
  a.n_attr = static_cast<int>(c.attr.size());
  for (int i = 0; i < a.n_in; ++i) a.in[i] = c.in[i].view(in_data[i], device);
  for (int i = 0; i < a.n_out; ++i) a.out[i] = c.out[i].view(out_data[i], device);
  for (int i = 0; i < a.n_attr; ++i) a.attr[i] = c.attr[i];
  return a;
}

// Relative L2 error of b against a (the reference), over the float values of an output.
double rel_l2(const HT& ref, const HT& got, double* max_abs) {
  double num = 0, den = 0, mx = 0;
  int64_t n = ref.numel();
  for (int64_t i = 0; i < n; ++i) {
    double r, g;
    switch (ref.dt) {
      case DType::f64:
        r = reinterpret_cast<const double*>(ref.bytes.data())[i];
        g = reinterpret_cast<const double*>(got.bytes.data())[i];
        break;
      case DType::f32:
        r = reinterpret_cast<const float*>(ref.bytes.data())[i];
        g = reinterpret_cast<const float*>(got.bytes.data())[i];
        break;
      default:  // integer and half types: compared bytewise by the caller
        r = g = 0;
    }
    double d = g == r ? 0.0 : g - r;  // equal infinities count as equal
    if (std::isnan(g) != std::isnan(r)) d = NAN;
    else if (std::isnan(g)) d = 0;
    num += d * d;
    den += r * r;
    mx = std::max(mx, std::fabs(d));
    if (std::isnan(d)) mx = NAN;
  }
  *max_abs = mx;
  if (std::isnan(num)) return NAN;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void run_case(const Case& c, Result& res) {
  std::string label = std::string(op_name(c.op)) + (c.dir == Dir::forward ? " fwd " : " bwd ") + c.name;
  if (!g_filter.empty() && label.find(g_filter) == std::string::npos) return;
  double tol = c.tol >= 0 ? c.tol : tolerance(c.op, c.dir);
  // Reference on the host (bf16 cases: on the rounded operands).
  std::vector<HT> ref_in = c.in;
  for (int i : c.rounded)
    for (int64_t k = 0; k < ref_in[static_cast<size_t>(i)].numel(); ++k) {
      float& v = ref_in[static_cast<size_t>(i)].f()[k];
      v = bf16_to_f32(f32_to_bf16(v));
    }
  std::vector<HT> ref_out = c.out;
  std::vector<void*> hin, hout;
  for (const HT& t : ref_in) hin.push_back(t.present ? const_cast<uint8_t*>(t.bytes.data()) : nullptr);
  for (HT& t : ref_out) hout.push_back(t.present ? t.bytes.data() : nullptr);
  std::string error;
  try {
    run_op(ref_backend(), c.op, c.dir, args_of(c, hin, hout, kHostDevice));
  } catch (const std::exception& e) {
    std::printf("FAIL  %-58s reference threw: %s\n", label.c_str(), e.what());
    res.failed++;
    return;
  }
  // CUDA.
  std::vector<HT> got = c.out;
  std::vector<void*> din, dout;
  if (g_self_test) {
    std::vector<void*> gout;
    for (HT& t : got) gout.push_back(t.present ? t.bytes.data() : nullptr);
    try {
      run_op(ref_backend(), c.op, c.dir, args_of(c, hin, gout, kHostDevice));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  try {
    if (g_self_test) throw std::runtime_error("");
    for (const HT& t : c.in) {
      void* p = nullptr;
      if (t.present) {
        p = cuda::device_alloc(t.nbytes());
        cuda::copy(p, 1, t.bytes.data(), 0, t.nbytes());
      }
      din.push_back(p);
    }
    for (const HT& t : c.out) {
      void* p = nullptr;
      if (t.present) {
        p = cuda::device_alloc(t.nbytes());
        cuda::copy(p, 1, t.bytes.data(), 0, t.nbytes());
      }
      dout.push_back(p);
    }
    PlanContext ctx;
    ctx.precision = c.prec;
    PlanContextScope scope(ctx);
    run_op(cuda_backend(), c.op, c.dir, args_of(c, din, dout, kCudaDevice));
    cuda::synchronize();
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i].present) cuda::copy(got[i].bytes.data(), 0, dout[i], 1, got[i].nbytes());
  } catch (const std::exception& e) {
    if (!g_self_test) error = e.what();
  }
  for (size_t i = 0; i < din.size(); ++i)
    if (din[i]) cuda::device_free(din[i], c.in[i].nbytes());
  for (size_t i = 0; i < dout.size(); ++i)
    if (dout[i]) cuda::device_free(dout[i], c.out[i].nbytes());
  if (!error.empty()) {
    std::printf("FAIL  %-58s cuda threw: %s\n", label.c_str(), error.c_str());
    json_line("{\"check\":\"" + esc(label) + "\",\"ok\":false,\"error\":\"" + esc(error) + "\"}");
    res.failed++;
    return;
  }
  bool ok = true;
  std::string detail;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!got[i].present) continue;
    double err, mx = 0;
    if (tol > 0 && (got[i].dt == DType::f32 || got[i].dt == DType::f64)) {
      err = rel_l2(ref_out[i], got[i], &mx);
    } else {  // bit-exact ops (tolerance 0) and non-float outputs: the number of differing bytes
      int64_t diff = 0;
      for (size_t k = 0; k < got[i].bytes.size(); ++k) diff += got[i].bytes[k] != ref_out[i].bytes[k];
      err = static_cast<double>(diff);
      mx = err;
    }
    bool pass = !std::isnan(err) && err <= tol;
    ok = ok && pass;
    char buf[160];
    std::snprintf(buf, sizeof buf, " out%zu rel_l2=%.2e max_abs=%.2e%s", i, err, mx, pass ? "" : " (!)");
    detail += buf;
    json_line("{\"check\":\"" + esc(label) + "\",\"output\":" + std::to_string(i) + ",\"rel_l2\":" +
              (std::isnan(err) ? std::string("null") : std::to_string(err)) + ",\"tol\":" + std::to_string(tol) +
              ",\"ok\":" + (pass ? "true" : "false") + "}");
  }
  std::printf("%s  %-58s tol=%.0e%s\n", ok ? "PASS" : "FAIL", label.c_str(), tol, detail.c_str());
  (ok ? res.passed : res.failed)++;
}

// Runs the reference forward to produce tensors a backward case needs (attention's o and lse, a norm's
// mean and rstd).
std::vector<HT> ref_forward(OpId op, std::vector<HT> in, std::vector<HT> out, const std::vector<double>& attr) {
  Case c{"", op, Dir::forward, std::move(in), std::move(out), attr};
  std::vector<void*> hin, hout;
  for (const HT& t : c.in) hin.push_back(t.present ? const_cast<uint8_t*>(t.bytes.data()) : nullptr);
  for (HT& t : c.out) hout.push_back(t.present ? t.bytes.data() : nullptr);
  run_op(ref_backend(), op, Dir::forward, args_of(c, hin, hout, kHostDevice));
  return c.out;
}

std::string shape_name(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}

// ---------------------------------------------------------------------------------------------------
// The op cases

void linear_cases(Result& r) {
  struct S { std::vector<int64_t> x; int64_t n; bool bias; };
  for (S s : {S{{3, 5, 37}, 19, true}, S{{130, 64}, 129, false}, S{{1, 7}, 1, true}, S{{2, 33, 65}, 257, true}}) {
    int64_t k = s.x.back();
    std::vector<int64_t> ys = s.x;
    ys.back() = s.n;
    HT x = randn(s.x), w = randn({s.n, k}, 1.0 / std::sqrt(k)), b = s.bias ? randn({s.n}, 0.1) : none();
    std::string nm = "x" + shape_name(s.x) + " N=" + std::to_string(s.n) + (s.bias ? " bias" : "");
    run_case({nm, OpId::linear, Dir::forward, {x, w, b}, {nan_like(ys)}, {}}, r);
    run_case({nm, OpId::linear, Dir::backward, {randn(ys), x, w},
              {nan_like(s.x), randn({s.n, k}), s.bias ? randn({s.n}) : none()}, {}}, r);
  }
}

void fused_linear_cases(Result& r) {
  for (int64_t n : {int64_t(19), int64_t(36)}) {  // 36: the epilogue four columns at a time
    std::vector<int64_t> xs{3, 7, 37}, ys{3, 7, n};
    HT x = randn(xs), w = randn({n, 37}, 1.0 / std::sqrt(37.0)), b = randn({n}, 0.1);
    HT s = uniform({1}, 0.6f, 1.2f), sb = uniform({1}, -0.6f, 0.2f);
    for (int act : {0, 1, 2})
      for (int acc : {0, 1})
        for (bool bias : {true, false}) {
          std::string nm = "x[3,7,37] N=" + std::to_string(n) + " act " + std::to_string(act) +
                           (acc ? " accumulate" : "") + (bias ? " bias" : "");
          run_case({nm, OpId::fused_linear, Dir::forward,
                    {x, w, bias ? b : none(), act == 1 ? s : none(), act == 1 ? sb : none()},
                    {acc ? randn(ys) : nan_like(ys)}, {double(act), double(acc)}},
                   r);
        }
  }
}

void conv_cases(Result& r) {
  struct S { std::vector<int64_t> x; int64_t co, k, stride, pad; bool nchw; };
  // (channels-last with Ci % 4 == 0: the forward's (i, j, ci) column order and permuted weights)
  for (S s : {S{{2, 3, 23, 19}, 8, 7, 4, 2, true}, S{{2, 9, 11, 13}, 17, 3, 2, 1, false},
              S{{1, 3, 2, 3}, 5, 3, 2, 1, false}, S{{1, 4, 16, 16}, 33, 7, 4, 2, true},
              S{{2, 9, 11, 12}, 20, 3, 2, 1, false}, S{{1, 7, 7, 8}, 16, 3, 2, 1, false},
              S{{2, 5, 6, 4}, 3, 2, 2, 0, false}}) {
    int64_t ci = s.nchw ? s.x[1] : s.x[3], h = s.nchw ? s.x[2] : s.x[1], wd = s.nchw ? s.x[3] : s.x[2];
    int64_t ho = (h + 2 * s.pad - s.k) / s.stride + 1, wo = (wd + 2 * s.pad - s.k) / s.stride + 1;
    std::vector<int64_t> ys{s.x[0], ho, wo, s.co}, ws{s.co, ci, s.k, s.k};
    HT x = randn(s.x), w = randn(ws, 1.0 / std::sqrt(ci * s.k * s.k)), b = randn({s.co}, 0.1);
    std::vector<double> at{double(s.stride), double(s.pad), s.nchw ? 1.0 : 0.0};
    std::string nm = (s.nchw ? "nchw x" : "nhwc x") + shape_name(s.x) + " w" + shape_name(ws);
    run_case({nm, OpId::conv2d, Dir::forward, {x, w, b}, {nan_like(ys)}, at}, r);
    run_case({nm, OpId::conv2d, Dir::backward, {randn(ys), x, w}, {nan_like(s.x), randn(ws), randn({s.co})}, at}, r);
  }
}

void dwconv_cases(Result& r) {
  struct S { std::vector<int64_t> x; int64_t k; };
  for (S s : {S{{2, 7, 5, 12}, 7}, S{{1, 9, 17, 33}, 7}, S{{2, 14, 14, 40}, 7}, S{{1, 2, 3, 5}, 7},
              S{{1, 8, 9, 65}, 7}, S{{2, 5, 6, 7}, 3}, S{{1, 4, 7, 9}, 5}, S{{1, 10, 19, 136}, 7}}) {
    int64_t c = s.x[3];
    std::vector<int64_t> ws{c, 1, s.k, s.k};
    HT x = randn(s.x), w = randn(ws, 1.0 / s.k), b = randn({c}, 0.1);
    std::string nm = "x" + shape_name(s.x) + " k" + std::to_string(s.k);
    run_case({nm, OpId::dwconv2d, Dir::forward, {x, w, b}, {nan_like(s.x)}, {}}, r);
    run_case({nm + " no bias", OpId::dwconv2d, Dir::forward, {x, w, none()}, {nan_like(s.x)}, {}}, r);
    run_case({nm, OpId::dwconv2d, Dir::backward, {randn(s.x), x, w}, {nan_like(s.x), randn(ws), randn({c})}, {}}, r);
  }
}

void layernorm_cases(Result& r) {
  struct S { std::vector<int64_t> x; int64_t group; bool w, b; double scale, mean; };
  for (S s : {S{{5, 7, 33}, 33, true, true, 1, 0}, S{{2, 3, 5, 12}, 180, true, false, 1, 0},
              S{{2, 50, 50, 4}, 10000, true, false, 1, 0.5}, S{{3, 64}, 64, true, false, 3e-3, 2.0},
              S{{4, 10}, 10, false, false, 1, 0}, S{{1, 3, 3, 1000}, 9000, true, true, 1, 0},
              // over channels, C % 4 == 0: the forward's register rows (16 lanes, then 1-8 float4 per lane)
              S{{5, 7, 320}, 320, true, true, 1, 0}, S{{2, 9, 512}, 512, true, false, 1, 0.5},
              S{{4, 3, 128}, 128, false, true, 1, 0}, S{{3, 1024}, 1024, true, true, 1, 0},
              S{{7, 36}, 36, true, true, 1, 0}, S{{2, 5, 520}, 520, true, true, 3e-3, 2.0}}) {
    int64_t c = s.x.back(), rows = 1;
    for (int64_t d : s.x) rows *= d;
    rows /= s.group;
    HT x = randn(s.x, s.scale, s.mean), w = s.w ? randn({c}, 0.25, 1.0) : none(), b = s.b ? randn({c}, 0.2) : none();
    std::vector<double> at{1e-6, double(s.group)};
    std::string nm = "x" + shape_name(s.x) + " group " + std::to_string(s.group) + (s.scale < 1 ? " small var" : "");
    run_case({nm, OpId::layernorm, Dir::forward, {x, w, b}, {nan_like(s.x), nan_like({rows}), nan_like({rows})}, at},
             r);
    std::vector<HT> f = ref_forward(OpId::layernorm, {x, w, b}, {nan_like(s.x), nan_like({rows}), nan_like({rows})}, at);
    run_case({nm, OpId::layernorm, Dir::backward, {randn(s.x), x, w, f[1], f[2]},
              {nan_like(s.x), s.w ? randn({c}) : none(), randn({c})}, at}, r);
  }
}

void starrelu_cases(Result& r) {
  for (int64_t n : {int64_t(1000), int64_t(37), int64_t(100003)}) {
    HT x = randn({n}), s = uniform({1}, 0.6f, 1.2f), b = uniform({1}, -0.6f, 0.2f);
    std::string nm = "[" + std::to_string(n) + "]";
    run_case({nm + " star", OpId::starrelu, Dir::forward, {x, s, b}, {nan_like({n})}, {}}, r);
    run_case({nm + " squared", OpId::starrelu, Dir::forward, {x, none(), none()}, {nan_like({n})}, {}}, r);
    run_case({nm + " star", OpId::starrelu, Dir::backward, {randn({n}), x, s}, {nan_like({n}), randn({1}), randn({1})}, {}},
             r);
    run_case({nm + " squared", OpId::starrelu, Dir::backward, {randn({n}), x, none()}, {nan_like({n}), none(), none()}, {}},
             r);
  }
}

void attention_cases(Result& r) {
  struct S { int64_t B, N, heads, hd; };
  for (S s : {S{2, 35, 2, 32}, S{1, 197, 1, 32}, S{2, 65, 3, 32}, S{1, 129, 2, 32}, S{3, 49, 16, 32},
              S{2, 11, 3, 16}, S{1, 7, 2, 40}}) {
    int64_t A = s.heads * s.hd;
    std::vector<double> at{double(s.hd), 1.0 / std::sqrt(double(s.hd))};
    HT qkv = randn({s.B, s.N, 3 * A});
    std::string nm = "B" + std::to_string(s.B) + " N" + std::to_string(s.N) + " heads " + std::to_string(s.heads) +
                     " hd " + std::to_string(s.hd);
    run_case({nm, OpId::attention, Dir::forward, {qkv}, {nan_like({s.B, s.N, A}), nan_like({s.B, s.heads, s.N})}, at}, r);
    run_case({nm + " no lse", OpId::attention, Dir::forward, {qkv}, {nan_like({s.B, s.N, A}), none()}, at}, r);
    std::vector<HT> f = ref_forward(OpId::attention, {qkv}, {nan_like({s.B, s.N, A}), nan_like({s.B, s.heads, s.N})}, at);
    run_case({nm, OpId::attention, Dir::backward, {randn({s.B, s.N, A}), qkv, f[0], f[1]}, {nan_like({s.B, s.N, 3 * A})}, at},
             r);
  }
}

// bf16 precision (forward, as plans run it): every matrix-product operand rounded to bfloat16, fp32
// accumulation. The reference multiplies the pre-rounded operands in fp32, so linear, conv and mixing agree
// to the summation order (their fp32 tolerance); attention also rounds each probability before it weights
// v, which the reference does not model: a bf16-level tolerance there.
void bf16_cases(Result& r) {
  auto bf = [](Case c, std::vector<int> rounded, double tol = -1) {
    c.name += " bf16";
    c.prec = Precision::bf16;
    c.rounded = std::move(rounded);
    c.tol = tol;
    return c;
  };
  for (auto xs : {std::vector<int64_t>{3, 5, 37}, std::vector<int64_t>{2, 33, 64}}) {
    int64_t k = xs.back(), n = k == 64 ? 257 : 19;
    std::vector<int64_t> ys = xs;
    ys.back() = n;
    HT x = randn(xs), w = randn({n, k}, 1.0 / std::sqrt(k)), b = randn({n}, 0.1);
    run_case(bf({"x" + shape_name(xs) + " N=" + std::to_string(n) + " bias", OpId::linear, Dir::forward, {x, w, b},
                 {nan_like(ys)}, {}}, {0, 1}), r);
    HT s = uniform({1}, 0.6f, 1.2f), sb = uniform({1}, -0.6f, 0.2f);
    run_case(bf({"x" + shape_name(xs) + " N=" + std::to_string(n) + " act 1 accumulate bias", OpId::fused_linear,
                 Dir::forward, {x, w, b, s, sb}, {randn(ys)}, {1.0, 1.0}}, {0, 1}), r);
  }
  {  // the stem (NCHW, 7x7 stride 4) and a downsampling conv (NHWC, 3x3 stride 2)
    HT x = randn({2, 3, 23, 19}), w = randn({8, 3, 7, 7}, 1.0 / std::sqrt(147.0)), b = randn({8}, 0.1);
    run_case(bf({"nchw x[2,3,23,19] w[8,3,7,7]", OpId::conv2d, Dir::forward, {x, w, b}, {nan_like({2, 6, 5, 8})},
                 {4.0, 2.0, 1.0}}, {0, 1}), r);
    HT x2 = randn({2, 11, 13, 9}), w2 = randn({17, 9, 3, 3}, 1.0 / 9.0), b2 = randn({17}, 0.1);
    run_case(bf({"nhwc x[2,11,13,9] w[17,9,3,3]", OpId::conv2d, Dir::forward, {x2, w2, b2}, {nan_like({2, 6, 7, 17})},
                 {2.0, 1.0, 0.0}}, {0, 1}), r);
    HT x3 = randn({2, 11, 13, 12}), w3 = randn({17, 12, 3, 3}, 1.0 / 9.0);  // channels-last, Ci % 4 == 0
    run_case(bf({"nhwc x[2,11,13,12] w[17,12,3,3] no bias", OpId::conv2d, Dir::forward, {x3, w3, none()},
                 {nan_like({2, 6, 7, 17})}, {2.0, 1.0, 0.0}}, {0, 1}), r);
  }
  {
    HT x = randn({3, 49, 20}), m = randn({49, 49}, 1.0 / 7.0);
    run_case(bf({"x[3,49,20]", OpId::random_mixing, Dir::forward, {x, m}, {nan_like({3, 49, 20})}, {}}, {0, 1}), r);
  }
  // (the tensor-core kernel: chunks of 64 keys staged one ahead, 64 queries per block; ends inside and at
  // tile and chunk edges, many chunks)
  for (auto s : {std::vector<int64_t>{2, 35, 2}, std::vector<int64_t>{3, 49, 16}, std::vector<int64_t>{1, 197, 10},
                 std::vector<int64_t>{2, 196, 10}, std::vector<int64_t>{2, 64, 3}, std::vector<int64_t>{1, 65, 1},
                 std::vector<int64_t>{2, 130, 2}, std::vector<int64_t>{3, 7, 4}, std::vector<int64_t>{1, 1, 2},
                 std::vector<int64_t>{1, 256, 2}, std::vector<int64_t>{1, 257, 3}, std::vector<int64_t>{2, 300, 1},
                 std::vector<int64_t>{1, 577, 2}}) {
    int64_t B = s[0], N = s[1], heads = s[2], A = heads * 32;
    HT qkv = randn({B, N, 3 * A});
    run_case(bf({"B" + std::to_string(B) + " N" + std::to_string(N) + " heads " + std::to_string(heads) + " hd 32",
                 OpId::attention, Dir::forward, {qkv}, {nan_like({B, N, A}), nan_like({B, heads, N})},
                 {32.0, 1.0 / std::sqrt(32.0)}}, {0}, 1e-2), r);
  }
}

void mixing_cases(Result& r) {
  for (auto s : {std::vector<int64_t>{3, 49, 20}, std::vector<int64_t>{2, 16, 33}}) {
    int64_t n = s[1];
    HT x = randn(s), m = randn({n, n}, 1.0 / std::sqrt(n));
    std::string nm = "x" + shape_name(s);
    run_case({nm, OpId::random_mixing, Dir::forward, {x, m}, {nan_like(s)}, {}}, r);
    run_case({nm, OpId::random_mixing, Dir::backward, {randn(s), x, m}, {nan_like(s), randn({n, n})}, {}}, r);
  }
}

void pool_cases(Result& r) {
  for (auto s : {std::vector<int64_t>{2, 7, 5, 12}, std::vector<int64_t>{1, 1, 3, 2}, std::vector<int64_t>{1, 9, 2, 33}}) {
    std::string nm = "x" + shape_name(s);
    run_case({nm, OpId::pool, Dir::forward, {randn(s)}, {nan_like(s)}, {}}, r);
    run_case({nm, OpId::pool, Dir::backward, {randn(s)}, {nan_like(s)}, {}}, r);
  }
}

void residual_cases(Result& r) {
  std::vector<int64_t> s{4, 6, 37};
  HT x = randn(s), sc = uniform({37}, 0.5f, 1.5f), res = randn(s);
  run_case({"x[4,6,37] scale+r", OpId::scale_add, Dir::forward, {x, sc, res}, {nan_like(s)}, {}}, r);
  run_case({"x[4,6,37] r only", OpId::scale_add, Dir::forward, {x, none(), res}, {nan_like(s)}, {}}, r);
  run_case({"x[4,6,37] scale", OpId::scale_add, Dir::backward, {randn(s), x, sc}, {nan_like(s), randn({37}), nan_like(s)}, {}},
           r);
  run_case({"x[4,6,37] no scale", OpId::scale_add, Dir::backward, {randn(s), x, none()}, {nan_like(s), none(), none()}, {}},
           r);
  for (auto m : {std::vector<int64_t>{3, 7, 5, 33}, std::vector<int64_t>{2, 49, 512}}) {
    std::vector<int64_t> ys{m[0], m.back()};
    run_case({"x" + shape_name(m), OpId::mean_hw, Dir::forward, {randn(m)}, {nan_like(ys)}, {}}, r);
    run_case({"x" + shape_name(m), OpId::mean_hw, Dir::backward, {randn(ys)}, {nan_like(m)}, {}}, r);
  }
}

void loss_cases(Result& r) {
  for (int64_t B : {int64_t(5), int64_t(1)}) {
    int64_t K = 1000;
    HT z = randn({B, K}, 3.0);
    HT t64 = make({B}, DType::i64), t32 = make({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) {
      reinterpret_cast<int64_t*>(t64.bytes.data())[b] = (b * 389 + 7) % K;
      reinterpret_cast<int32_t*>(t32.bytes.data())[b] = static_cast<int32_t>((b * 211 + 3) % K);
    }
    std::string nm = "B" + std::to_string(B) + " K1000";
    for (double ls : {0.0, 0.1}) {
      std::string l = " ls " + std::to_string(ls).substr(0, 3);
      run_case({nm + " i64" + l, OpId::cross_entropy, Dir::forward, {z, t64}, {nan_like({1})}, {ls}}, r);
      run_case({nm + " i32" + l, OpId::cross_entropy, Dir::forward, {z, t32}, {nan_like({1})}, {ls}}, r);
      run_case({nm + " i64" + l, OpId::cross_entropy, Dir::backward, {randn({1}), z, t64}, {nan_like({B, K})}, {ls}}, r);
    }
  }
  HT soft = uniform({3, 10}, 0.0f, 1.0f);
  for (int b = 0; b < 3; ++b) {
    float s = 0;
    for (int k = 0; k < 10; ++k) s += soft.f()[b * 10 + k];
    for (int k = 0; k < 10; ++k) soft.f()[b * 10 + k] /= s;
  }
  HT z = randn({3, 10});
  run_case({"B3 K10 soft", OpId::cross_entropy, Dir::forward, {z, soft}, {nan_like({1})}, {0.0}}, r);
  run_case({"B3 K10 soft", OpId::cross_entropy, Dir::backward, {randn({1}), z, soft}, {nan_like({3, 10})}, {0.0}}, r);
}

void dropout_cases(Result& r) {
  for (auto s : {std::vector<double>{0.3, 1, 7, 11}, std::vector<double>{0.5, 50, 123456789, 0},
                 std::vector<double>{0.1, 7, 4294967296.0 + 5, 1e9}}) {
    int64_t n = 1050;
    std::string nm = "[1050] p " + std::to_string(s[0]).substr(0, 3) + " group " + std::to_string(int64_t(s[1]));
    run_case({nm, OpId::dropout, Dir::forward, {randn({n})}, {nan_like({n})}, s}, r);
    run_case({nm, OpId::dropout, Dir::backward, {randn({n})}, {nan_like({n})}, s}, r);
  }
}

void util_cases(Result& r) {
  int64_t n = 1003;
  run_case({"[1003]", OpId::axpy, Dir::forward, {randn({n})}, {randn({n})}, {0.37}}, r);
  run_case({"[1003]", OpId::scale, Dir::forward, {}, {randn({n})}, {-1.7}}, r);
  run_case({"[1003]", OpId::lerp, Dir::forward, {randn({n})}, {randn({n})}, {0.001}}, r);
  run_case({"[1003]", OpId::fill, Dir::forward, {}, {nan_like({n})}, {2.5}}, r);
  run_case({"[100003] f32", OpId::sumsq, Dir::forward, {randn({100003})}, {nan_like({1}, DType::f64)}, {}}, r);
  // cast: every conversion the library uses, including halves' special values
  HT src = randn({n}, 100.0);
  float specials[] = {0.0f, -0.0f, 1e-8f, -6.1e-5f, 65504.0f, 65520.0f, 1e30f, INFINITY, -INFINITY, std::nanf(""),
                      3.0e-39f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 4096, 33.5f, -2.5f};
  for (size_t i = 0; i < sizeof(specials) / sizeof(float); ++i) src.f()[i] = specials[i];
  struct P { DType from, to; };
  for (P p : {P{DType::f32, DType::f16}, P{DType::f32, DType::bf16}, P{DType::f32, DType::f64}, P{DType::f32, DType::i32},
              P{DType::f32, DType::u8}, P{DType::f32, DType::boolean}}) {
    HT x = src;
    if (p.to == DType::i32 || p.to == DType::u8)  // in-range values only (out of range is undefined in C++)
      for (int64_t i = 0; i < n; ++i) x.f()[i] = std::fmod(std::fabs(std::isfinite(x.f()[i]) ? x.f()[i] : 1.0f), 200.0f);
    run_case({std::string("f32 -> ") + dtype_name(p.to), OpId::cast, Dir::forward, {x}, {nan_like({n}, p.to)}, {}}, r);
  }
  for (DType from : {DType::f16, DType::bf16, DType::i64, DType::i32, DType::u8, DType::f64}) {
    HT x = make({n}, from);
    std::uniform_int_distribution<int> bytes(0, 255);
    for (auto& b : x.bytes) b = static_cast<uint8_t>(bytes(g_rng));
    if (from == DType::f64)
      for (int64_t i = 0; i < n; ++i) reinterpret_cast<double*>(x.bytes.data())[i] = std::ldexp(double(i) - 500.3, i % 40 - 20);
    run_case({std::string(dtype_name(from)) + " -> float32", OpId::cast, Dir::forward, {x}, {nan_like({n})}, {}}, r);
  }
  run_case({"[100003] mean 0.5 std 2", OpId::normal, Dir::forward, {}, {nan_like({100003})}, {0.5, 2.0, 12345, 0}}, r);
  run_case({"[100003] truncated at 2", OpId::normal, Dir::forward, {}, {nan_like({100003})}, {0.0, 0.02, 99, 2.0}}, r);
  HT p4 = randn({2, 3, 4, 5});
  run_case({"f32 [2,3,4,5] (0,2,3,1)", OpId::permute, Dir::forward, {p4}, {nan_like({2, 4, 5, 3})}, {0, 2, 3, 1}}, r);
  HT u = make({3, 7}, DType::u8);
  for (size_t i = 0; i < u.bytes.size(); ++i) u.bytes[i] = static_cast<uint8_t>(i * 7);
  run_case({"u8 [3,7] (1,0)", OpId::permute, Dir::forward, {u}, {nan_like({7, 3}, DType::u8)}, {1, 0}}, r);
  HT l = make({2, 3, 2}, DType::i64);
  for (int i = 0; i < 12; ++i) reinterpret_cast<int64_t*>(l.bytes.data())[i] = int64_t(i) << 40;
  run_case({"i64 [2,3,2] (2,0,1)", OpId::permute, Dir::forward, {l}, {nan_like({2, 2, 3}, DType::i64)}, {2, 0, 1}}, r);
}

void optim_cases(Result& r) {
  int64_t n = 1001;
  auto state = [&] { return std::vector<HT>{randn({n}), randn({n}, 0.1), uniform({n}, 0.0f, 0.01f)}; };
  std::vector<HT> s = state();
  run_case({"[1001]", OpId::adamw, Dir::forward, {randn({n})}, s, {1e-3, 0.9, 0.999, 1e-8, 0.05, 7, 0.5}}, r);
  s = state();
  run_case({"[1001] wd", OpId::lamb, Dir::forward, {randn({n})}, s, {1e-3, 0.9, 0.999, 1e-6, 0.01, 3, 1.0, 10.0}}, r);
  s = state();
  run_case({"[1001] no wd", OpId::lamb, Dir::forward, {randn({n})}, s, {1e-3, 0.9, 0.999, 1e-6, 0.0, 3, 1.0, 0.0}}, r);
  run_case({"[1001] momentum nesterov", OpId::sgd, Dir::forward, {randn({n})}, {randn({n}), randn({n})},
            {0.1, 0.9, 0.0, 1e-4, 1, 0.5, 0}}, r);
  run_case({"[1001] first step", OpId::sgd, Dir::forward, {randn({n})}, {randn({n}), randn({n})},
            {0.1, 0.9, 0.1, 0.0, 0, 1.0, 1}}, r);
  run_case({"[1001] plain", OpId::sgd, Dir::forward, {randn({n})}, {randn({n}), none()}, {0.1, 0.0, 0.0, 0.0, 0, 1.0, 0}},
           r);
}

// Errors that must be reported as mf::Error (never a crash).
void error_cases(Result& r) {
  auto expect_throw = [&](const std::string& name, const std::string& needle, const std::function<void()>& fn) {
    if (!g_filter.empty() && name.find(g_filter) == std::string::npos) return;
    std::string got = "(no exception)";
    bool ok = false;
    try {
      fn();
    } catch (const mf::Error& e) {
      got = e.what();
      ok = got.find(needle) != std::string::npos;
    } catch (const std::exception& e) {
      got = std::string("non-mf exception: ") + e.what();
    }
    std::printf("%s  %-58s %s\n", ok ? "PASS" : "FAIL", name.c_str(), got.c_str());
    (ok ? r.passed : r.failed)++;
  };
  expect_throw("error: bad class id on the device", "class ids in [0, 10)", [] {
    HT z = randn({2, 10});
    HT t = make({2}, DType::i64);
    reinterpret_cast<int64_t*>(t.bytes.data())[1] = 12;
    void* dz = cuda::device_alloc(z.nbytes());
    void* dt = cuda::device_alloc(t.nbytes());
    void* dl = cuda::device_alloc(4);
    cuda::copy(dz, 1, z.bytes.data(), 0, z.nbytes());
    cuda::copy(dt, 1, t.bytes.data(), 0, t.nbytes());
    Case c{"", OpId::cross_entropy, Dir::forward, {z, t}, {nan_like({1})}, {0.0}};
    try {
      run_op(cuda_backend(), c.op, c.dir, args_of(c, {dz, dt}, {dl}, kCudaDevice));
    } catch (...) {
      cuda::device_free(dz, z.nbytes());
      cuda::device_free(dt, t.nbytes());
      cuda::device_free(dl, 4);
      throw;
    }
  });
  expect_throw("error: host tensor given to the cuda backend", "expected a cuda tensor", [] {
    HT x = randn({4});
    HT y = nan_like({4});
    Case c{"", OpId::starrelu, Dir::forward, {x, none(), none()}, {y}, {}};
    run_op(cuda_backend(), c.op, c.dir, args_of(c, {x.bytes.data(), nullptr, nullptr}, {y.bytes.data()}, kHostDevice));
  });
  expect_throw("error: out of device memory", "out of memory", [] {
    void* p = cuda::device_alloc(size_t(1) << 50);  // 1 PiB
    cuda::device_free(p, size_t(1) << 50);
  });
}

// ---------------------------------------------------------------------------------------------------
// Timings

// Median milliseconds of one call of fn: CUDA events recorded on the backend stream around each call
// (after warm-up), so host-side launch gaps count only where they leave the device idle.
double time_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cuda::synchronize();
  auto t0 = std::chrono::steady_clock::now();
  fn();
  cuda::synchronize();
  double est = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  int reps = static_cast<int>(std::min(200.0, std::max(10.0, 300.0 / std::max(est, 1e-3))));
  cudaStream_t st = cuda::stream();
  std::vector<cudaEvent_t> ev(static_cast<size_t>(reps) + 1);
  for (auto& e : ev) MF_CUDA_CHECK(cudaEventCreate(&e));
  MF_CUDA_CHECK(cudaEventRecord(ev[0], st));
  for (int i = 0; i < reps; ++i) {
    fn();
    MF_CUDA_CHECK(cudaEventRecord(ev[static_cast<size_t>(i) + 1], st));
  }
  cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    MF_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[static_cast<size_t>(i)], ev[static_cast<size_t>(i) + 1]));
    t.push_back(ms);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct DevBuf {
  void* p;
  size_t n;
  explicit DevBuf(const HT& h) : p(cuda::device_alloc(h.nbytes())), n(h.nbytes()) { cuda::copy(p, 1, h.bytes.data(), 0, n); }
  ~DevBuf() { cuda::device_free(p, n); }
};

void bench_line(const std::string& kernel, const std::string& shape, int64_t B, const char* dir, double ms,
                double bytes, double flops, const char* precision = "fp32") {
  double gbs = bytes / (ms * 1e-3) / 1e9, tfl = flops / (ms * 1e-3) / 1e12;
  std::printf("BENCH %-10s %-4s %-4s %-22s B=%-4lld %9.4f ms %8.1f GB/s %7.2f TFLOP/s\n", kernel.c_str(), dir,
              precision, shape.c_str(), static_cast<long long>(B), ms, gbs, tfl);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"bench\":\"%s\",\"dir\":\"%s\",\"precision\":\"%s\",\"shape\":\"%s\",\"batch\":%lld,\"ms\":%.6f,"
                "\"gbps\":%.3f,\"tflops\":%.4f}",
                kernel.c_str(), dir, precision, shape.c_str(), static_cast<long long>(B), ms, gbs, tfl);
  json_line(buf);
}

void bench(bool quick) {
  std::vector<int64_t> batches = quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 64, 256};
  struct DW { int64_t H, C; };
  for (int64_t B : batches)
    for (DW d : {DW{56, 128}, DW{28, 256}, DW{14, 640}, DW{7, 1024}}) {
      std::vector<int64_t> xs{B, d.H, d.H, d.C}, ws{d.C, 1, 7, 7};
      HT x = bench_random(xs), w = bench_random(ws, 1.0f / 7), dy = bench_random(xs);
      DevBuf X(x), Wt(w), Y(x), DY(dy), DX(x), DWt(w);
      TensorView vx = x.view(X.p, 1), vw = w.view(Wt.p, 1), vy = x.view(Y.p, 1), vdy = dy.view(DY.p, 1);
      TensorView vdx = x.view(DX.p, 1), vdw = w.view(DWt.p, 1);
      OpArgs f;
      f.in[0] = vx, f.in[1] = vw, f.n_in = 3, f.out[0] = vy, f.n_out = 1;
      std::string shape = "[B," + std::to_string(d.H) + "," + std::to_string(d.H) + "," + std::to_string(d.C) + "]";
      double elems = double(x.numel()), flops = 2.0 * 49 * elems;
      double ms = time_ms([&] { run_op(cuda_backend(), OpId::dwconv2d, Dir::forward, f); });
      bench_line("dwconv7x7", shape, B, "fwd", ms, 8.0 * elems, flops);
      OpArgs bw;
      bw.in[0] = vdy, bw.in[1] = vx, bw.in[2] = vw, bw.n_in = 3;
      bw.out[0] = vdx, bw.out[1] = vdw, bw.n_out = 3;
      ms = time_ms([&] { run_op(cuda_backend(), OpId::dwconv2d, Dir::backward, bw); });
      bench_line("dwconv7x7", shape, B, "bwd", ms, 12.0 * elems, 2 * flops);
    }
  struct AT { int64_t N, heads; };
  for (int64_t B : batches)
    for (AT t : {AT{196, 10}, AT{49, 16}}) {  // caformer_s18 at 224: stage 3 (dim 320), stage 4 (dim 512)
      int64_t A = t.heads * 32;
      std::vector<int64_t> qs{B, t.N, 3 * A}, os{B, t.N, A}, ls{B, t.heads, t.N};
      HT qkv = bench_random(qs), o = bench_random(os), lse = bench_random(ls), dout = bench_random(os);
      DevBuf Q(qkv), O(o), L(lse), DO(dout), DQ(qkv);
      OpArgs f;
      f.in[0] = qkv.view(Q.p, 1), f.n_in = 1;
      f.out[0] = o.view(O.p, 1), f.out[1] = lse.view(L.p, 1), f.n_out = 2;
      f.attr[0] = 32, f.attr[1] = 1.0 / std::sqrt(32.0), f.n_attr = 2;
      std::string shape = "N=" + std::to_string(t.N) + " heads=" + std::to_string(t.heads);
      double pairs = double(B) * t.heads * double(t.N) * t.N;
      double ms = time_ms([&] { run_op(cuda_backend(), OpId::attention, Dir::forward, f); });
      bench_line("attention", shape, B, "fwd", ms, 4.0 * (qkv.numel() + o.numel()), 4.0 * 32 * pairs);
      {  // bf16 precision, as a bf16 plan runs it (the forward only)
        PlanContext ctx;
        ctx.precision = Precision::bf16;
        PlanContextScope scope(ctx);
        ms = time_ms([&] { run_op(cuda_backend(), OpId::attention, Dir::forward, f); });
        bench_line("attention", shape, B, "fwd", ms, 4.0 * (qkv.numel() + o.numel()), 4.0 * 32 * pairs, "bf16");
      }
      OpArgs bw;
      bw.in[0] = dout.view(DO.p, 1), bw.in[1] = f.in[0], bw.in[2] = f.out[0], bw.in[3] = f.out[1], bw.n_in = 4;
      bw.out[0] = qkv.view(DQ.p, 1), bw.n_out = 1;
      bw.attr[0] = 32, bw.attr[1] = f.attr[1], bw.n_attr = 2;
      ms = time_ms([&] { run_op(cuda_backend(), OpId::attention, Dir::backward, bw); });
      bench_line("attention", shape, B, "bwd", ms, 4.0 * (2 * qkv.numel() + 2 * o.numel()), 10.0 * 32 * pairs);
    }
}

// One launch of each kernel worth a hardware profile (check.sh's ncu stage runs this under Nsight
// Compute), at batch 64 MetaFormer shapes, each in the precision its plans use it in: the depthwise
// forward, attention fp32 and bf16, the layer norm over channels, a downsampling conv fp32 and bf16, and a
// bf16 fused linear with StarReLU (its operand copies, GEMM and epilogue).
void profile_targets() {
  const int64_t B = 64;
  auto once = [](OpId op, const OpArgs& args, Precision p) {
    PlanContext ctx;
    ctx.precision = p;
    PlanContextScope scope(ctx);
    run_op(cuda_backend(), op, Dir::forward, args);
    cuda::synchronize();
  };
  {
    HT x = bench_random({B, 56, 56, 128}), w = bench_random({128, 1, 7, 7}, 1.0f / 7), b = bench_random({128});
    DevBuf X(x), W(w), Bb(b), Y(x);
    OpArgs f;
    f.in[0] = x.view(X.p, 1), f.in[1] = w.view(W.p, 1), f.in[2] = b.view(Bb.p, 1), f.n_in = 3;
    f.out[0] = x.view(Y.p, 1), f.n_out = 1;
    once(OpId::dwconv2d, f, Precision::f32);
  }
  {
    HT qkv = bench_random({B, 196, 960}), o = bench_random({B, 196, 320}), lse = bench_random({B, 10, 196});
    DevBuf Q(qkv), O(o), L(lse);
    OpArgs f;
    f.in[0] = qkv.view(Q.p, 1), f.n_in = 1;
    f.out[0] = o.view(O.p, 1), f.out[1] = lse.view(L.p, 1), f.n_out = 2;
    f.attr[0] = 32, f.attr[1] = 1.0 / std::sqrt(32.0), f.n_attr = 2;
    once(OpId::attention, f, Precision::f32);
    once(OpId::attention, f, Precision::bf16);
  }
  {
    HT x = bench_random({B, 56, 56, 64}), w = bench_random({64}), b = bench_random({64});
    HT m = bench_random({B * 56 * 56}), r = bench_random({B * 56 * 56});
    DevBuf X(x), W(w), Bb(b), Y(x), M(m), R(r);
    OpArgs f;
    f.in[0] = x.view(X.p, 1), f.in[1] = w.view(W.p, 1), f.in[2] = b.view(Bb.p, 1), f.n_in = 3;
    f.out[0] = x.view(Y.p, 1), f.out[1] = m.view(M.p, 1), f.out[2] = r.view(R.p, 1), f.n_out = 3;
    f.attr[0] = 1e-6, f.attr[1] = 64, f.n_attr = 2;
    once(OpId::layernorm, f, Precision::f32);
  }
  {
    HT x = bench_random({B, 56, 56, 64}), w = bench_random({128, 64, 3, 3}, 1.0f / 24), b = bench_random({128});
    HT y = bench_random({B, 28, 28, 128});
    DevBuf X(x), W(w), Bb(b), Y(y);
    OpArgs f;
    f.in[0] = x.view(X.p, 1), f.in[1] = w.view(W.p, 1), f.in[2] = b.view(Bb.p, 1), f.n_in = 3;
    f.out[0] = y.view(Y.p, 1), f.n_out = 1;
    f.attr[0] = 2, f.attr[1] = 1, f.attr[2] = 0, f.n_attr = 3;
    once(OpId::conv2d, f, Precision::f32);
    once(OpId::conv2d, f, Precision::bf16);
  }
  {
    HT x = bench_random({B * 3136, 64}), w = bench_random({256, 64}, 0.125f), b = bench_random({256});
    HT s = bench_random({1}), sb = bench_random({1}), y = bench_random({B * 3136, 256});
    DevBuf X(x), W(w), Bb(b), S(s), SB(sb), Y(y);
    OpArgs f;
    f.in[0] = x.view(X.p, 1), f.in[1] = w.view(W.p, 1), f.in[2] = b.view(Bb.p, 1), f.in[3] = s.view(S.p, 1);
    f.in[4] = sb.view(SB.p, 1), f.n_in = 5;
    f.out[0] = y.view(Y.p, 1), f.n_out = 1;
    f.attr[0] = 1, f.attr[1] = 0, f.n_attr = 2;
    once(OpId::fused_linear, f, Precision::bf16);
  }
  std::printf("profile targets: done\n");
}

}  // namespace

int main(int argc, char** argv) {
  bool ops = false, do_bench = false, quick = false, time_plans = false, prof = false;
  std::string plans, backend = "cuda";
  Precision prec = Precision::f32;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--ops") ops = true;
    else if (a == "--bench") do_bench = true;
    else if (a == "--profile-targets") prof = true;
    else if (a == "--quick") quick = true;
    else if (a == "--plans" && i + 1 < argc) plans = argv[++i];
    else if (a == "--time-plans") time_plans = true;
    else if (a == "--self-test") g_self_test = true;
    else if (a == "--backend" && i + 1 < argc) backend = argv[++i];
    else if (a == "--precision" && i + 1 < argc && (std::string(argv[i + 1]) == "bf16" || std::string(argv[i + 1]) == "fp32"))
      prec = std::string(argv[++i]) == "bf16" ? Precision::bf16 : Precision::f32;
    else if (a == "--json" && i + 1 < argc) g_json = std::fopen(argv[++i], "w");
    else if (a == "--filter" && i + 1 < argc) g_filter = argv[++i];
    else if (a == "--seed" && i + 1 < argc) g_rng.seed(std::strtoull(argv[++i], nullptr, 10));
    else {
      std::fprintf(stderr,
                   "usage: %s [--ops] [--bench] [--quick] [--plans DIR] [--time-plans] [--precision fp32|bf16] "
                   "[--backend ref|cuda] [--json FILE] [--filter TEXT] [--seed N] [--self-test] [--profile-targets]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!ops && !do_bench && !prof && plans.empty()) ops = true;
  if (!plans.empty() && backend == "ref" && !ops && !do_bench) {  // plan replay on the host: no GPU needed
    plan_replay::Tally t = plan_replay::run_plans(plans, g_filter, ref_backend(), time_plans, g_json, prec);
    if (g_json) std::fclose(g_json);
    std::printf("%d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
  }
  if (g_self_test) {  // every case through the reference on both sides: validates the cases themselves
    Result r;
    linear_cases(r);
    fused_linear_cases(r);
    conv_cases(r);
    dwconv_cases(r);
    layernorm_cases(r);
    starrelu_cases(r);
    attention_cases(r);
    mixing_cases(r);
    pool_cases(r);
    residual_cases(r);
    loss_cases(r);
    dropout_cases(r);
    util_cases(r);
    optim_cases(r);
    bf16_cases(r);
    std::printf("%d passed, %d failed\n", r.passed, r.failed);
    return r.failed ? 1 : 0;
  }
  if (!cuda::available()) {
    std::printf("SKIP  no usable CUDA device: %s\n", cuda::unavailable_reason().c_str());
    return 3;
  }
  std::printf("device: %s\n", cuda::device_name().c_str());
  if (prof) {
    try {
      profile_targets();
    } catch (const std::exception& e) {
      std::printf("FAIL  profile targets: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  Result r;
  try {
    if (ops) {
      linear_cases(r);
      fused_linear_cases(r);
      conv_cases(r);
      dwconv_cases(r);
      layernorm_cases(r);
      starrelu_cases(r);
      attention_cases(r);
      mixing_cases(r);
      pool_cases(r);
      residual_cases(r);
      loss_cases(r);
      dropout_cases(r);
      util_cases(r);
      optim_cases(r);
      bf16_cases(r);
      error_cases(r);
      // Every op must have both CUDA kernels the reference has.
      for (int i = 0; i < kNumOps; ++i)
        for (Dir d : {Dir::forward, Dir::backward}) {
          OpId op = static_cast<OpId>(i);
          bool want = supports_op(ref_backend(), op, d), have = supports_op(cuda_backend(), op, d);
          if (want && !have) {
            std::printf("FAIL  %-58s the cuda backend has no kernel\n",
                        (std::string(op_name(op)) + (d == Dir::forward ? " fwd" : " bwd")).c_str());
            r.failed++;
          }
        }
    }
    if (do_bench) bench(quick);
    if (!plans.empty()) {
      plan_replay::Tally t = plan_replay::run_plans(plans, g_filter, cuda_backend(), time_plans, g_json, prec);
      r.passed += t.passed;
      r.failed += t.failed;
    }
  } catch (const std::exception& e) {
    std::printf("FAIL  aborted: %s\n", e.what());
    r.failed++;
  }
  if (g_json) std::fclose(g_json);
  if (ops || !plans.empty()) std::printf("%d passed, %d failed\n", r.passed, r.failed);
  return r.failed ? 1 : 0;
}
