/**
 * Residual-stream and head helpers:
 *   scaleAdd(x, s?, r?) = x * s + r   (s [C] broadcast over the last dim: res_scale / layer_scale)
 *   add(a, b) = a + b
 *   meanHW(x [B, ..., C]) -> [B, C], the mean over every middle dimension (global average pooling)
 *   dropout(x, p) / dropPath(x, p): training-time regularisers with a seeded, replayable mask
 *   reshape(x, shape), permute(x, perm)
 */
import { runOp } from '../../backend.js';
import { expectation, expectationText, Tensor } from '../../tensor.js';
import { nextSeed } from '../../random.js';
import { type GradContext, type GradResult, Node, record } from '../node.js';
import { expectNumber, expectTensor, optTensor, sameShape } from './common.js';
import { numelOf } from '../../dtype.js';

class ScaleAddNode extends Node {
  private readonly x: Tensor;
  private readonly s: Tensor | null;
  constructor(x: Tensor, s: Tensor | null) {
    super('scale_add');
    this.x = this.save(x);
    this.s = s ? this.save(s) : null;
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0), ds = ctx.paramGrad(1), dr = ctx.actGrad(2);
    runOp('scale_add', 1, ['grad', 'x', 'scale'], [gy, this.x, this.s], [dx, ds, dr]);
    return [dx, ctx.paramResult(1, ds), dr];
  }
}

export function scaleAdd(x: Tensor, scale: Tensor | null, residual: Tensor | null): Tensor {
  const op = 'scale_add';
  expectTensor(op, 'x', x, { minRank: 1 });
  optTensor(op, 'scale', scale, { shape: [x.shape[x.ndim - 1]!] });
  if (optTensor(op, 'residual', residual)) sameShape(op, 'residual', residual!, x);
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x', 'scale', 'residual'], [x, scale, residual], [y]);
  return record(y, [x, scale, residual], () => new ScaleAddNode(x, scale));
}

export function add(a: Tensor, b: Tensor): Tensor {
  return scaleAdd(a, null, b);
}

class MeanHWNode extends Node {
  constructor(private readonly xShape: readonly number[]) {
    super('mean_hw');
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0);
    if (dx) runOp('mean_hw', 1, ['grad'], [gy], [dx]);
    return [dx];
  }
}

export function meanHW(x: Tensor): Tensor {
  const op = 'mean_hw';
  expectTensor(op, 'x', x, { minRank: 3 });
  const y = Tensor.empty([x.shape[0]!, x.shape[x.ndim - 1]!], x.dtype, x.device);
  runOp(op, 0, ['x'], [x], [y]);
  return record(y, [x], () => new MeanHWNode(x.shape));
}

class DropoutNode extends Node {
  constructor(private readonly attrs: number[]) {
    super('dropout');
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0);
    if (dx) runOp('dropout', 1, ['grad'], [gy], [dx], this.attrs);
    return [dx];
  }
}

/**
 * Zeroes groups of `group` consecutive elements with probability p and scales the rest by 1 / (1 - p).
 * The mask comes from (seed, offset); by default the seed is drawn from the global generator.
 */
export function dropoutGroups(x: Tensor, p: number, group: number, seed?: number): Tensor {
  const op = 'dropout';
  expectTensor(op, 'x', x);
  expectNumber(op, 'p', p, 0, 0.999999);
  if (p === 0) return x;
  const attrs = [p, group, seed ?? nextSeed(), 0];
  const y = Tensor.empty(x.shape, x.dtype, x.device);
  runOp(op, 0, ['x'], [x], [y], attrs);
  return record(y, [x], () => new DropoutNode(attrs));
}

/** Standard dropout (each element independently). */
export function dropout(x: Tensor, p: number, seed?: number): Tensor {
  return dropoutGroups(x, p, 1, seed);
}

/** Drop path / stochastic depth: drops whole samples (dimension 0). */
export function dropPath(x: Tensor, p: number, seed?: number): Tensor {
  return dropoutGroups(x, p, Math.max(1, x.numel / Math.max(1, x.shape[0] ?? 1)), seed);
}

class ReshapeNode extends Node {
  constructor(private readonly from: readonly number[]) {
    super('reshape');
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    return [ctx.needs(0) ? gy._share(this.from) : null];
  }
}

/** Same memory, another shape (one dimension may be -1). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const op = 'reshape';
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: ${expectation('a Tensor', 'x', x)}`);
  const s = [...shape];
  const free = s.indexOf(-1);
  if (free >= 0) {
    const rest = numelOf(s.filter((_, i) => i !== free));
    if (rest === 0 || x.numel % rest !== 0) throw new RangeError(`${op}: ${expectationText(`a shape compatible with ${x.numel} elements`, 'shape', `[${s.join(', ')}]`)}`);
    s[free] = x.numel / rest;
  }
  if (numelOf(s) !== x.numel || s.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new RangeError(`${op}: ${expectationText(`a shape with ${x.numel} elements`, 'shape', `[${shape.join(', ')}]`)}`);
  }
  const y = x._share(s);
  return record(y, [x], () => new ReshapeNode(x.shape));
}

class PermuteNode extends Node {
  constructor(private readonly inverse: number[]) {
    super('permute');
  }
  backward(gy: Tensor, ctx: GradContext): GradResult[] {
    const dx = ctx.actGrad(0);
    if (dx) runOp('permute', 0, ['grad'], [gy], [dx], this.inverse);
    return [dx];
  }
}

/** A permuted copy: y.shape[i] = x.shape[perm[i]]. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  const op = 'permute';
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: ${expectation('a Tensor', 'x', x)}`);
  const ok = perm.length === x.ndim && [...perm].sort((a, b) => a - b).every((v, i) => v === i);
  if (!ok) throw new RangeError(`${op}: ${expectationText(`a permutation of ${x.ndim} dimensions`, 'perm', `[${perm.join(', ')}]`)}`);
  const y = Tensor.empty(perm.map((p) => x.shape[p]!), x.dtype, x.device);
  runOp(op, 0, ['x'], [x], [y], [...perm]);
  const inverse = new Array<number>(perm.length);
  perm.forEach((p, i) => (inverse[p] = i));
  return record(y, [x], () => new PermuteNode(inverse));
}
