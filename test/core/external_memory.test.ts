import { describe, expect, it } from 'vitest';
import { keep, memoryStats, Tensor, tidy } from '../../lib/index.js';

// V8 learns the size of native tensor memory (external memory, memoryStats().gcTracked) only for tensors
// whose lifetime the garbage collector decides; memory that tidy() frees is never reported.
const MB = 1 << 20;
const external = (): number => memoryStats().gcTracked;
const big = (): Tensor => Tensor.zeros([4 * MB / 4]);  // 4 MiB

describe('external memory accounting', () => {
  it('reports a tensor created outside tidy() until it is disposed', () => {
    const before = external();
    const t = big();
    expect(external() - before).toBeGreaterThanOrEqual(4 * MB);
    t.dispose();
    expect(Math.abs(external() - before)).toBeLessThan(MB);
  });

  it('does not report tensors that tidy() disposes', () => {
    const before = external();
    let during = 0;
    tidy(() => {
      for (let i = 0; i < 8; ++i) big();
      during = external() - before;
    });
    expect(during).toBeLessThan(MB);
    expect(Math.abs(external() - before)).toBeLessThan(MB);
  });

  it('reports tensors that escape tidy() (returned or kept)', () => {
    const before = external();
    const returned = tidy(() => big());
    expect(external() - before).toBeGreaterThanOrEqual(4 * MB);
    let kept: Tensor | null = null;
    tidy(() => {
      kept = keep(big());
    });
    expect(external() - before).toBeGreaterThanOrEqual(8 * MB);
    returned.dispose();
    kept!.dispose();
    expect(Math.abs(external() - before)).toBeLessThan(MB);
  });

  it('nested scopes hand a returned tensor to the outer scope, which frees it untracked', () => {
    const before = external();
    let inner = 0;
    tidy(() => {
      const t = tidy(() => big());
      inner = external() - before;
      expect(t.disposed).toBe(false);
    });
    expect(inner).toBeLessThan(MB);
    expect(Math.abs(external() - before)).toBeLessThan(MB);
  });
});
