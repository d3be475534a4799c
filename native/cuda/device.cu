// cuda/device.cu: device initialisation, the backend stream, the caching device allocator, host<->device
// copies, CUDA error reporting, and the device-memory hooks installed into core/memory (so core and the
// binding allocate device storages without including CUDA headers). See device.h.
//
// The caching allocator keeps freed blocks per size class (like core/memory's host cache) because
// cudaMalloc/cudaFree synchronise the device and cost tens of microseconds. All kernels and copies run
// on one stream, so a block freed by one op and handed to the next is ordered by the stream. On
// out-of-memory the cache is returned to the driver and the allocation retried once.
//
// Graphs (on unless METAFORMER_CUDA_GRAPHS=0; the plan runner in binding/plan.cpp uses them): capture() records
// a plan's steps on a private stream (stream() returns it on the capturing thread only, so copies other
// threads queue meanwhile stay out of the graph) in relaxed mode, and every device block allocated on
// that thread meanwhile comes from a pool the graph owns: a replay writes its scratch exactly where the
// capture did, into memory nothing else can have been given. Releasing the graph waits for the stream
// and returns the pool to the cache. A synchronous copy on the capturing thread (a host read-back) throws:
// its data would not exist yet.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/memory.h"
#include "cuda_common.h"

namespace mf::cuda {

[[noreturn]] void throw_cuda(cudaError_t err, const char* what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  std::string msg = std::string("CUDA error: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                    ") in " + what + " at " + (base ? base + 1 : file) + ":" + std::to_string(line);
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw Error(err == cudaErrorMemoryAllocation ? ErrorKind::range : ErrorKind::generic, msg);
}

namespace {

struct DeviceState {
  std::once_flag once;
  bool ok = false;
  std::string reason;
  int ordinal = 0;
  cudaStream_t stream = nullptr;
  cudaDeviceProp props{};
  bool sync_each_launch = false;
  bool graphs = false;                  // unless METAFORMER_CUDA_GRAPHS=0 or METAFORMER_CUDA_SYNC=1
  cudaStream_t capture_stream = nullptr;  // created on the first capture (captures are serialised)
};

// The capturing thread's pool (see the header comment): blocks by size class, and all it owns.
struct CapturePool {
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  std::unordered_map<void*, size_t> owned;  // every block, with its size class
};
thread_local CapturePool* t_pool = nullptr;
thread_local cudaStream_t t_capture = nullptr;

DeviceState& state() {
  static DeviceState* s = new DeviceState();  // never destroyed: storages may be freed during exit
  return *s;
}

void init_once() {
  DeviceState& s = state();
  std::call_once(s.once, [&s] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      int rt = 0;
      cudaRuntimeGetVersion(&rt);
      std::string runtime = std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10);
      if (e == cudaErrorInsufficientDriver)
        s.reason = "no NVIDIA driver, or one older than the CUDA " + runtime + " runtime this build uses";
      else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
        s.reason = "no CUDA device found";
      else
        s.reason = std::string("no usable CUDA driver or device (") + cudaGetErrorString(e) + ")";
      cudaGetLastError();
      return;
    }
    const char* dev = std::getenv("METAFORMER_CUDA_DEVICE");
    s.ordinal = dev ? std::atoi(dev) : 0;
    if (s.ordinal < 0 || s.ordinal >= n) {
      s.reason = "METAFORMER_CUDA_DEVICE=" + std::string(dev) + " but only " + std::to_string(n) + " device(s) exist";
      return;
    }
    e = cudaSetDevice(s.ordinal);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&s.props, s.ordinal);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      s.reason = std::string("could not initialise CUDA device ") + std::to_string(s.ordinal) + ": " +
                 cudaGetErrorString(e);
      cudaGetLastError();
      return;
    }
    const char* sync = std::getenv("METAFORMER_CUDA_SYNC");
    s.sync_each_launch = sync && sync[0] == '1';
    const char* graphs = std::getenv("METAFORMER_CUDA_GRAPHS");
    s.graphs = !(graphs && graphs[0] == '0') && !s.sync_each_launch;
    s.ok = true;
  });
}

}  // namespace

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

bool available() noexcept {
  try {
    init_once();
  } catch (...) {
    return false;
  }
  return state().ok;
}

std::string unavailable_reason() {
  init_once();
  return state().ok ? std::string() : state().reason;
}

void ensure_device() {
  init_once();
  DeviceState& s = state();
  if (!s.ok) throw Error(ErrorKind::generic, "CUDA is unavailable: " + s.reason);
  // The current device is per host thread; async work runs on libuv threads.
  thread_local int current = -1;
  if (current != s.ordinal) {
    MF_CUDA_CHECK(cudaSetDevice(s.ordinal));
    current = s.ordinal;
  }
}

std::string device_name() {
  ensure_device();
  return state().props.name;
}

cudaStream_t stream() {
  ensure_device();
  return t_capture ? t_capture : state().stream;
}

int sm_count() {
  ensure_device();
  return state().props.multiProcessorCount;
}

int compute_capability() {
  ensure_device();
  return state().props.major * 10 + state().props.minor;
}

void synchronize() {
  ensure_device();
  MF_CUDA_CHECK(cudaStreamSynchronize(state().stream));
}

void after_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(e, what, "kernel launch", 0);
  if (state().sync_each_launch) {
    e = cudaStreamSynchronize(state().stream);
    if (e != cudaSuccess) throw_cuda(e, what, "kernel execution", 0);
  }
}

int to_int32(int64_t v, const char* op, const char* what) {
  if (v < 0 || v > 2147483647)
    throw Error(ErrorKind::range, std::string(op) + ": expected a size below 2^31 for " + what +
                                      " (a cuBLAS limit) but received " + std::to_string(v));
  return static_cast<int>(v);
}

// ---------------------------------------------------------------------------------------------------
// Caching allocator

namespace {

struct DeviceCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  size_t cached = 0, live = 0, peak = 0;
};

DeviceCache& dcache() {
  static DeviceCache* c = new DeviceCache();
  return *c;
}

// 512-byte granules below 1 MiB, then 4 classes per power of two (at most 25% waste).
size_t dclass(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes < (size_t(1) << 20)) return (bytes + 511) / 512 * 512;
  size_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

void release_cache_locked(DeviceCache& c) {
  for (auto& kv : c.free_lists)
    for (void* p : kv.second) cudaFree(p);  // errors ignored: nothing useful to do with them here
  c.free_lists.clear();
  c.cached = 0;
  cudaGetLastError();
}

void* device_alloc_uncaptured(size_t bytes, size_t cls) {  // cls = dclass(bytes)
  DeviceCache& c = dcache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.free_lists.find(cls);
  if (it != c.free_lists.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    c.cached -= cls;
    c.live += cls;
    if (c.live > c.peak) c.peak = c.live;
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, cls);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Blocks in the cache may still be used by queued kernels: wait before handing them back.
    cudaStreamSynchronize(state().stream);
    release_cache_locked(c);
    e = cudaMalloc(&p, cls);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    throw Error(ErrorKind::range, "CUDA out of memory: could not allocate " + std::to_string(bytes) + " bytes on " +
                                      state().props.name + " (" + std::to_string(free_b >> 20) + " MiB free of " +
                                      std::to_string(total_b >> 20) + " MiB; " + cudaGetErrorString(e) + ")");
  }
  c.live += cls;
  if (c.live > c.peak) c.peak = c.live;
  return p;
}

}  // namespace

void* device_alloc(size_t bytes) {
  ensure_device();
  size_t cls = dclass(bytes);
  if (t_pool) {  // capturing: the graph's own blocks
    auto& fl = t_pool->free_lists[cls];
    if (!fl.empty()) {
      void* p = fl.back();
      fl.pop_back();
      return p;
    }
    void* p = device_alloc_uncaptured(bytes, cls);
    t_pool->owned.emplace(p, cls);
    return p;
  }
  return device_alloc_uncaptured(bytes, cls);
}

void device_free(void* p, size_t bytes) noexcept {
  if (!p) return;
  size_t cls = dclass(bytes);
  if (t_pool && t_pool->owned.count(p)) {
    t_pool->free_lists[cls].push_back(p);
    return;
  }
  DeviceCache& c = dcache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.live -= cls;
  c.free_lists[cls].push_back(p);
  c.cached += cls;
}

void trim_device_cache() noexcept {
  if (!state().ok) return;
  DeviceCache& c = dcache();
  std::lock_guard<std::mutex> lock(c.mu);
  cudaStreamSynchronize(state().stream);
  release_cache_locked(c);
}

DeviceMemoryStats memory_stats() {
  DeviceMemoryStats st{0, 0, 0, 0, 0};
  {
    DeviceCache& c = dcache();
    std::lock_guard<std::mutex> lock(c.mu);
    st.live = c.live;
    st.peak = c.peak;
    st.cached = c.cached;
  }
  if (available()) {
    ensure_device();
    MF_CUDA_CHECK(cudaMemGetInfo(&st.free, &st.total));
  }
  return st;
}

void copy(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  if (bytes == 0) return;
  ensure_device();
  if (t_capture)
    throw Error(ErrorKind::generic, "CUDA graph capture: a step copies synchronously (reads device data back), "
                                    "which a graph cannot record");
  cudaMemcpyKind kind = dst_device == 0 ? (src_device == 0 ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                        : (src_device == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, state().stream));
  MF_CUDA_CHECK(cudaStreamSynchronize(state().stream));
}

void zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  MF_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
}

// ---------------------------------------------------------------------------------------------------
// Graphs

namespace {

struct Graph {
  cudaGraphExec_t exec = nullptr;
  CapturePool pool;
};

// Hands every block of a pool back to the cache; the caller has waited for the work that used them.
void return_pool(CapturePool& pool) noexcept {
  DeviceCache& c = dcache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (const auto& [p, cls] : pool.owned) {
    c.live -= cls;
    c.free_lists[cls].push_back(p);
    c.cached += cls;
  }
  pool = CapturePool{};
}

// Leaves capture mode on this thread (whatever state the capture ended in).
struct CaptureScope {
  CaptureScope(CapturePool* pool, cudaStream_t s) {
    t_pool = pool;
    t_capture = s;
  }
  ~CaptureScope() {
    t_pool = nullptr;
    t_capture = nullptr;
  }
};

}  // namespace

bool graphs_enabled() {
  ensure_device();
  return state().graphs;
}

void* capture_graph(const std::function<void()>& fn) {
  ensure_device();
  DeviceState& s = state();
  if (!s.capture_stream) MF_CUDA_CHECK(cudaStreamCreateWithFlags(&s.capture_stream, cudaStreamNonBlocking));
  auto g = std::make_unique<Graph>();
  MF_CUDA_CHECK(cudaStreamBeginCapture(s.capture_stream, cudaStreamCaptureModeRelaxed));
  cudaGraph_t graph = nullptr;
  try {
    CaptureScope scope(&g->pool, s.capture_stream);
    fn();
  } catch (...) {
    cudaStreamEndCapture(s.capture_stream, &graph);  // nothing ran: the pool's blocks are free to go back
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    return_pool(g->pool);
    throw;
  }
  cudaError_t e = cudaStreamEndCapture(s.capture_stream, &graph);
  if (e == cudaSuccess) e = cudaGraphInstantiate(&g->exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    return_pool(g->pool);
    throw_cuda(e, "CUDA graph capture", __FILE__, __LINE__);
  }
  return g.release();
}

void replay_graph(void* graph) {
  ensure_device();
  MF_CUDA_CHECK(cudaGraphLaunch(static_cast<Graph*>(graph)->exec, state().stream));
}

void release_graph(void* graph) noexcept {
  if (!graph) return;
  Graph* g = static_cast<Graph*>(graph);
  cudaStreamSynchronize(state().stream);  // a replay may still be running
  if (g->exec) cudaGraphExecDestroy(g->exec);
  cudaGetLastError();
  return_pool(g->pool);
  delete g;
}

void copy_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  ensure_device();
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, state().stream));
}

// ---------------------------------------------------------------------------------------------------
// Hooks into core/memory: storages on device 1 are allocated, freed and copied here.

namespace {

void hook_copy(void* dst, int32_t dst_device, const void* src, int32_t src_device, size_t bytes) {
  copy(dst, dst_device, src, src_device, bytes);
}

const DeviceHooks kHooks{&device_alloc, &device_free, &hook_copy,     &synchronize, &graphs_enabled,
                         &capture_graph, &replay_graph, &release_graph, &copy_async};
[[maybe_unused]] const bool kInstalled = (set_device_hooks(kCudaDevice, &kHooks), true);

}  // namespace

}  // namespace mf::cuda
