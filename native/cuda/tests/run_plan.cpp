// cuda/tests/run_plan.cpp: replays exported inference plans (bench/gpu/export_plans.ts writes them; the
// format is documented there) on a backend, without Node: the model fixtures and model timings of the
// GPU check. Slots are allocated at their first use and released after their last (the caching
// allocator reuses the memory), inputs and outputs stay; outputs are compared with the expected data in
// the plan (relative L2 against the plan's per-tensor tolerance). Used by check_ops.cpp (--plans).
// In bf16 precision (--precision bf16) the logits are held to issue 5's bound for that mode, 2e-2 relative
// L2 from the float64 reference; the other outputs are reported, not judged.
#include "run_plan.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../core/check.h"
#include "../../core/memory.h"
#include "../device.h"

namespace mf::plan_replay {
namespace {

struct Meta {
  DType dt = DType::f32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0};
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dt); }
};

struct PlanFile {
  std::string name;
  std::vector<Meta> slots;
  std::vector<int64_t> alias;
  std::vector<Meta> consts;
  std::vector<int64_t> const_off;
  std::vector<int64_t> in_slot, in_off;
  std::vector<int64_t> out_slot, out_off;
  std::vector<std::string> out_name;
  std::vector<double> out_tol;
  struct Step {
    OpId op;
    Dir dir;
    std::vector<int64_t> ins, outs;
    std::vector<double> attrs;
  };
  std::vector<Step> steps;
  std::vector<uint8_t> blob;
};

[[noreturn]] void bad(const std::string& file, const std::string& what) {
  throw std::runtime_error("plan " + file + ": " + what);
}

Meta read_meta(std::istream& in, const std::string& file) {
  Meta m;
  int code = 0;
  in >> code >> m.ndim;
  if (!in || code < 0 || code >= kNumDTypes || m.ndim < 0 || m.ndim > kMaxDims) bad(file, "bad tensor description");
  m.dt = static_cast<DType>(code);
  for (int i = 0; i < m.ndim; ++i) in >> m.shape[i];
  return m;
}

void expect_word(std::istream& in, const char* w, const std::string& file) {
  std::string s;
  in >> s;
  if (s != w) bad(file, std::string("expected '") + w + "' but read '" + s + "'");
}

PlanFile load(const std::string& path) {
  std::ifstream in(path);
  if (!in) bad(path, "cannot open");
  PlanFile p;
  std::string base = path.substr(path.find_last_of('/') + 1);
  p.name = base.substr(0, base.size() - 5);
  std::string magic;
  int version = 0;
  in >> magic >> version;
  if (magic != "metaformer-plan" || version != 1) bad(path, "not a version-1 plan");
  size_t n = 0;
  expect_word(in, "slots", path);
  in >> n;
  for (size_t i = 0; i < n; ++i) {
    p.slots.push_back(read_meta(in, path));
    int64_t a;
    in >> a;
    p.alias.push_back(a);
  }
  expect_word(in, "consts", path);
  in >> n;
  for (size_t i = 0; i < n; ++i) {
    p.consts.push_back(read_meta(in, path));
    int64_t off, nbytes;
    in >> off >> nbytes;
    if (nbytes != static_cast<int64_t>(p.consts.back().bytes())) bad(path, "const size mismatch");
    p.const_off.push_back(off);
  }
  expect_word(in, "inputs", path);
  in >> n;
  for (size_t i = 0; i < n; ++i) {
    int64_t s, off;
    in >> s >> off;
    p.in_slot.push_back(s);
    p.in_off.push_back(off);
  }
  expect_word(in, "outputs", path);
  in >> n;
  for (size_t i = 0; i < n; ++i) {
    int64_t s, off;
    std::string nm;
    double tol;
    in >> s >> nm >> off >> tol;
    p.out_slot.push_back(s);
    p.out_name.push_back(nm);
    p.out_off.push_back(off);
    p.out_tol.push_back(tol);
  }
  expect_word(in, "steps", path);
  in >> n;
  for (size_t i = 0; i < n; ++i) {
    PlanFile::Step st;
    std::string op;
    int dir = 0;
    in >> op >> dir;
    int id = -1;
    for (int k = 0; k < kNumOps; ++k)
      if (op == op_name(static_cast<OpId>(k))) id = k;
    if (id < 0) bad(path, "unknown op " + op);
    st.op = static_cast<OpId>(id);
    st.dir = dir ? Dir::backward : Dir::forward;
    size_t k;
    in >> k;
    st.ins.resize(k);
    for (auto& r : st.ins) in >> r;
    in >> k;
    st.outs.resize(k);
    for (auto& r : st.outs) in >> r;
    in >> k;
    st.attrs.resize(k);
    for (auto& a : st.attrs) in >> a;
    if (!in) bad(path, "truncated step " + std::to_string(i));
    p.steps.push_back(std::move(st));
  }
  for (int64_t a : p.alias)
    if (a >= static_cast<int64_t>(p.slots.size())) bad(path, "bad alias");
  std::ifstream bin(path.substr(0, path.size() - 5) + ".bin", std::ios::binary);
  if (bin) p.blob.assign(std::istreambuf_iterator<char>(bin), std::istreambuf_iterator<char>());
  return p;
}

// Memory on the backend's device.
struct Mem {
  int32_t device;
  void* alloc(size_t b) const {
    if (device == kHostDevice) return host_alloc(b);
    return cuda::device_alloc(b);
  }
  void release(void* p, size_t b) const {
    if (device == kHostDevice) host_free(p, b);
    else cuda::device_free(p, b);
  }
  void upload(void* dst, const void* src, size_t b) const {
    if (device == kHostDevice) std::memcpy(dst, src, b);
    else cuda::copy(dst, 1, src, 0, b);
  }
  void download(void* dst, const void* src, size_t b) const {
    if (device == kHostDevice) std::memcpy(dst, src, b);
    else cuda::copy(dst, 0, src, 1, b);
  }
  void sync() const {
    if (device != kHostDevice) cuda::synchronize();
  }
};

std::vector<uint8_t> random_bytes(const Meta& m, std::mt19937& rng, float lo, float hi) {
  std::vector<uint8_t> v(m.bytes());
  if (m.dt == DType::f32) {
    std::uniform_real_distribution<float> u(lo, hi);
    float* f = reinterpret_cast<float*>(v.data());
    for (int64_t i = 0; i < m.numel(); ++i) f[i] = u(rng);
  }
  return v;
}

struct Replay {
  const PlanFile& p;
  const Backend& be;
  Mem mem;
  std::vector<void*> const_ptr, root_ptr;
  std::vector<int64_t> root, first, last;
  std::vector<bool> bound;

  Replay(const PlanFile& plan, const Backend& backend) : p(plan), be(backend), mem{backend.device} {
    size_t n = p.slots.size();
    root.resize(n);
    for (size_t i = 0; i < n; ++i) root[i] = p.alias[i] >= 0 ? root[static_cast<size_t>(p.alias[i])] : static_cast<int64_t>(i);
    first.assign(n, -1);
    last.assign(n, -1);
    bound.assign(n, false);
    for (int64_t s : p.in_slot) bound[static_cast<size_t>(root[static_cast<size_t>(s)])] = true;
    for (int64_t s : p.out_slot) bound[static_cast<size_t>(root[static_cast<size_t>(s)])] = true;
    for (size_t si = 0; si < p.steps.size(); ++si)
      for (const auto* refs : {&p.steps[si].ins, &p.steps[si].outs})
        for (int64_t r : *refs)
          if (r >= 0) {
            size_t rt = static_cast<size_t>(root[static_cast<size_t>(r)]);
            if (first[rt] < 0) first[rt] = static_cast<int64_t>(si);
            last[rt] = static_cast<int64_t>(si);
          }
    root_ptr.assign(n, nullptr);
    std::mt19937 rng(7);
    for (size_t i = 0; i < p.consts.size(); ++i) {
      const Meta& m = p.consts[i];
      void* d = mem.alloc(m.bytes());
      const_ptr.push_back(d);
      if (p.const_off[i] >= 0) {
        if (static_cast<size_t>(p.const_off[i]) + m.bytes() > p.blob.size()) bad(p.name, "const data past the blob");
        mem.upload(d, p.blob.data() + p.const_off[i], m.bytes());
      } else {
        std::vector<uint8_t> r = random_bytes(m, rng, -0.05f, 0.05f);
        mem.upload(d, r.data(), m.bytes());
      }
    }
    for (size_t i = 0; i < n; ++i)
      if (bound[i] && root[i] == static_cast<int64_t>(i)) root_ptr[i] = mem.alloc(p.slots[i].bytes());
    for (size_t i = 0; i < p.in_slot.size(); ++i) {
      const Meta& m = p.slots[static_cast<size_t>(p.in_slot[i])];
      void* d = root_ptr[static_cast<size_t>(root[static_cast<size_t>(p.in_slot[i])])];
      if (p.in_off[i] >= 0) {
        if (static_cast<size_t>(p.in_off[i]) + m.bytes() > p.blob.size()) bad(p.name, "input data past the blob");
        mem.upload(d, p.blob.data() + p.in_off[i], m.bytes());
      } else {
        std::vector<uint8_t> r = random_bytes(m, rng, -1.0f, 1.0f);
        mem.upload(d, r.data(), m.bytes());
      }
    }
  }

  ~Replay() {
    for (size_t i = 0; i < const_ptr.size(); ++i) mem.release(const_ptr[i], p.consts[i].bytes());
    for (size_t i = 0; i < root_ptr.size(); ++i)
      if (root_ptr[i]) mem.release(root_ptr[i], p.slots[i].bytes());
  }

  TensorView view(int64_t r) {
    TensorView v;
    if (r == -1) return v;
    const Meta* m;
    void* data;
    if (r >= 0) {
      m = &p.slots[static_cast<size_t>(r)];
      size_t rt = static_cast<size_t>(root[static_cast<size_t>(r)]);
      if (!root_ptr[rt]) root_ptr[rt] = mem.alloc(p.slots[rt].bytes());
      data = root_ptr[rt];
    } else {
      size_t c = static_cast<size_t>(-2 - r);
      m = &p.consts[c];
      data = const_ptr[c];
    }
    v.data = data;
    v.dtype = m->dt;
    v.ndim = m->ndim;
    for (int i = 0; i < m->ndim; ++i) v.shape[i] = m->shape[i];
    v.device = be.device;
    return v;
  }

  // One forward pass. With per_op, each step is waited for and its time added under its op's name.
  void run(std::map<std::string, double>* per_op = nullptr) {
    for (size_t si = 0; si < p.steps.size(); ++si) {
      const auto& st = p.steps[si];
      OpArgs a;
      a.n_in = static_cast<int>(st.ins.size());
      a.n_out = static_cast<int>(st.outs.size());
      a.n_attr = static_cast<int>(st.attrs.size());
      for (int i = 0; i < a.n_in; ++i) a.in[i] = view(st.ins[static_cast<size_t>(i)]);
      for (int i = 0; i < a.n_out; ++i) a.out[i] = view(st.outs[static_cast<size_t>(i)]);
      for (int i = 0; i < a.n_attr; ++i) a.attr[i] = st.attrs[static_cast<size_t>(i)];
      auto t0 = std::chrono::steady_clock::now();
      run_op(be, st.op, st.dir, a);
      if (per_op) {
        mem.sync();
        (*per_op)[op_name(st.op)] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      }
      for (const auto* refs : {&st.ins, &st.outs})  // release slots whose last use this was
        for (int64_t r : *refs)
          if (r >= 0) {
            size_t rt = static_cast<size_t>(root[static_cast<size_t>(r)]);
            if (!bound[rt] && last[rt] == static_cast<int64_t>(si) && root_ptr[rt]) {
              mem.release(root_ptr[rt], p.slots[rt].bytes());
              root_ptr[rt] = nullptr;
            }
          }
    }
  }
};

double rel_l2(const float* got, const float* want, int64_t n, double* max_abs) {
  double num = 0, den = 0, mx = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
    mx = std::max(mx, std::fabs(d));
    if (std::isnan(d)) mx = NAN;
  }
  *max_abs = mx;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

Tally run_plans(const std::string& dir, const std::string& filter, const Backend& be, bool time, FILE* json,
                Precision prec) {
  Tally t;
  PlanContext ctx;
  ctx.precision = prec;
  PlanContextScope scope(ctx);
  const bool bf16 = prec == Precision::bf16;
  const char* pname = bf16 ? "bf16" : "fp32";
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".plan") == 0 && (filter.empty() || n.find(filter) != std::string::npos))
        files.push_back(dir + "/" + n);
    }
    closedir(d);
  } else {
    std::printf("FAIL  plans: cannot open %s\n", dir.c_str());
    t.failed++;
    return t;
  }
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) {
    std::string label = f.substr(f.find_last_of('/') + 1);
    try {
      PlanFile p = load(f);
      Replay r(p, be);
      r.run();
      r.mem.sync();
      bool any_expected = false;
      for (size_t i = 0; i < p.out_slot.size(); ++i) {
        if (p.out_off[i] < 0) continue;
        any_expected = true;
        const Meta& m = p.slots[static_cast<size_t>(p.out_slot[i])];
        std::vector<float> got(static_cast<size_t>(m.numel()));
        r.mem.download(got.data(), r.root_ptr[static_cast<size_t>(r.root[static_cast<size_t>(p.out_slot[i])])], m.bytes());
        if (static_cast<size_t>(p.out_off[i]) + m.bytes() > p.blob.size()) bad(p.name, "expected data past the blob");
        const float* want = reinterpret_cast<const float*>(p.blob.data() + p.out_off[i]);
        double mx = 0, err = rel_l2(got.data(), want, m.numel(), &mx);
        const bool judged = !bf16 || p.out_name[i] == "logits";
        const double tol = bf16 ? 2e-2 : p.out_tol[i];
        bool ok = !std::isnan(err) && err <= tol;
        std::printf("%s  model %-40s %-9s %s rel_l2=%.2e tol=%.1e max_abs=%.2e\n", !judged ? "INFO" : ok ? "PASS" : "FAIL",
                    p.name.c_str(), p.out_name[i].c_str(), pname, err, tol, mx);
        if (json)
          std::fprintf(json,
                       "{\"model\":\"%s\",\"output\":\"%s\",\"precision\":\"%s\",\"rel_l2\":%.4e,\"tol\":%.2e,"
                       "\"judged\":%s,\"ok\":%s}\n",
                       p.name.c_str(), p.out_name[i].c_str(), pname, std::isnan(err) ? -1.0 : err, tol,
                       judged ? "true" : "false", ok ? "true" : "false");
        if (judged) (ok ? t.passed : t.failed)++;
      }
      if (time) {
        int64_t batch = p.slots[static_cast<size_t>(p.in_slot[0])].shape[0];
        for (int i = 0; i < 2; ++i) r.run();
        r.mem.sync();
        std::vector<double> ms;
        auto start = std::chrono::steady_clock::now();
        while (ms.size() < 50) {
          auto t0 = std::chrono::steady_clock::now();
          r.run();
          r.mem.sync();
          auto t1 = std::chrono::steady_clock::now();
          ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
          if (ms.size() >= 5 && std::chrono::duration<double>(t1 - start).count() > 1.5) break;
        }
        std::sort(ms.begin(), ms.end());
        double med = ms[ms.size() / 2];
        std::printf("BENCH model %-28s %s B=%-4lld %9.3f ms  %9.1f img/s  (%zu runs)\n", p.name.c_str(), pname,
                    static_cast<long long>(batch), med, batch / (med * 1e-3), ms.size());
        if (json)
          std::fprintf(json,
                       "{\"bench\":\"model\",\"name\":\"%s\",\"precision\":\"%s\",\"batch\":%lld,\"ms\":%.5f,"
                       "\"img_per_s\":%.2f}\n",
                       p.name.c_str(), pname, static_cast<long long>(batch), med, batch / (med * 1e-3));
        // Where the time goes (the largest batch only): one pass waiting for every step, summed per op.
        if (batch >= 64) {
          std::map<std::string, double> per_op;
          r.run(&per_op);
          double sum = 0;
          for (const auto& kv : per_op) sum += kv.second;
          std::vector<std::pair<double, std::string>> order;
          for (const auto& kv : per_op) order.push_back({kv.second, kv.first});
          std::sort(order.rbegin(), order.rend());
          std::string line, js;
          for (const auto& [ms_op, name] : order) {
            char buf[96];
            std::snprintf(buf, sizeof buf, " %s %.3f ms (%.0f%%)", name.c_str(), ms_op, 100.0 * ms_op / sum);
            line += buf;
            std::snprintf(buf, sizeof buf, "%s\"%s\":%.4f", js.empty() ? "" : ",", name.c_str(), ms_op);
            js += buf;
          }
          std::printf("PROFILE model %-26s %s B=%-4lld%s\n", p.name.c_str(), pname, static_cast<long long>(batch), line.c_str());
          if (json)
            std::fprintf(json, "{\"profile\":\"%s\",\"precision\":\"%s\",\"batch\":%lld,\"ops\":{%s}}\n", p.name.c_str(),
                         pname, static_cast<long long>(batch), js.c_str());
        }
      } else if (!any_expected) {
        std::printf("PASS  model %-40s ran (no expected outputs)\n", p.name.c_str());
        t.passed++;
      }
    } catch (const std::exception& e) {
      std::printf("FAIL  model %-40s %s\n", label.c_str(), e.what());
      if (json) std::fprintf(json, "{\"model\":\"%s\",\"ok\":false}\n", label.c_str());
      t.failed++;
    }
  }
  return t;
}

}  // namespace mf::plan_replay
