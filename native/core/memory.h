// memory.h: 64-byte-aligned host memory with a size-class cache, and refcounted storages.
//
// Freed blocks of 64 KiB or more are kept in a cache (per size class) and reused, so ops that allocate
// their outputs each call do not page-fault each call (glibc would return multi-MB blocks to the OS).
// The cache holds at most cache_limit() bytes; trim_cache() returns everything to the OS.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mf {

constexpr size_t kAlign = 64;

void* host_alloc(size_t bytes);          // throws mf::Error on out-of-memory; never returns null
void host_free(void* p, size_t bytes);   // bytes must be what was requested
void trim_cache();
size_t cached_bytes();
size_t live_bytes();     // bytes currently handed out
size_t peak_bytes();     // high-water mark of live_bytes() since the last reset_peak()
void reset_peak();
void set_cache_limit(size_t bytes);

// A block of memory shared by tensors, plans and async work. Starts with one reference.
struct Storage {
  void* ptr;
  size_t bytes;
  std::atomic<int32_t> refs;
};

Storage* storage_new(size_t bytes);  // uninitialised contents
void storage_retain(Storage* s);
void storage_release(Storage* s);    // frees the memory when the last reference goes

}  // namespace mf
