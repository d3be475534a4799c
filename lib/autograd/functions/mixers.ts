/**
 * The parameter-free and fixed-matrix token mixers:
 *   randomMixing(x [B, N, C], r [N, N]):  y[b, m] = sum_n r[m, n] x[b, n]   (RandomMixing)
 *   poolMixer(x [B, H, W, C]):            avgpool3x3(x, count_include_pad=False) - x   (Pooling)
 */
import { runOp } from '../../backend.js';
import { Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectTensor } from './common.js';

class RandomMixingNode extends Node {
  private readonly x: Tensor;
  private readonly r: Tensor;
  constructor(x: Tensor, r: Tensor) {
    super('random_mixing');
    this.x = this.save(x);
    this.r = this.save(r);
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), dr = ctx.paramGrad(1);
    runOp('random_mixing', 1, ['grad', 'x', 'random_matrix'], [gy, this.x, this.r], [dx, dr]);
    return [dx, ctx.paramResult(1, dr)];
  }
}

export function randomMixing(x: Tensor, matrix: Tensor): Tensor {
  const op = 'random_mixing';
  expectTensor(op, 'x', x, { rank: 3 });
  const n = x.shape[1]!;
  expectTensor(op, 'random_matrix', matrix, { shape: [n, n] });
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x', 'random_matrix'], [x, matrix], [y]);
  return record(y, [x, matrix], () => new RandomMixingNode(x, matrix));
}

class PoolNode extends Node {
  constructor() {
    super('pool');
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0);
    if (dx) runOp('pool', 1, ['grad'], [gy], [dx]);
    return [dx];
  }
}

export function poolMixer(x: Tensor): Tensor {
  const op = 'pool';
  expectTensor(op, 'x', x, { rank: 4 });
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x'], [x], [y]);
  return record(y, [x], () => new PoolNode());
}
