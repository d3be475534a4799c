// cuda/mixing.cu: RandomMixing, a fixed token-mixing matrix, through the batched GEMMs of blas.h.
//   forward:  y[b] = r x[b]            (x[b], y[b]: [N, C]; r: [N, N]; one strided-batched GEMM, r shared)
//   backward: dx[b] = r^T dy[b];  dr += sum_b dy[b] x[b]^T  (per-sample products into a scratch [bs, N, N],
//             then summed in fixed order into dr; batches are chunked to bound the scratch)
#include "blas.h"
#include "cuda_common.h"

namespace mf::cuda {
namespace {

constexpr int64_t kScratchFloats = int64_t(64) << 20;  // 256 MiB of per-sample dr products at most

void random_mixing_fwd(const OpArgs& a) {
  const TensorView &x = a.in[0], &r = a.in[1], &y = a.out[0];  // x, y [B, N, C]; r [N, N]
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  gemm_batched("random_mixing", false, false, N, C, N, 1.0f, r.f(), N, 0, x.f(), C, N * C, 0.0f, y.f(), C, N * C, B);
}

void random_mixing_bwd(const OpArgs& a) {
  const TensorView &dy = a.in[0], &x = a.in[1], &r = a.in[2];  // dy, x [B, N, C]; r [N, N]
  const TensorView &dx = a.out[0], &dr = a.out[1];             // dx [B, N, C]?; dr [N, N]?
  int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  if (dx.present())
    gemm_batched("random_mixing", true, false, N, C, N, 1.0f, r.f(), N, 0, dy.f(), C, N * C, 0.0f, dx.f(), C, N * C, B);
  if (dr.present() && B > 0 && N > 0) {
    int64_t per = N * N;
    int64_t bs = kScratchFloats / per;
    if (bs < 1) bs = 1;
    if (bs > B) bs = B;
    Scratch prod(static_cast<size_t>(bs * per) * sizeof(float));
    for (int64_t b0 = 0; b0 < B; b0 += bs) {
      int64_t nb = B - b0 < bs ? B - b0 : bs;
      gemm_batched("random_mixing", false, true, N, N, C, 1.0f, dy.f() + b0 * N * C, C, N * C, x.f() + b0 * N * C, C,
                   N * C, 0.0f, prod.as<float>(), N, per, nb);
      add_partials(prod.as<float>(), nb, per, dr.f());
    }
  }
}

}  // namespace
}  // namespace mf::cuda

MF_REGISTER(cuda, random_mixing, mf::cuda::random_mixing_fwd, mf::cuda::random_mixing_bwd);
