/** linear: y = x w^T + b over the last dimension (nn.Linear; weight [out, in]). */
import { runOp } from '../../backend.js';
import { Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectTensor, optTensor } from './common.js';

class LinearNode extends Node {
  private readonly x: Tensor;
  private readonly w: Tensor;
  constructor(x: Tensor, w: Tensor) {
    super('linear');
    this.x = this.save(x);
    this.w = this.save(w);
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), dw = ctx.paramGrad(1), db = ctx.paramGrad(2);
    runOp('linear', 1, ['grad', 'x', 'weight'], [gy, this.x, this.w], [dx, dw, db]);
    return [dx, ctx.paramResult(1, dw), ctx.paramResult(2, db)];
  }
}

export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  const op = 'linear';
  expectTensor(op, 'x', x, { minRank: 1 });
  expectTensor(op, 'weight', weight, { shape: [-1, x.shape[x.ndim - 1]!] });
  optTensor(op, 'bias', bias, { shape: [weight.shape[0]!] });
  const y = Tensor.empty([...x.shape.slice(0, -1), weight.shape[0]!], x.dtype, x.device);
  runOp(op, 0, ['x', 'weight', 'bias'], [x, weight, bias], [y]);
  return record(y, [x, weight, bias], () => new LinearNode(x, weight));
}
