// ref/dropout.cpp: dropout and drop path (stochastic depth). Element i belongs to group i / group;
// a group is kept when uniform01(seed, offset + group_index) >= p, and kept values are scaled by
// 1 / (1 - p). The mask is recomputed in backward from the same (seed, offset), so nothing is stored.
#include "../core/numeric.h"
#include "ref.h"

namespace mf::ref {
namespace {

template <typename T>
void dropout_apply(const OpArgs& a) {  // forward and backward are the same masking
  double p = a.attr[0];
  int64_t group = static_cast<int64_t>(a.attr[1]);
  uint64_t seed = static_cast<uint64_t>(a.attr[2]), offset = static_cast<uint64_t>(a.attr[3]);
  const T* X = ptr<T>(a.in[0]);
  T* Y = ptr<T>(a.out[0]);
  double keep_scale = 1.0 / (1.0 - p);
  for (int64_t i = 0; i < a.in[0].numel(); ++i) {
    bool keep = uniform01(seed, offset + static_cast<uint64_t>(i / group)) >= static_cast<float>(p);
    Y[i] = keep ? static_cast<T>(X[i] * keep_scale) : T(0);
  }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, dropout, MF_REF_KERNEL(mf::ref::dropout_apply), MF_REF_KERNEL(mf::ref::dropout_apply));
