// addon.cpp: the N-API entry point. Per-environment state lives in AddonData (Napi::Addon instance
// data), so the addon loads in worker_threads as well as on the main thread.
#include <algorithm>
#include <omp.h>

#include "../core/memory.h"
#include "../core/threading.h"
#include "../cpu/gemm.h"
#include "common.h"
#include "plan.h"
#include "tensor_wrap.h"
#ifdef METAFORMER_WITH_CUDA
#include "../cuda/device.h"
#endif

namespace mf::binding {

Napi::Value Run(const Napi::CallbackInfo& info);
Napi::Value RunAsync(const Napi::CallbackInfo& info);
Napi::Value OpNames(const Napi::CallbackInfo& info);
Napi::Value Supports(const Napi::CallbackInfo& info);

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

void throw_js(Napi::Env env, const mf::Error& e) {
  switch (e.kind()) {
    case ErrorKind::type: throw Napi::TypeError::New(env, e.what());
    case ErrorKind::range: throw Napi::RangeError::New(env, e.what());
    default: throw Napi::Error::New(env, e.what());
  }
}

int64_t to_int(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("Expected ") + what + " but received a non-number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d == static_cast<double>(static_cast<int64_t>(d))))
    throw Napi::TypeError::New(env, std::string("Expected ") + what + " (an integer) but received " + std::to_string(d));
  return static_cast<int64_t>(d);
}

const Backend& backend_by_id(Napi::Env env, int64_t id) {
  if (id == 0) return ref_backend();
  if (id == 1) return cpu_backend();
#ifdef METAFORMER_WITH_CUDA
  if (id == 2) return cuda_backend();
#else
  if (id == 2 && emulated_cuda()) return cuda_backend();
  if (id == 2) throw Napi::Error::New(env, "metaformer: this build has no CUDA backend (built without CUDA and cuBLAS)");
#endif
  throw Napi::RangeError::New(env, "Expected a backend id (0: ref, 1: cpu, 2: cuda) but received " + std::to_string(id));
}

// { built, available, reason, devices, name, memory: { live, peak, cached, free, total } }. Never throws
// for a missing driver or device: `available` is false and `reason` says why.
static Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef METAFORMER_WITH_CUDA
  o.Set("built", Napi::Boolean::New(env, true));
  bool ok = cuda::available();
  o.Set("available", Napi::Boolean::New(env, ok));
  o.Set("devices", Napi::Number::New(env, cuda::device_count()));
  guarded(env, [&] {
    o.Set("reason", Napi::String::New(env, cuda::unavailable_reason()));
    if (ok) {
      o.Set("name", Napi::String::New(env, cuda::device_name()));
      cuda::DeviceMemoryStats m = cuda::memory_stats();
      Napi::Object mem = Napi::Object::New(env);
      mem.Set("live", Napi::Number::New(env, static_cast<double>(m.live)));
      mem.Set("peak", Napi::Number::New(env, static_cast<double>(m.peak)));
      mem.Set("cached", Napi::Number::New(env, static_cast<double>(m.cached)));
      mem.Set("free", Napi::Number::New(env, static_cast<double>(m.free)));
      mem.Set("total", Napi::Number::New(env, static_cast<double>(m.total)));
      o.Set("memory", mem);
    }
    return 0;
  });
#else
  const bool emu = emulated_cuda();
  o.Set("built", Napi::Boolean::New(env, false));
  o.Set("available", Napi::Boolean::New(env, emu));
  o.Set("devices", Napi::Number::New(env, emu ? 1 : 0));
  o.Set("reason", Napi::String::New(env, emu ? "" : "this build of metaformer has no CUDA backend"));
  if (emu) {
    o.Set("emulated", Napi::Boolean::New(env, true));
    o.Set("name", Napi::String::New(env, "emulated CUDA device (host memory, cpu kernels; METAFORMER_EMULATE_CUDA=1)"));
  }
#endif
  return o;
}

// Waits for queued CUDA work; reports asynchronous kernel errors. A no-op without CUDA.
static Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
#ifdef METAFORMER_WITH_CUDA
  guarded(info.Env(), [] {
    cuda::synchronize();
    return 0;
  });
#endif
  return info.Env().Undefined();
}

static Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  int64_t n = to_int(info.Env(), info[0], "a thread count");
  set_num_threads(static_cast<int>(n));
  return info.Env().Undefined();
}

static Napi::Value GetNumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), num_threads()); }

static Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("live", Napi::Number::New(env, static_cast<double>(live_bytes())));
  o.Set("peak", Napi::Number::New(env, static_cast<double>(peak_bytes())));
  o.Set("cached", Napi::Number::New(env, static_cast<double>(cached_bytes())));
  o.Set("gcTracked", Napi::Number::New(env, static_cast<double>(tracked_external_bytes())));
  o.Set("systemAllocs", Napi::Number::New(env, static_cast<double>(system_allocs())));
  return o;
}

static Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  reset_peak();
  return info.Env().Undefined();
}

static Napi::Value TrimCache(const Napi::CallbackInfo& info) {
  trim_cache();
  return info.Env().Undefined();
}

// fn(name): sets a process-wide choice among `names` (the enum's values in order); returns the
// previous choice's name. For tests and benchmarks.
template <typename E>
static Napi::Value SetChoice(const Napi::CallbackInfo& info, const char* fn, const std::vector<std::string>& names,
                             E (*get)(), void (*set)(E)) {
  Napi::Env env = info.Env();
  std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : std::string();
  auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) {
    std::string expected;
    for (size_t i = 0; i < names.size(); ++i)
      expected += (i == 0 ? "'" : i + 1 == names.size() ? " or '" : ", '") + names[i] + "'";
    Napi::TypeError::New(env, std::string(fn) + ": expected " + expected).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string old = names[static_cast<size_t>(get())];
  set(static_cast<E>(it - names.begin()));
  return Napi::String::New(env, old);
}

// setGemmPolicy('auto' | 'own' | 'onednn'): which float32 GEMM the cpu backend runs (cpu/gemm.h).
static Napi::Value SetGemmPolicy(const Napi::CallbackInfo& info) {
  return SetChoice(info, "setGemmPolicy", {"auto", "own", "onednn"}, cpu::gemm_policy, cpu::set_gemm_policy);
}

// setOnednnWeightLayout('auto' | 'blocked' | 'plain'): whether oneDNN reads float32 plan weights in its
// preferred layout (cpu/gemm.h).
static Napi::Value SetOnednnWeightLayout(const Napi::CallbackInfo& info) {
  return SetChoice(info, "setOnednnWeightLayout", {"auto", "blocked", "plain"}, cpu::onednn_weight_layout,
                   cpu::set_onednn_weight_layout);
}

static Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef METAFORMER_WITH_CUDA
  o.Set("cuda", Napi::Boolean::New(env, true));
#else
  o.Set("cuda", Napi::Boolean::New(env, false));
#endif
  o.Set("openmp", Napi::Number::New(env, _OPENMP));
  o.Set("procs", Napi::Number::New(env, omp_get_num_procs()));
  o.Set("bf16Native", Napi::Boolean::New(env, cpu::bf16_native()));
  return o;
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
#ifndef METAFORMER_WITH_CUDA
  static const bool emulate = [] {  // once per process, before any device tensor exists
    if (emulate_cuda_requested()) enable_emulated_cuda();
    return true;
  }();
  (void)emulate;
#endif
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function tensor = NativeTensor::Define(env);
  data->tensor_ctor = Napi::Persistent(tensor);
  Napi::Function plan = Plan::Define(env);
  data->plan_ctor = Napi::Persistent(plan);
  exports.Set("NativeTensor", tensor);
  exports.Set("Plan", plan);
  exports.Set("run", Napi::Function::New(env, Run, "run"));
  exports.Set("runAsync", Napi::Function::New(env, RunAsync, "runAsync"));
  exports.Set("opNames", Napi::Function::New(env, OpNames, "opNames"));
  exports.Set("supports", Napi::Function::New(env, Supports, "supports"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("memoryStats", Napi::Function::New(env, MemoryStats, "memoryStats"));
  exports.Set("resetPeak", Napi::Function::New(env, ResetPeak, "resetPeak"));
  exports.Set("trimCache", Napi::Function::New(env, TrimCache, "trimCache"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("setGemmPolicy", Napi::Function::New(env, SetGemmPolicy, "setGemmPolicy"));
  exports.Set("setOnednnWeightLayout", Napi::Function::New(env, SetOnednnWeightLayout, "setOnednnWeightLayout"));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo, "cudaInfo"));
  exports.Set("cudaSynchronize", Napi::Function::New(env, CudaSynchronize, "cudaSynchronize"));
  return exports;
}

}  // namespace mf::binding

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return mf::binding::Init(env, exports); }

NODE_API_MODULE(metaformer, InitAddon)
