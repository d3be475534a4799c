// memory.h: 64-byte-aligned host memory with a size-class cache, and refcounted storages.
//
// Freed blocks of 64 KiB or more are kept in a cache (per size class) and reused, so ops that allocate
// their outputs each call do not page-fault each call (glibc would return multi-MB blocks to the OS).
// The cache holds at most cache_limit() bytes; trim_cache() returns everything to the OS.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace mf {

constexpr size_t kAlign = 64;

void* host_alloc(size_t bytes);          // throws mf::Error on out-of-memory; never returns null
void host_free(void* p, size_t bytes);   // bytes must be what was requested
void trim_cache();
size_t cached_bytes();
size_t live_bytes();     // bytes currently handed out
size_t peak_bytes();     // high-water mark of live_bytes() since the last reset_peak()
void reset_peak();
size_t system_allocs();  // blocks of >= 64 KiB that came from the system, not the cache (each page-faults)
void set_cache_limit(size_t bytes);

// Where a storage's memory lives. Device memory is allocated through hooks that a device module
// installs (cuda/device.cu for kCudaDevice), so core never includes a device runtime's headers.
constexpr int32_t kHostDevice = 0;
constexpr int32_t kCudaDevice = 1;

struct DeviceHooks {
  void* (*alloc)(size_t bytes);              // throws mf::Error (range) when out of memory
  void (*release)(void* p, size_t bytes);    // never throws
  // Synchronous copy between host memory (device 0) and this device, or within this device.
  void (*copy)(void* dst, int32_t dst_device, const void* src, int32_t src_device, size_t bytes);
  // Waits for the work queued on this device; throws mf::Error for an asynchronous failure.
  void (*synchronize)();
  // Graphs (null where the device has none): graphs says whether they are switched on; capture runs fn
  // and records the work it queues from this thread, and the device memory it allocates, into a
  // replayable graph (the work does not run); replay queues a graph; release_graph waits for it and
  // frees it; copy_async queues a copy within the device, ordered with the graphs.
  bool (*graphs)();
  void* (*capture)(const std::function<void()>& fn);
  void (*replay)(void* graph);
  void (*release_graph)(void* graph);  // never throws
  void (*copy_async)(void* dst, const void* src, size_t bytes);
};
void set_device_hooks(int32_t device, const DeviceHooks* hooks);
const DeviceHooks* device_hooks(int32_t device);  // null when this build has no such device

// Something computed from a storage's contents and kept with it (the cpu backend's bf16 copies and
// packed GEMM panels of plan weights); destroyed with the storage.
struct Derived {
  virtual ~Derived() = default;
};

// A block of memory shared by tensors, plans and async work. Starts with one reference.
struct Storage {
  void* ptr;
  size_t bytes;
  std::atomic<int32_t> refs;
  int32_t device;  // kHostDevice or kCudaDevice
  // Changes whenever the library writes the memory or hands JS a way to (op outputs, copies, writes
  // from JS, each view()). A Derived value records the version it was computed from.
  std::atomic<uint64_t> version{0};
  // view() ArrayBuffers still alive: JS may write through them at any time, so while one exists the
  // contents count as changing on every use.
  std::atomic<int32_t> live_views{0};
  std::unique_ptr<Derived> derived;  // touched only under the compute lock
};

Storage* storage_new(size_t bytes, int32_t device = kHostDevice);  // uninitialised contents
void storage_retain(Storage* s);
void storage_release(Storage* s);    // frees the memory when the last reference goes
// Copies `bytes` from src to dst, on any devices (synchronous).
void storage_copy(Storage* dst, const Storage* src, size_t bytes);
// Records a write to s (bumps its version).
inline void storage_written(Storage* s) { s->version.fetch_add(1, std::memory_order_acq_rel); }

}  // namespace mf
