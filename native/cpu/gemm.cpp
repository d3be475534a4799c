// gemm.cpp: oneDNN matmul with a per-shape primitive cache (see gemm.h). oneDNN runs on the same
// OpenMP pool as our kernels (Debian's libdnnl is built with the OpenMP runtime).
#include "gemm.h"

#include <pthread.h>
#include <signal.h>

#include <array>
#include <cstring>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>

#include "../core/check.h"

namespace mf::cpu {
namespace {

// The cache key lists every field of GemmShape explicitly (no padding bytes in the comparison).
struct Key {
  std::array<int64_t, 24> v;
  explicit Key(const GemmShape& s)
      : v{s.batch[0], s.batch[1], s.M, s.N, s.K, s.a_b[0], s.a_b[1], s.a_m, s.a_k, s.b_b[0], s.b_b[1], s.b_k,
          s.b_n, s.c_b[0], s.c_b[1], s.c_m, s.c_n, s.accumulate, s.bias, 0, s.act, 0, 0, 0} {
    v[19] = bits(s.alpha);
    v[21] = bits(s.act_s);
    v[22] = bits(s.act_b);
  }
  static int64_t bits(float f) {
    int32_t b;
    std::memcpy(&b, &f, 4);
    return b;
  }
  bool operator==(const Key& o) const { return v == o.v; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<size_t>(x)) * 1099511628211ull;
    return h;
  }
};

struct Entry {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, bias;
};

struct State {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::mutex mu;
  std::unordered_map<Key, Entry, KeyHash> cache;
};

State& state() {
  static State* s = new State();
  return *s;
}

using dims = dnnl::memory::dims;

int nbatch(const GemmShape& s) { return s.batch[1] > 1 ? 2 : (s.batch[0] > 1 ? 1 : 0); }

dnnl::memory::desc md(const GemmShape& s, int64_t r, int64_t c, const int64_t* bs, int64_t rs, int64_t cs) {
  int nb = nbatch(s);
  dims d, st;
  for (int i = 0; i < nb; ++i) {
    d.push_back(s.batch[i]);
    st.push_back(bs[i]);
  }
  d.push_back(r);
  d.push_back(c);
  st.push_back(rs);
  st.push_back(cs);
  return dnnl::memory::desc(d, dnnl::memory::data_type::f32, st);
}

Entry& lookup(const GemmShape& s) {
  State& st = state();
  Key key(s);
  auto it = st.cache.find(key);
  if (it != st.cache.end()) return it->second;
  Entry e;
  e.a = md(s, s.M, s.K, s.a_b, s.a_m, s.a_k);
  e.b = md(s, s.K, s.N, s.b_b, s.b_k, s.b_n);
  e.c = md(s, s.M, s.N, s.c_b, s.c_m, s.c_n);
  if (s.bias) {
    int nb = nbatch(s);
    dims d(static_cast<size_t>(nb) + 2, 1);
    d.back() = s.N;
    e.bias = dnnl::memory::desc(d, dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
    dims strides(d.size(), 0);
    strides.back() = 1;
    for (int i = static_cast<int>(d.size()) - 2; i >= 0; --i) strides[static_cast<size_t>(i)] = s.N;
    e.bias = dnnl::memory::desc(d, dnnl::memory::data_type::f32, strides);
  }
  dnnl::primitive_attr attr;
  dnnl::post_ops po;
  if (s.act != 0) {
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_square, 0.0f, 0.0f);
    if (s.act == 1) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, s.act_s, s.act_b);
  }
  if (s.accumulate) po.append_sum(1.0f);
  attr.set_post_ops(po);
  if (s.alpha != 1.0f) attr.set_output_scales(0, {s.alpha});
  dnnl::matmul::desc d = s.bias ? dnnl::matmul::desc(e.a, e.b, e.bias, e.c) : dnnl::matmul::desc(e.a, e.b, e.c);
  dnnl::matmul::primitive_desc pd(d, attr, st.eng);
  e.prim = dnnl::matmul(pd);
  return st.cache.emplace(key, std::move(e)).first->second;
}

// Holds SIGPROF back in this thread while oneDNN runs. Node's sampling profilers (--cpu-prof, --prof)
// interrupt the JS thread with SIGPROF; delivered inside oneDNN's JIT GEMM kernels it corrupted the
// heap (reproduced with linear alone; not with our own kernels, nor with a plain C++ handler). The
// signal stays pending and is delivered when the GEMM returns.
class ProfilerSignalBlock {
 public:
  ProfilerSignalBlock() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPROF);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~ProfilerSignalBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  ProfilerSignalBlock(const ProfilerSignalBlock&) = delete;
  ProfilerSignalBlock& operator=(const ProfilerSignalBlock&) = delete;

 private:
  sigset_t old_;
};

}  // namespace

void gemm(const GemmShape& s, const float* A, const float* B, float* C, const float* bias) {
  if (s.M == 0 || s.N == 0) return;
  if (s.K == 0) {  // empty reduction: C = 0 (+ bias), or unchanged when accumulating
    if (s.accumulate && !s.bias) return;
    throw Error(ErrorKind::range, "gemm: K = 0 is only supported when accumulating without bias");
  }
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  try {
    Entry& e = lookup(s);
    dnnl::memory ma(e.a, st.eng, const_cast<float*>(A));
    dnnl::memory mb(e.b, st.eng, const_cast<float*>(B));
    dnnl::memory mc(e.c, st.eng, C);
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    if (s.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(e.bias, st.eng, const_cast<float*>(bias)));
    ProfilerSignalBlock block;
    e.prim.execute(st.strm, args);
    st.strm.wait();
  } catch (const dnnl::error& err) {
    throw Error(ErrorKind::generic, std::string("gemm (oneDNN): ") + err.what() + " for M=" + std::to_string(s.M) +
                                        " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K));
  }
}

void gemm_xwT(int64_t M, int64_t N, int64_t K, const float* A, const float* W, float* C, const float* bias,
              bool accumulate) {
  GemmShape s;
  s.M = M;
  s.N = N;
  s.K = K;
  s.a_m = K;
  s.a_k = 1;
  s.b_k = 1;
  s.b_n = K;
  s.c_m = N;
  s.c_n = 1;
  s.accumulate = accumulate;
  s.bias = bias != nullptr;
  gemm(s, A, W, C, bias);
}

}  // namespace mf::cpu
