// plan.cpp: the Plan executor (see plan.h).
#include "plan.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "../core/threading.h"
#include "common.h"
#include "tensor_wrap.h"

namespace mf::binding {

PlanData::~PlanData() {
  if (graph) device_hooks(be->device)->release_graph(graph);  // waits for a replay still running
  if (staged) storage_release(staged);
  for (Storage* s : consts) storage_release(s);
  if (arena) storage_release(arena);
}

void PlanData::execute(const std::vector<void*>& bound, double* step_seconds) {
  PlanContextScope context(PlanContext{precision, &weights});
  // A device backend queues its kernels: wait for them (per step when timing), so a run ends when its
  // outputs are ready and an asynchronous kernel failure rejects this run.
  const DeviceHooks* dev = be->device != kHostDevice ? device_hooks(be->device) : nullptr;
  if (dev && !step_seconds && run_graph(bound, dev)) return;
  run_steps(bound, dev, step_seconds);
  if (dev) dev->synchronize();
}

void PlanData::run_steps(const std::vector<void*>& bound, const DeviceHooks* dev, double* step_seconds) {
  OpArgs args;
  auto resolve = [&](const PlanArg& p) {
    TensorView v = p.meta;
    switch (p.kind) {
      case 1: v.data = static_cast<char*>(arena->ptr) + p.index; break;
      case 2: v.data = consts[static_cast<size_t>(p.index)]->ptr; break;
      case 3: v.data = bound[static_cast<size_t>(p.index)]; break;
      default: v = TensorView{};
    }
    return v;
  };
  for (const PlanStep& s : steps) {
    args.n_in = static_cast<int>(s.ins.size());
    args.n_out = static_cast<int>(s.outs.size());
    args.n_attr = s.n_attr;
    for (int i = 0; i < args.n_in; ++i) args.in[i] = resolve(s.ins[static_cast<size_t>(i)]);
    for (int i = 0; i < args.n_out; ++i) args.out[i] = resolve(s.outs[static_cast<size_t>(i)]);
    std::memcpy(args.attr, s.attr, sizeof(double) * static_cast<size_t>(s.n_attr));
    Kernel k = s.dir == Dir::forward ? be->fwd[static_cast<int>(s.op)] : be->bwd[static_cast<int>(s.op)];
    if (step_seconds) {
      auto t0 = std::chrono::steady_clock::now();
      k(args);
      if (dev) dev->synchronize();
      *step_seconds++ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } else {
      k(args);
    }
  }
}

bool PlanData::run_graph(const std::vector<void*>& bound, const DeviceHooks* dev) {
  if (graph_off || !dev->graphs || !dev->graphs()) return false;  // (nothing allocated when they are off)
  // The first run goes step by step: kernels get loaded, cuBLAS picks its algorithms and the allocator
  // cache fills outside any recording. The second run records.
  if (!graph && !warmed) {
    warmed = true;
    return false;
  }
  auto bytes_of = [&](size_t i) { return static_cast<size_t>(bound_meta[i].numel()) * dtype_size(bound_meta[i].dtype); };
  if (!graph) {
    size_t total = 0;
    staged_off.clear();
    for (size_t i = 0; i < bound_meta.size(); ++i) {
      staged_off.push_back(total);
      total += (bytes_of(i) + 255) / 256 * 256;
    }
    Storage* st = storage_new(std::max<size_t>(total, 1), be->device);
    std::vector<void*> at;
    for (size_t off : staged_off) at.push_back(static_cast<char*>(st->ptr) + off);
    void* g = nullptr;
    try {
      g = dev->capture([this, at] { run_steps(at, nullptr, nullptr); });  // (owns its pointers: may be kept)
    } catch (const std::exception& e) {
      std::fprintf(stderr, "metaformer: recording a CUDA graph of this plan failed (%s); it runs step by step\n",
                   e.what());
    }
    if (!g) {  // failed: step by step from now on
      storage_release(st);
      graph_off = true;
      return false;
    }
    graph = g;
    staged = st;
    graphed.store(true);
  }
  char* base = static_cast<char*>(staged->ptr);
  for (size_t i = 0; i < n_inputs; ++i) dev->copy_async(base + staged_off[i], bound[i], bytes_of(i));
  dev->replay(graph);
  for (size_t i = n_inputs; i < bound_meta.size(); ++i) dev->copy_async(bound[i], base + staged_off[i], bytes_of(i));
  dev->synchronize();
  return true;
}

Napi::Function Plan::Define(Napi::Env env) {
  return DefineClass(env, "Plan",
                     {InstanceMethod<&Plan::RunSync>("runSync"), InstanceMethod<&Plan::Run>("run"),
                      InstanceMethod<&Plan::Profile>("profile"),
                      InstanceMethod<&Plan::Dispose>("dispose"), InstanceAccessor<&Plan::ArenaBytes>("arenaBytes"),
                      InstanceAccessor<&Plan::Graphed>("graphed")});
}

namespace {

int64_t get_int(Napi::Env env, Napi::Object o, const char* key) { return to_int(env, o.Get(key), key); }

Napi::Array get_array(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string("Plan: expected an array for ") + key);
  return v.As<Napi::Array>();
}

TensorView meta_of(Napi::Env env, Napi::Object slot) {
  TensorView v;
  int64_t code = get_int(env, slot, "dtype");
  if (code < 0 || code >= kNumDTypes) throw Napi::TypeError::New(env, "Plan: bad slot dtype");
  v.dtype = static_cast<DType>(code);
  Napi::Array shape = get_array(env, slot, "shape");
  if (shape.Length() > static_cast<uint32_t>(kMaxDims)) throw Napi::RangeError::New(env, "Plan: slot rank too large");
  v.ndim = static_cast<int>(shape.Length());
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = to_int(env, shape.Get(i), "a slot dimension");
    if (v.shape[i] < 0) throw Napi::RangeError::New(env, "Plan: negative slot dimension");
  }
  return v;
}

}  // namespace

Plan::Plan(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Plan>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "Plan: expected a spec object");
  Napi::Object spec = info[0].As<Napi::Object>();
  auto d = std::make_shared<PlanData>();
  d->be = &backend_by_id(env, get_int(env, spec, "backend"));
  Napi::Value prec = spec.Get("precision");
  if (!prec.IsUndefined()) {
    int64_t p = to_int(env, prec, "a precision code");
    if (p != static_cast<int64_t>(Precision::f32) && p != static_cast<int64_t>(Precision::bf16))
      throw Napi::RangeError::New(env, "Plan: expected a precision code (0: float32, 1: bf16) but received " + std::to_string(p));
    d->precision = static_cast<Precision>(p);
    if (d->precision == Precision::bf16 && d->be == &ref_backend())
      throw Napi::TypeError::New(env, "Plan: bf16 precision needs the cpu or cuda backend, not ref");
  }
  // Every tensor of the plan lives where its backend runs: the arena there, weights and bound tensors checked.
  const int32_t device = d->be->device;
  const char* const device_name = device == kHostDevice ? "cpu" : "cuda";

  Napi::Array consts = get_array(env, spec, "consts");
  std::vector<TensorView> const_meta;
  for (uint32_t i = 0; i < consts.Length(); ++i) {
    NativeTensor* t = NativeTensor::from(env, consts.Get(i), "Plan", "const " + std::to_string(i), false);
    const_meta.push_back(t->view_of(env, "Plan", "const " + std::to_string(i)));
    if (t->storage()->device != device)
      throw Napi::TypeError::New(env, std::string("Plan: expected the weights on ") + device_name + " (the " + d->be->name +
                                          " backend runs there) but const " + std::to_string(i) + " is not; move the model first");
    storage_retain(t->storage());
    d->consts.push_back(t->storage());
    d->weights.emplace(t->storage()->ptr, t->storage());
  }

  Napi::Array slots = get_array(env, spec, "slots");
  size_t n_slots = slots.Length();
  std::vector<TensorView> slot_meta(n_slots);
  // root[s]: the slot whose memory s uses (s itself, or the base of a reshape alias).
  std::vector<size_t> root(n_slots);
  for (size_t i = 0; i < n_slots; ++i) {
    Napi::Object so = slots.Get(static_cast<uint32_t>(i)).As<Napi::Object>();
    slot_meta[i] = meta_of(env, so);
    slot_meta[i].device = device;
    root[i] = i;
    Napi::Value alias = so.Get("alias");
    if (!alias.IsUndefined() && !alias.IsNull()) {
      int64_t b = to_int(env, alias, "an alias slot");
      if (b < 0 || static_cast<size_t>(b) >= i) throw Napi::RangeError::New(env, "Plan: an alias must name an earlier slot");
      root[i] = root[static_cast<size_t>(b)];
      const TensorView& bm = slot_meta[root[i]];
      if (bm.numel() * static_cast<int64_t>(dtype_size(bm.dtype)) !=
          slot_meta[i].numel() * static_cast<int64_t>(dtype_size(slot_meta[i].dtype)))
        throw Napi::RangeError::New(env, "Plan: an alias must have its base's size");
    }
  }

  // Bound slots: inputs then outputs.
  std::vector<int64_t> bound_pos(n_slots, -1);
  Napi::Array ins = get_array(env, spec, "inputs"), outs = get_array(env, spec, "outputs");
  auto bind_slot = [&](Napi::Value v) {
    int64_t s = to_int(env, v, "a slot id");
    if (s < 0 || static_cast<size_t>(s) >= n_slots) throw Napi::RangeError::New(env, "Plan: bad input/output slot");
    if (root[static_cast<size_t>(s)] != static_cast<size_t>(s)) throw Napi::RangeError::New(env, "Plan: inputs and outputs must not be aliases");
    if (bound_pos[static_cast<size_t>(s)] < 0) {
      bound_pos[static_cast<size_t>(s)] = static_cast<int64_t>(d->bound_meta.size());
    }
    d->bound_meta.push_back(slot_meta[static_cast<size_t>(s)]);
  };
  for (uint32_t i = 0; i < ins.Length(); ++i) bind_slot(ins.Get(i));
  d->n_inputs = ins.Length();
  for (uint32_t i = 0; i < outs.Length(); ++i) bind_slot(outs.Get(i));

  // Steps, and the liveness of every arena slot.
  Napi::Array steps = get_array(env, spec, "steps");
  std::vector<int64_t> first(n_slots, -1), last(n_slots, -1);
  for (uint32_t si = 0; si < steps.Length(); ++si) {
    Napi::Object so = steps.Get(si).As<Napi::Object>();
    PlanStep st{};
    int64_t op = get_int(env, so, "op");
    if (op < 0 || op >= kNumOps) throw Napi::RangeError::New(env, "Plan: bad op id");
    st.op = static_cast<OpId>(op);
    if (st.op == OpId::cross_entropy) throw Napi::TypeError::New(env, "Plan: cross_entropy cannot be planned");
    st.dir = get_int(env, so, "dir") ? Dir::backward : Dir::forward;
    if (!supports_op(*d->be, st.op, st.dir))
      throw Napi::Error::New(env, std::string("Plan: the ") + d->be->name + " backend cannot run " + op_name(st.op));
    auto read_refs = [&](const char* key, std::vector<PlanArg>& dst) {
      Napi::Array refs = get_array(env, so, key);
      if (refs.Length() > static_cast<uint32_t>(kMaxIn)) throw Napi::RangeError::New(env, "Plan: too many step arguments");
      for (uint32_t j = 0; j < refs.Length(); ++j) {
        int64_t r = to_int(env, refs.Get(j), "a tensor reference");
        PlanArg pa{0, 0, TensorView{}};
        if (r >= 0) {
          if (static_cast<size_t>(r) >= n_slots) throw Napi::RangeError::New(env, "Plan: slot out of range");
          pa.meta = slot_meta[static_cast<size_t>(r)];
          size_t s = root[static_cast<size_t>(r)];
          if (bound_pos[s] >= 0) {
            pa.kind = 3;
            pa.index = bound_pos[s];
          } else {
            pa.kind = 1;
            pa.index = static_cast<int64_t>(s);  // replaced by the byte offset below
            if (first[s] < 0) first[s] = si;
            last[s] = si;
          }
        } else if (r <= -2) {
          size_t c = static_cast<size_t>(-2 - r);
          if (c >= const_meta.size()) throw Napi::RangeError::New(env, "Plan: const out of range");
          pa.kind = 2;
          pa.index = static_cast<int64_t>(c);
          pa.meta = const_meta[c];
        }
        dst.push_back(pa);
      }
    };
    read_refs("ins", st.ins);
    read_refs("outs", st.outs);
    Napi::Array attrs = get_array(env, so, "attrs");
    if (attrs.Length() > static_cast<uint32_t>(kMaxAttr)) throw Napi::RangeError::New(env, "Plan: too many attributes");
    st.n_attr = static_cast<int>(attrs.Length());
    for (int j = 0; j < st.n_attr; ++j) st.attr[j] = attrs.Get(static_cast<uint32_t>(j)).As<Napi::Number>().DoubleValue();
    d->steps.push_back(std::move(st));
  }

  // A const some step writes is not a weight kernels may cache data from.
  for (const PlanStep& st : d->steps)
    for (const PlanArg& a : st.outs)
      if (a.kind == 2) d->weights.erase(d->consts[static_cast<size_t>(a.index)]->ptr);

  // Arena layout: greedy first fit over slots sorted by size, respecting liveness overlaps.
  struct Placed { int64_t first, last; size_t off, bytes; };
  std::vector<size_t> order;
  for (size_t s = 0; s < n_slots; ++s)
    if (first[s] >= 0) order.push_back(s);
  auto bytes_of = [&](size_t s) {
    size_t b = static_cast<size_t>(slot_meta[s].numel()) * dtype_size(slot_meta[s].dtype);
    return (b + kAlign - 1) / kAlign * kAlign;
  };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return bytes_of(a) > bytes_of(b); });
  std::vector<Placed> placed;
  std::vector<size_t> offset(n_slots, 0);
  for (size_t s : order) {
    size_t bytes = bytes_of(s), off = 0;
    std::vector<std::pair<size_t, size_t>> busy;
    for (const Placed& p : placed)
      if (!(p.last < first[s] || last[s] < p.first)) busy.push_back({p.off, p.off + p.bytes});
    std::sort(busy.begin(), busy.end());
    for (auto& iv : busy) {
      if (off + bytes <= iv.first) break;
      off = std::max(off, iv.second);
    }
    placed.push_back({first[s], last[s], off, bytes});
    offset[s] = off;
    d->arena_bytes = std::max(d->arena_bytes, off + bytes);
  }
  for (PlanStep& st : d->steps) {
    for (PlanArg& pa : st.ins)
      if (pa.kind == 1) pa.index = static_cast<int64_t>(offset[static_cast<size_t>(pa.index)]);
    for (PlanArg& pa : st.outs)
      if (pa.kind == 1) pa.index = static_cast<int64_t>(offset[static_cast<size_t>(pa.index)]);
  }

  // Validate every step once, against placeholder addresses.
  guarded(env, [&] {
    static double dummy[8];
    for (const PlanStep& st : d->steps) {
      OpArgs a;
      a.n_in = static_cast<int>(st.ins.size());
      a.n_out = static_cast<int>(st.outs.size());
      a.n_attr = st.n_attr;
      for (int i = 0; i < a.n_in; ++i) {
        a.in[i] = st.ins[static_cast<size_t>(i)].meta;
        if (st.ins[static_cast<size_t>(i)].kind) a.in[i].data = dummy;
      }
      for (int i = 0; i < a.n_out; ++i) {
        a.out[i] = st.outs[static_cast<size_t>(i)].meta;
        if (st.outs[static_cast<size_t>(i)].kind) a.out[i].data = dummy;
      }
      std::memcpy(a.attr, st.attr, sizeof(double) * static_cast<size_t>(st.n_attr));
      check_op(st.op, st.dir, a);
    }
    d->arena = storage_new(d->arena_bytes, device);
    return 0;
  });
  data_ = std::move(d);
}

std::vector<void*> Plan::bind(const Napi::CallbackInfo& info, std::vector<Storage*>* holds) {
  Napi::Env env = info.Env();
  if (!data_) throw Napi::Error::New(env, "Plan: this plan was disposed");
  if (!info[0].IsArray() || !info[1].IsArray()) throw Napi::TypeError::New(env, "Plan.run: expected (inputs[], outputs[])");
  Napi::Array ins = info[0].As<Napi::Array>(), outs = info[1].As<Napi::Array>();
  size_t n_out = data_->bound_meta.size() - data_->n_inputs;
  if (ins.Length() != data_->n_inputs || outs.Length() != n_out)
    throw Napi::TypeError::New(env, "Plan.run: expected " + std::to_string(data_->n_inputs) + " inputs and " +
                                        std::to_string(n_out) + " outputs");
  std::vector<void*> bound;
  for (size_t i = 0; i < data_->bound_meta.size(); ++i) {
    bool is_in = i < data_->n_inputs;
    std::string role = std::string(is_in ? "input " : "output ") + std::to_string(is_in ? i : i - data_->n_inputs);
    Napi::Value v = is_in ? ins.Get(static_cast<uint32_t>(i)) : outs.Get(static_cast<uint32_t>(i - data_->n_inputs));
    NativeTensor* t = NativeTensor::from(env, v, "predict", role, false);
    TensorView tv = t->view_of(env, "predict", role);
    const TensorView& want = data_->bound_meta[i];
    if (tv.device != want.device)
      throw Napi::TypeError::New(env, std::string("predict: expected a ") + (want.device == kHostDevice ? "cpu" : "cuda") +
                                          " tensor for " + role + " (the plan runs there) but received a " +
                                          (tv.device == kHostDevice ? "cpu" : "cuda") + " tensor; move it with .to()");
    bool ok = tv.dtype == want.dtype && tv.ndim == want.ndim;
    for (int k = 0; ok && k < tv.ndim; ++k) ok = tv.shape[k] == want.shape[k];
    if (!ok)
      throw Napi::RangeError::New(env, "predict: expected a " + std::string(dtype_name(want.dtype)) + " tensor of shape " +
                                           want.shape_str() + " for " + role + " but received " + dtype_name(tv.dtype) +
                                           " " + tv.shape_str());
    bound.push_back(tv.data);
    if (holds) {
      storage_retain(t->storage());
      holds->push_back(t->storage());
    }
  }
  return bound;
}

Napi::Value Plan::RunSync(const Napi::CallbackInfo& info) {
  std::vector<void*> bound = bind(info, nullptr);
  guarded(info.Env(), [&] {
    ComputeScope scope;
    data_->execute(bound);
    return 0;
  });
  return info.Env().Undefined();
}

// Runs synchronously and returns the seconds each step took (a Float64Array, one entry per step).
Napi::Value Plan::Profile(const Napi::CallbackInfo& info) {
  std::vector<void*> bound = bind(info, nullptr);
  Napi::Float64Array times = Napi::Float64Array::New(info.Env(), data_->steps.size());
  guarded(info.Env(), [&] {
    ComputeScope scope;
    data_->execute(bound, times.Data());
    return 0;
  });
  return times;
}

namespace {
class PlanWorker : public PromiseWorker {
 public:
  PlanWorker(Napi::Env env, std::shared_ptr<PlanData> d, std::vector<void*> bound, std::vector<Storage*> holds)
      : PromiseWorker(env), d_(std::move(d)), bound_(std::move(bound)), holds_(std::move(holds)) {}
  ~PlanWorker() override {
    for (Storage* s : holds_) storage_release(s);
  }

 private:
  void run() override {
    ComputeScope scope;
    d_->execute(bound_);
  }
  std::shared_ptr<PlanData> d_;
  std::vector<void*> bound_;
  std::vector<Storage*> holds_;
};
}  // namespace

Napi::Value Plan::Run(const Napi::CallbackInfo& info) {
  std::vector<Storage*> holds;
  std::vector<void*> bound = bind(info, &holds);
  auto* w = new PlanWorker(info.Env(), data_, std::move(bound), std::move(holds));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Plan::ArenaBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), data_ ? static_cast<double>(data_->arena_bytes) : 0.0);
}

// Whether the plan runs as a recorded device graph (its second run recorded it).
Napi::Value Plan::Graphed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), data_ && data_->graphed.load());
}

Napi::Value Plan::Dispose(const Napi::CallbackInfo& info) {
  data_.reset();  // running workers keep their own reference
  return info.Env().Undefined();
}

}  // namespace mf::binding
