/** Argument checks shared by the differentiable ops (one message style, see tensor.ts). */
import { expectation, expectationText, Tensor } from '../../tensor.js';

export interface TensorRule {
  rank?: number;
  minRank?: number;
  /** exact shape; -1 matches any size */
  shape?: readonly number[];
}

export function expectTensor(op: string, name: string, t: unknown, rule: TensorRule = {}): Tensor {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${expectation('a Tensor', name, t)}`);
  if (t.disposed) throw new TypeError(`${op}: ${expectationText('a live tensor', name, 'a disposed tensor')}`);
  if (t.dtype !== 'float32' && t.dtype !== 'float64') {
    throw new TypeError(`${op}: ${expectation('a float32 tensor', name, t)}`);
  }
  if (rule.rank !== undefined && t.ndim !== rule.rank) {
    throw new RangeError(`${op}: ${expectation(`a tensor of rank ${rule.rank}`, name, t)}`);
  }
  if (rule.minRank !== undefined && t.ndim < rule.minRank) {
    throw new RangeError(`${op}: ${expectation(`a tensor of rank >= ${rule.minRank}`, name, t)}`);
  }
  if (rule.shape) {
    const ok = t.ndim === rule.shape.length && rule.shape.every((d, i) => d === -1 || d === t.shape[i]);
    if (!ok) {
      const want = `[${rule.shape.map((d) => (d === -1 ? '*' : String(d))).join(', ')}]`;
      throw new RangeError(`${op}: ${expectation(`shape ${want}`, name, t)}`);
    }
  }
  return t;
}

export function optTensor(op: string, name: string, t: unknown, rule: TensorRule = {}): Tensor | null {
  return t === null || t === undefined ? null : expectTensor(op, name, t, rule);
}

export function expectNumber(op: string, name: string, v: unknown, lo = -Infinity, hi = Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) {
    const range = lo === -Infinity && hi === Infinity ? 'a finite number' : `a number in [${lo}, ${hi}]`;
    throw new RangeError(`${op}: ${expectation(range, name, v)}`);
  }
  return v;
}

export function expectInt(op: string, name: string, v: unknown, lo = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo) {
    throw new RangeError(`${op}: ${expectation(`an integer >= ${lo}`, name, v)}`);
  }
  return v;
}

export function sameShape(op: string, name: string, t: Tensor, like: Tensor): void {
  if (t.shape.length !== like.shape.length || t.shape.some((d, i) => d !== like.shape[i])) {
    throw new RangeError(`${op}: ${expectation(`shape [${like.shape.join(', ')}]`, name, t)}`);
  }
}
