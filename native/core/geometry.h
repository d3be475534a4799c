// geometry.h: shape arithmetic shared by every backend's kernels (host and CUDA device code).
#pragma once
#include <cstdint>

#include "tensor.h"

#if defined(__CUDACC__)
#define MF_HOST_DEVICE __host__ __device__
#else
#define MF_HOST_DEVICE
#endif

namespace mf {

// Dense 2-D convolution (ops.def conv2d): x NCHW (nchw) or channels-last, w [Co, Ci, kh, kw],
// y channels-last [B, Ho, Wo, Co], Ho = (H + 2 pad - kh) / stride + 1.
struct ConvGeom {
  int64_t B, H, W, Ci, Co, kh, kw, Ho, Wo, stride, pad;
  bool nchw;
  // Offset of x[b, c, h, w] in either layout.
  MF_HOST_DEVICE int64_t x_index(int64_t b, int64_t c, int64_t h, int64_t w) const {
    return nchw ? ((b * Ci + c) * H + h) * W + w : ((b * H + h) * W + w) * Ci + c;
  }
  // Columns of the im2col matrix (ci, i, j): the layout of one output channel's weights.
  MF_HOST_DEVICE int64_t cols() const { return Ci * kh * kw; }
};

// attrs: stride, pad, in_nchw (as ops.def lists them).
inline ConvGeom conv_geom(const TensorView& x, const TensorView& w, const double* attr) {
  ConvGeom g{};
  g.stride = static_cast<int64_t>(attr[0]);
  g.pad = static_cast<int64_t>(attr[1]);
  g.nchw = attr[2] != 0;
  g.B = x.shape[0];
  g.Ci = g.nchw ? x.shape[1] : x.shape[3];
  g.H = g.nchw ? x.shape[2] : x.shape[1];
  g.W = g.nchw ? x.shape[3] : x.shape[2];
  g.Co = w.shape[0];
  g.kh = w.shape[2];
  g.kw = w.shape[3];
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  return g;
}

}  // namespace mf
