/**
 * The cpu backend's choice of float32 GEMM (setGemmPolicy): the own kernel and oneDNN give the same
 * products up to float32 summation order, through the public ops and through a model's predict();
 * bad names are refused and the previous policy is returned. (Every GEMM-based op against the
 * reference backend under each policy: test/ops/cpu_vs_ref.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { setGemmPolicy, type GemmPolicy } from '../../lib/backend.js';
import { createModel } from '../../lib/models/index.js';
import { linear } from '../../lib/ops.js';
import { randomTensor, relL2 } from '../helpers/tensors.js';

afterEach(() => {
  setGemmPolicy('auto');
});

describe('setGemmPolicy', () => {
  it('returns the previous policy and refuses unknown names', () => {
    expect(setGemmPolicy('own')).toBe('auto');
    expect(setGemmPolicy('onednn')).toBe('own');
    expect(() => setGemmPolicy('fastest' as GemmPolicy)).toThrow(TypeError);
    expect(() => setGemmPolicy('fastest' as GemmPolicy)).toThrow(/GEMM policy/);
    expect(setGemmPolicy('auto')).toBe('onednn');
  });

  it('gives the same linear layer with either kernel', () => {
    const x = randomTensor([301, 67], 1), w = randomTensor([130, 67], 2), b = randomTensor([130], 3);
    const run = (p: GemmPolicy) => {
      setGemmPolicy(p);
      const y = linear(x, w, b);
      const out = y.toFloat64Array();
      y.dispose();
      return out;
    };
    const own = run('own'), onednn = run('onednn');
    expect(relL2(own, onednn)).toBeLessThan(1e-6);
    expect(relL2(own, onednn)).toBeGreaterThan(0);  // two kernels really ran (different summation order)
    for (const t of [x, w, b]) t.dispose();
  });

  it('gives the same predictions with either kernel', async () => {
    const model = createModel({ family: 'caformer', dims: [16, 32, 48, 64], depths: [1, 1, 1, 1], numClasses: 10, imageSize: 64 });
    model.eval();
    const x = randomTensor([2, 3, 64, 64], 4);
    const run = async (p: GemmPolicy) => {
      setGemmPolicy(p);
      model.clearPlans();
      const y = await model.predict(x);
      const out = y.toFloat64Array();
      y.dispose();
      return out;
    };
    const own = await run('own'), onednn = await run('onednn');
    expect(relL2(own, onednn)).toBeLessThan(1e-5);
    x.dispose();
    model.dispose();
  });
});
