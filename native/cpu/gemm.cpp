// gemm.cpp: oneDNN matmul with a per-shape primitive cache (see gemm.h), the choice of the own GEMM,
// and the copies kept with plan weights (the bf16 mode's operand copies, the own GEMM's packed
// panels). oneDNN runs on the same OpenMP pool as our kernels (Debian's libdnnl is built with the
// OpenMP runtime).
#include "gemm.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/numeric.h"
#include "cpu.h"

namespace mf::cpu {
namespace {

// The cache key lists every field of GemmShape explicitly (no padding bytes in the comparison).
struct Key {
  std::array<int64_t, 25> v;
  Key(const GemmShape& s, Precision p, bool blocked)
      : v{s.batch[0], s.batch[1], s.M, s.N, s.K, s.a_b[0], s.a_b[1], s.a_m, s.a_k, s.b_b[0], s.b_b[1], s.b_k,
          s.b_n, s.c_b[0], s.c_b[1], s.c_m, s.c_n, s.accumulate, s.bias, 0, s.act, 0, 0, static_cast<int64_t>(p), blocked} {
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

// Where bf16 mode copies an operand [batch0][batch1][rows][cols]: densely, in the operand's own
// memory order (the dimension with the smaller stride stays innermost); a batch dimension the operand
// does not vary along (stride 0) stays shared.
struct Dense {
  int64_t b[2] = {0, 0}, rs = 0, cs = 0;  // element strides of the copy
  int64_t size = 0;                      // elements
};

struct Entry {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, bias;
  // A plan weight in the layout oneDNN chose for this product (b): b_plain is its own layout, reordered
  // into b once per weight version (blocked_weights()).
  dnnl::memory::desc b_plain;
  bool blocked = false;
  // bf16 mode: the layouts of the copies of A and B, and whether they hold bf16 values in float32
  // (no bf16 matmul on this CPU) rather than bf16.
  Dense da, db;
  bool rounded = false;
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

dnnl::memory::desc md(const GemmShape& s, int64_t r, int64_t c, const int64_t* bs, int64_t rs, int64_t cs,
                      dnnl::memory::data_type dt = dnnl::memory::data_type::f32) {
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
  return dnnl::memory::desc(d, dt, st);
}

Dense dense_layout(const GemmShape& s, int64_t rows, int64_t cols, const int64_t* bs, int64_t rs, int64_t cs) {
  Dense d;
  bool col_major = std::llabs(rs) < std::llabs(cs);
  d.rs = col_major ? 1 : cols;
  d.cs = col_major ? rows : 1;
  int64_t n = rows * cols;
  for (int i = 1; i >= 0; --i) {
    if (s.batch[i] > 1 && bs[i] == 0) continue;  // shared: stride 0
    d.b[i] = n;  // a dense stride even for a batch of 1 (oneDNN 2.6 gives stride 0 there its reference matmul)
    n *= std::max<int64_t>(1, s.batch[i]);
  }
  d.size = n;
  return d;
}

// Primitive descriptor of the matmul for e's descriptors (shared by both precisions).
dnnl::matmul::primitive_desc make_pd(const GemmShape& s, const Entry& e, const dnnl::engine& eng) {
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
  return dnnl::matmul::primitive_desc(d, attr, eng);
}

// blocked: float32 with B (an unbatched plan weight) in the layout the primitive prefers.
Entry& lookup(const GemmShape& s, Precision p, bool blocked = false) {
  State& st = state();
  Key key(s, p, blocked);
  auto it = st.cache.find(key);
  if (it != st.cache.end()) return it->second;
  Entry e;
  if (p == Precision::f32) {
    e.a = md(s, s.M, s.K, s.a_b, s.a_m, s.a_k);
    e.b = md(s, s.K, s.N, s.b_b, s.b_k, s.b_n);
    if (blocked) {
      e.b_plain = e.b;
      e.b = dnnl::memory::desc({s.K, s.N}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
      e.blocked = true;
    }
  } else {
    e.da = dense_layout(s, s.M, s.K, s.a_b, s.a_m, s.a_k);
    e.db = dense_layout(s, s.K, s.N, s.b_b, s.b_k, s.b_n);
  }
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
  if (p == Precision::f32) {
    dnnl::matmul::primitive_desc pd = make_pd(s, e, st.eng);
    if (e.blocked) e.b = pd.weights_desc();
    e.prim = dnnl::matmul(pd);
  } else {
    // bf16 copies through oneDNN's bf16 matmul where this CPU has one, else rounded float32 copies.
    auto dense_md = [&](const Dense& d, int64_t r, int64_t c, dnnl::memory::data_type dt) {
      return md(s, r, c, d.b, d.rs, d.cs, dt);
    };
    // A reference implementation (CPUs with AVX-512 but no bf16 instructions may get one) would be
    // far slower than the emulation, so it counts as unsupported. So do batched products: on an AMX
    // Xeon (8 and 16 threads) oneDNN 2.6's bf16 matmul returned wrong attention
    // products for 49 tokens (relative error 0.25 in every row; right on 1 thread, and for 47, 64 and
    // 196 tokens), also with K padded to even; those take the emulation (attention's share is small).
    try {
      if (nbatch(s) > 0) throw dnnl::error(dnnl_unimplemented, "batched bf16 matmul");
      e.a = dense_md(e.da, s.M, s.K, dnnl::memory::data_type::bf16);
      e.b = dense_md(e.db, s.K, s.N, dnnl::memory::data_type::bf16);
      dnnl::matmul::primitive_desc pd = make_pd(s, e, st.eng);
      if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) throw dnnl::error(dnnl_unimplemented, "reference bf16 matmul");
      e.prim = dnnl::matmul(pd);
    } catch (const dnnl::error&) {
      e.rounded = true;
      e.a = dense_md(e.da, s.M, s.K, dnnl::memory::data_type::f32);
      e.b = dense_md(e.db, s.K, s.N, dnnl::memory::data_type::f32);
      e.prim = dnnl::matmul(make_pd(s, e, st.eng));
    }
  }
  return st.cache.emplace(key, std::move(e)).first->second;
}

// f32_to_bf16 on 8 floats (their bits u): lane i holds the bf16 bits of float i in its low 16 bits.
// Round to nearest even; NaNs stay NaN (quiet), as in core/numeric.h.
inline __m256i bf16_bits8(__m256i u) {
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

// Copies operand src [batch0][batch1][rows][cols] (strides bs, rs, cs) into the layout d, rounded to
// bf16: as bf16 bits (Out = uint16_t) or as the rounded values in float32 (Out = float). Contiguous
// source runs (every activation operand) convert 8 at a time.
template <typename Out>
void copy_bf16(const GemmShape& s, int64_t rows, int64_t cols, const float* src, const int64_t* bs, int64_t rs,
               int64_t cs, const Dense& d, Out* dst) {
  bool col_major = d.rs == 1 && rows > 1;
  int64_t outer = col_major ? cols : rows, inner = col_major ? rows : cols;
  int64_t s_out = col_major ? cs : rs, s_in = col_major ? rs : cs;
  int64_t n0 = d.b[0] ? std::max<int64_t>(1, s.batch[0]) : 1, n1 = d.b[1] ? std::max<int64_t>(1, s.batch[1]) : 1;
  parallel_for(n0 * n1 * outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, inner)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t o = t % outer, i1 = (t / outer) % n1, i0 = t / (outer * n1);
      const float* in = src + i0 * bs[0] + i1 * bs[1] + o * s_out;
      Out* out = dst + i0 * d.b[0] + i1 * d.b[1] + o * inner;
      int64_t i = 0;
      if (s_in == 1) {
        for (; i + 8 <= inner; i += 8) {
          const __m256i h = bf16_bits8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
          if constexpr (sizeof(Out) == 2) {
            // 32-bit lanes -> 16-bit (packus works per 128-bit half; qwords 0 and 2 hold the 8 results)
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_castsi256_si128(packed));
          } else {
            _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
          }
        }
      }
      for (; i < inner; ++i) {
        uint16_t h = f32_to_bf16(in[i * s_in]);
        if constexpr (sizeof(Out) == 2) out[i] = h;
        else out[i] = bf16_to_f32(h);
      }
    }
  });
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

// Copies derived from a plan weight (Storage::derived): the bf16 mode's rounded copies (one per GEMM
// layout the weight feeds) and the own GEMM's packed panels, each identified by a key (its kind and
// layout) and valid for the storage version it was made from.
struct WeightCopies : Derived {
  struct Copy {
    std::array<int64_t, 7> key;
    std::unique_ptr<Scratch> data;
    bool valid = false;
    uint64_t version = 0;
  };
  std::vector<Copy> copies;
};

enum CopyKind : int64_t { kBf16Copy = 1, kPackedPanels = 2, kOnednnBlocked = 3 };

// The running plan's storage for weight B, if B is one and JS cannot be writing it (no live view()).
Storage* plan_weight(const GemmShape& s, const float* B) {
  const WeightIndex* weights = plan_context().weights;
  if (!weights || s.batch[0] * s.batch[1] != 1) return nullptr;
  auto it = weights->find(B);
  if (it == weights->end()) return nullptr;
  Storage* w = it->second;
  return w->live_views.load(std::memory_order_acquire) == 0 ? w : nullptr;
}

// The copy `key` of plan weight w (`floats` of scratch), made by fill(dst) when it is missing or the
// weight changed since it was made.
template <typename Fill>
const float* weight_copy(Storage* w, const std::array<int64_t, 7>& key, size_t floats, Fill&& fill) {
  auto* cache = dynamic_cast<WeightCopies*>(w->derived.get());
  if (!cache) {
    w->derived = std::make_unique<WeightCopies>();
    cache = static_cast<WeightCopies*>(w->derived.get());
  }
  auto c = std::find_if(cache->copies.begin(), cache->copies.end(),
                         [&](const WeightCopies::Copy& x) { return x.key == key; });
  const uint64_t version = w->version.load(std::memory_order_acquire);
  if (c == cache->copies.end()) {
    cache->copies.push_back({key, std::make_unique<Scratch>(floats)});
    c = cache->copies.end() - 1;
  }
  if (!c->valid || c->version != version) {
    fill(c->data->get());
    c->valid = true;
    c->version = version;
  }
  return c->data->get();
}

// Floats of scratch that hold n elements of e's bf16-mode operand copies.
size_t copy_floats(const Entry& e, int64_t n) {
  size_t esz = e.rounded ? sizeof(float) : sizeof(uint16_t);
  return (static_cast<size_t>(n) * esz + sizeof(float) - 1) / sizeof(float);
}

// copy_bf16 in the form e's matmul reads: rounded floats or bf16 bits.
void copy_operand(const Entry& e, const GemmShape& s, int64_t rows, int64_t cols, const float* src, const int64_t* bs,
                  int64_t rs, int64_t cs, const Dense& d, float* dst) {
  if (e.rounded) copy_bf16(s, rows, cols, src, bs, rs, cs, d, dst);
  else copy_bf16(s, rows, cols, src, bs, rs, cs, d, reinterpret_cast<uint16_t*>(dst));
}

// The bf16 copy of B when B is a weight of the running plan (made now if the weight changed since);
// null when B is not such a weight or JS may be writing it (a live view()).
const void* cached_weight_copy(const GemmShape& s, const float* B, const Entry& e) {
  Storage* w = plan_weight(s, B);
  if (!w) return nullptr;
  const std::array<int64_t, 7> key{kBf16Copy, s.K, s.N, s.b_k, s.b_n, e.rounded, e.db.size};
  return weight_copy(w, key, copy_floats(e, e.db.size),
                     [&](float* dst) { copy_operand(e, s, s.K, s.N, B, s.b_b, s.b_k, s.b_n, e.db, dst); });
}

// The own GEMM's packed panels of B when B is a weight of the running plan, else null.
const float* packed_weight(const GemmShape& s, const float* B) {
  Storage* w = plan_weight(s, B);
  if (!w) return nullptr;
  const std::array<int64_t, 7> key{kPackedPanels, s.K, s.N, s.b_k, s.b_n, 0, 0};
  return weight_copy(w, key, own_gemm_packed_floats(s), [&](float* dst) { own_gemm_pack(s, B, dst); });
}

// Plan weight B reordered into the layout e's primitive prefers (made now if the weight changed since).
// The key holds a hash of that layout, not the product's M: plans of several batch sizes share one copy
// where oneDNN picks the same layout for them.
const float* blocked_weight(Storage* w, const GemmShape& s, const float* B, const Entry& e) {
  const dnnl_memory_desc_t& d = e.b.data;
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(&d);
  int64_t h = 1469598103934665603ll;
  for (size_t i = 0; i < sizeof(d); ++i) h = (h ^ bytes[i]) * 1099511628211ll;
  const std::array<int64_t, 7> key{kOnednnBlocked, s.K, s.N, s.b_k, s.b_n, h, 0};
  const size_t floats = (e.b.get_size() + sizeof(float) - 1) / sizeof(float);
  State& st = state();
  return weight_copy(w, key, floats, [&](float* dst) {
    dnnl::memory src(e.b_plain, st.eng, const_cast<float*>(B)), out(e.b, st.eng, dst);
    dnnl::reorder(src, out).execute(st.strm, src, out);
    st.strm.wait();
  });
}

std::atomic<int> g_layout{static_cast<int>(WeightLayout::automatic)};

// Whether oneDNN reads plan weights in its preferred layout (see WeightLayout).
bool blocked_weights() {
  const auto l = static_cast<WeightLayout>(g_layout.load(std::memory_order_relaxed));
  return l == WeightLayout::blocked || (l == WeightLayout::automatic && has_avx512());
}

}  // namespace

void set_onednn_weight_layout(WeightLayout l) { g_layout.store(static_cast<int>(l), std::memory_order_relaxed); }
WeightLayout onednn_weight_layout() { return static_cast<WeightLayout>(g_layout.load(std::memory_order_relaxed)); }

void gemm(const GemmShape& s, const float* A, const float* B, float* C, const float* bias) {
  if (s.M == 0 || s.N == 0) return;
  if (s.K == 0) {  // empty reduction: every entry is act(0 [+ bias]); accumulated onto C or written
    for (int64_t b0 = 0; b0 < s.batch[0]; ++b0)
      for (int64_t b1 = 0; b1 < s.batch[1]; ++b1)
        for (int64_t m = 0; m < s.M; ++m)
          for (int64_t n = 0; n < s.N; ++n) {
            float v = s.bias && bias ? bias[n] : 0.0f;
            if (s.act != 0) {
              v = v > 0.0f ? v * v : 0.0f;
              if (s.act == 1) v = s.act_s * v + s.act_b;
            }
            float& c = C[b0 * s.c_b[0] + b1 * s.c_b[1] + m * s.c_m + n * s.c_n];
            c = s.accumulate ? c + v : v;
          }
    return;
  }
  Precision p = gemm_precision();
  if (p == Precision::f32) {
    // A plan weight is packed once (per version) and read packed by every later run.
    const float* packed = own_gemm_applies(s, true) ? packed_weight(s, B) : nullptr;
    if (packed || own_gemm_applies(s)) {
      own_gemm(s, A, B, C, s.bias ? bias : nullptr, packed);
      return;
    }
  }
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  try {
    Storage* weight = p == Precision::f32 && blocked_weights() ? plan_weight(s, B) : nullptr;
    Entry& e = lookup(s, p, weight != nullptr);
    auto run = [&](const void* a, const void* b) {
      std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, dnnl::memory(e.a, st.eng, const_cast<void*>(a))},
                                                 {DNNL_ARG_WEIGHTS, dnnl::memory(e.b, st.eng, const_cast<void*>(b))},
                                                 {DNNL_ARG_DST, dnnl::memory(e.c, st.eng, C)}};
      if (s.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(e.bias, st.eng, const_cast<float*>(bias)));
      ProfilerSignalBlock block;
      e.prim.execute(st.strm, args);
      st.strm.wait();
    };
    if (p == Precision::f32) {
      run(A, e.blocked ? blocked_weight(weight, s, B, e) : B);
    } else {  // bf16: dense rounded copies of A and B (bf16 bits, or bf16 values in float32)
      Scratch a(copy_floats(e, e.da.size));
      copy_operand(e, s, s.M, s.K, A, s.a_b, s.a_m, s.a_k, e.da, a.get());
      if (const void* cached = cached_weight_copy(s, B, e)) {
        run(a.get(), cached);
      } else {
        Scratch b(copy_floats(e, e.db.size));
        copy_operand(e, s, s.K, s.N, B, s.b_b, s.b_k, s.b_n, e.db, b.get());
        run(a.get(), b.get());
      }
    }
  } catch (const dnnl::error& err) {
    throw Error(ErrorKind::generic, std::string("gemm (oneDNN): ") + err.what() + " for M=" + std::to_string(s.M) +
                                        " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K));
  }
}

bool bf16_native() {
  static const bool native = [] {
    GemmShape s;
    s.M = s.N = s.K = 16;
    s.a_m = s.b_k = s.c_m = 16;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    try {
      return !lookup(s, Precision::bf16).rounded;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return native;
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
