/**
 * The plan's trace rewrites (lib/plan.ts fuse): a linear feeding a residual add accumulates into the
 * residual, in place when nothing reads the residual afterwards and the plan does not bind it. Each
 * case runs the same function as a fused plan, an unfused plan and eagerly, and counts the steps: the
 * copy `y = x` disappears only where overwriting x is safe.
 */
import { describe, expect, it } from 'vitest';
import { add, linear, scaleAdd } from '../../lib/ops.js';
import { compilePlan } from '../../lib/plan.js';
import { Tensor } from '../../lib/tensor.js';
import { randomTensor, relL2 } from '../helpers/tensors.js';

const w1 = randomTensor([12, 12], 1, 0.3), w2 = randomTensor([12, 12], 2, 0.3), b = randomTensor([12], 3), s = randomTensor([12], 4);
const x0 = randomTensor([5, 12], 5);

/** Runs fn as a fused plan, an unfused plan and eagerly; checks they agree; returns the step counts. */
function check(fn: (x: Tensor) => Tensor | Tensor[]): { fused: number; unfused: number } {
  const eager = [fn(x0)].flat().map((t) => t.toFloat64Array());
  const counts = { fused: 0, unfused: 0 };
  for (const fuse of [true, false]) {
    const plan = compilePlan(fn, x0.shape, 'cpu', { fuse });
    const outs = plan.runSync(x0);
    outs.forEach((o, i) => expect(relL2(o.toFloat64Array(), eager[i]!), `output ${i}, fuse ${fuse}`).toBeLessThan(1e-6));
    counts[fuse ? 'fused' : 'unfused'] = plan.steps;
    for (const o of outs) o.dispose();
    plan.dispose();
  }
  return counts;
}

// Every case: h = x W1^T + b, a branch linear(t) with t computed from x or h (not h itself unless
// stated), and the residual add. Unfused, the add is its own step; fused, the branch linear
// accumulates into the add's output: after a copy `y = h` (same step count), or into h itself (one
// step fewer).
describe('plan fusion of residual linears', () => {
  it('accumulates in place when the residual is dead afterwards (no copy step)', () => {
    const c = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(h, w1, null);
      return add(h, linear(t, w2, null));
    });
    expect(c.fused).toBe(c.unfused - 1);
  });

  it('keeps the copy when the residual is read later', () => {
    const c = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(h, w1, null);
      const y = add(h, linear(t, w2, null));
      return add(y, h);  // h read after the residual step
    });
    expect(c.fused).toBe(c.unfused);
  });

  it('keeps the copy when the residual is a plan output, or the plan input', () => {
    const asOutput = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(h, w1, null);
      return [add(h, linear(t, w2, null)), h];
    });
    expect(asOutput.fused).toBe(asOutput.unfused);
    const asInput = check((x) => add(x, linear(linear(x, w1, null), w2, null)));
    expect(asInput.fused).toBe(asInput.unfused);
  });

  it('keeps the copy when the branch linear reads the residual itself, or the residual is scaled', () => {
    const selfRead = check((x) => {
      const h = linear(x, w1, b);
      return add(h, linear(h, w2, null));  // accumulating into h while the GEMM reads h would be wrong
    });
    expect(selfRead.fused).toBe(selfRead.unfused);
    const scaled = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(h, w1, null);
      return scaleAdd(h, s, linear(t, w2, null));
    });
    expect(scaled.fused).toBe(scaled.unfused);
  });

  it('chains in-place residuals (y1 is h\'s memory, y2 too)', () => {
    const c = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(x, w2, null);
      const y1 = add(h, linear(t, w2, null));
      return add(y1, linear(t, w1, null));
    });
    expect(c.fused).toBe(c.unfused - 2);
  });

  it('keeps the copy for the second residual when the first residual is read after it', () => {
    const c = check((x) => {
      const h = linear(x, w1, b);
      const t = linear(x, w2, null);
      const y1 = add(h, linear(t, w2, null));
      const y2 = add(y1, linear(t, w1, null));
      return add(y2, y1);  // y1 (h's memory after the first fusion) read after the second residual
    });
    expect(c.fused).toBe(c.unfused - 1);
  });
});
