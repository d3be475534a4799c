/**
 * Graph lifetime under tidy(): a forward pass whose graph dies with the scope frees its saved tensors at
 * once (a synchronous loop never lets the garbage collector's finalizers run), while graphs reachable from
 * the scope's result or from keep()-ed tensors still backpropagate.
 */
import { describe, expect, it } from 'vitest';
import { keep, memoryStats, Tensor, tidy } from '../../lib/index.js';
import { crossEntropy, linear, starRelu } from '../../lib/ops.js';

const data = (n: number, k: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k));

describe('autograd graphs and tidy()', () => {
  const w = Tensor.from(data(64 * 64, 0.3), [64, 64]);
  w.requiresGrad = true;
  const x = Tensor.from(data(512 * 64, 0.7), [512, 64]);
  const forward = (): Tensor => linear(starRelu(linear(x, w, null), null, null), w, null);

  it('frees the saved tensors of a graph that dies with the scope, without waiting for the GC', () => {
    tidy(() => {
      forward();
    });
    const before = memoryStats().live;
    for (let i = 0; i < 50; ++i) {
      tidy(() => {
        forward();
      });
    }
    expect(memoryStats().live).toBe(before);
  });

  it('keeps the graph of a returned loss for a later backward()', () => {
    w.grad?.dispose();
    w.grad = null;
    const loss = tidy(() => crossEntropy(forward(), Array.from({ length: 512 }, (_, i) => i % 64)));
    loss.backward();
    expect(w.grad).not.toBeNull();
    expect(w.grad!.toFloat32Array().some((v) => v !== 0)).toBe(true);
    loss.dispose();
  });

  it('keeps the graph of a keep()-ed tensor for a later backward()', () => {
    w.grad?.dispose();
    w.grad = null;
    let y: Tensor | null = null;
    tidy(() => {
      const h = forward();
      y = keep(crossEntropy(h, Array.from({ length: 512 }, (_, i) => (i * 7) % 64)));
    });
    y!.backward();
    expect(w.grad!.toFloat32Array().some((v) => v !== 0)).toBe(true);
    y!.dispose();
  });
});
