// cuda/dwconv.cu: depthwise 2-D convolution, channels-last [B, H, W, C], stride 1, padding k/2
// (SepConv.dwconv), forward and backward.
//   y[b, h, w, c]  = bias[c] + sum_{i,j} x[b, h - kh/2 + i, w - kw/2 + j, c] * wt[c, 0, i, j]
//   dx[b, h, w, c] = sum_{i,j} dy[b, h - kh/2 + i, w - kw/2 + j, c] * wt[c, 0, kh-1-i, kw-1-j]
//                    (the forward with the kernel flipped; no bias)
//   dw[c, 0, i, j] += sum_{b,h,w} dy[b, h, w, c] * x[b, h - kh/2 + i, w - kw/2 + j, c]
//   db[c] += sum_{b,h,w} dy[b, h, w, c]
//
// The 7x7 case (every MetaFormer SepConv) has fast kernels. The forward (and dx, the forward with flipped
// weights) uses no shared memory: a thread computes TW = 8 neighbouring output pixels of one row for one
// lane of channels (a float4 of 4 channels when C % 4 == 0 and the pointers are 16-byte aligned, else one
// float), sliding a 14-pixel input window through registers row by row; a block is 32 lanes x 8 output
// rows of the same columns, so the input rows its threads share stay in L1. Weights are pre-transposed
// to [49, C] so that a warp's weight loads are contiguous. On an H200 it ran at 1.4-1.75x the earlier
// shared-memory tiled forward at batch 64-256 (bench/RESULTS-gpu.md, "Depthwise forward variants").
// The weight gradient stages a TH x TW tile of inputs and output gradients in shared memory (lane =
// channel, TH = TW = 7 when H and W are multiples of 7 (224-pixel inputs: 56, 28, 14, 7), else 8), keeps
// 49 accumulators per thread over many tiles and writes one partial per (block, row); cuda_common's
// add_partials sums them in fixed order. Other odd kernel sizes use simple direct kernels (correct, not
// tuned).
#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int K7 = 7;
constexpr int KK7 = 49;

// wt[C, 1, kh, kw] -> wT[kh*kw, C], optionally flipped in both spatial dims (for dx).
__global__ void transpose_weights_kernel(const float* __restrict__ w,  // [C, kk]
                                         int64_t C, int kk, int flip,
                                         float* __restrict__ wT) {  // [kk, C]
  int64_t total = C * kk;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = i / C, c = i % C;
    int64_t src_t = flip ? kk - 1 - t : t;
    wT[i] = w[c * kk + src_t];
  }
}

constexpr int FW_ROWS = 8;  // output rows per forward block
constexpr int FW_TW = 8;    // output pixels per forward thread

__device__ __forceinline__ void fma_lane(float& acc, float a, float w) { acc = fmaf(a, w, acc); }
__device__ __forceinline__ void fma_lane(float4& acc, const float4& a, const float4& w) {
  acc.x = fmaf(a.x, w.x, acc.x);
  acc.y = fmaf(a.y, w.y, acc.y);
  acc.z = fmaf(a.z, w.z, acc.z);
  acc.w = fmaf(a.w, w.w, acc.w);
}

// Forward (or dx with flipped weights) over lanes of type V (float, or float4 = 4 channels):
// blockIdx.x = spatial block * lane_blocks + lane block (lane blocks of 32 lanes), spatial block =
// row block (FW_ROWS rows) * wblocks + column block (FW_TW columns); blockIdx.y = image. Sums in the
// order bias, then rows, then taps (as the reference does per output). MINB: blocks per SM asked of the
// register allocator (float4 at 2: 128 registers).
template <typename V, int MINB>
__global__ void __launch_bounds__(32 * FW_ROWS, MINB) dw7_forward_kernel(const V* __restrict__ x,     // [B, H, W, CV]
                                                                      const V* __restrict__ wT,    // [49, CV]
                                                                      const V* __restrict__ bias,  // [CV] or null
                                                                      V* __restrict__ y,           // [B, H, W, CV]
                                                                      int H, int W, int CV, int lane_blocks,
                                                                      int wblocks) {
  const int lb = static_cast<int>(blockIdx.x % lane_blocks);
  const int sp = static_cast<int>(blockIdx.x / lane_blocks);
  const int cv = lb * 32 + static_cast<int>(threadIdx.x);
  const int h = sp / wblocks * FW_ROWS + static_cast<int>(threadIdx.y), w0 = sp % wblocks * FW_TW;
  const int64_t b = blockIdx.y;
  if (cv >= CV || h >= H) return;  // (no barrier in this kernel)
  const V zero{};
  const V bv = bias ? bias[cv] : zero;
  V acc[FW_TW];
#pragma unroll
  for (int o = 0; o < FW_TW; ++o) acc[o] = bv;
  const V* xb = x + b * H * static_cast<int64_t>(W) * CV + cv;
#pragma unroll 1
  for (int i = 0; i < K7; ++i) {
    const int hh = h - 3 + i;
    if (hh < 0 || hh >= H) continue;
    const V* row = xb + static_cast<int64_t>(hh) * W * CV;
    V win[FW_TW + K7 - 1];
#pragma unroll
    for (int j = 0; j < FW_TW + K7 - 1; ++j) {
      const int ww = w0 - 3 + j;
      win[j] = ww >= 0 && ww < W ? __ldg(row + static_cast<int64_t>(ww) * CV) : zero;
    }
#pragma unroll
    for (int j = 0; j < K7; ++j) {
      const V wv = __ldg(wT + static_cast<int64_t>(i * K7 + j) * CV + cv);
#pragma unroll
      for (int o = 0; o < FW_TW; ++o) fma_lane(acc[o], win[o + j], wv);
    }
  }
  V* yr = y + (b * H + h) * static_cast<int64_t>(W) * CV + cv;
#pragma unroll
  for (int o = 0; o < FW_TW; ++o)
    if (w0 + o < W) yr[static_cast<int64_t>(w0 + o) * CV] = acc[o];
}

// Weight gradient: grid.x = P blocks striding over the B * tiles_h * tiles_w tiles, grid.y = ceil(C / 32).
// Thread (lane, ty) accumulates the 49 taps of channel c over tile row ty of its tiles and writes them to
// partial[(blockIdx.x * TH + ty), c * 49 + tap].
template <int TH, int TW>
__global__ void __launch_bounds__(32 * TH) dw7_wgrad_kernel(const float* __restrict__ x,   // [B, H, W, C]
                                                            const float* __restrict__ dy,  // [B, H, W, C]
                                                            int64_t B, int H, int W, int C, int tiles_h,
                                                            int tiles_w,
                                                            float* __restrict__ partial) {  // [P*TH, C*49]
  constexpr int IH = TH + K7 - 1, IW = TW + K7 - 1;
  __shared__ float s_in[IH][IW][32];
  __shared__ float s_dy[TH][TW][32];
  const int lane = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + lane;
  const int c = blockIdx.y * 32 + lane;
  float acc[KK7];
#pragma unroll
  for (int t = 0; t < KK7; ++t) acc[t] = 0.0f;

  const int64_t tiles = B * tiles_h * tiles_w;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int tw = static_cast<int>(tile % tiles_w);
    const int th = static_cast<int>((tile / tiles_w) % tiles_h);
    const int64_t b = tile / (static_cast<int64_t>(tiles_w) * tiles_h);
    const int h0 = th * TH, w0 = tw * TW;
    const int64_t img = b * H * W * static_cast<int64_t>(C);
    __syncthreads();  // the previous tile's shared memory is no longer read
    for (int p = tid >> 5; p < IH * IW; p += TH) {
      int r = p / IW, col = p % IW;
      int hh = h0 - 3 + r, ww = w0 - 3 + col;
      float v = 0.0f;
      if (c < C && hh >= 0 && hh < H && ww >= 0 && ww < W) v = x[img + (static_cast<int64_t>(hh) * W + ww) * C + c];
      s_in[r][col][lane] = v;
    }
    for (int p = tid >> 5; p < TH * TW; p += TH) {
      int r = p / TW, col = p % TW;
      int hh = h0 + r, ww = w0 + col;
      float v = 0.0f;
      if (c < C && hh < H && ww < W) v = dy[img + (static_cast<int64_t>(hh) * W + ww) * C + c];
      s_dy[r][col][lane] = v;
    }
    __syncthreads();
    float d[TW];
#pragma unroll
    for (int o = 0; o < TW; ++o) d[o] = s_dy[ty][o][lane];
#pragma unroll
    for (int i = 0; i < K7; ++i) {
      float v[IW];
#pragma unroll
      for (int j = 0; j < IW; ++j) v[j] = s_in[ty + i][j][lane];
#pragma unroll
      for (int j = 0; j < K7; ++j) {
        float s = acc[i * K7 + j];
#pragma unroll
        for (int o = 0; o < TW; ++o) s = fmaf(d[o], v[o + j], s);
        acc[i * K7 + j] = s;
      }
    }
  }
  if (c < C) {
    float* pr = partial + (static_cast<int64_t>(blockIdx.x) * TH + ty) * (static_cast<int64_t>(C) * KK7) +
                static_cast<int64_t>(c) * KK7;
#pragma unroll
    for (int t = 0; t < KK7; ++t) pr[t] = acc[t];
  }
}

// Any odd kernel: one thread per output element (forward, or dx with flip = 1 and no bias).
__global__ void dw_direct_kernel(const float* __restrict__ x,     // [B, H, W, C]
                                 const float* __restrict__ w,     // [C, 1, kh, kw]
                                 const float* __restrict__ bias,  // [C] or null
                                 float* __restrict__ y,           // [B, H, W, C]
                                 int64_t B, int64_t H, int64_t W, int64_t C, int kh, int kw, int flip) {
  int64_t total = B * H * W * C;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c = e % C, p = e / C;
    int64_t ow = p % W, oh = (p / W) % H, b = p / (W * H);
    float acc = bias ? bias[c] : 0.0f;
    for (int i = 0; i < kh; ++i) {
      int64_t hh = oh - kh / 2 + i;
      if (hh < 0 || hh >= H) continue;
      for (int j = 0; j < kw; ++j) {
        int64_t ww = ow - kw / 2 + j;
        if (ww < 0 || ww >= W) continue;
        int64_t t = flip ? (kh - 1 - i) * kw + (kw - 1 - j) : i * kw + j;
        acc = fmaf(x[((b * H + hh) * W + ww) * C + c], w[c * kh * kw + t], acc);
      }
    }
    y[e] = acc;
  }
}

// Any odd kernel, weight gradient: one block per (channel, tap), summing over every pixel in double.
__global__ void dw_direct_wgrad_kernel(const float* __restrict__ x,   // [B, H, W, C]
                                       const float* __restrict__ dy,  // [B, H, W, C]
                                       int64_t B, int64_t H, int64_t W, int64_t C, int kh, int kw,
                                       float* __restrict__ dw) {  // [C, 1, kh, kw], +=
  __shared__ double red[32];
  int64_t c = blockIdx.x / (kh * kw);
  int t = static_cast<int>(blockIdx.x % (kh * kw)), i = t / kw, j = t % kw;
  double acc = 0;
  int64_t pixels = B * H * W;
  for (int64_t p = threadIdx.x; p < pixels; p += blockDim.x) {
    int64_t ow = p % W, oh = (p / W) % H, b = p / (W * H);
    int64_t hh = oh - kh / 2 + i, ww = ow - kw / 2 + j;
    if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
    acc += static_cast<double>(dy[p * C + c]) * x[((b * H + hh) * W + ww) * C + c];
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) dw[c * kh * kw + t] = static_cast<float>(static_cast<double>(dw[c * kh * kw + t]) + acc);
}

struct Geom {
  int64_t B, H, W, C;
  int kh, kw;
};

Geom geom(const TensorView& x, const TensorView& w) {
  return Geom{x.shape[0], x.shape[1], x.shape[2], x.shape[3], static_cast<int>(w.shape[2]),
              static_cast<int>(w.shape[3])};
}

bool fast7(const Geom& g) {  // the 7x7 kernels index rows and columns with int
  return g.kh == K7 && g.kw == K7 && g.H < (1 << 20) && g.W < (1 << 20) && g.C < (int64_t(1) << 31);
}

bool tiled_ok(const Geom& g) {  // the weight-gradient tiles put ceil(C / 32) in grid.y (at most 65535)
  return g.kh == K7 && g.kw == K7 && g.H < (1 << 20) && g.W < (1 << 20) && g.C <= int64_t(65535) * 32;
}

template <typename V, int MINB>
void launch_forward7(const Geom& g, const float* x, const float* wT, const float* bias, float* y, const char* what) {
  constexpr int per = static_cast<int>(sizeof(V) / sizeof(float));
  const int cv = static_cast<int>(g.C / per), lane_blocks = static_cast<int>(ceil_div(cv, 32));
  const int wblocks = static_cast<int>(ceil_div(g.W, FW_TW));
  const int64_t nx = int64_t(lane_blocks) * wblocks * ceil_div(g.H, FW_ROWS);
  if (nx > 2147483647) throw Error(ErrorKind::range, "dwconv2d: expected fewer than 2^31 blocks for x");
  const int64_t image = g.H * g.W * g.C;
  for (int64_t b0 = 0; b0 < g.B; b0 += 65535) {  // grid.y holds at most 65535 images
    const int64_t nb = g.B - b0 < 65535 ? g.B - b0 : 65535;
    dw7_forward_kernel<V, MINB><<<dim3(static_cast<unsigned>(nx), static_cast<unsigned>(nb)), dim3(32, FW_ROWS), 0,
                                  stream()>>>(
        reinterpret_cast<const V*>(x + b0 * image), reinterpret_cast<const V*>(wT), reinterpret_cast<const V*>(bias),
        reinterpret_cast<V*>(y + b0 * image), static_cast<int>(g.H), static_cast<int>(g.W), cv, lane_blocks, wblocks);
    after_launch(what);
  }
}

// x[B,H,W,C] (or dy for dx), w[C,1,7,7], bias[C]?, y[B,H,W,C]; flip: dx.
void forward7(const Geom& g, const float* x, const float* w, const float* bias, float* y, bool flip, const char* what) {
  Scratch wT(static_cast<size_t>(g.C) * KK7 * sizeof(float));
  transpose_weights_kernel<<<grid_for(g.C * KK7, 256), 256, 0, stream()>>>(w, g.C, KK7, flip ? 1 : 0, wT.as<float>());
  after_launch(what);
  auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (g.C % 4 == 0 && aligned(x) && aligned(y) && aligned(wT.as<float>()) && (!bias || aligned(bias)))
    launch_forward7<float4, 2>(g, x, wT.as<float>(), bias, y, what);
  else
    launch_forward7<float, 3>(g, x, wT.as<float>(), bias, y, what);
}

template <int TH, int TW>
void launch_wgrad7(const Geom& g, const float* x, const float* dy, float* dw) {
  int tiles_h = static_cast<int>(ceil_div(g.H, TH)), tiles_w = static_cast<int>(ceil_div(g.W, TW));
  int64_t tiles = g.B * tiles_h * tiles_w;
  int64_t cgroups = ceil_div(g.C, 32);
  int64_t P = ceil_div(static_cast<int64_t>(sm_count()) * 4, cgroups);
  if (P > tiles) P = tiles;
  if (P < 1) P = 1;
  Scratch partial(static_cast<size_t>(P * TH) * static_cast<size_t>(g.C) * KK7 * sizeof(float));
  dim3 grid(static_cast<unsigned>(P), static_cast<unsigned>(cgroups));
  dw7_wgrad_kernel<TH, TW><<<grid, dim3(32, TH), 0, stream()>>>(x, dy, g.B, static_cast<int>(g.H),
                                                                 static_cast<int>(g.W), static_cast<int>(g.C), tiles_h,
                                                                 tiles_w, partial.as<float>());
  after_launch("dwconv2d backward (dw)");
  add_partials(partial.as<float>(), P * TH, g.C * KK7, dw);
}

void dwconv2d_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &w = a.in[1], &b = a.in[2], &y = a.out[0];  // x,y [B,H,W,C] w[C,1,kh,kw] b[C]?
  Geom g = geom(x, w);
  if (x.numel() == 0) return;
  if (fast7(g)) {
    forward7(g, x.f(), w.f(), b.present() ? b.f() : nullptr, y.f(), false, "dwconv2d forward");
  } else {
    dw_direct_kernel<<<grid_for(x.numel(), 256), 256, 0, stream()>>>(x.f(), w.f(), b.present() ? b.f() : nullptr,
                                                                     y.f(), g.B, g.H, g.W, g.C, g.kh, g.kw, 0);
    after_launch("dwconv2d forward");
  }
}

void dwconv2d_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &w = a.in[2];  // dy, x [B,H,W,C] w[C,1,kh,kw]
  const TensorView &dx = a.out[0], &dw = a.out[1], &db = a.out[2];  // dx [B,H,W,C]? dw[C,1,kh,kw]? db[C]?
  Geom g = geom(x, w);
  if (x.numel() == 0) return;
  if (dx.present()) {
    if (fast7(g)) {
      forward7(g, dy.f(), w.f(), nullptr, dx.f(), true, "dwconv2d backward (dx)");
    } else {
      dw_direct_kernel<<<grid_for(x.numel(), 256), 256, 0, stream()>>>(dy.f(), w.f(), nullptr, dx.f(), g.B, g.H, g.W,
                                                                       g.C, g.kh, g.kw, 1);
      after_launch("dwconv2d backward (dx)");
    }
  }
  if (dw.present()) {
    if (tiled_ok(g)) {
      if (g.H % 7 == 0 && g.W % 7 == 0) launch_wgrad7<7, 7>(g, x.f(), dy.f(), dw.f());
      else launch_wgrad7<8, 8>(g, x.f(), dy.f(), dw.f());
    } else {
      int64_t blocks = g.C * g.kh * g.kw;
      if (blocks > 2147483647) throw Error(ErrorKind::range, "dwconv2d: expected fewer than 2^31 weights for w");
      dw_direct_wgrad_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream()>>>(x.f(), dy.f(), g.B, g.H, g.W, g.C,
                                                                                 g.kh, g.kw, dw.f());
      after_launch("dwconv2d backward (dw)");
    }
  }
  if (db.present()) colsum_add(dy.f(), nullptr, g.B * g.H * g.W, g.C, db.f());
}

}  // namespace

}  // namespace mf::cuda

MF_REGISTER(cuda, dwconv2d, mf::cuda::dwconv2d_fwd, mf::cuda::dwconv2d_bwd);
