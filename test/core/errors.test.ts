/**
 * Bad input never crashes the process: wrong rank, shape mismatches, wrong dtypes, non-finite scalars,
 * disposed tensors and malformed raw calls each give a JS error that names the op, what was expected
 * and what was received. Covers the public ops and the addon's own re-checks.
 */
import { describe, expect, it } from 'vitest';
import { addon, BACKEND_ID, OP } from '../../lib/native.js';
import * as ops from '../../lib/ops.js';
import { Tensor } from '../../lib/tensor.js';
import { createModel } from '../../lib/models/index.js';

const f32 = (shape: number[]) => Tensor.zeros(shape);

describe('public ops reject bad arguments with clear errors', () => {
  it('wrong rank', () => {
    expect(() => ops.conv2d(f32([3, 4, 4]), f32([2, 3, 3, 3]))).toThrow(/conv2d: Expected a tensor of rank 4 for x but received Tensor\(float32, \[3, 4, 4\]\)/);
    expect(() => ops.attentionCore(f32([4, 96]))).toThrow(/attention: Expected a tensor of rank 3 for qkv/);
    expect(() => ops.poolMixer(f32([2, 3]))).toThrow(RangeError);
  });
  it('shape mismatch', () => {
    expect(() => ops.linear(f32([2, 3]), f32([4, 5]))).toThrow(/linear: Expected shape \[\*, 3\] for weight but received Tensor\(float32, \[4, 5\]\)/);
    expect(() => ops.dwconv2d(f32([1, 4, 4, 3]), f32([4, 1, 7, 7]))).toThrow(/dwconv2d: Expected shape \[3, 1, \*, \*\] for weight/);
    expect(() => ops.dwconv2d(f32([1, 4, 4, 3]), f32([3, 1, 4, 4]))).toThrow(/odd kernel size/);
    expect(() => ops.scaleAdd(f32([2, 3]), null, f32([3, 2]))).toThrow(/scale_add: Expected shape \[2, 3\] for residual/);
    expect(() => ops.randomMixing(f32([1, 4, 2]), f32([5, 5]))).toThrow(/random_mixing: Expected shape \[4, 4\] for random_matrix/);
    expect(() => ops.attentionCore(f32([1, 4, 95]))).toThrow(/multiple of 96/);
  });
  it('wrong dtype', () => {
    const i32 = Tensor.from(new Int32Array([1, 2, 3, 4]), [2, 2]);
    expect(() => ops.linear(i32, f32([2, 2]))).toThrow(/linear: Expected a float32 tensor for x but received Tensor\(int32/);
    const f16 = f32([2, 2]).to('float16');
    expect(() => ops.starRelu(f16, null, null)).toThrow(TypeError);
    expect(() => ops.linear(f32([1, 2]) as unknown as Tensor, 'w' as unknown as Tensor)).toThrow(/Expected a Tensor for weight but received "w"/);
  });
  it('non-finite and out-of-range scalars', () => {
    expect(() => ops.layerNorm(f32([2, 3]), null, null, { eps: NaN })).toThrow(/layernorm: Expected a number in \[0, Infinity\] for eps but received NaN/);
    expect(() => ops.dropout(f32([4]), 1.5)).toThrow(/dropout: Expected a number in \[0, 0.999999\] for p but received 1.5/);
    expect(() => ops.conv2d(f32([1, 2, 2, 3]), f32([4, 3, 3, 3]), null, { stride: 0 })).toThrow(/Expected an integer >= 1 for stride but received 0/);
    expect(() => ops.crossEntropy(f32([2, 3]), [0, 3])).toThrow(/cross_entropy: Expected class ids in \[0, 3\) for target but received 3 at index 1/);
    expect(() => ops.crossEntropy(f32([2, 3]), [0, 1], { labelSmoothing: Infinity })).toThrow(/labelSmoothing/);
  });
  it('disposed tensors', () => {
    const x = f32([2, 3]);
    x.dispose();
    expect(() => ops.linear(x, f32([4, 3]))).toThrow(/linear: Expected a live tensor for x but received a disposed tensor/);
    expect(() => x.toFloat32Array()).toThrow(/disposed/);
    expect(() => x.view()).toThrow(/disposed/);
    x.dispose();  // twice is fine
    const model = createModel({ family: 'poolformerv2', depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], numClasses: 3, imageSize: 32 });
    const input = f32([1, 3, 32, 32]);
    input.dispose();
    expect(() => model.forward(input)).toThrow(/disposed/);
    model.dispose();
  });
  it('bad tensor construction', () => {
    expect(() => Tensor.from([1, 2, 3], [2, 2])).toThrow(/Expected 4 elements for shape \[2, 2\] for data but received 3 elements/);
    expect(() => Tensor.zeros([2, -1])).toThrow(/non-negative integer dimensions/);
    expect(() => Tensor.zeros([1, 2, 3, 4, 5, 6, 7, 8, 9])).toThrow(/at most 8 dimensions/);
    expect(() => Tensor.zeros([2 ** 30, 2 ** 30])).toThrow(/2\^40 elements/);
    expect(() => Tensor.from([1, 'a' as unknown as number])).toThrow(/Expected an array of numbers for data/);
    expect(() => Tensor.from(new Uint16Array(2))).toThrow(/float16/);
  });
  it('model inputs', () => {
    const model = createModel({ family: 'randformer', depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], numClasses: 3, imageSize: 64 });
    expect(() => model.forward(f32([1, 1, 64, 64]))).toThrow(/forward: Expected an NCHW image batch \[B, 3, H, W\] for input/);
    expect(() => model.forward(f32([1, 3, 96, 96]))).toThrow(/forward: Expected a 64x64 input \(RandFormer's mixing matrices are built for it\)/);
    expect(() => model.predictSync(f32([1, 3, 2, 2]))).toThrow(/at least 4x4/);
    model.dispose();
  });
});

describe('the addon re-checks raw calls and never crashes', () => {
  const h = (t: Tensor) => t._h;
  it('wrong arity, types and ids', () => {
    expect(() => addon.run(OP.linear, 0, BACKEND_ID.cpu, [h(f32([2, 3]))], [], [])).toThrow(/linear: expected 3 inputs, 1 outputs/);
    expect(() => addon.run(999, 0, 1, [], [], [])).toThrow(/op id/);
    expect(() => addon.run(OP.linear, 0, 7, [], [], [])).toThrow(/backend id/);
    expect(() => addon.run(OP.linear, 0, 1, 'x' as never, [], [])).toThrow(TypeError);
    expect(() => addon.run(OP.linear, 0, 1, [{} as never, null, null], [null], [])).toThrow(/expected a tensor for input 0/);
    expect(() => addon.run(OP.fill, 0, 1, [], [h(f32([2]))], [NaN])).toThrow(/fill: expected a finite number for value but received nan/);
    expect(() => addon.run(OP.conv2d, 0, 1, [h(f32([1, 3, 8, 8])), h(f32([4, 3, 3, 3])), null], [h(f32([1, 3, 3, 4]))], [2.5, 1, 1]))
      .toThrow(/conv2d: expected an integer >= 1 for stride but received 2.5/);
  });
  it('float64 on the fast backend is refused', () => {
    const x = Tensor.zeros([2, 3], 'float64'), w = Tensor.zeros([4, 3], 'float64'), y = Tensor.zeros([2, 4], 'float64');
    expect(() => addon.run(OP.linear, 0, BACKEND_ID.cpu, [x._h, w._h, null], [y._h], [])).toThrow(/only the ref backend computes in float64/);
  });
  it('mismatched dtypes inside one call', () => {
    const x = Tensor.zeros([2, 3]), w = Tensor.zeros([4, 3], 'float64'), y = Tensor.zeros([2, 4]);
    expect(() => addon.run(OP.linear, 0, BACKEND_ID.ref, [x._h, w._h, null], [y._h], [])).toThrow(/linear: expected a float32 tensor for w but received float64/);
  });
  it('bad plans', () => {
    expect(() => new addon.Plan({} as never)).toThrow(/Expected backend but received a non-number/);
    expect(() => new addon.Plan({ backend: 1, slots: [{ dtype: 0, shape: [2] }], consts: [], inputs: [0], outputs: [0],
      steps: [{ op: OP.linear, dir: 0, ins: [0, 0, -1], outs: [0], attrs: [] }] })).toThrow(/linear: expected a tensor of rank 2 for w/);
    expect(() => new addon.Plan({ backend: 1, slots: [], consts: [], inputs: [3], outputs: [], steps: [] })).toThrow(/bad input\/output slot/);
    expect(() => new addon.Plan({ backend: 1, precision: 7, slots: [], consts: [], inputs: [], outputs: [], steps: [] }))
      .toThrow(/Plan: expected a precision code \(0: float32, 1: bf16\) but received 7/);
    expect(() => new addon.Plan({ backend: BACKEND_ID.ref, precision: 1, slots: [], consts: [], inputs: [], outputs: [], steps: [] }))
      .toThrow(/Plan: bf16 precision needs the cpu or cuda backend, not ref/);
  });
  it('read() and write() check sizes, types and liveness', () => {
    const t = f32([2, 3]);
    expect(() => h(t).write(new Uint8Array(5))).toThrow(/write: expected 24 bytes for data but received 5 bytes/);
    expect(() => h(t).write(new Float32Array(6) as unknown as Uint8Array)).toThrow(/write: expected a Uint8Array for data/);
    expect(() => h(t).write('x' as unknown as Uint8Array)).toThrow(TypeError);
    h(t).write(new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer));
    expect(Array.from(new Float32Array(h(t).read()))).toEqual([1, 2, 3, 4, 5, 6]);
    t.dispose();
    expect(() => h(t).read()).toThrow(/read: .*disposed/);
    expect(() => h(t).write(new Uint8Array(24))).toThrow(/write: .*disposed/);
  });
});
