// threading_impl.h: the template body of parallel_for (see threading.h).
#pragma once
#include <omp.h>

#include <algorithm>

namespace mf {

template <typename F>
void parallel_for(int64_t n, int64_t min_chunk, F&& fn) {
  if (n <= 0) return;
  int nt = num_threads();
  if (min_chunk < 1) min_chunk = 1;
  int64_t max_tasks = (n + min_chunk - 1) / min_chunk;
  if (nt <= 1 || max_tasks <= 1 || omp_in_parallel()) {
    fn(int64_t(0), n);
    return;
  }
  int tasks = static_cast<int>(std::min<int64_t>(nt, max_tasks));
#pragma omp parallel num_threads(tasks)
  {
    int t = omp_get_thread_num();
    int tt = omp_get_num_threads();
    int64_t begin = n * t / tt, end = n * (t + 1) / tt;
    if (begin < end) fn(begin, end);
  }
}

}  // namespace mf
