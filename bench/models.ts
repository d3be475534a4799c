/**
 * Model benchmarks: the five S-size models at 224x224, batch 1 latency and batch 32 throughput, for
 * metaformer (predict(), the async path users call), onnxruntime-node (CPU EP, 2 intra-op threads, all
 * graph optimisations, on the ONNX file our exporter writes from the same weights) and PyTorch 1.13
 * (the same weights, tuned as PITFALLS.md says). Rounds alternate the three, medians over all runs.
 * Ours runs in each requested precision (float32, bf16) in every round; the peers run float32, so a bf16
 * row's ratios compare our bf16 with their float32.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { toOnnxBytes } from '../lib/io/onnx.js';
import { writeSafetensors } from '../lib/io/tensors.js';
import { memoryStats, resetPeakMemory } from '../lib/memory.js';
import { createModel, type MetaFormer } from '../lib/models/index.js';
import { type Precision } from '../lib/plan.js';
import { Tensor } from '../lib/tensor.js';
import { loadOrt, runTorch } from './lib/peers.js';
import { fmt, median, timeAsync } from './lib/timing.js';

export interface ModelRow {
  model: string;
  batch: number;
  precision: Precision;
  oursMs: number;
  ortMs: number;
  torchMs: number;
  gflop: number;
  /** Peak native memory of predict() in this precision on a fresh model (weights, plan arena, input, output, scratch, bf16 weight copies), MB. */
  peakMB: number;
  /** Blocks of >= 64 KiB taken from the system during the timed predict() calls (after two warm-up calls per precision). */
  systemAllocs: number;
}

/** GFLOP of one image's forward pass (2 per multiply-accumulate, counted from the traced plan). */
export function modelGflop(model: MetaFormer, size = 224): number {
  return (2 * model.plan([1, 3, size, size]).macs) / 1e9;
}

export async function runModels(opts: {
  models: string[];
  batches: number[];
  precisions: Precision[];
  rounds: number;
  iters: number;
  torch: boolean;
  ort: boolean;
  log: (s: string) => void;
}): Promise<ModelRow[]> {
  const ort = opts.ort ? await loadOrt() : null;
  const rows: ModelRow[] = [];
  const dir = mkdtempSync(path.join(tmpdir(), 'metaformer-bench-'));
  try {
    for (const name of opts.models) {
      const model = createModel(name);
      model.eval();
      const weights = path.join(dir, `${name}.safetensors`);
      if (opts.torch) await writeSafetensors(weights, model.stateDict());
      const gflop = modelGflop(model);
      for (const batch of opts.batches) {
        const x = Tensor.zeros([batch, 3, 224, 224]);
        const xs = new Float32Array(batch * 3 * 224 * 224).map((_, i) => Math.sin(i * 0.001));
        x.view<'float32'>().set(xs);
        const session = ort
          ? await ort.InferenceSession.create(toOnnxBytes(model, { batch }), { graphOptimizationLevel: 'all', intraOpNumThreads: 2, interOpNumThreads: 1 })
          : null;
        const feeds = ort ? { input: new ort.Tensor('float32', xs, [batch, 3, 224, 224]) } : null;
        const ortT: number[] = [], torchT: number[] = [];
        const ours = opts.precisions.map((precision) => ({ precision, times: [] as number[], allocs: 0, peak: 0 }));
        // Compiles the plans and makes bf16's weight copies; the second pass lets each precision take
        // back the cached blocks the other's first calls used. Allocations from here on are steady state.
        for (let w = 0; w < 2; ++w) {
          for (const o of ours) {
            model.precision = o.precision;
            (await model.predict(x)).dispose();
          }
        }
        const iters = batch === 1 ? opts.iters : Math.max(2, Math.ceil(opts.iters / 4));
        for (let r = 0; r < opts.rounds; ++r) {
          for (const o of ours) {
            model.precision = o.precision;
            const a0 = memoryStats().systemAllocs;
            o.times.push(...await timeAsync(async () => (await model.predict(x)).dispose(), iters, 1));
            o.allocs += memoryStats().systemAllocs - a0;
          }
          if (session && feeds) ortT.push(...await timeAsync(async () => { await session.run(feeds); }, iters, 1));
          if (opts.torch) {
            const t = runTorch({ kind: 'model', config: { family: model.config.family, depths: model.config.depths, dims: model.config.dims },
              batch, size: 224, iters, warmup: 1, weights });
            if ('times' in t && t.times) torchT.push(...t.times);
            else if (r === 0) opts.log(`  PyTorch: ${(t as { error?: string }).error ?? 'no result'}`);
          }
        }
        await session?.release();
        // Peak memory of one precision alone: a fresh model (this one holds both precisions' plans and
        // the bf16 weight copies), counted from the memory live before it was created.
        for (const o of ours) {
          const base = memoryStats().live;
          const alone = createModel(name);
          try {
            alone.eval();
            alone.precision = o.precision;
            (await alone.predict(x)).dispose();
            resetPeakMemory();
            (await alone.predict(x)).dispose();
            o.peak = memoryStats().peak - base;
          } finally {
            alone.dispose();
          }
        }
        x.dispose();
        for (const o of ours) {
          const row: ModelRow = {
            model: name, batch, precision: o.precision, oursMs: median(o.times) * 1e3, ortMs: median(ortT) * 1e3, torchMs: median(torchT) * 1e3, gflop,
            peakMB: o.peak / 2 ** 20, systemAllocs: o.allocs,
          };
          rows.push(row);
          const ips = (ms: number) => fmt((1000 * batch) / ms, 1);
          opts.log(`${name.padEnd(20)} b${String(batch).padEnd(3)} ${o.precision.padEnd(7)} ours ${fmt(row.oursMs, 1)} ms (${ips(row.oursMs)} img/s, ${fmt((gflop * batch) / (row.oursMs / 1e3), 0)} GFLOP/s)` +
            `  ORT ${fmt(row.ortMs, 1)} ms (${fmt(row.ortMs / row.oursMs, 2)}x)  PyTorch ${fmt(row.torchMs, 1)} ms (${fmt(row.torchMs / row.oursMs, 2)}x)` +
            `  peak ${fmt(row.peakMB, 0)} MB, ${o.allocs} system allocs after warm-up`);
        }
      }
      model.dispose();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
