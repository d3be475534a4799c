/**
 * Finite-difference gradient checks in float64 on tiny shapes, through the reference backend: for
 * L = sum(g * f(inputs)) with a random g, every analytic gradient from backward() must match the
 * central difference (L(x + h) - L(x - h)) / 2h for every element of every input.
 */
import { describe, expect, it } from 'vitest';
import { withBackend } from '../../lib/backend.js';
import * as ops from '../../lib/ops.js';
import { Tensor, tidy } from '../../lib/tensor.js';
import { randomTensor, relL2 } from '../helpers/tensors.js';

let seed = 100;
const r64 = (shape: number[], scale = 1): Tensor => randomTensor(shape, seed++, scale, 'float64');

function loss(y: Tensor, g: Tensor): number {
  const a = y.toFloat64Array(), b = g.toFloat64Array();
  let s = 0;
  for (let i = 0; i < a.length; ++i) s += a[i]! * b[i]!;
  return s;
}

/** Max relative L2 error between analytic and numeric gradients over all inputs. */
function gradcheck(f: (...xs: Tensor[]) => Tensor, inputs: Tensor[], h = 1e-6): number[] {
  return withBackend('ref', () => tidy(() => {
    for (const x of inputs) {
      x.requiresGrad = true;
      x.grad = null;
    }
    const y = f(...inputs);
    const g = r64([...y.shape]);
    y.backward(g);
    return inputs.map((x) => {
      const analytic = x.grad!.toFloat64Array();
      const v = x.view<'float64'>();
      const numeric = new Float64Array(v.length);
      for (let i = 0; i < v.length; ++i) {
        const old = v[i]!;
        v[i] = old + h;
        const lp = loss(f(...inputs), g);
        v[i] = old - h;
        const lm = loss(f(...inputs), g);
        v[i] = old;
        numeric[i] = (lp - lm) / (2 * h);
      }
      return relL2(analytic, numeric);
    });
  }));
}

const TOL = 1e-6;
const cases: [string, () => number[]][] = [
  ['linear with bias', () => gradcheck((x, w, b) => ops.linear(x, w, b), [r64([3, 4]), r64([5, 4]), r64([5])])],
  ['linear on a rank-3 input', () => gradcheck((x, w) => ops.linear(x, w), [r64([2, 3, 4]), r64([3, 4])])],
  ['conv2d stem (NCHW in) k5 s3 p2', () => gradcheck((x, w, b) => ops.conv2d(x, w, b, { stride: 3, padding: 2, inputLayout: 'nchw' }),
    [r64([1, 2, 7, 6]), r64([3, 2, 5, 5]), r64([3])])],
  ['conv2d downsampling (NHWC in) k3 s2 p1', () => gradcheck((x, w, b) => ops.conv2d(x, w, b, { stride: 2, padding: 1 }),
    [r64([2, 5, 4, 3]), r64([4, 3, 3, 3]), r64([4])])],
  ['dwconv2d k7 on a 3x2 map', () => gradcheck((x, w, b) => ops.dwconv2d(x, w, b), [r64([2, 3, 2, 3]), r64([3, 1, 7, 7]), r64([3])])],
  ['dwconv2d k3', () => gradcheck((x, w) => ops.dwconv2d(x, w), [r64([1, 4, 5, 2]), r64([2, 1, 3, 3])])],
  ['layerNorm over c with weight and bias', () => gradcheck((x, w, b) => ops.layerNorm(x, w, b, { eps: 1e-6, over: 'c' }),
    [r64([2, 3, 2, 5]), r64([5]), r64([5])])],
  ['layerNorm over hwc with weight', () => gradcheck((x, w) => ops.layerNorm(x, w, null, { eps: 1e-6, over: 'hwc' }),
    [r64([2, 3, 2, 4]), r64([4])])],
  ['starRelu', () => gradcheck((x, s, b) => ops.starRelu(x, s, b), [r64([3, 7]), r64([1]), r64([1])])],
  ['squaredRelu', () => gradcheck((x) => ops.squaredRelu(x), [r64([4, 5])])],
  ['attentionCore, 2 heads of 4', () => gradcheck((qkv) => ops.attentionCore(qkv, { headDim: 4 }), [r64([2, 5, 24])])],
  ['randomMixing', () => gradcheck((x, m) => ops.randomMixing(x, m), [r64([2, 4, 3]), r64([4, 4])])],
  ['poolMixer', () => gradcheck((x) => ops.poolMixer(x), [r64([1, 3, 4, 2])])],
  ['scaleAdd', () => gradcheck((x, s, r) => ops.scaleAdd(x, s, r), [r64([3, 4]), r64([4]), r64([3, 4])])],
  ['meanHW', () => gradcheck((x) => ops.meanHW(x), [r64([2, 3, 2, 4])])],
  ['crossEntropy with label smoothing', () => gradcheck((z) => ops.crossEntropy(z, [2, 0, 4], { labelSmoothing: 0.1 }), [r64([3, 5])])],
  ['crossEntropy with soft targets', () => {
    const t = Tensor.from(new Float64Array([0.2, 0.8, 0, 0, 0.5, 0.5]), [2, 3]);
    return gradcheck((z) => ops.crossEntropy(z, t), [r64([2, 3])]);
  }],
  ['dropout (fixed seed)', () => gradcheck((x) => ops.dropout(x, 0.4, 77), [r64([4, 6])])],
  ['dropPath (fixed seed)', () => gradcheck((x) => ops.dropPath(x, 0.5, 78), [r64([4, 2, 3])])],
  ['permute and reshape', () => gradcheck((x) => ops.reshape(ops.permute(x, [0, 2, 1]), [2, 12]), [r64([2, 3, 4])])],
];

describe('finite-difference gradient checks (float64, reference backend)', () => {
  for (const [name, run] of cases) {
    it(name, () => {
      const errs = run();
      for (const [i, e] of errs.entries()) expect(e, `input ${i}: rel L2 ${e.toExponential(2)}`).toBeLessThan(TOL);
    });
  }
});
