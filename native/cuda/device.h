// cuda/device.h: the CUDA backend's device management, as plain C++ (no CUDA headers), so the N-API
// binding and core can call it. Implemented in cuda/device.cu; only linked when CUDA is built
// (METAFORMER_WITH_CUDA). Everything that can fail throws mf::Error; nothing aborts.
//
// Model: one device (ordinal 0, or METAFORMER_CUDA_DEVICE), one stream for all kernels and copies, so
// work is ordered and a freed block can be reused by the next op without extra synchronisation. Copies
// between host and device are synchronous. METAFORMER_CUDA_SYNC=1 synchronises after every launch, so an
// execution error is reported by the op that caused it (slow; for debugging).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace mf::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (never throws).
int device_count() noexcept;
// True when a device is present and could be initialised (never throws).
bool available() noexcept;
// Why available() is false ("" when it is true).
std::string unavailable_reason();
// Initialises the device for the calling thread (first call: context, stream). Throws mf::Error.
void ensure_device();
std::string device_name();
// Waits for all queued work; reports asynchronous kernel errors as mf::Error.
void synchronize();

// Graphs (on unless METAFORMER_CUDA_GRAPHS=0; see device.cu): capture_graph runs fn and returns the recorded work
// as a graph (the work does not run); replay_graph queues it on the stream; release_graph waits and frees
// it and the device memory it owns. copy_async queues a copy within the device on the stream.
bool graphs_enabled();
void* capture_graph(const std::function<void()>& fn);
void replay_graph(void* graph);
void release_graph(void* graph) noexcept;
void copy_async(void* dst, const void* src, size_t bytes);

// Device memory through the caching allocator. alloc throws mf::Error(range) when out of memory.
void* device_alloc(size_t bytes);
void device_free(void* p, size_t bytes) noexcept;
// Copies between any two of host (device 0) and CUDA (device 1) memory; returns when done.
void copy(void* dst, int dst_device, const void* src, int src_device, size_t bytes);
// dst = 0 bytes, on the device stream.
void zero(void* dst, size_t bytes);

struct DeviceMemoryStats {
  size_t live, peak, cached, total, free;
};
DeviceMemoryStats memory_stats();
void trim_device_cache() noexcept;

}  // namespace mf::cuda
