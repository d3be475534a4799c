/**
 * Trainer: the training loop of timm's train.py in short. Per micro-batch: forward (autograd), cross-entropy
 * against soft targets (mixup / cutmix / smoothing from the loader) or class ids with label smoothing, backward
 * (gradients accumulate in the parameters). Every `accumSteps` micro-batches (and at the end of an epoch): the
 * scheduled learning rate, global-norm clipping and the 1 / accumulated-count factor folded into the native
 * optimizer's grad_scale, the update, EMA, next schedule step.
 *
 * After each epoch: evaluation (top-1, top-5, loss; with EMA weights too), a metrics line in metrics.jsonl, the
 * training-curve plot curves.svg, and checkpoint.safetensors (atomic; see checkpoint.ts) holding everything a
 * resumed run needs: weights, optimizer, schedule, EMA, epoch / iteration, data-loader state and the global RNG
 * (dropout / drop-path masks). Batches are seeded per (seed, epoch, index), so a resumed run repeats the losses of
 * an uninterrupted one. model_best.safetensors and model.safetensors hold plain weights (official names).
 *
 * Progress: a bar on a TTY (loss, accuracy, images/s, ETA), plain log lines otherwise.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { crossEntropy } from '../ops.js';
import type { Module } from '../nn/module.js';
import { getRngState, setRngState } from '../random.js';
import { expectation, onDevice, Tensor, tidy } from '../tensor.js';
import { LABELS_METADATA_KEY, loadTrainCheckpoint, saveModelWeights, saveTrainCheckpoint } from './checkpoint.js';
import type { Batch } from './data.js';
import type { ModelEma } from './ema.js';
import type { DataLoader, DataLoaderState } from './loader.js';
import { evaluate, type EvalResult, Mean, topkCorrect } from './metrics.js';
import { gradNorm, type Optimizer } from './optim.js';
import { trainingCurvesSvg } from './plot.js';
import type { Schedule, ScheduleState } from './schedule.js';

export interface EpochRecord {
  epoch: number;
  trainLoss: number;
  /** Top-1 of the training batches against their class ids (approximate under mixup). */
  trainTop1: number;
  lr: number;
  images: number;
  seconds: number;
  imagesPerSec: number;
  eval?: EvalResult;
  emaEval?: EvalResult;
}

export interface StepInfo {
  epoch: number;
  /** Micro-batches done in total. */
  step: number;
  /** Optimizer updates done. */
  iteration: number;
  loss: number;
  lr: number;
  batchSize: number;
}

export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';

export interface TrainerOptions {
  model: Module;
  optimizer: Optimizer;
  trainLoader: DataLoader;
  epochs: number;
  schedule?: Schedule | null;
  evalLoader?: DataLoader | null;
  /** Micro-batches per optimizer update. Default 1. */
  accumSteps?: number;
  /** Clip the global gradient norm (of the averaged gradient) to this. */
  clipGrad?: number | null;
  /** Label smoothing for batches without soft targets. Default 0. */
  labelSmoothing?: number;
  ema?: ModelEma | null;
  /** Output folder for metrics.jsonl, curves.svg, checkpoints; null: write nothing. */
  outDir?: string | null;
  /** Also checkpoint every this many micro-batches (besides every epoch). */
  checkpointEvery?: number | null;
  /** Log / JSONL interval in micro-batches. Default 50. */
  logInterval?: number;
  progress?: ProgressMode;
  log?: (line: string) => void;
  /** Run configuration recorded in the checkpoints and metrics. */
  config?: Record<string, unknown>;
  onStep?: (info: StepInfo) => void;
  /** Class names, recorded in the exported weights (metadata 'metaformer_labels', a JSON array). */
  labels?: readonly string[];
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--:--';
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  return `${h > 0 ? `${h}:${String(m).padStart(2, '0')}` : String(m)}:${String(sec).padStart(2, '0')}`;
}

/** A one-line progress bar on a TTY, or plain lines. */
class Progress {
  private last = 0;
  constructor(private readonly mode: 'bar' | 'lines' | 'none', private readonly log: (s: string) => void, private readonly interval: number) {}

  update(label: string, done: number, total: number, fields: string, force = false): void {
    if (this.mode === 'none') return;
    if (this.mode === 'bar') {
      const now = Date.now();
      if (!force && now - this.last < 200 && done < total) return;
      this.last = now;
      const width = 24;
      const filled = Math.round((width * done) / Math.max(1, total));
      const line = `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${fields}`;
      process.stderr.write(`\r${line.slice(0, (process.stderr.columns || 120) - 1)}\x1b[K`);
      if (done >= total) process.stderr.write('\n');
    } else if (force || done === total || done % this.interval === 0) {
      this.log(`${label} ${done}/${total} ${fields}`);
    }
  }
}

export class Trainer {
  readonly model: Module;
  readonly optimizer: Optimizer;
  readonly schedule: Schedule | null;
  readonly trainLoader: DataLoader;
  readonly evalLoader: DataLoader | null;
  readonly ema: ModelEma | null;
  readonly epochs: number;
  readonly accumSteps: number;
  readonly clipGrad: number | null;
  readonly labelSmoothing: number;
  readonly outDir: string | null;
  readonly checkpointEvery: number | null;
  readonly logInterval: number;
  readonly config: Record<string, unknown>;
  /** Completed epochs. */
  epoch = 0;
  /** Optimizer updates done. */
  iteration = 0;
  /** Micro-batches done. */
  step = 0;
  history: EpochRecord[] = [];
  bestTop1 = -Infinity;
  private pendingMicro = 0;
  private readonly log: (line: string) => void;
  private readonly progress: Progress;
  private readonly onStep?: (info: StepInfo) => void;
  private readonly weightsMeta: Record<string, string>;

  constructor(opts: TrainerOptions) {
    if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('trainer options', 'options', opts));
    const posInt = (v: unknown, name: string, dflt: number): number => {
      const x = v === undefined ? dflt : v;
      if (!Number.isSafeInteger(x) || (x as number) < 1) throw new RangeError(expectation('a positive integer', name, v));
      return x as number;
    };
    this.model = opts.model;
    this.optimizer = opts.optimizer;
    this.trainLoader = opts.trainLoader;
    if (!this.model || typeof this.model.forward !== 'function') throw new TypeError(expectation('a Module', 'model', opts.model));
    if (!this.optimizer || typeof this.optimizer.step !== 'function') throw new TypeError(expectation('an Optimizer', 'optimizer', opts.optimizer));
    if (!this.trainLoader || typeof this.trainLoader.stateDict !== 'function') throw new TypeError(expectation('a DataLoader', 'trainLoader', opts.trainLoader));
    this.epochs = posInt(opts.epochs, 'epochs', NaN);
    this.schedule = opts.schedule ?? null;
    this.evalLoader = opts.evalLoader ?? null;
    this.ema = opts.ema ?? null;
    this.accumSteps = posInt(opts.accumSteps, 'accumSteps', 1);
    const clip = opts.clipGrad ?? null;
    if (clip !== null && !(typeof clip === 'number' && clip > 0)) throw new RangeError(expectation('a number > 0 or null', 'clipGrad', clip));
    this.clipGrad = clip;
    const ls = opts.labelSmoothing ?? 0;
    if (!(typeof ls === 'number' && ls >= 0 && ls < 1)) throw new RangeError(expectation('a number in [0, 1)', 'labelSmoothing', ls));
    this.labelSmoothing = ls;
    this.outDir = opts.outDir ?? null;
    const every = opts.checkpointEvery ?? null;
    this.checkpointEvery = every === null ? null : posInt(every, 'checkpointEvery', NaN);
    this.logInterval = posInt(opts.logInterval, 'logInterval', 50);
    this.config = opts.config ?? {};
    this.log = opts.log ?? ((s: string) => process.stderr.write(`${s}\n`));
    const mode = opts.progress ?? 'auto';
    if (!['auto', 'bar', 'lines', 'none'].includes(mode)) throw new TypeError(expectation("'auto', 'bar', 'lines' or 'none'", 'progress', mode));
    this.progress = new Progress(mode === 'auto' ? (process.stderr.isTTY ? 'bar' : 'lines') : mode, this.log, this.logInterval);
    this.onStep = opts.onStep;
    this.weightsMeta = opts.labels ? { [LABELS_METADATA_KEY]: JSON.stringify(opts.labels) } : {};
    if (this.outDir) mkdirSync(this.outDir, { recursive: true });
  }

  private file(name: string): string | null {
    return this.outDir ? path.join(this.outDir, name) : null;
  }

  private record(obj: Record<string, unknown>): void {
    const f = this.file('metrics.jsonl');
    if (f) appendFileSync(f, `${JSON.stringify({ time: new Date().toISOString(), ...obj })}\n`);
  }

  /** The learning rate of the next update. */
  get lr(): number {
    return this.schedule ? this.schedule.lrAt(this.iteration) : this.optimizer.lr;
  }

  /** One micro-batch: forward, loss, backward (gradients accumulate). Returns the loss and top-1 correct count. */
  forwardBackward(batch: Batch): { loss: number; correct: number } {
    const r = tidy(() => {
      const device = this.model.device;  // batches come from the loader on the CPU
      const x = onDevice(Tensor.from(batch.images, batch.shape), device);
      const logits = this.model.forward(x);
      const k = logits.shape[1]!;
      const loss = batch.targets
        ? crossEntropy(logits, onDevice(Tensor.from(batch.targets, [batch.shape[0], k]), device))
        : crossEntropy(logits, batch.labels, { labelSmoothing: this.labelSmoothing });
      loss.backward();
      return { loss: loss.item(), logits: logits.toFloat32Array(), k };
    });
    if (!Number.isFinite(r.loss)) {
      throw new Error(`training diverged: the loss is ${r.loss} at epoch ${this.epoch}, step ${this.step} (lower the learning rate or clip gradients)`);
    }
    return { loss: r.loss, correct: topkCorrect(r.logits, r.k, batch.labels, [1])[0]! };
  }

  /**
   * One micro-batch of training: forward / backward, and the optimizer update when `accumSteps` micro-batches
   * have accumulated (or `flush`, at the end of an epoch). Returns the loss and the top-1 correct count.
   */
  trainStep(batch: Batch, flush = false): { loss: number; correct: number } {
    const r = this.forwardBackward(batch);
    this.pendingMicro += 1;
    this.step += 1;
    if (this.pendingMicro >= this.accumSteps || flush) this.optimizerStep();
    return r;
  }

  /** Applies the accumulated gradients: lr from the schedule, clipping, update, EMA. */
  optimizerStep(): void {
    if (this.pendingMicro === 0) return;
    this.optimizer.setLr(this.lr);
    let gs = 1 / this.pendingMicro;
    if (this.clipGrad !== null) {
      const norm = gradNorm(this.optimizer.parameters(), gs);
      const coef = this.clipGrad / (norm + 1e-6);
      if (coef < 1) gs *= coef;
    }
    this.optimizer.step({ gradScale: gs });
    this.optimizer.zeroGrad();
    this.ema?.update(this.model);
    this.iteration += 1;
    this.schedule?.step();
    this.pendingMicro = 0;
  }

  /** Trains the rest of the current epoch. */
  async trainEpoch(): Promise<EpochRecord> {
    const loader = this.trainLoader;
    const epoch = loader.epoch;
    const total = loader.length;
    const start = Date.now();
    const lossMean = new Mean();
    let correct = 0, images = 0, batches = 0, windowImages = 0, windowStart = Date.now();
    let rate = 0;
    this.model.train();
    const label = `epoch ${epoch + 1}/${this.epochs}`;
    for await (const batch of loader) {
      const lr = this.lr;  // the rate this micro-batch's update uses
      const done = batch.index + 1;
      const { loss, correct: c } = this.trainStep(batch, done === total);
      const bs = batch.labels.length;
      lossMean.add(loss, bs);
      correct += c;
      images += bs;
      batches += 1;
      windowImages += bs;
      this.onStep?.({ epoch, step: this.step, iteration: this.iteration, loss, lr, batchSize: bs });
      // images/s over a window of up to 5 s that starts after the first batch (start-up excluded)
      const now = Date.now();
      if (batches === 1) {
        windowStart = now;
        windowImages = 0;
      } else if (now - windowStart >= 500) {
        rate = (1000 * windowImages) / (now - windowStart);
        if (now - windowStart >= 5000) {
          windowStart = now;
          windowImages = 0;
        }
      }
      const eta = rate > 0 ? ((total - done) * (images / batches)) / rate : NaN;
      this.progress.update(label, done, total,
        `loss ${lossMean.value.toFixed(4)} acc ${((100 * correct) / Math.max(1, images)).toFixed(1)}% lr ${lr.toExponential(2)} ${rate.toFixed(1)} img/s ETA ${fmtTime(eta)}`);
      if (this.step % this.logInterval === 0) {
        this.record({ kind: 'train', epoch, step: this.step, iteration: this.iteration, loss, lossMean: lossMean.value, lr, imagesPerSec: rate });
      }
      if (this.checkpointEvery !== null && this.step % this.checkpointEvery === 0 && this.pendingMicro === 0 && done < total) await this.saveCheckpoint();
    }
    const seconds = (Date.now() - start) / 1000;
    return {
      epoch, trainLoss: lossMean.value, trainTop1: (100 * correct) / Math.max(1, images), lr: this.lr,
      images, seconds, imagesPerSec: images / Math.max(seconds, 1e-9),
    };
  }

  /** Evaluates the model (and its EMA) on the eval loader. */
  async evaluate(): Promise<{ eval?: EvalResult; emaEval?: EvalResult }> {
    if (!this.evalLoader) return {};
    const loader = this.evalLoader;
    const run = async (): Promise<EvalResult> => {
      loader.setEpoch(0);
      return evaluate(this.model, loader);
    };
    const out: { eval?: EvalResult; emaEval?: EvalResult } = { eval: await run() };
    if (this.ema) out.emaEval = await this.ema.withWeights(this.model, run);
    return out;
  }

  /** Trains until `epochs` epochs are complete; returns the history. */
  async fit(): Promise<EpochRecord[]> {
    this.record({ kind: 'start', epoch: this.epoch, iteration: this.iteration, config: this.config });
    while (this.epoch < this.epochs) {
      if (this.trainLoader.epoch !== this.epoch) this.trainLoader.setEpoch(this.epoch);
      const rec = await this.trainEpoch();
      Object.assign(rec, await this.evaluate());
      this.epoch += 1;
      this.history.push(rec);
      const e = rec.eval, m = rec.emaEval;
      this.log(`epoch ${rec.epoch + 1}/${this.epochs}: train loss ${rec.trainLoss.toFixed(4)}, ${rec.imagesPerSec.toFixed(1)} img/s, ${rec.seconds.toFixed(1)} s` +
        (e ? `; eval top-1 ${e.top1.toFixed(2)}% top-5 ${e.top5.toFixed(2)}% loss ${e.loss.toFixed(4)}` : '') +
        (m ? `; EMA top-1 ${m.top1.toFixed(2)}%` : ''));
      this.record({ kind: 'epoch', ...rec });
      const curves = this.file('curves.svg');
      if (curves) {
        writeFileSync(curves, trainingCurvesSvg(this.history.map((h) => ({
          epoch: h.epoch + 1, trainLoss: h.trainLoss, evalTop1: h.eval?.top1, emaTop1: h.emaEval?.top1,
        }))));
      }
      const top1 = Math.max(e?.top1 ?? -Infinity, m?.top1 ?? -Infinity);
      if (this.outDir && top1 > this.bestTop1) {
        this.bestTop1 = top1;
        if (m && m.top1 >= (e?.top1 ?? -Infinity)) await this.ema!.withWeights(this.model, () => saveModelWeights(this.file('model_best.safetensors')!, this.model, { metadata: this.weightsMeta }));
        else await saveModelWeights(this.file('model_best.safetensors')!, this.model, { metadata: this.weightsMeta });
      }
      if (this.outDir) await this.saveCheckpoint();
    }
    if (this.outDir) {
      await saveModelWeights(this.file('model.safetensors')!, this.model, { metadata: this.weightsMeta });
      if (this.ema) await this.ema.withWeights(this.model, () => saveModelWeights(this.file('model_ema.safetensors')!, this.model, { metadata: this.weightsMeta }));
    }
    return this.history;
  }

  /** The JSON part of a checkpoint. */
  private stateJson(): Record<string, unknown> {
    return {
      epoch: this.epoch, iteration: this.iteration, step: this.step, bestTop1: Number.isFinite(this.bestTop1) ? this.bestTop1 : null,
      schedule: this.schedule?.stateDict() ?? null, loader: this.trainLoader.stateDict(), rng: getRngState(),
      history: this.history, config: this.config,
    };
  }

  /** Writes the training state to `file` (default <outDir>/checkpoint.safetensors), atomically. */
  async saveCheckpoint(file = this.file('checkpoint.safetensors')): Promise<void> {
    if (!file) throw new TypeError(expectation('a checkpoint path (or an outDir)', 'file', file));
    if (this.pendingMicro > 0) throw new Error('saveCheckpoint: gradients of an unfinished accumulation would be lost; checkpoint at an update boundary');
    await saveTrainCheckpoint(file, { model: this.model, optimizer: this.optimizer, ema: this.ema, state: this.stateJson() });
  }

  /** Restores everything saveCheckpoint wrote into this trainer's model, optimizer, schedule, EMA and loader. */
  async resume(file: string): Promise<void> {
    const ck = await loadTrainCheckpoint(file);
    try {
      const s = ck.state;
      this.model.loadStateDict(ck.model);
      if (ck.optimizer) this.optimizer.loadStateDict(ck.optimizer);
      if (this.ema) {
        if (!ck.ema) throw new Error(`${file}: ${expectation('EMA weights (the run uses EMA)', 'checkpoint', 'none')}`);
        this.ema.loadStateDict(ck.ema, (s.ema as { updates?: number } | undefined)?.updates ?? 0);
      }
      if (this.schedule && s.schedule) this.schedule.loadStateDict(s.schedule as ScheduleState);
      this.trainLoader.loadStateDict(s.loader as DataLoaderState);
      setRngState(s.rng as number[]);
      this.epoch = s.epoch as number;
      this.iteration = s.iteration as number;
      this.step = s.step as number;
      this.history = (s.history as EpochRecord[]) ?? [];
      this.bestTop1 = typeof s.bestTop1 === 'number' ? s.bestTop1 : -Infinity;
      this.record({ kind: 'resume', file, epoch: this.epoch, iteration: this.iteration });
    } finally {
      ck.dispose();
    }
  }
}
