/** dwconv2d: depthwise convolution, channels-last, stride 1, padding k/2 (SepConv.dwconv, weight [C, 1, k, k]). */
import { runOp } from '../../backend.js';
import { Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectTensor, optTensor } from './common.js';
import { expectation } from '../../tensor.js';

class DwConvNode extends Node {
  private readonly x: Tensor;
  private readonly w: Tensor;
  constructor(x: Tensor, w: Tensor) {
    super('dwconv2d');
    this.x = this.save(x);
    this.w = this.save(w);
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), dw = ctx.paramGrad(1), db = ctx.paramGrad(2);
    runOp('dwconv2d', 1, ['grad', 'x', 'weight'], [gy, this.x, this.w], [dx, dw, db]);
    return [dx, ctx.paramResult(1, dw), ctx.paramResult(2, db)];
  }
}

export function dwconv2d(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  const op = 'dwconv2d';
  expectTensor(op, 'x', x, { rank: 4 });
  const c = x.shape[3]!;
  expectTensor(op, 'weight', weight, { shape: [c, 1, -1, -1] });
  if (weight.shape[2]! % 2 === 0 || weight.shape[3]! % 2 === 0) {
    throw new RangeError(`${op}: ${expectation('an odd kernel size', 'weight', weight)}`);
  }
  optTensor(op, 'bias', bias, { shape: [c] });
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x', 'weight', 'bias'], [x, weight, bias], [y]);
  return record(y, [x, weight, bias], () => new DwConvNode(x, weight));
}
