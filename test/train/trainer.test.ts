/**
 * The training loop end to end on a tiny CAFormer (dims [8, 16, 24, 32], depths [1, 1, 1, 1], 16x16 inputs) and a
 * synthetic 2-class dataset: the loss falls; resume from a checkpoint repeats the losses of an uninterrupted run
 * (drop path, head dropout, mixup, EMA, a loader worker all on); a checkpoint write that fails midway leaves the
 * previous checkpoint loadable; saved weights carry exactly the official key names and shapes of
 * caformer_tiny (the golden fixture's state_dict_keys). Also: EMA arithmetic, metrics, the SVG writer.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cudaAvailable } from '../../lib/device.js';
import { readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { createModel, type MetaFormer } from '../../lib/models/index.js';
import { manualSeed } from '../../lib/random.js';
import { Tensor } from '../../lib/tensor.js';
import { loadTrainCheckpoint, saveModelWeights, saveTrainCheckpoint } from '../../lib/train/checkpoint.js';
import { TensorDataset } from '../../lib/train/data.js';
import { ModelEma } from '../../lib/train/ema.js';
import { DataLoader, loaderWorkerPath } from '../../lib/train/loader.js';
import { accuracy, topkCorrect } from '../../lib/train/metrics.js';
import { createOptimizer } from '../../lib/train/optim.js';
import { lineChartSvg, niceTicks } from '../../lib/train/plot.js';
import { CosineSchedule } from '../../lib/train/schedule.js';
import { type StepInfo, Trainer } from '../../lib/train/trainer.js';
import { fixturePath } from '../helpers/fixtures.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mf-train-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Class 0: bright top half; class 1: bright bottom half; plus noise. Separable, flip-invariant. */
function synthetic(n: number, seed: number): TensorDataset {
  let s = seed >>> 0;
  const rand = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const h = 16, w = 16;
  const images = new Uint8Array(n * h * w * 3);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; ++i) {
    const y = i % 2;
    labels[i] = y;
    for (let r = 0; r < h; ++r) {
      const bright = (r < h / 2) === (y === 0);
      for (let c = 0; c < w * 3; ++c) images[(i * h + r) * w * 3 + c] = Math.max(0, Math.min(255, Math.round((bright ? 170 : 70) + 60 * (rand() - 0.5))));
    }
  }
  return new TensorDataset(images, [n, h, w, 3], labels, ['top', 'bottom']);
}

const TINY = { family: 'caformer', depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], numClasses: 2, imageSize: 16 } as const;
const trainSpec = { kind: 'train', size: [16, 16], crop: 'pad', padding: 2, hflip: 0.5, randAugment: null, reprob: 0.25, mean: [0.5], std: [0.25] } as const;
const evalSpec = { kind: 'eval', size: [16, 16], mean: [0.5], std: [0.25] } as const;

interface Run {
  trainer: Trainer;
  model: MetaFormer;
  losses: StepInfo[];
  close: () => Promise<void>;
}

function makeRun(opts: { epochs: number; outDir?: string; workers?: number; seed?: number; mixup?: boolean; ema?: boolean; dropPath?: number; lr?: number; device?: 'cpu' | 'cuda' }): Run {
  manualSeed(opts.seed ?? 1);
  const model = createModel({ ...TINY, depths: [...TINY.depths], dims: [...TINY.dims] }, { dropPathRate: opts.dropPath ?? 0, headDropout: opts.dropPath ? 0.1 : 0 });
  if (opts.device === 'cuda') model.to('cuda');  // before the optimizer and the EMA take the parameters
  const train = new DataLoader(synthetic(64, 3), {
    batchSize: 16, shuffle: true, seed: 5, workers: opts.workers ?? 0, transform: { ...trainSpec, size: [16, 16] },
    mixup: opts.mixup ? { numClasses: 2, mixupAlpha: 0.8, cutmixAlpha: 1, labelSmoothing: 0.1 } : null,
  });
  const evalLoader = new DataLoader(synthetic(32, 99), { batchSize: 16, transform: { ...evalSpec, size: [16, 16] } });
  const optimizer = createOptimizer('adamw', model, { lr: opts.lr ?? 3e-3, weightDecay: 0.05 });
  const schedule = new CosineSchedule({ baseLr: opts.lr ?? 3e-3, totalIters: opts.epochs * train.length, warmupIters: 2, minLr: 1e-5 });
  const ema = opts.ema ? new ModelEma(model, { decay: 0.9 }) : null;
  const losses: StepInfo[] = [];
  const trainer = new Trainer({
    model, optimizer, schedule, trainLoader: train, evalLoader, epochs: opts.epochs, ema, outDir: opts.outDir ?? null,
    clipGrad: 5, progress: 'none', log: () => undefined, onStep: (s) => losses.push(s),
  });
  return {
    trainer, model, losses,
    close: async () => {
      await train.close();
      await evalLoader.close();
      optimizer.dispose();
      ema?.dispose();
      model.dispose();
    },
  };
}

describe('Trainer', () => {
  it('trains a tiny CAFormer: the loss falls and the held-out accuracy is high', async () => {
    const out = path.join(tmp, 'smoke');
    const run = makeRun({ epochs: 8, outDir: out, lr: 4e-3 });
    try {
      const hist = await run.trainer.fit();
      expect(hist.length).toBe(8);
      const first = hist[0]!.trainLoss, last = hist[hist.length - 1]!.trainLoss;
      expect(last).toBeLessThan(0.6 * first);
      expect(hist[hist.length - 1]!.eval!.top1).toBeGreaterThanOrEqual(90);
      expect(hist[hist.length - 1]!.eval!.images).toBe(32);
      const files = readdirSync(out).sort();
      expect(files).toEqual(['checkpoint.safetensors', 'curves.svg', 'metrics.jsonl', 'model.safetensors', 'model_best.safetensors']);
      const lines = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string });
      expect(lines.filter((l) => l.kind === 'epoch').length).toBe(8);
      const svg = readFileSync(path.join(out, 'curves.svg'), 'utf8');
      expect(svg).toMatch(/^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      expect(svg.match(/<polyline/g)!.length).toBe(2);
      expect(run.trainer.iteration).toBe(8 * 4);
    } finally {
      await run.close();
    }
  });

  const workers = existsSync(loaderWorkerPath()) ? 1 : 0;
  it('resume continues the identical trajectory (drop path, mixup, EMA, loader worker)', async () => {
    const common = { workers, mixup: true, ema: true, dropPath: 0.1 };
    const a = makeRun({ ...common, epochs: 2 });
    const outB = path.join(tmp, 'resume-b');
    const b = makeRun({ ...common, epochs: 2, outDir: outB });
    const c = makeRun({ ...common, epochs: 2, seed: 77 });  // different initial weights, overwritten by resume
    try {
      manualSeed(123);  // the dropout / drop-path masks of the run
      await a.trainer.fit();
      manualSeed(123);
      // B: stop after one epoch (its checkpoint is written at the end of the epoch)
      (b.trainer as unknown as { epochs: number }).epochs = 1;
      await b.trainer.fit();
      expect(b.losses.map((s) => s.loss)).toEqual(a.losses.slice(0, 4).map((s) => s.loss));
      await c.trainer.resume(path.join(outB, 'checkpoint.safetensors'));
      expect(c.trainer.epoch).toBe(1);
      expect(c.trainer.iteration).toBe(4);
      await c.trainer.fit();
      const tailA = a.losses.slice(4);
      expect(c.losses.length).toBe(tailA.length);
      expect(c.losses.map((s) => s.loss)).toEqual(tailA.map((s) => s.loss));
      expect(c.losses.map((s) => s.lr)).toEqual(tailA.map((s) => s.lr));
      for (const [name, p] of a.model.namedParameters()) {
        expect(c.model.stateDict().get(name)!.toFloat32Array(), name).toEqual(p.toFloat32Array());
      }
      expect(c.trainer.history.map((h) => h.eval!.top1)).toEqual(a.trainer.history.map((h) => h.eval!.top1));
      expect(c.trainer.history[1]!.emaEval!.loss).toBe(a.trainer.history[1]!.emaEval!.loss);
    } finally {
      await Promise.all([a.close(), b.close(), c.close()]);
    }
  });

  // Where a GPU is usable: the same run on the GPU follows the CPU's losses (fp32 on both; the kernels'
  // summation orders differ), and a checkpoint written there resumes there.
  it.runIf(cudaAvailable())('trains on the GPU as on the CPU (mixup, EMA), and resumes on the GPU from its checkpoint', async () => {
    const common = { mixup: true, ema: true };
    const cpu = makeRun({ ...common, epochs: 2 });
    const outG = path.join(tmp, 'gpu');
    const g = makeRun({ ...common, epochs: 2, outDir: outG, device: 'cuda' });  // the same schedule; stops after one epoch
    const r = makeRun({ ...common, epochs: 2, seed: 77, device: 'cuda' });
    const near = (got: StepInfo[], want: StepInfo[]) => {
      expect(got.length).toBe(want.length);
      got.forEach((s, i) => expect(Math.abs(s.loss - want[i]!.loss), `step ${i}: ${s.loss} vs ${want[i]!.loss}`).toBeLessThanOrEqual(2e-3 * Math.max(1, Math.abs(want[i]!.loss))));
    };
    try {
      manualSeed(123);
      await cpu.trainer.fit();
      manualSeed(123);
      (g.trainer as unknown as { epochs: number }).epochs = 1;
      await g.trainer.fit();
      expect(g.model.device).toBe('cuda');
      expect(g.model.parameters().every((p) => p.device === 'cuda')).toBe(true);
      near(g.losses, cpu.losses.slice(0, 4));
      await r.trainer.resume(path.join(outG, 'checkpoint.safetensors'));
      expect(r.model.device).toBe('cuda');
      await r.trainer.fit();
      near(r.losses, cpu.losses.slice(4));
      const ev = r.trainer.history[1]!, evCpu = cpu.trainer.history[1]!;
      expect(Math.abs(ev.eval!.loss - evCpu.eval!.loss)).toBeLessThanOrEqual(2e-3 * Math.max(1, evCpu.eval!.loss));
      expect(Math.abs(ev.emaEval!.loss - evCpu.emaEval!.loss)).toBeLessThanOrEqual(2e-3 * Math.max(1, evCpu.emaEval!.loss));
    } finally {
      await Promise.all([cpu.close(), g.close(), r.close()]);
    }
  });

  it('gradient accumulation (2 x 8) matches one batch of 16 (SGD: sensitive to the 1 / accumSteps factor)', async () => {
    const final: Float32Array[][] = [];
    for (const [bs, accum] of [[16, 1], [8, 2]] as const) {
      manualSeed(4);
      const model = createModel({ ...TINY, depths: [...TINY.depths], dims: [...TINY.dims] });
      const loader = new DataLoader(synthetic(64, 3), { batchSize: bs, shuffle: true, seed: 5, transform: { ...evalSpec, size: [16, 16] } });
      const optimizer = createOptimizer('sgd', model, { lr: 0.05 });  // SGD: unlike Adam, sensitive to the gradient scale
      const trainer = new Trainer({ model, optimizer, trainLoader: loader, epochs: 1, accumSteps: accum, clipGrad: 100, progress: 'none', log: () => undefined });
      await trainer.fit();
      expect(trainer.iteration).toBe(4);
      final.push([...model.namedParameters()].map(([, p]) => p.toFloat32Array()));
      optimizer.dispose();
      model.dispose();
    }
    let worst = 0;
    final[0]!.forEach((a, i) => a.forEach((v, j) => { worst = Math.max(worst, Math.abs(v - final[1]![i]![j]!)); }));
    expect(worst).toBeLessThan(2e-5);
  });

  it('a checkpoint write that fails midway leaves the previous checkpoint loadable', async () => {
    const dir = path.join(tmp, 'crash');
    const run = makeRun({ epochs: 1, outDir: dir });
    try {
      await run.trainer.fit();
      const file = path.join(dir, 'checkpoint.safetensors');
      const before = readFileSync(file);
      const weights = run.model.stateDict().get('head.fc2.weight')!.toFloat32Array();
      // change the state, then crash while writing the next checkpoint
      run.trainer.epoch = 5;
      await expect(saveTrainCheckpoint(file, { model: run.model, optimizer: run.trainer.optimizer, state: { epoch: 5 } }, {
        beforeChunk: (i) => {
          if (i === 7) throw new Error('simulated crash');
        },
      })).rejects.toThrow('simulated crash');
      expect(readFileSync(file).equals(before)).toBe(true);
      expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      const ck = await loadTrainCheckpoint(file);
      try {
        expect(ck.state.epoch).toBe(1);
        expect(ck.model.get('head.fc2.weight')!.toFloat32Array()).toEqual(weights);
        expect(ck.optimizer!.kind).toBe('adamw');
        expect(ck.optimizer!.tensors.has('exp_avg.head.fc2.weight')).toBe(true);
      } finally {
        ck.dispose();
      }
    } finally {
      await run.close();
    }
  });

  const dist = path.join(root, 'dist', 'lib');
  it.runIf(existsSync(path.join(dist, 'train', 'checkpoint.js')))('a process killed (SIGKILL) midway through a checkpoint write leaves the previous checkpoint loadable', async () => {
    const file = path.join(tmp, 'killed', 'checkpoint.safetensors');
    const script = `
      const ck = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'train', 'checkpoint.js')).href)});
      const { createModel } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'models', 'index.js')).href)});
      const { mkdirSync } = await import('node:fs');
      mkdirSync(${JSON.stringify(path.dirname(file))}, { recursive: true });
      const m = createModel(${JSON.stringify(TINY)});
      await ck.saveTrainCheckpoint(${JSON.stringify(file)}, { model: m, state: { epoch: 1 } });
      await ck.saveTrainCheckpoint(${JSON.stringify(file)}, { model: m, state: { epoch: 2 } }, {
        beforeChunk: (i) => { if (i === 6) process.kill(process.pid, 'SIGKILL'); },
      });
      process.stdout.write('not killed');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.signal, r.stderr).toBe('SIGKILL');
    expect(r.stdout).toBe('');
    const leftovers = readdirSync(path.dirname(file)).filter((f) => f.endsWith('.tmp'));
    expect(leftovers.length).toBe(1);  // the killed write's temporary file; the checkpoint itself is intact
    const ck = await loadTrainCheckpoint(file);
    try {
      expect(ck.state.epoch).toBe(1);
      const m = createModel({ ...TINY, depths: [...TINY.depths], dims: [...TINY.dims] });
      expect([...ck.model.keys()].sort()).toEqual([...m.namedParameters()].map(([k]) => k).sort());
      m.dispose();
    } finally {
      ck.dispose();
    }
  });

  it('saved weights have the official key names and shapes (caformer_tiny state_dict_keys)', async () => {
    const fixture = fixturePath('models', 'caformer_tiny.safetensors');
    const header = await readSafetensorsHeader(fixture);
    const cfg = JSON.parse(header.metadata.config!) as { depths: number[]; dims: number[]; num_classes: number; image_size: [number, number]; state_dict_keys: string[] };
    const model = createModel({ family: 'caformer', depths: cfg.depths, dims: cfg.dims, numClasses: cfg.num_classes, imageSize: cfg.image_size });
    try {
      const file = path.join(tmp, 'caformer_tiny_weights.safetensors');
      await saveModelWeights(file, model);
      const saved = await readSafetensorsHeader(file);
      expect([...saved.tensors.keys()].sort()).toEqual([...cfg.state_dict_keys].sort());
      for (const k of cfg.state_dict_keys) {
        expect(saved.tensors.get(k)!.shape, k).toEqual(header.tensors.get(`param.${k}`)!.shape);
        expect(saved.tensors.get(k)!.dtype).toBe('float32');
      }
      expect(JSON.parse(saved.metadata.metaformer_config!).family).toBe('caformer');
      // the training checkpoint stores the same names under "model."
      const ckFile = path.join(tmp, 'caformer_tiny_ck.safetensors');
      await saveTrainCheckpoint(ckFile, { model, state: { epoch: 0 } });
      const ck = await readSafetensorsHeader(ckFile);
      expect([...ck.tensors.keys()].map((k) => k.replace(/^model\./, '')).sort()).toEqual([...cfg.state_dict_keys].sort());
    } finally {
      model.dispose();
    }
  });
});

describe('EMA, metrics, plot', () => {
  it('EMA follows ema += (1 - decay)(p - ema), with warmup, and swaps weights for evaluation', async () => {
    manualSeed(2);
    const model = createModel({ family: 'identityformer', depths: [1, 1, 1, 1], dims: [4, 4, 4, 4], numClasses: 2, imageSize: 32 });
    const ema = new ModelEma(model, { decay: 0.75 });
    const p = model.stateDict().get('head.weight')!;
    const v0 = p.toFloat32Array();
    p.view<'float32'>().fill(1);
    ema.update(model);
    const e = ema.stateDict().get('head.weight')!.toFloat32Array();
    e.forEach((x, i) => expect(x).toBeCloseTo(v0[i]! + 0.25 * (1 - v0[i]!), 6));
    const inside = await ema.withWeights(model, () => p.toFloat32Array());
    expect(inside).toEqual(e);
    expect(p.toFloat32Array().every((x) => x === 1)).toBe(true);
    const w = new ModelEma(model, { decay: 0.9999, warmup: true });
    expect(w.currentDecay()).toBeCloseTo(0.1, 12);
    ema.dispose();
    w.dispose();
    model.dispose();
  });

  it('top-k counts and accuracies', () => {
    const logits = Float32Array.from([0.1, 0.5, 0.2, 3, 2, 1, 0, 0, 0]);
    expect(topkCorrect(logits, 3, [1, 2, 0], [1, 2])).toEqual([2, 2]);
    expect(accuracy(logits, 3, [2, 2, 1], [1, 3])).toEqual([0, 100]);
    const t = Tensor.from([1, 2], [2]);
    t.dispose();
  });

  it('SVG line charts with nice ticks and escaped text', () => {
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(3, 3)[0]).toBeLessThan(3);
    const svg = lineChartSvg({ title: 'a < b', series: [{ name: 'x&y', points: [[1, 2], [2, 3]] }, { name: 'r', points: [[1, 50]], axis: 'right' }] });
    expect(svg).toContain('a &lt; b');
    expect(svg).toContain('x&amp;y');
    expect(svg.trim().endsWith('</svg>')).toBe(true);
  });
});
