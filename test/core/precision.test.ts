/**
 * bf16 precision of compiled plans: every GEMM-based op rounds both operands to bfloat16 and
 * accumulates in float32. A single-GEMM op must equal the float32 op on pre-rounded operands (up to
 * summation order); multi-GEMM ops (attention) land within bf16's error of float32 without being
 * float32; bad precision options are refused; steady-state bf16 runs take no memory from the system.
 * (Model-level bf16 accuracy against the fixtures: test/models/fixtures.test.ts and full_size.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { f32ToBf16, bf16ToF32 } from '../../lib/io/halfs.js';
import { memoryStats } from '../../lib/memory.js';
import { createModel, type MetaFormer } from '../../lib/models/index.js';
import { attentionCore, conv2d, crossEntropy, linear, randomMixing, starRelu } from '../../lib/ops.js';
import { setGemmPolicy, setOnednnWeightLayout, type GemmPolicy, type WeightLayout } from '../../lib/backend.js';
import { bf16Native, compilePlan, type Precision } from '../../lib/plan.js';
import { Tensor, tidy } from '../../lib/tensor.js';
import { AdamW } from '../../lib/train/optim.js';
import { randomTensor, relL2 } from '../helpers/tensors.js';

const roundBf16 = (t: Tensor): Tensor => Tensor.from(bf16ToF32(f32ToBf16(t.toFloat32Array())), t.shape);

/** Output of fn on x through a plan of the given precision. */
function runPlan(fn: (x: Tensor) => Tensor, x: Tensor, precision: Precision): Float32Array {
  const plan = compilePlan(fn, x.shape, 'cpu', { precision });
  try {
    expect(plan.precision).toBe(precision);
    const [y] = plan.runSync(x);
    const out = y!.toFloat32Array();
    y!.dispose();
    return out;
  } finally {
    plan.dispose();
  }
}

describe('bf16 plans: single-GEMM ops equal float32 on bf16-rounded operands', () => {
  // Odd sizes: tails in every dimension of the GEMM.
  const w = randomTensor([37, 53], 1, 0.3), b = randomTensor([37], 2, 0.1);
  const s = Tensor.from([0.9]), sb = Tensor.from([-0.05]);
  const cw = randomTensor([11, 5, 3, 3], 3, 0.2), cb = randomTensor([11], 4, 0.1);
  const stem = randomTensor([7, 3, 7, 7], 5, 0.1);
  const mix = randomTensor([23, 23], 6, 0.2);
  const w49 = randomTensor([49, 53], 15, 0.3), b49 = randomTensor([49], 16, 0.1);
  const wk = randomTensor([40, 2048], 19, 0.05);
  // tol: the relative L2 between two float32 summation orders of the same bf16 products (~6e-8 * sqrt(K));
  // 1e-6 unless K is long.
  const cases: { name: string; x: Tensor; fn: (w: Record<string, Tensor>) => (x: Tensor) => Tensor; tol?: number }[] = [
    { name: 'linear with bias', x: randomTensor([3, 29, 53], 7), fn: (p) => (x) => linear(x, p.w!, p.b!) },
    { name: 'linear + StarReLU (fused)', x: randomTensor([41, 53], 8), fn: (p) => (x) => starRelu(linear(x, p.w!, p.b!), s, sb) },
    { name: 'conv2d k3 s2 channels-last', x: randomTensor([2, 13, 9, 5], 9), fn: (p) => (x) => conv2d(x, p.cw!, p.cb!, { stride: 2, padding: 1, inputLayout: 'nhwc' }) },
    { name: 'conv2d stem k7 s4 NCHW', x: randomTensor([1, 3, 31, 27], 10), fn: (p) => (x) => conv2d(x, p.stem!, null, { stride: 4, padding: 2, inputLayout: 'nchw' }) },
    { name: 'random mixing', x: randomTensor([2, 23, 19], 11), fn: (p) => (x) => randomMixing(x, p.mix!) },
    // 49 and 97 rows, 49 outputs: the 7x7 last stage at batch 1 (tails of one row or column in blocks of 16)
    { name: 'linear, 49 rows and 49 outputs', x: randomTensor([1, 49, 53], 17), fn: (p) => (x) => linear(x, p.w49!, p.b49!) },
    { name: 'linear, 97 rows', x: randomTensor([97, 53], 18), fn: (p) => (x) => linear(x, p.w!, p.b!) },
    // few outputs and a long reduction (M x N = 49 x 40, K = 2048): a library may split K over threads
    { name: 'linear, 49 rows, K = 2048', x: randomTensor([1, 49, 2048], 20), fn: (p) => (x) => linear(x, p.wk!), tol: 1e-5 },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const params = { w, b, cw, cb, stem, mix, w49, b49, wk };
      const biases = [b, cb, b49];
      const rounded = Object.fromEntries(Object.entries(params).map(([k, t]) => [k, biases.includes(t) ? t : roundBf16(t)]));
      const got = runPlan(c.fn(params), c.x, 'bf16');
      const want = runPlan(c.fn(rounded), roundBf16(c.x), 'float32');
      const f32 = runPlan(c.fn(params), c.x, 'float32');
      const err = relL2(got, want);
      expect(err, `rel. L2 ${err.toExponential(2)}`).toBeLessThan(c.tol ?? 1e-6);
      // and the rounding really happened: bf16 keeps 8 significant bits
      expect(relL2(got, f32)).toBeGreaterThan(1e-4);
      for (const t of Object.values(rounded)) if (!biases.includes(t)) t.dispose();
    });
  }
});

describe('bf16 plans: attention', () => {
  // Odd token counts: an odd K in P V (oneDNN 2.6's AMX matmul split such a K over threads wrongly).
  for (const [n, batch] of [[49, 1], [49, 2], [47, 1], [47, 3]] as const) {
    it(`N = ${n} (batched GEMMs), batch ${batch}: within bf16 error of float32, and not float32`, () => {
      const x = randomTensor([batch, n, 3 * 64], 12);
      const fn = (t: Tensor) => attentionCore(t, { headDim: 32 });
      const got = runPlan(fn, x, 'bf16'), f32 = runPlan(fn, x, 'float32');
      const err = relL2(got, f32);
      expect(err).toBeGreaterThan(1e-4);
      expect(err).toBeLessThan(2e-2);
    });
  }
});

describe('precision options', () => {
  it('refuses unknown precisions and the reference backend', () => {
    const fn = (x: Tensor) => linear(x, Tensor.ones([2, 3]));
    expect(() => compilePlan(fn, [1, 3], 'cpu', { precision: 'fp16' as Precision })).toThrow(/Expected 'float32' or 'bf16' for compilePlan precision but received/);
    expect(() => compilePlan(fn, [1, 3], 'ref', { precision: 'bf16' })).toThrow(/Expected the 'cpu' or 'cuda' backend for precision 'bf16' for compilePlan backend but received "ref"/);
    const m = createModel({ family: 'identityformer', depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], numClasses: 3, imageSize: 32 });
    try {
      expect(m.precision).toBe('float32');
      expect(() => { m.precision = 'half' as Precision; }).toThrow(/Expected 'float32' or 'bf16' for precision/);
      expect(() => createModel('caformer_s18', { precision: 'int8' as Precision })).toThrow(/Expected 'float32' or 'bf16'/);
    } finally {
      m.dispose();
    }
  });

  it('bf16Native() reports whether oneDNN runs bf16 natively here', () => {
    expect(typeof bf16Native()).toBe('boolean');
  });
});

describe('bf16 GEMM operands', () => {
  // Through an identity weight every output is one operand value rounded to bf16 (times 1, plus zeros):
  // the conversion must round exactly as core/numeric.h does (to nearest, ties to even), in the
  // 8-wide conversion and in the tail of each row (K = 27: three vectors and three more). Finite values
  // only: an infinity or NaN anywhere in a row makes every output of the row NaN (inf * 0).
  it('rounds to nearest, ties to even, exactly, for ties, subnormals, huge and negative values', () => {
    const K = 27, M = 11;
    const bits = new Uint32Array([0x3f808000, 0x3f818000, 0xbf808000, 0xbf818000, 0x3f80ffff, 0x3f807fff, 0x00000001,
      0x807fffff, 0x00408000, 0x7f7f7fff, 0xff7f7fff, 0x7f000000, 0x3eaaaaab, 0x00018000, 0x80008000]);
    const special = new Float32Array(bits.buffer);
    const data = new Float32Array(M * K);
    for (let i = 0; i < data.length; ++i) data[i] = i % 3 === 0 ? special[(i / 3) % special.length]! : Math.sin(i * 1.7) * 10 ** ((i % 7) - 3);
    const x = Tensor.from(data, [M, K]);
    const eye = new Float32Array(K * K);
    for (let k = 0; k < K; ++k) eye[k * K + k] = 1;
    const w = Tensor.from(eye, [K, K]);
    const plan = compilePlan((t) => linear(t, w, null), [M, K], 'cpu', { precision: 'bf16' });
    try {
      const [y] = plan.runSync(x);
      const want = bf16ToF32(f32ToBf16(data));
      expect(Array.from(y!.toFloat32Array()).map((v) => v + 0)).toEqual(Array.from(want).map((v) => v + 0));
      y!.dispose();
    } finally {
      plan.dispose();
      x.dispose();
      w.dispose();
    }
  });
});

describe('bf16 predict()', () => {
  it('keeps a plan per precision and takes no system memory in steady state', async () => {
    const m = createModel({ family: 'caformer', depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], numClasses: 5, imageSize: 64 }, { precision: 'bf16' });
    try {
      const x = randomTensor([2, 3, 64, 64], 13);
      const a = await m.predict(x);
      m.precision = 'float32';
      const f = await m.predict(x);
      m.precision = 'bf16';
      // (compiling the float32 plan may have taken blocks the bf16 run had returned to the cache)
      (await m.predict(x)).dispose();
      const a0 = memoryStats().systemAllocs;
      for (let i = 0; i < 3; ++i) (await m.predict(x)).dispose();
      expect(memoryStats().systemAllocs - a0).toBe(0);
      const again = m.predictSync(x);
      expect(Array.from(again.toFloat32Array())).toEqual(Array.from(a.toFloat32Array()));
      const err = relL2(a.toFloat32Array(), f.toFloat32Array());
      expect(err).toBeGreaterThan(1e-5);
      expect(err).toBeLessThan(2e-2);
      // features() and the stage maps run through their own bf16 plan
      const fb = await m.features(x, { stages: true });
      m.precision = 'float32';
      const ff = await m.features(x, { stages: true });
      for (const [b16, b32] of [[fb.features, ff.features], ...fb.stages!.map((t, i) => [t, ff.stages![i]!])] as [Tensor, Tensor][]) {
        const e = relL2(b16.toFloat32Array(), b32.toFloat32Array());
        expect(e).toBeGreaterThan(1e-5);
        expect(e).toBeLessThan(2e-2);
      }
      for (const t of [a, f, again, x, fb.features, ff.features, ...fb.stages!, ...ff.stages!]) t.dispose();
    } finally {
      m.dispose();
    }
  });
});

// Plans keep copies of their weights: bf16 copies in bf16 mode, the own GEMM's packed panels or
// oneDNN's blocked layout in float32 (made once, reused while the weight's version is unchanged and no
// view() of it is alive; float32 runs with the kernel and layout forced, so the copies are used on
// every CPU). Every way a weight can
// change must show in the next predict(): the result must equal a fresh model's (a fresh plan, no
// copies) with the same weights, bit for bit.
describe.each([
  ['bf16', 'auto', 'auto'],
  ['float32', 'own', 'auto'],
  ['float32', 'onednn', 'blocked'],
] as const)('%s weight copies follow weight changes (GEMM policy %s, oneDNN weight layout %s)', (precision, gemmPolicy, layout) => {
  const cfg = { family: 'caformer' as const, depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], numClasses: 5, imageSize: 64 };
  const x = randomTensor([1, 3, 64, 64], 21);
  const logitsOf = async (m: MetaFormer): Promise<number[]> => {
    const y = await m.predict(x);
    const out = Array.from(y.toFloat32Array());
    y.dispose();
    return out;
  };
  const fresh = async (m: MetaFormer): Promise<number[]> => {
    const f = createModel(cfg, { precision });
    try {
      f.loadStateDict(m.stateDict(), { strict: true });
      return await logitsOf(f);
    } finally {
      f.dispose();
    }
  };

  it('after writes through a kept view, loadStateDict, an optimizer step and copyTo', async () => {
    const m = createModel(cfg, { precision });
    const opt = new AdamW(m, { lr: 1e-2 });
    const policy = setGemmPolicy(gemmPolicy), previousLayout = setOnednnWeightLayout(layout);
    try {
      let prev = await logitsOf(m);
      expect(await logitsOf(m)).toEqual(prev);  // the copies made by the first call are reused
      const changed = async (what: string) => {
        const now = await logitsOf(m);
        expect(now, what).not.toEqual(prev);
        expect(now, what).toEqual(await fresh(m));
        prev = now;
      };
      const sd = m.stateDict();
      // a view kept by JS and written twice
      const v = sd.get('stages.2.0.mlp.fc1.weight')!.view<'float32'>();
      v[0] = v[0]! + 0.5;
      await changed('first write through a view');
      v[1] = v[1]! - 0.5;
      await changed('second write through the same view');
      // loadStateDict (a cast into the parameters)
      const w = sd.get('stages.3.0.mlp.fc2.weight')!;
      const bumped = Tensor.from(w.toFloat32Array().map((a) => a * 1.5), w.shape);
      m.loadStateDict(new Map([['stages.3.0.mlp.fc2.weight', bumped]]), { strict: false });
      bumped.dispose();
      await changed('loadStateDict');
      // copyTo into a parameter
      const p = sd.get('stages.1.0.token_mixer.pwconv1.weight')!;
      const src = Tensor.from(p.toFloat32Array().map((a) => -a), p.shape);
      src._h.copyTo(p._h);
      src.dispose();
      await changed('copyTo');
      // an optimizer step (native in-place updates of every parameter)
      m.train();
      tidy(() => crossEntropy(m.forward(x), [1]).backward());
      opt.step();
      opt.zeroGrad();
      m.eval();
      await changed('AdamW step');
    } finally {
      setGemmPolicy(policy);
      setOnednnWeightLayout(previousLayout);
      opt.dispose();
      m.dispose();
    }
  });
});

describe('clearPlans() frees the weight copies', () => {
  // Plans keep a copy of every GEMM weight: bf16 copies (2 or 4 bytes per weight), the own GEMM's
  // packed panels (4 bytes per weight, padded) or oneDNN's blocked layout of them ('blocked'; with
  // 'plain' oneDNN reads float32 weights as they are). clearPlans()
  // frees the copies with the arenas. (Measured synchronously around clearPlans(): finalizers of other
  // tests' tensors run only when the event loop turns.)
  it('frees the bf16 copies and the packed float32 panels with the plans', async () => {
    const cfg = { family: 'convformer' as const, depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], numClasses: 5, imageSize: 64 };
    const x = randomTensor([1, 3, 64, 64], 31);
    const drop = async (precision: Precision, policy: GemmPolicy, layout: WeightLayout = 'plain'): Promise<number> => {
      const m = createModel(cfg, { precision });
      const previous = setGemmPolicy(policy), previousLayout = setOnednnWeightLayout(layout);
      try {
        (await m.predict(x)).dispose();
        const before = memoryStats().live;
        m.clearPlans();
        return before - memoryStats().live;
      } finally {
        setGemmPolicy(previous);
        setOnednnWeightLayout(previousLayout);
        m.dispose();
      }
    };
    const m = createModel(cfg);
    let gemmWeightBytes = 0;  // every 2-D weight feeds a GEMM (1x1 convs, MLP, head)
    for (const [, p] of m.namedParameters()) if (p.ndim === 2) gemmWeightBytes += 4 * p.numel;
    m.dispose();
    // The plans' arenas go in every case; the copies only with bf16, with the own GEMM, and with oneDNN
    // reading its own layout of the weights.
    const arenaOnly = await drop('float32', 'onednn');
    expect(await drop('bf16', 'auto') - arenaOnly).toBeGreaterThanOrEqual(gemmWeightBytes / 2);
    expect(await drop('float32', 'own') - arenaOnly).toBeGreaterThanOrEqual(gemmWeightBytes);
    expect(await drop('float32', 'onednn', 'blocked') - arenaOnly).toBeGreaterThanOrEqual(gemmWeightBytes);
    x.dispose();
  });
});
