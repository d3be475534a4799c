// cuda/conv.cu: dense 2-D convolution (cross-correlation, as PyTorch) for the stem and downsampling
// layers, forward and backward, as im2col + GEMM (blas.h). x is NCHW (the image) or channels-last;
// y is always channels-last [B, Ho, Wo, Co].
//   col[m, k]: m = (b, oh, ow), k = (ci, i, j) in w's own order, so w[Co, Ci, kh, kw] is the GEMM's
//   [Co, Kc] operand with no repacking.
//   forward:  y[m, co] = sum_k col[m, k] w[co, k] + bias[co]
//   backward: dcol = dy w (then col2im, a gather per input element, writes dx);
//             dw += dy^T col;  db += column sums of dy
// Images are processed in chunks so that col stays under kColFloats (256 MiB); index arithmetic inside a
// chunk is 32-bit (a 64-bit division costs tens of instructions per element).
//
// The forward of a channels-last x with Ci % 4 == 0 (every downsampling layer) orders col's columns
// (i, j, ci) instead, so each (pixel, tap) is a contiguous run of Ci floats copied as float4, and
// multiplies by the weights permuted to [Co, kh, kw, Ci] (a small per-call copy). In bf16 precision
// the forward's col is written in bfloat16 directly (gemm_a16: no fp32 col and no conversion pass).
#include <optional>
#include <string>

#include "../core/geometry.h"
#include "../core/numeric.h"
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int64_t kColFloats = int64_t(64) << 20;

template <typename T>
__device__ __forceinline__ T to_col(float v) {
  if constexpr (sizeof(T) == 2) return f32_to_bf16(v);
  else return v;
}

// Sizes of a chunk's im2col as 32-bit integers (every index of the chunk's col fits).
struct ColGeom {
  int HoWo, Wo, khw, kw;
};

__device__ __forceinline__ bool in_image(const ConvGeom& g, int64_t ih, int64_t iw) {
  return ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
}

// col[(b - b0) * Ho * Wo + oh * Wo + ow, (ci * kh + i) * kw + j] for images b0 .. b0 + nb - 1.
template <typename T>
__global__ void im2col_kernel(const float* __restrict__ x,  // [B, Ci, H, W] or [B, H, W, Ci]
                              ConvGeom g, ColGeom c, int64_t b0, int total,
                              T* __restrict__ col) {  // [nb * Ho * Wo, Ci * kh * kw]
  const int Kc = static_cast<int>(g.Ci) * c.khw;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const int m = e / Kc, k = e - m * Kc;
    const int ci = k / c.khw, t = k - ci * c.khw, i = t / c.kw, j = t - i * c.kw;
    const int bl = m / c.HoWo, p = m - bl * c.HoWo, oh = p / c.Wo, ow = p - oh * c.Wo;
    const int64_t ih = int64_t(oh) * g.stride - g.pad + i, iw = int64_t(ow) * g.stride - g.pad + j;
    col[e] = to_col<T>(in_image(g, ih, iw) ? x[g.x_index(b0 + bl, ci, ih, iw)] : 0.0f);
  }
}

// Channels-last x, Ci % 4 == 0: col[m, (i * kw + j) * Ci + ci] = x[b, ih, iw, ci] (zeros outside), one
// float4 per thread; total = nb * Ho * Wo * kh * kw * Ci / 4.
template <typename T>
__global__ void im2col_cl_kernel(const float* __restrict__ x,  // [B, H, W, Ci]
                                 ConvGeom g, ColGeom c, int64_t b0, int total, T* __restrict__ col) {
  const int C4 = static_cast<int>(g.Ci / 4);
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const int seg = e / C4, c4 = e - seg * C4;  // seg: (pixel m, tap ij)
    const int m = seg / c.khw, ij = seg - m * c.khw, i = ij / c.kw, j = ij - i * c.kw;
    const int bl = m / c.HoWo, p = m - bl * c.HoWo, oh = p / c.Wo, ow = p - oh * c.Wo;
    const int64_t ih = int64_t(oh) * g.stride - g.pad + i, iw = int64_t(ow) * g.stride - g.pad + j;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (in_image(g, ih, iw)) v = reinterpret_cast<const float4*>(x + (((b0 + bl) * g.H + ih) * g.W + iw) * g.Ci)[c4];
    if constexpr (sizeof(T) == 2) {
      reinterpret_cast<ushort4*>(col)[e] = make_ushort4(f32_to_bf16(v.x), f32_to_bf16(v.y), f32_to_bf16(v.z),
                                                        f32_to_bf16(v.w));
    } else {
      reinterpret_cast<float4*>(col)[e] = v;
    }
  }
}

// wp[co, (i * kw + j) * Ci + ci] = w[co, ci, i, j]: the weights in im2col_cl_kernel's column order.
__global__ void permute_w_kernel(const float* __restrict__ w, int64_t Co, int64_t Ci, int64_t khw,
                                 float* __restrict__ wp) {
  const int64_t Kc = Ci * khw, total = Co * Kc;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t co = e / Kc, k = e - co * Kc, ij = k / Ci, ci = k - ij * Ci;
    wp[e] = w[co * Kc + ci * khw + ij];
  }
}

// The chunk's ColGeom; refuses a chunk whose col has 2^30 elements or more (a single enormous image), so
// that the kernels' 32-bit grid-stride indices cannot overflow.
ColGeom col_geom(const ConvGeom& g, int64_t Mc, const char* what) {
  if (Mc * g.cols() >= (int64_t(1) << 30))
    throw Error(ErrorKind::range, std::string("conv2d: expected fewer than 2^30 im2col elements per image for ") +
                                      what + " but one image needs " + std::to_string(Mc * g.cols()));
  return ColGeom{static_cast<int>(g.Ho * g.Wo), static_cast<int>(g.Wo), static_cast<int>(g.kh * g.kw),
                 static_cast<int>(g.kw)};
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
  const bool bf16 = gemm_precision() == Precision::bf16;
  const bool cl = !g.nchw && g.Ci % 4 == 0 && reinterpret_cast<uintptr_t>(x.f()) % 16 == 0;
  const float* wt = w.f();
  std::optional<Scratch> wp;
  if (cl) {
    wp.emplace(static_cast<size_t>(g.Co * Kc) * sizeof(float));
    permute_w_kernel<<<grid_for(g.Co * Kc, 256), 256, 0, stream()>>>(w.f(), g.Co, g.Ci, g.kh * g.kw, wp->as<float>());
    after_launch("conv2d forward (weights)");
    wt = wp->as<float>();
  }
  int64_t nb = images_per_chunk(g);
  Scratch col(static_cast<size_t>(nb * g.Ho * g.Wo * Kc) * (bf16 ? 2 : sizeof(float)));
  for (int64_t b0 = 0; b0 < g.B; b0 += nb) {
    int64_t n = g.B - b0 < nb ? g.B - b0 : nb;
    int64_t Mc = n * g.Ho * g.Wo;
    ColGeom c = col_geom(g, Mc, "the forward");
    const int total = static_cast<int>(cl ? Mc * Kc / 4 : Mc * Kc);
    const unsigned blocks = grid_for(total, 256);
    if (cl && bf16) im2col_cl_kernel<<<blocks, 256, 0, stream()>>>(x.f(), g, c, b0, total, col.as<uint16_t>());
    else if (cl) im2col_cl_kernel<<<blocks, 256, 0, stream()>>>(x.f(), g, c, b0, total, col.as<float>());
    else if (bf16) im2col_kernel<<<blocks, 256, 0, stream()>>>(x.f(), g, c, b0, total, col.as<uint16_t>());
    else im2col_kernel<<<blocks, 256, 0, stream()>>>(x.f(), g, c, b0, total, col.as<float>());
    after_launch("conv2d forward (im2col)");
    float* yc = y.f() + b0 * g.Ho * g.Wo * g.Co;
    if (bf16) gemm_a16("conv2d", Mc, g.Co, Kc, col.as<uint16_t>(), Kc, wt, Kc, beta, yc, g.Co);
    else gemm("conv2d", false, true, Mc, g.Co, Kc, 1.0f, col.as<float>(), Kc, wt, Kc, beta, yc, g.Co);
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
      ColGeom c = col_geom(g, Mc, "the backward");
      const int total = static_cast<int>(Mc * Kc);
      im2col_kernel<<<grid_for(total, 256), 256, 0, stream()>>>(x.f(), g, c, b0, total, col.as<float>());
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
