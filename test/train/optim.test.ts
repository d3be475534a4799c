/**
 * Optimizers and schedules against hand-written float64 formulas (torch.optim.AdamW, timm Lamb, torch.optim.SGD,
 * timm CosineLRScheduler) on tiny tensors: weight-decay groups, trust ratio, global clipping, grad_scale,
 * momentum / Nesterov, serialisation.
 */
import { describe, expect, it } from 'vitest';
import { createModel } from '../../lib/models/index.js';
import { Parameter } from '../../lib/nn/module.js';
import { Tensor } from '../../lib/tensor.js';
import {
  AdamW, clipGradNorm, createOptimizer, gradNorm, Lamb, paramGroupsWeightDecay, SGD,
} from '../../lib/train/optim.js';
import { ConstantSchedule, CosineSchedule, scheduleFromState } from '../../lib/train/schedule.js';

function param(values: number[], shape: number[]): Parameter {
  return Parameter.of(Tensor.from(new Float32Array(values), shape));
}

function setGrad(p: Parameter, values: number[]): void {
  p.grad?.dispose();
  p.grad = Tensor.from(new Float32Array(values), p.shape);
}

function values(t: Tensor): number[] {
  return Array.from(t.toFloat64Array());
}

function expectClose(actual: number[], expected: number[], tol = 2e-6): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < actual.length; ++i) {
    const err = Math.abs(actual[i]! - expected[i]!) / Math.max(1, Math.abs(expected[i]!));
    if (err > tol) throw new Error(`element ${i}: ${actual[i]} vs ${expected[i]} (err ${err})`);
  }
}

const f32 = (a: number[]): number[] => Array.from(Float32Array.from(a));

// --- float64 references ---------------------------------------------------------------------------

interface AdamState { m: number[]; v: number[]; t: number }

function adamwRef(p: number[], g: number[], s: AdamState, lr: number, b1: number, b2: number, eps: number, wd: number, gs: number): number[] {
  s.t += 1;
  const bc1 = 1 - b1 ** s.t, bc2 = 1 - b2 ** s.t;
  return p.map((x, i) => {
    const gi = g[i]! * gs;
    let y = x * (1 - lr * wd);
    s.m[i] = b1 * s.m[i]! + (1 - b1) * gi;
    s.v[i] = b2 * s.v[i]! + (1 - b2) * gi * gi;
    y -= (lr / bc1) * s.m[i]! / (Math.sqrt(s.v[i]!) / Math.sqrt(bc2) + eps);
    return y;
  });
}

function lambRef(p: number[], g: number[], s: AdamState, lr: number, b1: number, b2: number, eps: number, wd: number, gs: number, trustClip = false): number[] {
  s.t += 1;
  const bc1 = 1 - b1 ** s.t, bc2 = 1 - b2 ** s.t;
  const u = p.map((x, i) => {
    const gi = g[i]! * gs;
    s.m[i] = b1 * s.m[i]! + (1 - b1) * gi;
    s.v[i] = b2 * s.v[i]! + (1 - b2) * gi * gi;
    return (s.m[i]! / bc1) / (Math.sqrt(s.v[i]!) / Math.sqrt(bc2) + eps) + wd * x;
  });
  let trust = 1;
  if (wd !== 0) {
    const pn = Math.hypot(...p), un = Math.hypot(...u);
    trust = pn > 0 && un > 0 ? pn / un : 1;
    if (trustClip) trust = Math.min(trust, 1);
  }
  return p.map((x, i) => x - lr * trust * u[i]!);
}

describe('weight-decay groups', () => {
  it('exempts 1-D parameters and biases (timm rule) and leaves out frozen parameters', () => {
    const m = createModel({ family: 'randformer', depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], numClasses: 3, imageSize: 32 });
    const [noDecay, decay] = paramGroupsWeightDecay(m, 0.05);
    expect(noDecay!.weightDecay).toBe(0);
    expect(decay!.weightDecay).toBe(0.05);
    const nd = (noDecay!.params as [string, Parameter][]).map(([n]) => n);
    const d = (decay!.params as [string, Parameter][]).map(([n]) => n);
    for (const [name, p] of m.namedParameters()) {
      if (name.endsWith('random_matrix')) {
        expect(nd.includes(name) || d.includes(name), name).toBe(false);
      } else if (p.ndim <= 1 || name.endsWith('.bias')) {
        expect(nd, name).toContain(name);
      } else {
        expect(d, name).toContain(name);
      }
    }
    expect(nd).toContain('stages.0.0.mlp.act.scale');
    expect(nd).toContain('head.bias');
    expect(d).toContain('stages.0.0.mlp.fc1.weight');
    m.dispose();
  });

  it('skips parameters frozen after construction and parameters without a gradient', () => {
    const a = param([1, 2, 3, 4], [2, 2]);
    const b = param([1, 1, 1, 1], [2, 2]);
    const opt = new SGD([{ params: [['a', a], ['b', b]] }], { lr: 0.1, momentum: 0 });
    setGrad(a, [1, 1, 1, 1]);
    setGrad(b, [1, 1, 1, 1]);
    b.requiresGrad = false;
    opt.step();
    expectClose(values(a), f32([0.9, 1.9, 2.9, 3.9]));
    expect(values(b)).toEqual([1, 1, 1, 1]);
    a.grad!.dispose();
    a.grad = null;
    opt.step();
    expectClose(values(a), f32([0.9, 1.9, 2.9, 3.9]));
  });
});

describe('AdamW', () => {
  it('matches torch.optim.AdamW over three steps, with decay only in the decay group and grad_scale', () => {
    const wv = [0.5, -1.2, 2.0, 0.1, 0.0, -0.7];
    const bv = [0.3, -0.4, 0.9];
    const w = param(wv, [2, 3]);
    const b = param(bv, [3]);
    const opt = new AdamW([{ params: [['b', b]], weightDecay: 0 }, { params: [['w', w]], weightDecay: 0.1 }],
      { lr: 0.01, beta1: 0.8, beta2: 0.95, eps: 1e-6 });
    const sw: AdamState = { m: [0, 0, 0, 0, 0, 0], v: [0, 0, 0, 0, 0, 0], t: 0 };
    const sb: AdamState = { m: [0, 0, 0], v: [0, 0, 0], t: 0 };
    let rw = f32(wv), rb = f32(bv);
    const grads = [
      { w: [0.1, -0.2, 0.3, 0.05, -1.0, 0.0], b: [1, 2, -3], gs: 1 },
      { w: [-0.3, 0.2, 0.1, 0.5, 0.4, -0.2], b: [0.5, -0.5, 0.25], gs: 0.5 },
      { w: [0.0, 0.01, -0.02, 0.3, 0.2, 0.1], b: [-1, 0, 1], gs: 0.25 },
    ];
    for (const g of grads) {
      setGrad(w, g.w);
      setGrad(b, g.b);
      opt.step({ gradScale: g.gs });
      rw = f32(adamwRef(rw, g.w.map((x) => Math.fround(x)), sw, 0.01, 0.8, 0.95, 1e-6, 0.1, g.gs));
      rb = f32(adamwRef(rb, g.b, sb, 0.01, 0.8, 0.95, 1e-6, 0, g.gs));
      expectClose(values(w), rw);
      expectClose(values(b), rb);
    }
    const st = opt.stateDict();
    expect(st.steps).toEqual({ b: 3, w: 3 });
    expectClose(values(st.tensors.get('exp_avg.w')!), f32(sw.m));
    expectClose(values(st.tensors.get('exp_avg_sq.b')!), f32(sb.v), 1e-5);
    for (const t of st.tensors.values()) t.dispose();
    opt.dispose();
  });

  it('resumes from stateDict() exactly', () => {
    const make = (): [Parameter, AdamW] => {
      const p = param([0.5, -0.25, 1.5, 2], [2, 2]);
      return [p, new AdamW([{ params: [['p', p]], weightDecay: 0.05 }], { lr: 0.1 })];
    };
    const [p1, o1] = make();
    const [p2, o2] = make();
    const gs = [[1, 2, 3, 4], [-1, 0.5, 0.25, 0], [0.3, 0.3, -0.3, 0.1]];
    for (const g of gs.slice(0, 2)) {
      setGrad(p1, g);
      o1.step();
    }
    const st = o1.stateDict();
    o2.loadStateDict(st);
    for (const t of st.tensors.values()) t.dispose();
    runOp2(p2, p1);
    setGrad(p1, gs[2]!);
    setGrad(p2, gs[2]!);
    o1.step();
    o2.step();
    expect(values(p2)).toEqual(values(p1));
  });

  it('rejects bad arguments with the project error style', () => {
    const p = param([1], [1]);
    expect(() => new AdamW([{ params: [['p', p]] }], { lr: -1 })).toThrow(/Expected a finite number >= 0 for lr but received -1/);
    expect(() => new AdamW([{ params: [['p', p]] }], { beta1: 1 })).toThrow(/Expected a number in \[0, 1\) for beta1/);
    expect(() => createOptimizer('adam' as 'adamw', createModel({ family: 'identityformer', depths: [1, 1, 1, 1], dims: [4, 4, 4, 4], numClasses: 2, imageSize: 32 })))
      .toThrow(/Expected 'adamw', 'lamb' or 'sgd' for optimizer/);
  });
});

/** Copies p1's values into p2 (both parameters of the same shape). */
function runOp2(dst: Parameter, src: Parameter): void {
  dst.view<'float32'>().set(src.view<'float32'>());
}

describe('LAMB', () => {
  it('applies the trust ratio only with weight decay, and the global grad-norm clip of timm', () => {
    const wv = [0.5, -1.2, 2.0, 0.1];
    const bv = [0.3, -0.4];
    const w = param(wv, [2, 2]);
    const b = param(bv, [2]);
    const opt = new Lamb([{ params: [['b', b]], weightDecay: 0 }, { params: [['w', w]], weightDecay: 0.02 }],
      { lr: 0.05, maxGradNorm: 1.0 });
    const sw: AdamState = { m: [0, 0, 0, 0], v: [0, 0, 0, 0], t: 0 };
    const sb: AdamState = { m: [0, 0], v: [0, 0], t: 0 };
    let rw = f32(wv), rb = f32(bv);
    const steps = [
      { w: [3, -4, 0, 1], b: [2, 2], gs: 1 },       // norm sqrt(34): clipped
      { w: [0.1, 0.2, -0.1, 0.05], b: [0.1, 0], gs: 0.5 },  // small: unclipped
    ];
    for (const s of steps) {
      setGrad(w, s.w);
      setGrad(b, s.b);
      opt.step({ gradScale: s.gs });
      const norm = Math.hypot(...s.w, ...s.b) * s.gs;
      const scale = norm > 1 ? s.gs / norm : s.gs;
      expect(opt.lastGradNorm).toBeCloseTo(norm, 5);
      rw = f32(lambRef(rw, s.w, sw, 0.05, 0.9, 0.999, 1e-6, 0.02, scale));
      rb = f32(lambRef(rb, s.b, sb, 0.05, 0.9, 0.999, 1e-6, 0, scale));
      expectClose(values(w), rw);
      expectClose(values(b), rb);
    }
  });

  it('clips the trust ratio at 1 with trustClip, and works without global clipping', () => {
    const pv = [3, -4, 12];  // |p| = 13 > |update|: the trust ratio would exceed 1
    const p = param(pv, [3, 1]);
    const opt = new Lamb([{ params: [['p', p]], weightDecay: 0.5 }], { lr: 0.1, maxGradNorm: null, trustClip: true });
    const s: AdamState = { m: [0, 0, 0], v: [0, 0, 0], t: 0 };
    setGrad(p, [5, 5, -5]);
    opt.step();
    expectClose(values(p), f32(lambRef(f32(pv), [5, 5, -5], s, 0.1, 0.9, 0.999, 1e-6, 0.5, 1, true)));
    const un = lambRef(f32(pv), [5, 5, -5], { m: [0, 0, 0], v: [0, 0, 0], t: 0 }, 0.1, 0.9, 0.999, 1e-6, 0.5, 1, false);
    expect(Math.abs(values(p)[2]! - un[2]!)).toBeGreaterThan(0.1);
  });
});

describe('SGD', () => {
  it('matches torch.optim.SGD with momentum, dampening and weight decay', () => {
    const p = param([1, -2], [2]);
    const opt = new SGD([{ params: [['p', p]], weightDecay: 0.1 }], { lr: 0.5, momentum: 0.9, dampening: 0.2 });
    let x = [1, -2];
    let buf: number[] | null = null;
    for (const g of [[0.5, 0.5], [-1, 2], [0, 0.25]]) {
      setGrad(p, g);
      opt.step();
      const gg = g.map((v, i) => v + 0.1 * x[i]!);
      buf = buf === null ? gg : buf.map((bv, i) => 0.9 * bv + 0.8 * gg[i]!);
      x = f32(x.map((v, i) => v - 0.5 * buf![i]!));
      expectClose(values(p), x);
    }
  });

  it('matches Nesterov momentum with grad_scale, and plain SGD without momentum', () => {
    const p = param([0.5, 0.25, -1], [3]);
    const q = param([0.5, 0.25, -1], [3]);
    const nest = new SGD([{ params: [['p', p]] }], { lr: 0.1, momentum: 0.5, nesterov: true });
    const plain = new SGD([{ params: [['q', q]] }], { lr: 0.1, momentum: 0 });
    let x = [0.5, 0.25, -1];
    let y = [0.5, 0.25, -1];
    let buf: number[] | null = null;
    for (const g of [[1, 2, 3], [-3, 1, 0]]) {
      setGrad(p, g);
      setGrad(q, g);
      nest.step({ gradScale: 0.5 });
      plain.step({ gradScale: 0.5 });
      const gg = g.map((v) => v * 0.5);
      buf = buf === null ? gg : buf.map((bv, i) => 0.5 * bv + gg[i]!);
      x = f32(x.map((v, i) => v - 0.1 * (gg[i]! + 0.5 * buf![i]!)));
      y = f32(y.map((v, i) => v - 0.1 * gg[i]!));
      expectClose(values(p), x);
      expectClose(values(q), y);
    }
    expect(nest.stateDict().tensors.has('momentum_buffer.p')).toBe(true);
    expect(plain.stateDict().tensors.size).toBe(0);
  });
});

describe('gradient norm', () => {
  it('computes the global norm natively and clips in place like clip_grad_norm_', () => {
    const a = param([0, 0], [2]);
    const b = param([0, 0, 0, 0], [2, 2]);
    setGrad(a, [3, 0]);
    setGrad(b, [0, 4, 0, 0]);
    expect(gradNorm([a, b])).toBeCloseTo(5, 10);
    expect(gradNorm([a, b], 0.5)).toBeCloseTo(2.5, 10);
    expect(clipGradNorm([a, b], 1)).toBeCloseTo(5, 10);
    expect(gradNorm([a, b])).toBeCloseTo(1, 5);
    expect(clipGradNorm([a, b], 10)).toBeCloseTo(1, 5);
    expect(gradNorm([a, b])).toBeCloseTo(1, 5);
  });
});

describe('schedules', () => {
  it('cosine with linear warmup matches timm CosineLRScheduler (warmup_prefix False)', () => {
    const s = new CosineSchedule({ baseLr: 1e-3, totalIters: 100, warmupIters: 10, warmupLr: 1e-6, minLr: 1e-5 });
    expect(s.lrAt(0)).toBeCloseTo(1e-6, 15);
    expect(s.lrAt(5)).toBeCloseTo(1e-6 + 5 * (1e-3 - 1e-6) / 10, 15);
    expect(s.lrAt(10)).toBeCloseTo(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + Math.cos(Math.PI * 10 / 100)), 15);
    expect(s.lrAt(50)).toBeCloseTo(1e-5 + 0.5 * (1e-3 - 1e-5), 15);
    expect(s.lrAt(100)).toBeCloseTo(1e-5, 15);
    expect(s.lrAt(500)).toBeCloseTo(1e-5, 15);
    for (let t = 11; t < 100; ++t) expect(s.lrAt(t)).toBeLessThan(s.lrAt(t - 1));
  });

  it('cosine with warmupPrefix starts the cosine after the warmup', () => {
    const s = new CosineSchedule({ baseLr: 1, totalIters: 110, warmupIters: 10, warmupLr: 0, minLr: 0, warmupPrefix: true });
    expect(s.lrAt(10)).toBeCloseTo(1, 12);
    expect(s.lrAt(60)).toBeCloseTo(0.5, 12);
    expect(s.lrAt(110)).toBeCloseTo(0, 12);
  });

  it('constant keeps the base rate after warmup; state round-trips', () => {
    const c = new ConstantSchedule({ baseLr: 0.1, warmupIters: 4, warmupLr: 0 });
    [0, 0.025, 0.05, 0.075, 0.1, 0.1].forEach((v, t) => expect(c.lrAt(t === 5 ? 99 : t)).toBeCloseTo(v, 15));
    const s = new CosineSchedule({ baseLr: 2e-3, totalIters: 50, warmupIters: 5 });
    for (let i = 0; i < 17; ++i) s.step();
    const r = scheduleFromState(JSON.parse(JSON.stringify(s.stateDict())));
    expect(r.iteration).toBe(17);
    expect(r.lr).toBe(s.lr);
    expect(() => new CosineSchedule({ baseLr: 1, totalIters: 0 })).toThrow(/Expected at least 1 update for totalIters/);
  });
});
