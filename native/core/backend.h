// backend.h: the backend function table. Every backend (ref, cpu, cuda) fills one Backend with a forward
// and a backward kernel per op in ops.def; a null entry means "not supported" and supports_op() says so.
//
// Gradient rule, for every backward kernel in every backend:
//   * gradients of parameters (weights, biases, scales, StarReLU scalars) ACCUMULATE: dw += ...
//   * gradients of activations (dx, dr, dqkv, dlogits) are WRITTEN: dx = ...
// The autograd engine sums activation gradients where the graph branches (the residual stream).
//
// Kernels may assume the arguments passed core/ops.cpp's checks (shapes, dtypes, presence).
#pragma once
#include <cstdint>
#include <unordered_map>

#include "memory.h"
#include "tensor.h"

namespace mf {

enum class OpId : int32_t {
#define MF_OP(name) name,
#include "ops.def"
#undef MF_OP
  count_
};
constexpr int kNumOps = static_cast<int>(OpId::count_);
const char* op_name(OpId op);

enum class Dir : int32_t { forward = 0, backward = 1 };

constexpr int kMaxIn = 8;
constexpr int kMaxOut = 8;
constexpr int kMaxAttr = 16;

struct OpArgs {
  TensorView in[kMaxIn];
  TensorView out[kMaxOut];
  double attr[kMaxAttr] = {0};
  int n_in = 0, n_out = 0, n_attr = 0;
};

using Kernel = void (*)(const OpArgs&);

struct Backend {
  const char* name;
  bool supports_f64;  // the reference backend also computes in float64 (finite-difference checks)
  Kernel fwd[kNumOps];
  Kernel bwd[kNumOps];
  int32_t device = 0;  // where its kernels expect every tensor: 0 host, 1 CUDA (TensorView::device)
};

// The registered backends. ref is always present; cpu is the fast CPU backend; cuda has kernels only
// when the CUDA module is built in (METAFORMER_WITH_CUDA), and is an empty table otherwise.
const Backend& ref_backend();
const Backend& cpu_backend();
const Backend& cuda_backend();

bool supports_op(const Backend& be, OpId op, Dir dir);

// Validates the arguments (throws mf::Error naming the op) and runs the kernel.
void run_op(const Backend& be, OpId op, Dir dir, const OpArgs& args);

// Validation only (also used by the plan compiler).
void check_op(OpId op, Dir dir, const OpArgs& args);

// Precision of the matrix products (the GEMMs inside linear, fused_linear, conv2d, attention and
// random_mixing) that the calling thread runs. bf16: both operands rounded to bfloat16, float32
// accumulation, bias, epilogue and output (honoured by the cpu backend, see cpu/gemm.h, and the cuda
// backend, see cuda/blas.cu and cuda/attention.cu; the reference backend runs float32). Every other
// kernel stays float32.
enum class Precision : int32_t { f32 = 0, bf16 = 1 };

// Storages a plan reads in place and never writes (its weights), by data pointer.
using WeightIndex = std::unordered_map<const void*, Storage*>;

// What kernels may know about the plan the calling thread runs (defaults outside plans): the GEMM
// precision, and the plan's weights, from which a kernel may keep derived data (Storage::derived,
// valid while the storage's version is unchanged and no view() is alive).
struct PlanContext {
  Precision precision = Precision::f32;
  const WeightIndex* weights = nullptr;
};
const PlanContext& plan_context();
inline Precision gemm_precision() { return plan_context().precision; }

// Sets the calling thread's plan context for the scope's lifetime (plans run their steps inside one).
class PlanContextScope {
 public:
  explicit PlanContextScope(const PlanContext& c);
  ~PlanContextScope();
  PlanContextScope(const PlanContextScope&) = delete;
  PlanContextScope& operator=(const PlanContextScope&) = delete;

 private:
  PlanContext prev_;
};

// The emulated CUDA device (core/emulated_device.cpp; builds without CUDA only, METAFORMER_EMULATE_CUDA=1):
// device 1 in host memory, the cuda backend running the cpu kernels. For testing the device plumbing.
bool emulate_cuda_requested();  // the environment asks for it
void enable_emulated_cuda();    // installs it (call once, before any device tensor exists)
bool emulated_cuda();           // installed
void use_cpu_kernels_for_cuda_backend();  // (ops.cpp) the cuda backend's table := the cpu backend's


}  // namespace mf

namespace mf {

// Static registration: each kernel file registers its kernels, so adding an op touches no central file.
//   MF_REGISTER(ref, linear, linear_fwd, linear_bwd);   (either kernel may be nullptr)
//   MF_INHERIT(cpu, fill);   the cpu backend uses the reference kernels for this op, on purpose
struct Registrar {
  Registrar(const char* backend, OpId op, Kernel fwd, Kernel bwd);
};
struct Inheritor {
  Inheritor(const char* backend, OpId op);
};

}  // namespace mf

#define MF_REGISTER(backend, op, fwd, bwd) \
  static ::mf::Registrar mf_registrar_##backend##_##op(#backend, ::mf::OpId::op, fwd, bwd)
#define MF_INHERIT(backend, op) static ::mf::Inheritor mf_inheritor_##backend##_##op(#backend, ::mf::OpId::op)
