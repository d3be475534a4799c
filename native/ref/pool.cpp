// ref/pool.cpp: the PoolFormer token mixer, channels-last:
//   y = avgpool3x3(x, stride 1, padding 1, count_include_pad=False) - x
// Border windows divide by the number of in-image taps (4 at corners, 6 on edges).
// Backward: dx[p] = sum over windows q containing p of dy[q] / count(q), minus dy[p].
#include "ref.h"

namespace mf::ref {
namespace {

inline int64_t taps(int64_t i, int64_t n) { return (i > 0) + 1 + (i + 1 < n); }

template <typename T>
void pool_fwd(const OpArgs& a) {
  const TensorView& x = a.in[0];  // [B,H,W,C]
  int64_t B = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3];
  const T* X = ptr<T>(x);
  T* Y = ptr<T>(a.out[0]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0;
          for (int64_t i = h - 1; i <= h + 1; ++i)
            for (int64_t j = w - 1; j <= w + 1; ++j)
              if (i >= 0 && i < H && j >= 0 && j < W) acc += X[((b * H + i) * W + j) * C + c];
          int64_t idx = ((b * H + h) * W + w) * C + c;
          Y[idx] = static_cast<T>(acc / static_cast<double>(taps(h, H) * taps(w, W)) - X[idx]);
        }
}

template <typename T>
void pool_bwd(const OpArgs& a) {
  const TensorView& dy = a.in[0];
  int64_t B = dy.shape[0], H = dy.shape[1], W = dy.shape[2], C = dy.shape[3];
  const T* DY = ptr<T>(dy);
  T* DX = ptr<T>(a.out[0]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0;
          for (int64_t i = h - 1; i <= h + 1; ++i)
            for (int64_t j = w - 1; j <= w + 1; ++j)
              if (i >= 0 && i < H && j >= 0 && j < W)
                acc += DY[((b * H + i) * W + j) * C + c] / static_cast<double>(taps(i, H) * taps(j, W));
          int64_t idx = ((b * H + h) * W + w) * C + c;
          DX[idx] = static_cast<T>(acc - DY[idx]);
        }
}

}  // namespace
}  // namespace mf::ref

MF_REGISTER(ref, pool, MF_REF_KERNEL(mf::ref::pool_fwd), MF_REF_KERNEL(mf::ref::pool_bwd));
