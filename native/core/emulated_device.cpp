// core/emulated_device.cpp: an emulated CUDA device for builds without CUDA, switched on by the
// environment variable METAFORMER_EMULATE_CUDA=1 when the addon loads. Device-1 tensors then live in
// host memory (through the same device hooks a real device installs) and the cuda backend runs the cpu
// kernels, so the library's device plumbing (tensor moves, per-device allocation, device checks, models,
// losses, optimizers and the Trainer on 'cuda', eager inference, plans and their graph path, checkpoints
// through the host) is tested on machines without a GPU. Host code still cannot touch device tensors
// directly: view()/read()/write() refuse device 1 exactly as with a real GPU. Never a performance path; the CUDA kernels themselves are
// checked on a GPU by native/cuda/tests.
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>

#include "backend.h"
#include "check.h"
#include "memory.h"

namespace mf {
namespace {

// A card's worth of memory: larger requests fail as they would on a GPU (and never reach the host's
// overcommitting allocator).
constexpr size_t kCapacity = size_t(64) << 30;

void* emu_alloc(size_t bytes) {
  void* p = bytes <= kCapacity ? std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256) : nullptr;
  if (!p) throw Error(ErrorKind::range, "emulated CUDA device: out of memory (" + std::to_string(bytes) + " bytes)");
  return p;
}

void emu_release(void* p, size_t) { std::free(p); }

void emu_copy(void* dst, int32_t, const void* src, int32_t, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}

void emu_synchronize() {}  // the cpu kernels finish before they return

// Graphs (on unless METAFORMER_CUDA_GRAPHS=0, as on a GPU; read at each run): a recording keeps the function and a replay
// calls it, so the plan runner's graph path (fixed staging buffers, inputs copied in and outputs out,
// the second run recording) is exercised without a GPU.
struct EmuGraph {
  std::function<void()> fn;
};

bool emu_graphs() {
  const char* v = std::getenv("METAFORMER_CUDA_GRAPHS");
  return !(v && std::strcmp(v, "0") == 0);
}
void* emu_capture(const std::function<void()>& fn) { return new EmuGraph{fn}; }
void emu_replay(void* g) { static_cast<EmuGraph*>(g)->fn(); }
void emu_release_graph(void* g) { delete static_cast<EmuGraph*>(g); }
void emu_copy_async(void* dst, const void* src, size_t bytes) { emu_copy(dst, 1, src, 1, bytes); }

const DeviceHooks kEmulatedHooks{emu_alloc,   emu_release, emu_copy,          emu_synchronize, emu_graphs,
                                 emu_capture, emu_replay,  emu_release_graph, emu_copy_async};

}  // namespace

bool emulate_cuda_requested() {
  const char* v = std::getenv("METAFORMER_EMULATE_CUDA");
  return v && std::strcmp(v, "1") == 0;
}

void enable_emulated_cuda() {
  set_device_hooks(kCudaDevice, &kEmulatedHooks);
  use_cpu_kernels_for_cuda_backend();
}

bool emulated_cuda() { return device_hooks(kCudaDevice) == &kEmulatedHooks; }

}  // namespace mf
