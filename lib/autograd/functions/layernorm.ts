/**
 * layerNorm: normalisation with a per-channel affine.
 *   over: 'c'   - over the last dimension (LayerNorm / LayerNormWithoutBias)
 *   over: 'hwc' - over everything but the batch dimension (the "modified LayerNorm" of
 *                 IdentityFormer / RandFormer / PoolFormerV2: LayerNormGeneral(normalized_dim=(1,2,3)))
 */
import { runOp } from '../../backend.js';
import { expectation, keep, Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectNumber, expectTensor, optTensor } from './common.js';

export interface LayerNormOptions {
  eps?: number;
  over?: 'c' | 'hwc';
}

class LayerNormNode extends Node {
  private readonly x: Tensor;
  private readonly w: Tensor | null;
  constructor(x: Tensor, w: Tensor | null, private readonly mean: Tensor, private readonly rstd: Tensor,
    private readonly attrs: number[]) {
    super('layernorm');
    this.x = this.save(x);
    this.w = w ? this.save(w) : null;
    this.saved.push(keep(mean), keep(rstd));
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), dw = ctx.paramGrad(1), db = ctx.paramGrad(2);
    runOp('layernorm', 1, ['grad', 'x', 'weight', 'mean', 'rstd'], [gy, this.x, this.w, this.mean, this.rstd],
      [dx, dw, db], this.attrs);
    return [dx, ctx.paramResult(1, dw), ctx.paramResult(2, db)];
  }
}

export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, opts: LayerNormOptions = {}): Tensor {
  const op = 'layernorm';
  const eps = expectNumber(op, 'eps', opts.eps ?? 1e-5, 0);
  const over = opts.over ?? 'c';
  if (over !== 'c' && over !== 'hwc') throw new TypeError(`${op}: ${expectation("'c' or 'hwc'", 'over', over)}`);
  expectTensor(op, 'x', x, { minRank: over === 'c' ? 1 : 2 });
  const c = x.shape[x.ndim - 1]!;
  optTensor(op, 'weight', weight, { shape: [c] });
  optTensor(op, 'bias', bias, { shape: [c] });
  const group = over === 'c' ? c : x.numel / x.shape[0]!;
  const rows = group === 0 ? 0 : x.numel / group;
  const attrs = [eps, Math.max(group, 1)];
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  const mean = Tensor.empty([rows], x.dtype, x.device), rstd = Tensor.empty([rows], x.dtype, x.device);
  runOp(op, 0, ['x', 'weight', 'bias'], [x, weight, bias], [y, mean, rstd], attrs);
  let recorded = false;
  record(y, [x, weight, bias], () => {
    recorded = true;
    return new LayerNormNode(x, weight, mean, rstd, attrs);
  });
  if (!recorded) {
    mean.dispose();
    rstd.dispose();
  }
  return y;
}
