/**
 * Tensors with a zero-sized dimension (no images, no rows, no channels, an empty reduction) go
 * through every public op forward and backward without crashing, on the cpu and ref backends, with
 * the expected output shape. A product over an empty reduction (linear with 0 input features, a conv
 * with 0 input channels) is its bias, like PyTorch's, and the bias gradient is still the sum of dy.
 */
import { describe, expect, it } from 'vitest';
import { withBackend } from '../../lib/backend.js';
import * as ops from '../../lib/ops.js';
import { Tensor } from '../../lib/tensor.js';

const leaf = (shape: number[], v = 0.5) => {
  const t = Tensor.full(shape, v);
  t.requiresGrad = true;
  return t;
};

// [name, build inputs and run the op, expected output shape]
type Case = [string, () => Tensor, number[]];
const cases: Case[] = [
  ['linear, no rows', () => ops.linear(leaf([0, 8]), leaf([4, 8]), leaf([4])), [0, 4]],
  ['linear, no input features', () => ops.linear(leaf([3, 0]), leaf([4, 0]), leaf([4])), [3, 4]],
  ['linear, no outputs', () => ops.linear(leaf([3, 8]), leaf([0, 8]), leaf([0])), [3, 0]],
  ['linear, an empty batch dim', () => ops.linear(leaf([2, 0, 5, 8]), leaf([4, 8])), [2, 0, 5, 4]],
  ['conv2d, no images', () => ops.conv2d(leaf([0, 8, 8, 3]), leaf([4, 3, 3, 3]), leaf([4])), [0, 6, 6, 4]],
  ['conv2d, no input channels', () => ops.conv2d(leaf([1, 8, 8, 0]), leaf([4, 0, 3, 3]), leaf([4])), [1, 6, 6, 4]],
  ['conv2d, no output channels', () => ops.conv2d(leaf([1, 8, 8, 3]), leaf([0, 3, 3, 3]), leaf([0])), [1, 6, 6, 0]],
  ['dwconv2d, no channels', () => ops.dwconv2d(leaf([1, 4, 4, 0]), leaf([0, 1, 7, 7]), leaf([0])), [1, 4, 4, 0]],
  ['dwconv2d, no images', () => ops.dwconv2d(leaf([0, 4, 4, 8]), leaf([8, 1, 7, 7]), leaf([8])), [0, 4, 4, 8]],
  ['dwconv2d, no rows', () => ops.dwconv2d(leaf([1, 0, 4, 8]), leaf([8, 1, 3, 3])), [1, 0, 4, 8]],
  ['dwconv2d, no columns', () => ops.dwconv2d(leaf([1, 4, 0, 8]), leaf([8, 1, 3, 3])), [1, 4, 0, 8]],
  ['layerNorm, no images', () => ops.layerNorm(leaf([0, 4, 4, 8]), leaf([8]), leaf([8])), [0, 4, 4, 8]],
  ['layerNorm, no channels', () => ops.layerNorm(leaf([1, 4, 4, 0]), leaf([0]), leaf([0])), [1, 4, 4, 0]],
  ['starRelu, no columns', () => ops.starRelu(leaf([2, 0]), leaf([1]), leaf([1])), [2, 0]],
  ['squaredRelu, no rows', () => ops.squaredRelu(leaf([0, 8])), [0, 8]],
  ['attention, no images', () => ops.attentionCore(leaf([0, 4, 96]), { heads: 1 }), [0, 4, 32]],
  ['attention, no tokens', () => ops.attentionCore(leaf([1, 0, 96]), { heads: 1 }), [1, 0, 32]],
  ['randomMixing, no channels', () => ops.randomMixing(leaf([1, 16, 0]), leaf([16, 16])), [1, 16, 0]],
  ['randomMixing, no tokens', () => ops.randomMixing(leaf([2, 0, 8]), leaf([0, 0])), [2, 0, 8]],
  ['poolMixer, no channels', () => ops.poolMixer(leaf([1, 4, 4, 0])), [1, 4, 4, 0]],
  ['scaleAdd, no columns', () => ops.scaleAdd(leaf([2, 0]), leaf([0]), leaf([2, 0])), [2, 0]],
  ['meanHW, no pixels', () => ops.meanHW(leaf([1, 0, 0, 8])), [1, 8]],
  ['meanHW, no channels', () => ops.meanHW(leaf([1, 4, 4, 0])), [1, 0]],
  ['dropout, no rows', () => ops.dropout(leaf([0, 8]), 0.5, 1), [0, 8]],
];

describe.each(['cpu', 'ref'] as const)('empty tensors on the %s backend', (backend) => {
  it.each(cases)('%s: forward and backward', (_name, run, shape) => {
    withBackend(backend, () => {
      const y = run();
      expect(y.shape).toEqual(shape);
      expect(() => y.backward(Tensor.full(y.shape, 1))).not.toThrow();
    });
  });

  it('a product over an empty reduction is its bias', () => {
    withBackend(backend, () => {
      const b = leaf([4]);
      b.view().set([1, -2, 3, 0.25]);
      const w = leaf([4, 0]);
      const y = ops.linear(leaf([3, 0]), w, b);
      expect(Array.from(y.view())).toEqual([1, -2, 3, 0.25, 1, -2, 3, 0.25, 1, -2, 3, 0.25]);
      y.backward(Tensor.full([3, 4], 1));
      expect(Array.from(b.grad!.view())).toEqual([3, 3, 3, 3]);
      const cb = leaf([2]);
      cb.view().set([0.5, -1]);
      const c = ops.conv2d(leaf([1, 5, 5, 0]), leaf([2, 0, 3, 3]), cb, { padding: 1 });
      expect(c.shape).toEqual([1, 5, 5, 2]);
      expect(Array.from(c.view()).every((v, i) => v === (i % 2 === 0 ? 0.5 : -1))).toBe(true);
    });
  });
});
