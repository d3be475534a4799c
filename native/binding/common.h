// common.h: binding-wide helpers: the addon's per-instance data, mf::Error -> JS error conversion, and
// reading TensorViews out of JS arguments. N-API only; no math here.
#pragma once
#include <napi.h>

#include <string>

#include "../core/backend.h"
#include "../core/check.h"
#include "../core/memory.h"

namespace mf::binding {

// Per-addon-instance state (one per Node environment: the main thread and each worker_thread).
struct AddonData {
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference plan_ctor;
};

AddonData& addon_data(Napi::Env env);

// Throws the JS error that matches an mf::Error kind (TypeError / RangeError / Error).
[[noreturn]] void throw_js(Napi::Env env, const mf::Error& e);

// Runs f, converting native exceptions into JS exceptions.
template <typename F>
auto guarded(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const mf::Error& e) {
    throw_js(env, e);
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// An AsyncWorker that settles a promise: run() executes on a libuv thread; an mf::Error rejects with the
// matching JS error type (TypeError / RangeError / Error), any other exception with an Error.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void run() = 0;

 private:
  void Execute() override {
    try {
      run();
    } catch (const mf::Error& e) {
      kind_ = e.kind();
      SetError(e.what());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    Napi::Env env = Env();
    const std::string msg = e.Message();
    Napi::Error err = kind_ == ErrorKind::type    ? Napi::TypeError::New(env, msg)
                      : kind_ == ErrorKind::range ? Napi::RangeError::New(env, msg)
                                                  : Napi::Error::New(env, msg);
    deferred_.Reject(err.Value());
  }

  Napi::Promise::Deferred deferred_;
  ErrorKind kind_ = ErrorKind::generic;
};

// JS number -> integer, with a message naming the argument.
int64_t to_int(Napi::Env env, const Napi::Value& v, const char* what);

const mf::Backend& backend_by_id(Napi::Env env, int64_t id);

}  // namespace mf::binding
