/**
 * conv2d: dense convolution for the stem and downsampling layers (nn.Conv2d, weight [Co, Ci, kh, kw]).
 * The input is NCHW (`inputLayout: 'nchw'`, the image) or channels-last; the output is channels-last
 * [B, Ho, Wo, Co] with Ho = floor((H + 2p - kh) / s) + 1.
 */
import { runOp } from '../../backend.js';
import { expectation, Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectInt, expectTensor, optTensor } from './common.js';

export interface Conv2dOptions {
  stride?: number;
  padding?: number;
  inputLayout?: 'nchw' | 'nhwc';
}

class Conv2dNode extends Node {
  private readonly x: Tensor;
  private readonly w: Tensor;
  constructor(x: Tensor, w: Tensor, private readonly attrs: number[]) {
    super('conv2d');
    this.x = this.save(x);
    this.w = this.save(w);
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), dw = ctx.paramGrad(1), db = ctx.paramGrad(2);
    runOp('conv2d', 1, ['grad', 'x', 'weight'], [gy, this.x, this.w], [dx, dw, db], this.attrs);
    return [dx, ctx.paramResult(1, dw), ctx.paramResult(2, db)];
  }
}

export function conv2dOutputSize(size: number, kernel: number, stride: number, padding: number): number {
  return Math.floor((size + 2 * padding - kernel) / stride) + 1;
}

export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  const op = 'conv2d';
  const stride = expectInt(op, 'stride', opts.stride ?? 1, 1);
  const padding = expectInt(op, 'padding', opts.padding ?? 0, 0);
  const layout = opts.inputLayout ?? 'nhwc';
  if (layout !== 'nchw' && layout !== 'nhwc') throw new TypeError(`${op}: ${expectation("'nchw' or 'nhwc'", 'inputLayout', layout)}`);
  const nchw = layout === 'nchw';
  expectTensor(op, 'x', x, { rank: 4 });
  const ci = nchw ? x.shape[1]! : x.shape[3]!;
  expectTensor(op, 'weight', weight, { shape: [-1, ci, -1, -1] });
  const [co, , kh, kw] = weight.shape as [number, number, number, number];
  optTensor(op, 'bias', bias, { shape: [co] });
  const h = nchw ? x.shape[2]! : x.shape[1]!, w = nchw ? x.shape[3]! : x.shape[2]!;
  const ho = conv2dOutputSize(h, kh, stride, padding), wo = conv2dOutputSize(w, kw, stride, padding);
  if (ho < 1 || wo < 1) {
    throw new RangeError(`${op}: ${expectation(`an input of at least ${kh}x${kw} after padding`, 'x', x)}`);
  }
  const y = Tensor.empty([x.shape[0]!, ho, wo, co], x.dtype, x.device);
  const attrs = [stride, padding, nchw ? 1 : 0];
  runOp(op, 0, ['x', 'weight', 'bias'], [x, weight, bias], [y], attrs);
  return record(y, [x, weight, bias], () => new Conv2dNode(x, weight, attrs));
}
