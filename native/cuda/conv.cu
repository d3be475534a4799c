// cuda/conv.cu: dense 2-D convolution (cross-correlation, as PyTorch) for the stem and downsampling
// layers, forward and backward, as im2col + GEMM (blas.h). x is NCHW (the image) or channels-last;
// y is always channels-last [B, Ho, Wo, Co].
//   col[m, k]: m = (b, oh, ow), k = (ci, i, j) in w's own order, so w[Co, Ci, kh, kw] is the GEMM's
//   [Co, Kc] operand with no repacking.
//   forward:  y[m, co] = sum_k col[m, k] w[co, k] + bias[co]
//   backward: dcol = dy w (then col2im, a gather per input element, writes dx);
//             dw += dy^T col;  db += column sums of dy
// Images are processed in chunks so that col stays under kColFloats (256 MiB).
#include "../core/geometry.h"
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int64_t kColFloats = int64_t(64) << 20;



// col[(b - b0) * Ho * Wo + oh * Wo + ow, (ci * kh + i) * kw + j] for images b0 .. b0 + nb - 1.
__global__ void im2col_kernel(const float* __restrict__ x,  // [B, Ci, H, W] or [B, H, W, Ci]
                              ConvGeom g, int64_t b0, int64_t nb,
                              float* __restrict__ col) {  // [nb * Ho * Wo, Ci * kh * kw]
  int64_t Kc = g.Ci * g.kh * g.kw, total = nb * g.Ho * g.Wo * Kc;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t k = e % Kc, m = e / Kc;
    int64_t j = k % g.kw, i = (k / g.kw) % g.kh, ci = k / (g.kw * g.kh);
    int64_t ow = m % g.Wo, oh = (m / g.Wo) % g.Ho, b = b0 + m / (g.Wo * g.Ho);
    int64_t ih = oh * g.stride - g.pad + i, iw = ow * g.stride - g.pad + j;
    col[e] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[g.x_index(b, ci, ih, iw)] : 0.0f;
  }
}

// dx[b, ci, ih, iw] = sum over (i, j) with ih = oh * stride - pad + i (likewise w) of dcol[m(b, oh, ow), k(ci, i, j)].
// One thread per input element of images b0 .. b0 + nb - 1, in x's own layout.
__global__ void col2im_kernel(const float* __restrict__ dcol,  // [nb * Ho * Wo, Ci * kh * kw]
                              ConvGeom g, int64_t b0, int64_t nb,
                              float* __restrict__ dx) {  // like x
  int64_t total = nb * g.Ci * g.H * g.W, Kc = g.Ci * g.kh * g.kw;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t ci, ih, iw, bl;
    if (g.nchw) {
      iw = e % g.W;
      ih = (e / g.W) % g.H;
      ci = (e / (g.W * g.H)) % g.Ci;
      bl = e / (g.W * g.H * g.Ci);
    } else {
      ci = e % g.Ci;
      iw = (e / g.Ci) % g.W;
      ih = (e / (g.Ci * g.W)) % g.H;
      bl = e / (g.Ci * g.W * g.H);
    }
    float acc = 0.0f;
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t t = ih + g.pad - i;
      if (t < 0 || t % g.stride) continue;
      int64_t oh = t / g.stride;
      if (oh >= g.Ho) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        int64_t u = iw + g.pad - j;
        if (u < 0 || u % g.stride) continue;
        int64_t ow = u / g.stride;
        if (ow >= g.Wo) continue;
        int64_t m = (bl * g.Ho + oh) * g.Wo + ow;
        acc += dcol[m * Kc + (ci * g.kh + i) * g.kw + j];
      }
    }
    dx[g.x_index(b0 + bl, ci, ih, iw)] = acc;
  }
}

__global__ void broadcast_rows_kernel(const float* __restrict__ b,  // [N]
                                      int64_t M, int64_t N,
                                      float* __restrict__ y) {  // [M, N]
  const int64_t total = M * N, i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  ColumnOf col(i0, stride, N);
  for (int64_t i = i0; i < total; i += stride, col.advance()) y[i] = b[col.c];
}

int64_t images_per_chunk(const ConvGeom& g) {
  int64_t per = g.Ho * g.Wo * g.Ci * g.kh * g.kw;
  int64_t n = per > 0 ? kColFloats / per : g.B;
  if (n < 1) n = 1;
  return n > g.B ? g.B : n;
}

void conv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // w[Co,Ci,kh,kw] b[Co]? y[B,Ho,Wo,Co]
  ConvGeom g = conv_geom(x, w, a.attr);
  int64_t M = g.B * g.Ho * g.Wo, Kc = g.Ci * g.kh * g.kw;
  if (M == 0 || g.Co == 0) return;
  float beta = 0.0f;
  if (b.present()) {
    broadcast_rows_kernel<<<grid_for(M * g.Co, 256), 256, 0, stream()>>>(b.f(), M, g.Co, y.f());
    after_launch("conv2d forward (bias)");
    beta = 1.0f;
  }
  int64_t nb = images_per_chunk(g);
  Scratch col(static_cast<size_t>(nb * g.Ho * g.Wo * Kc) * sizeof(float));
  for (int64_t b0 = 0; b0 < g.B; b0 += nb) {
    int64_t n = g.B - b0 < nb ? g.B - b0 : nb;
    int64_t Mc = n * g.Ho * g.Wo;
    im2col_kernel<<<grid_for(Mc * Kc, 256), 256, 0, stream()>>>(x.f(), g, b0, n, col.as<float>());
    after_launch("conv2d forward (im2col)");
    gemm("conv2d", false, true, Mc, g.Co, Kc, 1.0f, col.as<float>(), Kc, w.f(), Kc, beta,
         y.f() + b0 * g.Ho * g.Wo * g.Co, g.Co);
  }
}

void conv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];       // dy[B,Ho,Wo,Co] w[Co,Ci,kh,kw]
  const TensorView &dx = a.out[0], &dw = a.out[1], &db = a.out[2];  // dx like x?, dw like w?, db[Co]?
  ConvGeom g = conv_geom(x, w, a.attr);
  int64_t M = g.B * g.Ho * g.Wo, Kc = g.Ci * g.kh * g.kw;
  if (dx.present() && (M == 0 || g.Co == 0)) zero(dx.f(), static_cast<size_t>(x.numel()) * sizeof(float));
  if (M == 0 || g.Co == 0) return;
  if (db.present()) colsum_add(dy.f(), nullptr, M, g.Co, db.f());
  if (!dx.present() && !dw.present()) return;
  int64_t nb = images_per_chunk(g);
  Scratch col(static_cast<size_t>(nb * g.Ho * g.Wo * Kc) * sizeof(float));
  for (int64_t b0 = 0; b0 < g.B; b0 += nb) {
    int64_t n = g.B - b0 < nb ? g.B - b0 : nb;
    int64_t Mc = n * g.Ho * g.Wo;
    const float* dyc = dy.f() + b0 * g.Ho * g.Wo * g.Co;
    if (dw.present()) {
      im2col_kernel<<<grid_for(Mc * Kc, 256), 256, 0, stream()>>>(x.f(), g, b0, n, col.as<float>());
      after_launch("conv2d backward (im2col)");
      gemm("conv2d", true, false, g.Co, Kc, Mc, 1.0f, dyc, g.Co, col.as<float>(), Kc, 1.0f, dw.f(), Kc);
    }
    if (dx.present()) {
      gemm("conv2d", false, false, Mc, Kc, g.Co, 1.0f, dyc, g.Co, w.f(), Kc, 0.0f, col.as<float>(), Kc);
      col2im_kernel<<<grid_for(n * g.Ci * g.H * g.W, 256), 256, 0, stream()>>>(col.as<float>(), g, b0, n, dx.f());
      after_launch("conv2d backward (col2im)");
    }
  }
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, conv2d, mf::cuda::conv2d_fwd, mf::cuda::conv2d_bwd);
