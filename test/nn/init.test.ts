/**
 * The random initialisers and withoutInit(), which builds models whose parameters a strict checkpoint
 * load is about to overwrite without drawing random values.
 */
import { describe, expect, it } from 'vitest';
import { createModel } from '../../lib/models/index.js';
import { randn, withoutInit } from '../../lib/nn/init.js';
import { manualSeed } from '../../lib/random.js';

const cfg = { family: 'caformer' as const, depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], numClasses: 5, imageSize: 64 };

describe('withoutInit', () => {
  it('gives zeros instead of draws, takes no seeds, nests, and restores the draws after a throw', () => {
    manualSeed(3);
    const a = randn([4, 5], 0.02, true);
    manualSeed(3);
    const z = withoutInit(() => withoutInit(() => randn([4, 5], 0.02, true)));
    expect(Array.from(z.toFloat32Array()).every((v) => v === 0)).toBe(true);
    const b = randn([4, 5], 0.02, true);  // the generator was not advanced by the zero build
    expect(Array.from(b.toFloat32Array())).toEqual(Array.from(a.toFloat32Array()));
    expect(() => withoutInit(() => { throw new Error('boom'); })).toThrow('boom');
    const c = randn([4, 5]);
    expect(c.toFloat32Array().some((v) => v !== 0)).toBe(true);
    for (const t of [a, z, b, c]) t.dispose();
  });

  it('builds a model whose random parameters are zero and whose constant ones are as usual', () => {
    const m = withoutInit(() => createModel(cfg));
    const r = createModel(cfg);
    const rs = r.stateDict();
    for (const [k, t] of m.stateDict()) {
      const v = t.toFloat32Array(), ref = rs.get(k)!.toFloat32Array();
      const drawn = ref.some((x) => x !== ref[0]);  // random draws differ; constant fills do not
      if (drawn) expect(v.every((x) => x === 0), k).toBe(true);
      else expect(Array.from(v), k).toEqual(Array.from(ref));  // scales, norms' ones, zero biases
    }
    m.dispose();
    r.dispose();
  });
});
