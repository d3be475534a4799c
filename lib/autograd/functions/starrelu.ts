/**
 * starRelu: y = s * relu(x)^2 + b with learnable 1-element s and b (StarReLU);
 * squaredRelu: y = relu(x)^2 (the MlpHead activation).
 */
import { runOp } from '../../backend.js';
import { Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectTensor, optTensor } from './common.js';

class StarReluNode extends Node {
  private readonly x: Tensor;
  private readonly s: Tensor | null;
  constructor(x: Tensor, s: Tensor | null) {
    super('starrelu');
    this.x = this.save(x);
    this.s = s ? this.save(s) : null;
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), ds = ctx.paramGrad(1), db = ctx.paramGrad(2);
    runOp('starrelu', 1, ['grad', 'x', 'scale'], [gy, this.x, this.s], [dx, ds, db]);
    return [dx, ctx.paramResult(1, ds), ctx.paramResult(2, db)];
  }
}

export function starRelu(x: Tensor, scale: Tensor | null, bias: Tensor | null): Tensor {
  const op = 'starrelu';
  expectTensor(op, 'x', x);
  optTensor(op, 'scale', scale, { shape: [1] });
  optTensor(op, 'bias', bias, { shape: [1] });
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x', 'scale', 'bias'], [x, scale, bias], [y]);
  return record(y, [x, scale, bias], () => new StarReluNode(x, scale));
}

export function squaredRelu(x: Tensor): Tensor {
  return starRelu(x, null, null);
}
