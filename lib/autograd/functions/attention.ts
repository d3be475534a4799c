/**
 * attentionCore: multi-head scaled dot-product self-attention on a packed qkv projection
 * [B, N, 3A] (channels ordered q|k|v, head, head_dim) -> [B, N, A]; softmax(scale q k^T) v per head.
 * The backward recomputes the probabilities from the saved row log-sum-exp (no N x N tensor is kept).
 */
import { runOp } from '../../backend.js';
import { keep, Tensor, expectation } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectInt, expectNumber, expectTensor } from './common.js';

export interface AttentionOptions {
  headDim?: number;
  scale?: number;
}

class AttentionNode extends Node {
  private readonly qkv: Tensor;
  private readonly o: Tensor;
  constructor(qkv: Tensor, o: Tensor, private readonly lse: Tensor, private readonly attrs: number[]) {
    super('attention');
    this.qkv = this.save(qkv);
    this.o = this.save(o);
    this.saved.push(keep(lse));
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dqkv = ctx.actGrad(0);
    if (dqkv) runOp('attention', 1, ['grad', 'qkv', 'o', 'lse'], [gy, this.qkv, this.o, this.lse], [dqkv], this.attrs);
    return [dqkv];
  }
}

export function attentionCore(qkv: Tensor, opts: AttentionOptions = {}): Tensor {
  const op = 'attention';
  const headDim = expectInt(op, 'headDim', opts.headDim ?? 32, 1);
  const scale = expectNumber(op, 'scale', opts.scale ?? headDim ** -0.5);
  expectTensor(op, 'qkv', qkv, { rank: 3 });
  const c3 = qkv.shape[2]!;
  if (c3 === 0 || c3 % (3 * headDim) !== 0) {
    throw new RangeError(`${op}: ${expectation(`a last dimension that is a multiple of ${3 * headDim}`, 'qkv', qkv)}`);
  }
  const [b, n] = qkv.shape as [number, number, number];
  const a = c3 / 3, heads = a / headDim;
  const attrs = [headDim, scale];
  const o = Tensor.empty([b, n, a], qkv.dtype, qkv.device);
  const lse = Tensor.empty([b, heads, n], qkv.dtype, qkv.device);
  runOp(op, 0, ['qkv'], [qkv], [o, lse], attrs);
  let recorded = false;
  record(o, [qkv], () => {
    recorded = true;
    return new AttentionNode(qkv, o, lse, attrs);
  });
  if (!recorded) lse.dispose();
  return o;
}
