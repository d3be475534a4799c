// tensor_wrap.cpp: NativeTensor (see tensor_wrap.h).
//   new NativeTensor(dtypeCode, shape[], zeroFill, device = 0)   allocates (device 1: CUDA memory)
//   t.view() -> ArrayBuffer (zero-copy, holds a reference; host tensors only; while it lives the memory
//              counts as changing, see Storage::live_views)
//   t.read() -> ArrayBuffer (a copy)   t.write(Uint8Array) (copies in; the sizes must match)
//   t.dropDerived(): frees data kept with the memory (bf16 copies or packed GEMM panels of a weight; see Storage::derived)
//   t.share(shape[]) -> NativeTensor (same memory)   t.copyTo(other) (same byte size, any devices)
//   t.dispose()   t.disposed   t.address (for alignment checks)   t.device
//   t.track(): reports this handle's bytes to V8's GC heuristics from now until it is released. Handles
//   start untracked: JS tracks the ones whose lifetime the garbage collector decides (created outside
//   any tidy() scope, or escaping one); memory that tidy()/dispose() frees is never reported, so a
//   training step's short-lived activations do not push V8 into a major GC every step.
#include "tensor_wrap.h"

#include <atomic>
#include <cstring>
#include <string>

#include "../core/threading.h"
#include "common.h"
#ifdef METAFORMER_WITH_CUDA
#include "../cuda/device.h"
#endif

namespace mf::binding {

namespace {

// External-memory accounting for V8's GC heuristics. Calls from JS report changes at once; finalizers
// (which may run at GC time) and ArrayBuffer deleters (which V8 may run on a background thread) only
// record them, and the next JS call reports them: calling into V8 from either is not allowed.
std::atomic<int64_t> g_pending_external{0};
std::atomic<int64_t> g_tracked{0};  // bytes of all tracked handles (reported or pending)

void account(Napi::Env env, int64_t delta) {
  g_tracked.fetch_add(delta);
  int64_t d = g_pending_external.exchange(0) + delta;
  if (d != 0) Napi::MemoryManagement::AdjustExternalMemory(env, d);
}

void account_later(int64_t delta) {
  g_tracked.fetch_add(delta);
  g_pending_external.fetch_add(delta);
}

struct Adopt {  // passed as an External to the constructor to wrap an existing storage reference
  Storage* storage;
  DType dtype;
  int ndim;
  const int64_t* shape;
};
}  // namespace

int64_t tracked_external_bytes() { return g_tracked.load(); }

Napi::Function NativeTensor::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {InstanceMethod<&NativeTensor::View>("view"), InstanceMethod<&NativeTensor::Read>("read"),
                      InstanceMethod<&NativeTensor::Write>("write"), InstanceMethod<&NativeTensor::DropDerived>("dropDerived"),
                      InstanceMethod<&NativeTensor::Share>("share"),
                      InstanceMethod<&NativeTensor::Dispose>("dispose"), InstanceMethod<&NativeTensor::Track>("track"),
                      InstanceMethod<&NativeTensor::CopyTo>("copyTo"),
                      InstanceMethod<&NativeTensor::CopyToAsync>("copyToAsync"),
                      InstanceAccessor<&NativeTensor::Disposed>("disposed"),
                      InstanceAccessor<&NativeTensor::Address>("address"),
                      InstanceAccessor<&NativeTensor::Device>("device")});
}

static void read_shape(Napi::Env env, const Napi::Value& v, int& ndim, int64_t* shape, int64_t& numel) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, "Expected an array of dimensions for shape");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > static_cast<uint32_t>(kMaxDims))
    throw Napi::RangeError::New(env, "Expected at most " + std::to_string(kMaxDims) + " dimensions for shape but received " +
                                         std::to_string(a.Length()));
  ndim = static_cast<int>(a.Length());
  numel = 1;
  for (int i = 0; i < ndim; ++i) {
    int64_t d = to_int(env, a.Get(i), "a shape dimension");
    if (d < 0) throw Napi::RangeError::New(env, "Expected non-negative dimensions for shape but received " + std::to_string(d));
    shape[i] = d;
    if (d != 0 && numel > (int64_t(1) << 40) / d)
      throw Napi::RangeError::New(env, "Expected a tensor of at most 2^40 elements for shape");
    numel *= d;
  }
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() == 1 && info[0].IsExternal()) {
    Adopt* ad = info[0].As<Napi::External<Adopt>>().Data();
    storage_ = ad->storage;
    dtype_ = ad->dtype;
    ndim_ = ad->ndim;
    std::memcpy(shape_, ad->shape, sizeof(int64_t) * static_cast<size_t>(ndim_));
    return;
  }
  int64_t code = to_int(env, info[0], "a dtype code");
  if (code < 0 || code >= kNumDTypes) throw Napi::TypeError::New(env, "Expected a dtype code but received " + std::to_string(code));
  dtype_ = static_cast<DType>(code);
  int64_t numel = 0;
  read_shape(env, info[1], ndim_, shape_, numel);
  bool zero = info.Length() > 2 && info[2].ToBoolean();
  int64_t device = info.Length() > 3 && !info[3].IsUndefined() ? to_int(env, info[3], "a device id") : kHostDevice;
  if (device != kHostDevice && device != kCudaDevice)
    throw Napi::RangeError::New(env, "Expected a device id (0: cpu, 1: cuda) but received " + std::to_string(device));
  size_t bytes = static_cast<size_t>(numel) * dtype_size(dtype_);
  guarded(env, [&] {
    storage_ = storage_new(bytes, static_cast<int32_t>(device));
    return 0;
  });
  if (zero && device == kHostDevice) std::memset(storage_->ptr, 0, bytes);
#ifdef METAFORMER_WITH_CUDA
  if (zero && device == kCudaDevice) guarded(env, [&] {
    cuda::zero(storage_->ptr, bytes);
    return 0;
  });
#else
  if (zero && device == kCudaDevice) std::memset(storage_->ptr, 0, bytes);  // the emulated device: host memory
#endif
}

NativeTensor::~NativeTensor() {
  if (storage_) {
    if (tracked_) account_later(-static_cast<int64_t>(storage_->bytes));
    storage_release(storage_);
    storage_ = nullptr;
  }
}

void NativeTensor::release(Napi::Env env) {
  if (!storage_) return;
  if (tracked_) account(env, -static_cast<int64_t>(storage_->bytes));
  storage_release(storage_);
  storage_ = nullptr;
}

Napi::Object NativeTensor::make(Napi::Env env, Storage* s, DType dtype, const int64_t* shape, int ndim) {
  Adopt ad{s, dtype, ndim, shape};
  storage_retain(s);
  return addon_data(env).tensor_ctor.New({Napi::External<Adopt>::New(env, &ad)});
}

TensorView NativeTensor::view_of(Napi::Env env, const char* op, const std::string& role) const {
  if (!storage_)
    throw Napi::TypeError::New(env, std::string(op) + ": expected a live tensor for " + role +
                                        " but received a disposed tensor");
  TensorView v;
  v.data = storage_->ptr;
  v.dtype = dtype_;
  v.ndim = ndim_;
  v.device = storage_->device;
  std::memcpy(v.shape, shape_, sizeof(int64_t) * static_cast<size_t>(ndim_));
  return v;
}

NativeTensor* NativeTensor::from(Napi::Env env, const Napi::Value& v, const char* op, const std::string& role,
                                 bool allow_null) {
  if (v.IsNull() || v.IsUndefined()) {
    if (allow_null) return nullptr;
    throw Napi::TypeError::New(env, std::string(op) + ": expected a tensor for " + role + " but received null");
  }
  if (v.IsObject()) {
    Napi::Object o = v.As<Napi::Object>();
    if (o.InstanceOf(addon_data(env).tensor_ctor.Value())) return NativeTensor::Unwrap(o);
  }
  throw Napi::TypeError::New(env, std::string(op) + ": expected a tensor for " + role + " but received " +
                                      v.ToString().Utf8Value().substr(0, 60));
}

// An ArrayBuffer view's deleter: drops the view's reference only (thread-safe; no V8 calls).
// A view's ArrayBuffer died (its deleter may run on any thread): JS can no longer write through it.
static void release_view(Napi::Env, void*, Storage* s) {
  s->live_views.fetch_sub(1, std::memory_order_acq_rel);
  storage_written(s);
  storage_release(s);
}

size_t NativeTensor::host_bytes(Napi::Env env, const char* op) const {
  TensorView v = view_of(env, op, "this");
  if (storage_->device != kHostDevice)
    throw Napi::TypeError::New(env, std::string(op) + ": expected a cpu tensor for this but received a cuda tensor; copy it with .to('cpu')");
  return static_cast<size_t>(v.numel()) * dtype_size(dtype_);
}

Napi::Value NativeTensor::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = host_bytes(env, "view");
  storage_retain(storage_);  // the view's own reference; its memory is already accounted by the tensor
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, storage_->ptr, bytes, release_view, storage_);
  storage_->live_views.fetch_add(1, std::memory_order_acq_rel);
  storage_written(storage_);
  return buf;
}

// The bytes of a host tensor, copied into a new ArrayBuffer (no view is left behind).
Napi::Value NativeTensor::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = host_bytes(env, "read");
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, bytes);
  if (bytes) std::memcpy(buf.Data(), storage_->ptr, bytes);
  return buf;
}

// Copies a Uint8Array of exactly the tensor's size into a host tensor.
Napi::Value NativeTensor::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = host_bytes(env, "write");
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "write: expected a Uint8Array for data");
  Napi::Uint8Array src = info[0].As<Napi::Uint8Array>();
  if (src.ByteLength() != bytes)
    throw Napi::RangeError::New(env, "write: expected " + std::to_string(bytes) + " bytes for data but received " +
                                         std::to_string(src.ByteLength()) + " bytes");
  if (bytes) std::memcpy(storage_->ptr, src.Data(), bytes);
  storage_written(storage_);
  return env.Undefined();
}

Napi::Value NativeTensor::DropDerived(const Napi::CallbackInfo& info) {
  if (storage_) {
    ComputeScope scope;  // a plan may be using it on a worker thread
    storage_->derived.reset();
  }
  return info.Env().Undefined();
}

Napi::Value NativeTensor::Share(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorView v = view_of(env, "reshape", "this");
  int nd = 0;
  int64_t shape[kMaxDims], numel = 0;
  read_shape(env, info[0], nd, shape, numel);
  if (numel != v.numel())
    throw Napi::RangeError::New(env, "reshape: expected a shape with " + std::to_string(v.numel()) +
                                         " elements for shape but received " + std::to_string(numel));
  return make(env, storage_, dtype_, shape, nd);
}

Napi::Value NativeTensor::Track(const Napi::CallbackInfo& info) {
  if (storage_ && !tracked_) {
    account(info.Env(), static_cast<int64_t>(storage_->bytes));
    tracked_ = true;
  }
  return info.Env().Undefined();
}

Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

Napi::Value NativeTensor::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), storage_ == nullptr);
}

Napi::Value NativeTensor::Device(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), storage_ ? storage_->device : kHostDevice);
}

std::pair<NativeTensor*, size_t> NativeTensor::copy_destination(const Napi::CallbackInfo& info, const char* op) {
  Napi::Env env = info.Env();
  TensorView src = view_of(env, op, "this");
  NativeTensor* dst = NativeTensor::from(env, info[0], op, "the destination", false);
  TensorView dv = dst->view_of(env, op, "the destination");
  size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype);
  size_t dbytes = static_cast<size_t>(dv.numel()) * dtype_size(dv.dtype);
  if (bytes != dbytes)
    throw Napi::RangeError::New(env, std::string(op) + ": expected a destination of " + std::to_string(bytes) +
                                         " bytes but received " + std::to_string(dbytes) + " bytes");
  return {dst, bytes};
}

Napi::Value NativeTensor::CopyTo(const Napi::CallbackInfo& info) {
  auto [dst, bytes] = copy_destination(info, "copyTo");
  guarded(info.Env(), [&] {
    storage_copy(dst->storage_, storage_, bytes);
    return 0;
  });
  return info.Env().Undefined();
}

namespace {
// The copy on a libuv thread (a device copy waits there for the work queued before it); both storages
// are held until it is done, so disposing either tensor meanwhile is safe.
class CopyWorker : public PromiseWorker {
 public:
  CopyWorker(Napi::Env env, Storage* dst, Storage* src, size_t bytes)
      : PromiseWorker(env), dst_(dst), src_(src), bytes_(bytes) {
    storage_retain(dst_);
    storage_retain(src_);
  }
  ~CopyWorker() override {
    storage_release(dst_);
    storage_release(src_);
  }

 private:
  void run() override { storage_copy(dst_, src_, bytes_); }
  Storage *dst_, *src_;
  size_t bytes_;
};
}  // namespace

Napi::Value NativeTensor::CopyToAsync(const Napi::CallbackInfo& info) {
  auto [dst, bytes] = copy_destination(info, "copyToAsync");
  auto* w = new CopyWorker(info.Env(), dst->storage_, storage_, bytes);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value NativeTensor::Address(const Napi::CallbackInfo& info) {
  if (!storage_) return info.Env().Null();
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(storage_->ptr)));
}

}  // namespace mf::binding
