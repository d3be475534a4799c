// tensor_wrap.h: NativeTensor, the JS handle of one reference to a Storage plus a dtype and shape.
// lib/tensor.ts wraps it. dispose() drops the reference at once; views made with view() hold their own
// reference, so a view never points at freed memory. A tensor's memory is on the host (device 0) or on the
// CUDA device (device 1, CUDA builds only); copyTo() copies between any two.
#pragma once
#include <napi.h>

#include <utility>

#include "../core/memory.h"
#include "../core/tensor.h"

namespace mf::binding {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

  // The TensorView of this handle; throws a JS TypeError naming `op` and `role` if disposed.
  TensorView view_of(Napi::Env env, const char* op, const std::string& role) const;
  Storage* storage() const { return storage_; }
  // Unwraps a JS value that must be a NativeTensor (null/undefined -> nullptr when allowed).
  static NativeTensor* from(Napi::Env env, const Napi::Value& v, const char* op, const std::string& role,
                            bool allow_null);
  static Napi::Object make(Napi::Env env, Storage* s, DType dtype, const int64_t* shape, int ndim);

 private:
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value DropDerived(const Napi::CallbackInfo& info);
  Napi::Value Share(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Track(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Address(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value CopyTo(const Napi::CallbackInfo& info);
  Napi::Value CopyToAsync(const Napi::CallbackInfo& info);
  // The destination of copyTo/copyToAsync (info[0]) and the byte count, checked against this tensor.
  std::pair<NativeTensor*, size_t> copy_destination(const Napi::CallbackInfo& info, const char* op);
  void release(Napi::Env env);
  // The byte size of this live host tensor (throws a JS error naming op otherwise).
  size_t host_bytes(Napi::Env env, const char* op) const;

  Storage* storage_ = nullptr;
  bool tracked_ = false;  // its bytes are reported to V8 (see track())
  DType dtype_ = DType::f32;
  int ndim_ = 0;
  int64_t shape_[kMaxDims] = {0};
};

// Bytes of the handles currently tracked (reported to V8 as external memory; see NativeTensor::Track).
int64_t tracked_external_bytes();

}  // namespace mf::binding
