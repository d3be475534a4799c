// threading.h: one OpenMP thread pool for our kernels and oneDNN, and one compute lock.
//
// The pool's size is set by set_num_threads() (default: all cores). Its wait policy must be passive
// (lib/native.ts sets OMP_WAIT_POLICY before the addon loads): on small VMs a spinning pool next to
// any other runnable thread turns each parallel region into a multi-millisecond stall.
//
// compute_mutex() serialises kernel execution across the JS thread, async workers and worker_threads:
// two callers must never run parallel regions at once on a 2-core machine.
#pragma once
#include <cstdint>
#include <mutex>

namespace mf {

void set_num_threads(int n);
int num_threads();
std::mutex& compute_mutex();

// Held around every kernel call: takes the compute lock and sizes this thread's OpenMP team (the
// OpenMP thread count is a per-thread setting, and async work runs on libuv threads).
class ComputeScope {
 public:
  ComputeScope();
  ~ComputeScope() = default;
  ComputeScope(const ComputeScope&) = delete;
  ComputeScope& operator=(const ComputeScope&) = delete;

 private:
  std::lock_guard<std::mutex> lock_;
};

// Splits [0, n) into chunks and runs fn(begin, end) on the pool. Runs inline when n is small or
// when called from inside a parallel region.
template <typename F>
void parallel_for(int64_t n, int64_t min_chunk, F&& fn);

}  // namespace mf

#include "threading_impl.h"
