// memory.cpp: the aligned allocator with a size-class cache (see memory.h).
#include "memory.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "check.h"

namespace mf {
namespace {

constexpr size_t kCacheMin = 64 << 10;

struct Cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  size_t cached = 0;
  size_t limit = size_t(2) << 30;
  std::atomic<size_t> live{0};
  std::atomic<size_t> peak{0};
  std::atomic<size_t> system{0};  // cache-sized blocks taken from the system allocator
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: storages may be released during process exit
  return *c;
}

// Size classes: 4 steps per power of two, so at most 25% is wasted.
size_t size_class(size_t bytes) {
  if (bytes < kCacheMin) return (bytes + kAlign - 1) / kAlign * kAlign;
  size_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

void note_live(ptrdiff_t delta) {
  Cache& c = cache();
  size_t now = c.live.fetch_add(static_cast<size_t>(delta)) + static_cast<size_t>(delta);
  size_t pk = c.peak.load();
  while (now > pk && !c.peak.compare_exchange_weak(pk, now)) {
  }
}

}  // namespace

void* host_alloc(size_t bytes) {
  size_t cls = size_class(bytes == 0 ? kAlign : bytes);
  Cache& c = cache();
  if (cls >= kCacheMin) {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_lists.find(cls);
    if (it != c.free_lists.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= cls;
      note_live(static_cast<ptrdiff_t>(cls));
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlign, cls);
  if (!p) {
    trim_cache();
    p = std::aligned_alloc(kAlign, cls);
  }
  if (!p)
    throw Error(ErrorKind::range, "out of memory: could not allocate " + std::to_string(bytes) + " bytes");
  if (cls >= kCacheMin) c.system.fetch_add(1);
  note_live(static_cast<ptrdiff_t>(cls));
  return p;
}

void host_free(void* p, size_t bytes) {
  if (!p) return;
  size_t cls = size_class(bytes == 0 ? kAlign : bytes);
  Cache& c = cache();
  note_live(-static_cast<ptrdiff_t>(cls));
  if (cls >= kCacheMin) {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + cls <= c.limit) {
      c.free_lists[cls].push_back(p);
      c.cached += cls;
      return;
    }
  }
  std::free(p);
}

void trim_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& kv : c.free_lists)
    for (void* p : kv.second) std::free(p);
  c.free_lists.clear();
  c.cached = 0;
}

size_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
}

size_t live_bytes() { return cache().live.load(); }
size_t peak_bytes() { return cache().peak.load(); }
size_t system_allocs() { return cache().system.load(); }
void reset_peak() { cache().peak.store(cache().live.load()); }

void set_cache_limit(size_t bytes) {
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    c.limit = bytes;
  }
  if (cached_bytes() > bytes) trim_cache();
}

static const DeviceHooks*& hooks_slot(int32_t device) {
  static const DeviceHooks* slots[4] = {};
  return slots[device & 3];
}

void set_device_hooks(int32_t device, const DeviceHooks* hooks) {
  if (device > kHostDevice && device < 4) hooks_slot(device) = hooks;
}

const DeviceHooks* device_hooks(int32_t device) {
  return device > kHostDevice && device < 4 ? hooks_slot(device) : nullptr;
}

static const DeviceHooks& require_hooks(int32_t device) {
  const DeviceHooks* h = device_hooks(device);
  if (!h)
    throw Error(ErrorKind::generic, device == kCudaDevice ? "this build of metaformer has no CUDA support"
                                                          : "unknown device " + std::to_string(device));
  return *h;
}

Storage* storage_new(size_t bytes, int32_t device) {
  void* p = device == kHostDevice ? host_alloc(bytes) : require_hooks(device).alloc(bytes);
  Storage* s = new (std::nothrow) Storage{p, bytes, {1}, device, {0}, {0}, nullptr};
  if (!s) {
    if (device == kHostDevice) host_free(p, bytes);
    else require_hooks(device).release(p, bytes);
    throw Error(ErrorKind::range, "out of memory");
  }
  return s;
}

void storage_retain(Storage* s) { s->refs.fetch_add(1, std::memory_order_relaxed); }

void storage_release(Storage* s) {
  if (s->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    if (s->device == kHostDevice) host_free(s->ptr, s->bytes);
    else if (const DeviceHooks* h = device_hooks(s->device)) h->release(s->ptr, s->bytes);
    delete s;
  }
}

void storage_copy(Storage* dst, const Storage* src, size_t bytes) {
  if (bytes > dst->bytes || bytes > src->bytes)
    throw Error(ErrorKind::range, "copy: expected at most " + std::to_string(std::min(dst->bytes, src->bytes)) +
                                      " bytes but received " + std::to_string(bytes));
  // The version changes after the bytes land: data derived while the copy ran is remade next time.
  if (dst->device == kHostDevice && src->device == kHostDevice) {
    if (bytes) std::memmove(dst->ptr, src->ptr, bytes);
    storage_written(dst);
    return;
  }
  int32_t dev = dst->device != kHostDevice ? dst->device : src->device;
  require_hooks(dev).copy(dst->ptr, dst->device, src->ptr, src->device, bytes);
  storage_written(dst);
}

}  // namespace mf
