// plan.h: a precompiled forward pass. lib/ compiles a model into a list of steps over numbered slots;
// the Plan validates every step once, lays the activation slots out in one arena by liveness, and then
// runs the whole list natively (synchronously or on a worker thread) with no JS per layer.
//
// Spec (from JS):
//   { backend, precision?, slots: [{dtype, shape}], consts: [NativeTensor], inputs: [slot], outputs: [slot],
//     steps: [{op, dir, ins: [ref], outs: [ref], attrs: [number]}] }
//   precision: 0 float32 (default), 1 bf16 GEMMs (cpu backend only; see core/backend.h Precision)
//   ref >= 0: a slot;  ref == -1: absent;  ref <= -2: consts[-2 - ref]
// Input and output slots are bound to the caller's tensors at run time (no copies); the others live in
// the arena, which is allocated once per plan and reused by every run.
#pragma once
#include <napi.h>

#include <atomic>
#include <vector>

#include "../core/backend.h"
#include "../core/memory.h"

namespace mf::binding {

struct PlanArg {
  int kind;        // 0 absent, 1 arena slot, 2 const, 3 bound input/output
  int64_t index;   // arena byte offset, const index, or bound position
  TensorView meta; // dtype and shape (data unset)
};

struct PlanStep {
  OpId op;
  Dir dir;
  std::vector<PlanArg> ins, outs;
  double attr[kMaxAttr];
  int n_attr;
};

struct PlanData {
  const Backend* be = nullptr;
  Precision precision = Precision::f32;
  std::vector<PlanStep> steps;
  std::vector<Storage*> consts;
  WeightIndex weights;  // consts by data pointer (kernels may cache data derived from them)
  std::vector<TensorView> bound_meta;  // inputs then outputs
  size_t n_inputs = 0;
  size_t arena_bytes = 0;
  Storage* arena = nullptr;
  // Device graphs (a device whose hooks capture them, switched on; for CUDA unless METAFORMER_CUDA_GRAPHS=0):
  // the steps recorded on the second run (the first warms up step by step) and replayed as one launch
  // by the next ones. A graph keeps the
  // addresses it was recorded with, so the bound inputs and outputs go through fixed device buffers
  // (`staged`, at staged_off[i]): inputs copied in before a replay, outputs copied out after.
  void* graph = nullptr;
  bool warmed = false;     // a first run went step by step
  bool graph_off = false;  // the capture failed once (reported on stderr)
  std::atomic<bool> graphed{false};  // graph is set (read by JS without the compute lock)
  Storage* staged = nullptr;
  std::vector<size_t> staged_off;
  ~PlanData();
  // Runs every step; bound[i] are the data pointers of inputs then outputs. Caller holds the compute lock.
  void execute(const std::vector<void*>& bound, double* step_seconds = nullptr);

 private:
  void run_steps(const std::vector<void*>& bound, const DeviceHooks* dev, double* step_seconds);
  bool run_graph(const std::vector<void*>& bound, const DeviceHooks* dev);  // false: run the steps instead
};

class Plan : public Napi::ObjectWrap<Plan> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Plan(const Napi::CallbackInfo& info);

 private:
  Napi::Value RunSync(const Napi::CallbackInfo& info);
  Napi::Value Profile(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value ArenaBytes(const Napi::CallbackInfo& info);
  Napi::Value Graphed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  std::vector<void*> bind(const Napi::CallbackInfo& info, std::vector<Storage*>* holds);

  std::shared_ptr<PlanData> data_;
};

}  // namespace mf::binding
