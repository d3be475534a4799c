// ops_binding.cpp: run(op, dir, backend, inputs, outputs, attrs) and its async twin; op and backend
// introspection. Arguments are unpacked into an OpArgs and handed to core/run_op under the compute lock.
#include <string>
#include <vector>

#include "../core/threading.h"
#include "common.h"
#include "tensor_wrap.h"

namespace mf::binding {

namespace {

struct Unpacked {
  OpArgs args;
  OpId op;
  Dir dir;
  const Backend* be;
  std::vector<Storage*> holds;  // references kept alive for async execution
  Storage* written[kMaxOut] = {};  // the outputs' storages (their versions change after the op)
};

static_assert(kMaxOut >= kMaxIn, "unpack_list fills written[] with up to kMaxIn outputs");

// Runs the op (the caller holds the compute lock) and records the writes to its outputs.
void execute(const Unpacked& u) {
  run_op(*u.be, u.op, u.dir, u.args);
  for (int i = 0; i < u.args.n_out; ++i)
    if (u.written[i]) storage_written(u.written[i]);
}

void unpack_list(Napi::Env env, const Napi::Value& v, const char* op, const char* kind, TensorView* dst, int& n,
                 std::vector<Storage*>* holds, Storage** seen = nullptr) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string(op) + ": expected an array of " + kind);
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() > static_cast<uint32_t>(kMaxIn))
    throw Napi::RangeError::New(env, std::string(op) + ": too many " + kind);
  n = static_cast<int>(arr.Length());
  for (int i = 0; i < n; ++i) {
    std::string role = std::string(kind).substr(0, std::string(kind).size() - 1) + " " + std::to_string(i);
    NativeTensor* t = NativeTensor::from(env, arr.Get(i), op, role, true);
    dst[i] = t ? t->view_of(env, op, role) : TensorView{};
    if (t && holds) holds->push_back(t->storage());
    if (t && seen) seen[i] = t->storage();
  }
}

Unpacked unpack(const Napi::CallbackInfo& info, bool hold) {
  Napi::Env env = info.Env();
  Unpacked u;
  int64_t op = to_int(env, info[0], "an op id");
  if (op < 0 || op >= kNumOps) throw Napi::RangeError::New(env, "Expected an op id but received " + std::to_string(op));
  u.op = static_cast<OpId>(op);
  const char* name = op_name(u.op);
  u.dir = to_int(env, info[1], "a direction") ? Dir::backward : Dir::forward;
  u.be = &backend_by_id(env, to_int(env, info[2], "a backend id"));
  unpack_list(env, info[3], name, "inputs", u.args.in, u.args.n_in, hold ? &u.holds : nullptr);
  unpack_list(env, info[4], name, "outputs", u.args.out, u.args.n_out, hold ? &u.holds : nullptr, u.written);
  if (info[5].IsTypedArray()) {
    Napi::Float64Array at = info[5].As<Napi::Float64Array>();
    if (at.ElementLength() > static_cast<size_t>(kMaxAttr)) throw Napi::RangeError::New(env, std::string(name) + ": too many attributes");
    u.args.n_attr = static_cast<int>(at.ElementLength());
    for (int i = 0; i < u.args.n_attr; ++i) u.args.attr[i] = at[static_cast<size_t>(i)];
  } else if (info[5].IsArray()) {
    Napi::Array at = info[5].As<Napi::Array>();
    if (at.Length() > static_cast<uint32_t>(kMaxAttr)) throw Napi::RangeError::New(env, std::string(name) + ": too many attributes");
    u.args.n_attr = static_cast<int>(at.Length());
    for (int i = 0; i < u.args.n_attr; ++i) {
      Napi::Value x = at.Get(i);
      if (!x.IsNumber()) throw Napi::TypeError::New(env, std::string(name) + ": expected numbers for attributes");
      u.args.attr[i] = x.As<Napi::Number>().DoubleValue();
    }
  } else {
    throw Napi::TypeError::New(env, std::string(name) + ": expected an array of attributes");
  }
  if (hold)
    for (Storage* s : u.holds) storage_retain(s);
  return u;
}

class OpWorker : public PromiseWorker {
 public:
  OpWorker(Napi::Env env, Unpacked u) : PromiseWorker(env), u_(std::move(u)) {}
  ~OpWorker() override {
    for (Storage* s : u_.holds) storage_release(s);
  }

 private:
  void run() override {
    ComputeScope scope;
    execute(u_);
  }
  Unpacked u_;
};

}  // namespace

Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Unpacked u = unpack(info, false);
  guarded(env, [&] {
    ComputeScope scope;
    execute(u);
    return 0;
  });
  return env.Undefined();
}

Napi::Value RunAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Unpacked u = unpack(info, true);
  // Check eagerly so argument errors reject with the caller's stack, before any work is queued.
  try {
    check_op(u.op, u.dir, u.args);
  } catch (const mf::Error& e) {
    for (Storage* s : u.holds) storage_release(s);
    throw_js(env, e);
  }
  auto* w = new OpWorker(env, std::move(u));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value OpNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array a = Napi::Array::New(env, kNumOps);
  for (int i = 0; i < kNumOps; ++i) a.Set(i, Napi::String::New(env, op_name(static_cast<OpId>(i))));
  return a;
}

Napi::Value Supports(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Backend& be = backend_by_id(env, to_int(env, info[0], "a backend id"));
  int64_t op = to_int(env, info[1], "an op id");
  Dir dir = to_int(env, info[2], "a direction") ? Dir::backward : Dir::forward;
  return Napi::Boolean::New(env, op >= 0 && op < kNumOps && supports_op(be, static_cast<OpId>(op), dir));
}

}  // namespace mf::binding
