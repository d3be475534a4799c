/**
 * crossEntropy: mean softmax cross-entropy, as F.cross_entropy(logits, target, label_smoothing=ls).
 * target: class ids (int32/int64 Tensor, Int32Array or number[]) of length B, or a float [B, K] tensor
 * of target probabilities (mixup / cutmix soft targets; label smoothing then belongs in the targets).
 */
import { runOp } from '../../backend.js';
import { type Device, expectation, expectationText, Tensor } from '../../tensor.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectNumber, expectTensor } from './common.js';

export interface CrossEntropyOptions {
  labelSmoothing?: number;
}

class CrossEntropyNode extends Node {
  private readonly logits: Tensor;
  private readonly target: Tensor;
  constructor(logits: Tensor, target: Tensor, private readonly attrs: number[]) {
    super('cross_entropy');
    this.logits = this.save(logits);
    this.target = this.save(target);
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dz = ctx.actGrad(0);
    if (dz) runOp('cross_entropy', 1, ['grad', 'logits', 'target'], [gy, this.logits, this.target], [dz], this.attrs);
    return [dz];
  }
}

function toTarget(op: string, target: unknown, b: number, k: number, device: Device): { t: Tensor; owned: boolean } {
  if (target instanceof Tensor) {
    if (target.disposed) throw new TypeError(`${op}: ${expectationText('a live tensor', 'target', 'a disposed tensor')}`);
    if (target.dtype === 'int32' || target.dtype === 'int64') {
      if (target.ndim !== 1 || target.shape[0] !== b) throw new RangeError(`${op}: ${expectation(`${b} class ids`, 'target', target)}`);
      return { t: target, owned: false };
    }
    expectTensor(op, 'target', target, { shape: [b, k] });
    return { t: target, owned: false };
  }
  if (Array.isArray(target) || target instanceof Int32Array) {
    const ids = target as ArrayLike<number>;
    if (ids.length !== b) throw new RangeError(`${op}: ${expectation(`${b} class ids`, 'target', target)}`);
    for (let i = 0; i < ids.length; ++i) {
      const v = ids[i]!;
      if (!Number.isInteger(v) || v < 0 || v >= k) throw new RangeError(`${op}: ${expectationText(`class ids in [0, ${k})`, 'target', `${v} at index ${i}`)}`);
    }
    const host = Tensor.from(Int32Array.from(ids), [b]);
    if (device === 'cpu') return { t: host, owned: true };
    const t = host.to(device);  // the ids go where the logits are
    host.dispose();
    return { t, owned: true };
  }
  throw new TypeError(`${op}: ${expectation('class ids or a [B, K] probability tensor', 'target', target)}`);
}

export function crossEntropy(logits: Tensor, target: Tensor | Int32Array | readonly number[], opts: CrossEntropyOptions = {}): Tensor {
  const op = 'cross_entropy';
  expectTensor(op, 'logits', logits, { rank: 2 });
  const [b, k] = logits.shape as [number, number];
  if (b === 0 || k === 0) throw new RangeError(`${op}: ${expectation('a non-empty batch', 'logits', logits)}`);
  const ls = expectNumber(op, 'labelSmoothing', opts.labelSmoothing ?? 0, 0, 0.999999);
  const { t, owned } = toTarget(op, target, b, k, logits.device);
  const attrs = [ls];
  const loss = Tensor.empty([], logits.dtype, logits.device);
  try {
    runOp(op, 0, ['logits', 'target'], [logits, t], [loss], attrs);
    record(loss, [logits], () => new CrossEntropyNode(logits, t, attrs));
  } finally {
    if (owned) t.dispose();
  }
  return loss;
}
