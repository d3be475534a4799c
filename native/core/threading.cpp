// threading.cpp: pool size and the compute lock (see threading.h).
#include "threading.h"

#include <omp.h>

#include <atomic>

namespace mf {

static std::atomic<int> g_threads{0};

void set_num_threads(int n) {
  if (n < 1) n = omp_get_num_procs();
  g_threads.store(n);
  omp_set_num_threads(n);
}

int num_threads() {
  int n = g_threads.load();
  if (n < 1) {
    n = omp_get_num_procs();
    g_threads.store(n);
  }
  return n;
}

std::mutex& compute_mutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}

ComputeScope::ComputeScope() : lock_(compute_mutex()) { omp_set_num_threads(num_threads()); }

}  // namespace mf
