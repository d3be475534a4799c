/**
 * Devices: 'cpu' | 'cuda' | 'auto' resolution, Tensor.to('cuda') / .to('cpu'), and ops that would mix
 * devices. Without a usable CUDA device (every CI machine) the CUDA paths must fail with a clear Error,
 * never crash; with one (a GPU machine with Node) the round trips and a few ops are checked against the
 * CPU. The kernels themselves are checked op by op by native/cuda/tests (bench/gpu/check.sh).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { addon, BACKEND_ID, OP } from '../../lib/native.js';
import { cudaAvailable, cudaInfo, resolveDevice } from '../../lib/device.js';
import { Tensor } from '../../lib/tensor.js';
import { runOp } from '../../lib/backend.js';
import { createModel } from '../../lib/models/index.js';
import { crossEntropy, linear } from '../../lib/ops.js';
import { compilePlan } from '../../lib/plan.js';
import { manualSeed } from '../../lib/random.js';
import { tidy } from '../../lib/tensor.js';
import { createOptimizer } from '../../lib/train/optim.js';

const gpu = cudaAvailable();

afterEach(() => {
  vi.restoreAllMocks();
});

describe('device resolution', () => {
  it('reports what the build and the machine offer', () => {
    const info = cudaInfo();
    expect(typeof info.built).toBe('boolean');
    expect(typeof info.available).toBe('boolean');
    if (!info.available) expect(info.reason.length).toBeGreaterThan(0);
    if (!info.built && !info.emulated) expect(info.available).toBe(false);
    if (info.emulated) expect(info.built).toBe(false);  // only builds without CUDA emulate a device
  });

  it("takes 'cpu' as given and rejects unknown devices", () => {
    expect(resolveDevice('cpu')).toBe('cpu');
    expect(() => resolveDevice('gpu' as never)).toThrow(TypeError);
    expect(() => resolveDevice('gpu' as never)).toThrow(/Expected 'cpu', 'cuda' or 'auto' for device but received "gpu"/);
  });

  it.skipIf(gpu)("falls back to the CPU for 'auto' with one notice, and refuses 'cuda' saying why", () => {
    const write = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect(resolveDevice('auto')).toBe('cpu');
    expect(resolveDevice('auto')).toBe('cpu');
    const notices = write.mock.calls.filter((c) => String(c[0]).includes("device 'auto' runs on the CPU"));
    expect(notices.length).toBeLessThanOrEqual(1);
    expect(() => resolveDevice('cuda')).toThrow(/device 'cuda' is unavailable/);
  });

  it.runIf(gpu)("picks the GPU for 'auto' when one is present", () => {
    expect(resolveDevice('auto')).toBe('cuda');
    expect(resolveDevice('cuda')).toBe('cuda');
  });
});

describe('tensors on devices', () => {
  it.skipIf(gpu)('fails clearly when CUDA memory is asked for and CUDA is unavailable', () => {
    const t = Tensor.from([1, 2, 3]);
    try {
      expect(() => t.to('cuda')).toThrow(/CUDA/);
      expect(() => Tensor.empty([2], 'float32', 'cuda')).toThrow(/CUDA/);
      expect(() => Tensor.zeros([2], 'float32', 'cuda')).toThrow(/CUDA/);
    } finally {
      t.dispose();
    }
    expect(() => Tensor.empty([2], 'float32', 'tpu' as never)).toThrow(TypeError);
  });

  it.skipIf(cudaInfo().built || cudaInfo().emulated)('reports the missing backend for backend id 2 in a build without CUDA', () => {
    const t = Tensor.empty([3]);
    try {
      expect(() => addon.run(OP.fill, 0, BACKEND_ID.cuda, [], [t._h], [1])).toThrow(/no CUDA backend/);
    } finally {
      t.dispose();
    }
  });

  it('refuses an op whose tensors are on different devices', () => {
    const x = Tensor.from([1, -2, 3]);
    const out = Tensor.empty([3]);
    // A handle labelled 'cuda' is enough: the device check happens before anything runs.
    const y = new Tensor(x._h.share([3]), [3], 'float32', 'cuda');
    try {
      expect(() => runOp('starrelu', 0, ['x', 'scale', 'bias'], [y, null, null], [out]))
        .toThrow(/starrelu: Expected tensors on one device for its arguments but received 1 cpu and 1 cuda/);
    } finally {
      for (const t of [y, x, out]) t.dispose();
    }
  });

  it.runIf(gpu)('an allocation beyond the device memory is a RangeError, and the device still works', () => {
    expect(() => Tensor.empty([2 ** 38], 'float32', 'cuda')).toThrow(RangeError);  // 1 TiB
    expect(() => Tensor.zeros([2 ** 38], 'float32', 'cuda')).toThrow(/out of memory/i);
    const t = Tensor.ones([1000], 'float32', 'cuda');
    expect(t.toFloat32Array().reduce((a, b) => a + b, 0)).toBe(1000);
    t.dispose();
  });

  it.runIf(gpu)('copies to the GPU and back, converts dtypes there, and runs ops there', () => {
    const data = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 3);
    const x = Tensor.from(data, [10, 100]);
    const d = x.to('cuda');
    expect(d.device).toBe('cuda');
    expect(d._h.device).toBe(1);
    expect(() => d.view()).toThrow(/cpu tensor/);
    expect(Array.from(d.toFloat32Array())).toEqual(Array.from(data));
    const h = d.to('float16').to('cpu').to('float32');
    const ref = x.to('float16').to('float32');
    expect(Array.from(h.toFloat32Array())).toEqual(Array.from(ref.toFloat32Array()));
    // Ops on CUDA tensors run on the cuda backend (autograd functions do not yet allocate on the
    // input's device, so the op is called directly here).
    const yc = Tensor.empty([10, 100]);
    const yd = Tensor.empty([10, 100], 'float32', 'cuda');
    runOp('starrelu', 0, ['x', 'scale', 'bias'], [x, null, null], [yc]);
    runOp('starrelu', 0, ['x', 'scale', 'bias'], [d, null, null], [yd]);
    const a = yc.toFloat32Array(), b = yd.toFloat32Array();
    for (let i = 0; i < a.length; ++i) expect(Math.abs(a[i]! - b[i]!)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(a[i]!)));
    const z = Tensor.zeros([5], 'float32', 'cuda');
    expect(Array.from(z.toFloat32Array())).toEqual([0, 0, 0, 0, 0]);
    const o = Tensor.ones([4], 'int32', 'cuda');
    expect(Array.from(o.to('cpu').view())).toEqual([1, 1, 1, 1]);
    for (const t of [x, d, h, ref, yc, yd, z, o]) t.dispose();
  });
});

describe('copies off the main thread', () => {
  it('toAsync copies like to(), and refuses what to() refuses', async () => {
    const data = Float32Array.from({ length: 300 }, (_, i) => Math.cos(i) * 2);
    const x = Tensor.from(data, [3, 100]);
    const same = await x.toAsync('cpu');  // the same device: a copy
    expect(same).not.toBe(x);
    expect(Array.from(same.toFloat32Array())).toEqual(Array.from(data));
    await expect(x.toAsync('gpu' as never)).rejects.toThrow(TypeError);
    const gone = Tensor.from(data, [3, 100]);
    gone.dispose();
    await expect(gone.toAsync('cuda')).rejects.toThrow(/disposed/);
    x.dispose();
    same.dispose();
  });

  it.runIf(gpu)('moves tensors to the GPU and back on a worker thread; disposing the source meanwhile is safe', async () => {
    const data = Float32Array.from({ length: 5000 }, (_, i) => Math.sin(i) * 3);
    const x = Tensor.from(data, [50, 100]);
    const pending = x.toAsync('cuda');
    x.dispose();  // the copy holds the memory until it is done
    const d = await pending;
    expect(d.device).toBe('cuda');
    expect(d.dtype).toBe('float32');
    expect(d.shape).toEqual([50, 100]);
    const back = await d.toAsync('cpu');
    expect(back.device).toBe('cpu');
    expect(Array.from(back.toFloat32Array())).toEqual(Array.from(data));
    const i32 = Tensor.ones([7], 'int32');
    const di = await i32.toAsync('cuda');
    const hi = await di.toAsync('cpu');
    expect(Array.from(hi.view())).toEqual([1, 1, 1, 1, 1, 1, 1]);
    for (const t of [d, back, i32, di, hi]) t.dispose();
  });
});

describe('plans on devices', () => {
  it.runIf(gpu)("compiles plans for 'cuda': arena, input and outputs there; refuses tensors elsewhere", async () => {
    const w = Tensor.from(Float32Array.from({ length: 12 }, (_, i) => i / 7 - 0.8), [4, 3]);
    const wd = w.to('cuda');
    const xh = Tensor.from([0.5, -1, 2, 1.5, 0.25, -0.75], [2, 3]);
    const xd = xh.to('cuda');
    const onGpu = compilePlan((x) => linear(x, wd), [2, 3], 'cuda');
    const onCpu = compilePlan((x) => linear(x, w), [2, 3], 'cpu');
    try {
      const [yd] = await onGpu.run(xd);
      const [yh] = onCpu.runSync(xh);
      expect(yd!.device).toBe('cuda');
      const [a, b] = [yd!.toFloat32Array(), yh!.toFloat32Array()];
      for (let i = 0; i < a.length; ++i) expect(Math.abs(a[i]! - b[i]!)).toBeLessThanOrEqual(1e-6);
      expect(() => onGpu.runSync(xh)).toThrow(/Expected a cuda tensor \(the plan runs there; move it with .to\('cuda'\)\) for input/);
      expect(() => onCpu.runSync(xd)).toThrow(/Expected a cpu tensor/);
      expect(() => compilePlan((x) => linear(x, w), [2, 3], 'cuda')).toThrow(/Plan: expected the weights on cuda \(the cuda backend runs there\)/);
      for (const t of [yd!, yh!]) t.dispose();
    } finally {
      onGpu.dispose();
      onCpu.dispose();
      for (const t of [w, wd, xh, xd]) t.dispose();
    }
  });
});

describe('models on devices', () => {
  const tiny = { family: 'caformer' as const, depths: [1, 1, 1, 1], dims: [8, 16, 32, 32], numClasses: 5, imageSize: 32 };

  it("creates models on 'cpu' and 'auto' (the CPU here), and reports where they live", () => {
    const a = createModel(tiny, { device: 'cpu' });
    expect(a.device).toBe('cpu');
    expect(a.to('cpu')).toBe(a);
    const b = createModel(tiny, { device: gpu ? 'cpu' : 'auto' });
    expect(b.device).toBe('cpu');
    a.dispose();
    b.dispose();
  });

  it.skipIf(gpu)("refuses 'cuda' without a usable GPU, with the reason, and leaves a model where it was", () => {
    expect(() => createModel(tiny, { device: 'cuda' })).toThrow(/device 'cuda' is unavailable/);
    const m = createModel(tiny);
    expect(() => m.to('cuda')).toThrow(/device 'cuda' is unavailable/);
    expect(m.device).toBe('cpu');
    expect(m.parameters().every((p) => p.device === 'cpu' && !p.disposed)).toBe(true);
    m.dispose();
  });

  // CUDA graphs (on unless METAFORMER_CUDA_GRAPHS=0): a real device reads the switch when it starts (the
  // GPU check runs this file both ways), the emulated one at each run (so it is set here).
  it.runIf(gpu)('plans recorded as CUDA graphs give the step-by-step results, input by input', async () => {
    const real = !cudaInfo().emulated;
    const before = process.env.METAFORMER_CUDA_GRAPHS;
    const expectGraphs = real ? before !== '0' : true;
    manualSeed(6);
    const model = createModel(tiny);
    model.to('cuda');
    const inputs = [0.37, 0.11, 0.73].map((f) =>
      Tensor.from(Float32Array.from({ length: 2 * 3 * 32 * 32 }, (_, i) => Math.sin(i * f)), [2, 3, 32, 32]).to('cuda'));
    const plan = compilePlan((x) => model.forward(x), [2, 3, 32, 32], 'cuda');
    if (!real) process.env.METAFORMER_CUDA_GRAPHS = '0';
    const stepwise = compilePlan((x) => model.forward(x), [2, 3, 32, 32], 'cuda');
    try {
      const want = inputs.map((x) => {
        const [y] = stepwise.runSync(x);
        const v = y!.toFloat32Array();
        y!.dispose();
        return v;
      });
      if (!real) expect(stepwise.graphed).toBe(false);
      if (!real) process.env.METAFORMER_CUDA_GRAPHS = '1';
      expect(plan.graphed).toBe(false);  // the first run warms up step by step, the second records
      let runs = 0;
      for (let round = 0; round < 2; ++round)
        for (let k = 0; k < inputs.length; ++k) {  // each input copied in: not the recorded one's result
          const [y] = round === 0 ? await plan.run(inputs[k]!) : plan.runSync(inputs[k]!);
          expect(y!.device).toBe('cuda');
          expect(Array.from(y!.toFloat32Array())).toEqual(Array.from(want[k]!));
          y!.dispose();
          expect(plan.graphed).toBe(expectGraphs && ++runs >= 2);
        }
      const times = plan.profile(inputs[0]!);  // profiling runs step by step, timing each
      expect(times.length).toBe(plan.steps);
    } finally {
      if (before === undefined) delete process.env.METAFORMER_CUDA_GRAPHS;
      else process.env.METAFORMER_CUDA_GRAPHS = before;
      plan.dispose();
      stepwise.dispose();
      for (const x of inputs) x.dispose();
      model.dispose();
    }
  });

  it.runIf(gpu)('predicts and trains on the GPU like on the CPU', async () => {
    manualSeed(5);
    const cpu = createModel(tiny);
    const cuda = createModel(tiny);
    cuda.loadStateDict(cpu.stateDict());
    cuda.to('cuda');
    expect(cuda.parameters().every((p) => p.device === 'cuda')).toBe(true);
    const x = Tensor.from(Float32Array.from({ length: 2 * 3 * 32 * 32 }, (_, i) => Math.sin(i * 0.37)), [2, 3, 32, 32]);
    const close = (a: Float32Array, b: Float32Array, tol: number) => {
      let num = 0, den = 0;
      for (let i = 0; i < a.length; ++i) {
        num += (a[i]! - b[i]!) ** 2;
        den += b[i]! ** 2;
      }
      expect(Math.sqrt(num / Math.max(den, 1e-30))).toBeLessThanOrEqual(tol);
    };
    const [pc, pg] = [await cpu.predict(x), await cuda.predict(x)];
    expect(pg.device).toBe('cuda');
    close(pg.toFloat32Array(), pc.toFloat32Array(), 1e-5);
    // Backward on each: every parameter's gradient within the caformer_tiny fixture's largest suggested
    // float32 gradient tolerance (1e-4; two float32 implementations, like the fixture's float32 run).
    for (const m of [cpu, cuda]) tidy(() => crossEntropy(m.forward(x.device === m.device ? x : x.to(m.device)), [1, 3], { labelSmoothing: 0.1 }).backward());
    const [gc, gg] = [cpu.parameters(), cuda.parameters()];
    for (let i = 0; i < gc.length; ++i) {
      expect(gg[i]!.grad!.device).toBe('cuda');
      close(gg[i]!.grad!.toFloat32Array(), gc[i]!.grad!.toFloat32Array(), 1e-4);
    }
    // One AdamW step on each from the same gradients (the GPU's, copied to the CPU): the updated weights
    // agree. (From each device's own gradients they need not: the first Adam step is lr * g / (|g| + eps)
    // per element, so rounding flips the step of elements whose gradient is near zero; the CPU against
    // the float64 reference differs by 3e-4 in a qkv weight that way.)
    for (let i = 0; i < gc.length; ++i) {
      gc[i]!.grad!.dispose();
      gc[i]!.grad = gg[i]!.grad!.to('cpu');
    }
    for (const m of [cpu, cuda]) {
      const opt = createOptimizer('adamw', m, { lr: 1e-3 });
      opt.step();
      opt.dispose();
    }
    const sc = cpu.stateDict(), sg = cuda.stateDict();
    for (const [k, t] of sc) close(sg.get(k)!.toFloat32Array(), t.toFloat32Array(), 1e-5);
    for (const t of [x, pc, pg]) t.dispose();
    cpu.dispose();
    cuda.dispose();
  });
});
