/**
 * Whole runs from plain options (what `metaformer train` / `metaformer eval` and scripts/train-fashion-mnist.mjs
 * call): data set-up, model (a registry name, a small preset, or a config; optional pretrained weights,
 * a new head, frozen stages), loaders, optimizer, schedule, EMA, Trainer, resume.
 *
 * Data: 'fashion-mnist' (lib/train/idx.ts; train / test split), or a folder: with train/ and val/ sub-folders
 * (the ImageNet layout) those are the splits, otherwise the folder is the training set and `val` names the
 * evaluation folder. Folder images get timm's ImageNet recipe transforms (RandomResizedCrop, flip,
 * rand-m9-mstd0.5, random erasing 0.25; eval resize + center crop); Fashion-MNIST gets a padded random crop and
 * a flip, normalised with its own mean / std (grey replicated to the three input channels).
 *
 * Defaults follow the MetaFormer recipe where it applies to small runs (AdamW, weight decay 0.05 on >= 2-D
 * weights only, cosine schedule per update with linear warmup, label smoothing 0.1); the learning rate default
 * is 1e-3 (AdamW), 4e-3 (LAMB), 0.05 (SGD) at any batch size.
 */
import { existsSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { setNumThreads } from '../backend.js';
import { type DeviceOption, resolveDevice } from '../device.js';
import { loadWeights, readCheckpointConfig } from '../io/checkpoint.js';
import { createModel } from '../models/index.js';
import { type CustomModelConfig, type MetaFormer, resolveConfig } from '../models/metaformer.js';
import { getModelConfig, type ModelConfig } from '../models/zoo.js';
import { manualSeed, Rng } from '../random.js';
import { expectation } from '../tensor.js';
import { type EvalTransformSpec, imagenetEvalSpec, imagenetTrainSpec, type TrainTransformSpec } from './augment.js';
import { type Dataset, fashionMnist, ImageFolder, Subset } from './data.js';
import { ModelEma } from './ema.js';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD } from './idx.js';
import { DataLoader } from './loader.js';
import { evaluate, type EvalResult } from './metrics.js';
import { createOptimizer, type OptimizerKind } from './optim.js';
import { freezeStages, prepareFinetune } from './finetune.js';
import { CosineSchedule } from './schedule.js';
import { type EpochRecord, type ProgressMode, Trainer } from './trainer.js';

/** Small models for small images (family, depths, dims; the input size is the data's). */
export const TRAIN_PRESETS: Readonly<Record<string, { config: Omit<CustomModelConfig, 'numClasses'>; note: string }>> = {
  caformer_fmnist: {
    config: { family: 'caformer', depths: [2, 2, 2, 1], dims: [32, 64, 128, 160], imageSize: 28, name: 'caformer_fmnist' },
    note: '28x28 input: the stem (k7 s4 p2) gives 7x7 tokens, then 4x4, 2x2, 1x1; attention dims are multiples of 32',
  },
  caformer_fmnist_s2: {
    config: { family: 'caformer', depths: [2, 2, 2, 1], dims: [32, 64, 128, 160], imageSize: 28, name: 'caformer_fmnist_s2',
      stem: { kernel: 3, stride: 2, padding: 1 } },
    note: '28x28 input with a stride-2 stem (k3 s2 p1): 14x14 tokens, then 7x7, 4x4, 2x2 (four times the first stage\'s tokens)',
  },
  caformer_micro: {
    config: { family: 'caformer', depths: [1, 1, 2, 1], dims: [32, 64, 96, 128], imageSize: 32, name: 'caformer_micro' },
    note: 'the small CAFormer of the PyTorch reference timing (32x32: 8x8, 4x4, 2x2, 1x1 tokens)',
  },
  caformer_tiny: {
    config: { family: 'caformer', depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], imageSize: 64, name: 'caformer_tiny' },
    note: 'the golden-fixture tiny CAFormer',
  },
};

export interface DataSetup {
  name: string;
  train: Dataset;
  eval: Dataset | null;
  classes: readonly string[];
  trainSpec: TrainTransformSpec;
  evalSpec: EvalTransformSpec;
}

export interface DataOptions {
  /** Model input size (square). */
  imageSize: number;
  /** Evaluation folder for a folder without train/ and val/. */
  val?: string;
  randAugment?: string | null;
  reprob?: number;
  cropPct?: number;
  /** Fashion-MNIST: padding of the random crop in pixels at 28x28 (default 2; 0 = no random crop). */
  cropPadding?: number;
  /** Use this many training / evaluation samples (a fixed random subset; for trials). */
  trainLimit?: number;
  evalLimit?: number;
}

function limit(ds: Dataset, n: number | undefined, seed: number): Dataset {
  if (n === undefined || n >= ds.length) return ds;
  const idx = Int32Array.from({ length: ds.length }, (_, i) => i);
  new Rng(seed).shuffle(idx);
  return new Subset(ds, idx.subarray(0, n));
}

/** The datasets and transforms of `data` ('fashion-mnist' or a folder). */
// The random crop of Fashion-MNIST: `padding` pixels at 28x28, scaled with the input size; 0 = none.
function fashionMnistCrop(size: number, padding = 2): Pick<TrainTransformSpec, 'crop' | 'padding'> {
  if (!(Number.isInteger(padding) && padding >= 0)) throw new RangeError(expectation('a non-negative integer', 'cropPadding', padding));
  return padding === 0 ? { crop: 'none' } : { crop: 'pad', padding: Math.max(1, Math.round((padding * size) / 28)) };
}

export function setupData(data: string, opts: DataOptions): DataSetup {
  if (typeof data !== 'string' || data.length === 0) throw new TypeError(expectation("'fashion-mnist' or a folder", 'data', data));
  const size = opts.imageSize;
  if (data === 'fashion-mnist') {
    const train = fashionMnist('train');
    const test = fashionMnist('test');
    const norm = { mean: [FASHION_MNIST_MEAN], std: [FASHION_MNIST_STD] };
    return {
      name: 'fashion-mnist', train: limit(train, opts.trainLimit, 1), eval: limit(test, opts.evalLimit, 2), classes: train.classes,
      trainSpec: { kind: 'train', size: [size, size], ...fashionMnistCrop(size, opts.cropPadding), hflip: 0.5,
        randAugment: opts.randAugment ?? null, reprob: opts.reprob ?? 0, remode: 'pixel', interpolation: 'bilinear', ...norm },
      evalSpec: { kind: 'eval', size: [size, size], cropPct: 1, interpolation: 'bilinear', ...norm },
    };
  }
  if (!existsSync(data) || !statSync(data).isDirectory()) throw new Error(expectation("'fashion-mnist' or an existing folder", 'data', data));
  const split = existsSync(path.join(data, 'train')) && existsSync(path.join(data, 'val'));
  const train = new ImageFolder(split ? path.join(data, 'train') : data);
  const valDir = opts.val ?? (split ? path.join(data, 'val') : undefined);
  const val = valDir ? new ImageFolder(valDir) : null;
  if (val && val.classes.join('\n') !== train.classes.join('\n')) {
    throw new Error(expectation(`the training classes (${train.classes.length})`, 'the evaluation folder', `${val.classes.length} other classes`));
  }
  return {
    name: data, train: limit(train, opts.trainLimit, 1), eval: val ? limit(val, opts.evalLimit, 2) : null, classes: train.classes,
    trainSpec: imagenetTrainSpec(size, { randAugment: opts.randAugment === undefined ? 'rand-m9-mstd0.5' : opts.randAugment, reprob: opts.reprob ?? 0.25 }),
    evalSpec: imagenetEvalSpec(size, { cropPct: opts.cropPct ?? 1 }),
  };
}

export interface TrainRunOptions {
  data: string;
  /** A registry name, a TRAIN_PRESETS name, or a config. */
  model: string | CustomModelConfig;
  val?: string;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  minLr?: number;
  opt?: OptimizerKind;
  weightDecay?: number;
  warmupEpochs?: number;
  dropPath?: number;
  headDropout?: number;
  /** Mixup / CutMix alphas (0: off); switch probability 0.5 when both are on. */
  mixup?: number;
  cutmix?: number;
  smoothing?: number;
  /** EMA decay (null / undefined: no EMA). */
  ema?: number | null;
  accum?: number;
  clipGrad?: number | null;
  workers?: number;
  out?: string | null;
  resume?: string;
  seed?: number;
  /** One native thread, so reductions keep one order (data and masks are always seeded per batch). */
  deterministic?: boolean;
  imageSize?: number;
  randAugment?: string | null;
  reprob?: number;
  /** Fashion-MNIST: padding of the random crop in pixels at 28x28 (default 2; 0 = flips only). */
  cropPadding?: number;
  /** Registry weights (true) or a checkpoint to fine-tune from. */
  pretrained?: boolean | string;
  freezeStages?: number;
  trainLimit?: number;
  evalLimit?: number;
  progress?: ProgressMode;
  log?: (line: string) => void;
  /** Where the model trains: 'cpu' (default), 'cuda' or 'auto'; the data pipeline stays on the CPU. */
  device?: DeviceOption;
}

export interface TrainRunResult {
  history: EpochRecord[];
  out: string | null;
  final: EvalResult | null;
  model: string;
}

const DEFAULT_LR: Record<OptimizerKind, number> = { adamw: 1e-3, lamb: 4e-3, sgd: 0.05 };

/** The model of a run (not yet trained): preset / registry / config, pretrained weights, head, frozen stages. */
export async function buildTrainModel(opts: TrainRunOptions, numClasses: number, imageSize: number,
  norm?: Pick<ModelConfig, 'mean' | 'std' | 'interpolation' | 'cropPct'>): Promise<MetaFormer> {
  const mopts = { dropPathRate: opts.dropPath ?? 0, headDropout: opts.headDropout ?? 0 };
  let model: MetaFormer;
  const preset = typeof opts.model === 'string' ? TRAIN_PRESETS[opts.model] : undefined;
  if (preset || typeof opts.model === 'object') {
    if (opts.pretrained === true) throw new TypeError(expectation('a registry model name for registry weights', 'model', opts.model));
    const cfg = preset ? preset.config : (opts.model as CustomModelConfig);
    const full: CustomModelConfig & Partial<ModelConfig> = { ...cfg, depths: [...cfg.depths], dims: [...cfg.dims], numClasses, imageSize, ...norm };
    model = createModel(full, mopts);
    if (typeof opts.pretrained === 'string') await prepareFinetune(model, { weights: opts.pretrained, numClasses });
  } else if (opts.pretrained) {
    model = await createModel(opts.model as string, { ...mopts, pretrained: opts.pretrained });
    await prepareFinetune(model, { numClasses, headDropout: mopts.headDropout });
  } else {
    let cfg;
    try {
      cfg = resolveConfig(opts.model as string);
    } catch {
      throw new TypeError(expectation(`a registry model (list-models) or a preset (${Object.keys(TRAIN_PRESETS).join(', ')})`, 'model', opts.model));
    }
    model = createModel({ ...cfg, numClasses, inputSize: [imageSize, imageSize], ...norm }, mopts);
  }
  if (opts.freezeStages) freezeStages(model, opts.freezeStages);
  return model;
}

function defaultImageSize(opts: TrainRunOptions): number {
  if (opts.imageSize !== undefined) return opts.imageSize;
  if (typeof opts.model === 'string' && TRAIN_PRESETS[opts.model]) {
    const s = TRAIN_PRESETS[opts.model]!.config.imageSize;
    return typeof s === 'number' ? s : s![0];
  }
  if (opts.data === 'fashion-mnist') return 28;
  if (typeof opts.model === 'object') {
    const s = opts.model.imageSize ?? 224;
    return typeof s === 'number' ? s : s[0];
  }
  try {
    return getModelConfig(opts.model).inputSize[0];
  } catch {
    return 224;  // an unknown name is reported when the model is built
  }
}

/** Everything a run needs, built from options (shared by trainRun and measureThroughput). */
export async function prepareRun(opts: TrainRunOptions): Promise<{ trainer: Trainer; model: MetaFormer; data: DataSetup; close: () => Promise<void> }> {
  const seed = opts.seed ?? 0;
  if (opts.device !== undefined) resolveDevice(opts.device);  // a bad or unusable device fails before the data loads
  if (opts.deterministic) setNumThreads(1);
  manualSeed(seed);
  const imageSize = defaultImageSize(opts);
  const data = setupData(opts.data, {
    imageSize, val: opts.val, randAugment: opts.randAugment, reprob: opts.reprob, cropPadding: opts.cropPadding,
    trainLimit: opts.trainLimit, evalLimit: opts.evalLimit,
  });
  const numClasses = data.classes.length;
  // the data's normalisation goes into the model config, so classify / eval preprocess as training did
  const ev = data.evalSpec;
  const norm = data.name === 'fashion-mnist'
    ? { mean: [ev.mean[0]!, ev.mean[0]!, ev.mean[0]!] as [number, number, number], std: [ev.std[0]!, ev.std[0]!, ev.std[0]!] as [number, number, number],
      interpolation: 'bilinear' as const, cropPct: 1 }
    : undefined;
  const model = await buildTrainModel(opts, numClasses, imageSize, norm);
  if (opts.device !== undefined && opts.device !== 'cpu') {
    try {
      model.to(opts.device);  // before the optimizer and the EMA take the parameters
    } catch (e) {
      model.dispose();
      throw e;
    }
  }
  const batchSize = opts.batchSize ?? 64;
  const mixAlpha = opts.mixup ?? 0, cutAlpha = opts.cutmix ?? 0;
  const smoothing = opts.smoothing ?? 0.1;
  const workers = opts.workers ?? 1;
  const trainLoader = new DataLoader(data.train, {
    batchSize, shuffle: true, dropLast: true, seed, workers, transform: data.trainSpec,
    mixup: mixAlpha > 0 || cutAlpha > 0 ? { numClasses, mixupAlpha: mixAlpha, cutmixAlpha: cutAlpha, labelSmoothing: smoothing } : null,
  });
  const evalLoader = data.eval ? new DataLoader(data.eval, { batchSize: Math.max(batchSize, 64), workers, transform: data.evalSpec }) : null;
  const kind = opts.opt ?? 'adamw';
  const lr = opts.lr ?? DEFAULT_LR[kind];
  const optimizer = createOptimizer(kind, model, { lr, weightDecay: opts.weightDecay ?? 0.05, nesterov: kind === 'sgd' });
  const epochs = opts.epochs ?? 10;
  const accum = opts.accum ?? 1;
  const updatesPerEpoch = Math.ceil(trainLoader.length / accum);
  const schedule = new CosineSchedule({
    baseLr: lr, totalIters: Math.max(1, epochs * updatesPerEpoch), warmupIters: Math.round((opts.warmupEpochs ?? Math.min(1, epochs / 10)) * updatesPerEpoch),
    minLr: opts.minLr ?? 1e-6, warmupLr: Math.min(1e-6, lr),
  });
  const ema = opts.ema ? new ModelEma(model, { decay: opts.ema }) : null;
  const config: Record<string, unknown> = {
    ...opts, model: typeof opts.model === 'string' ? opts.model : model.config, log: undefined, data: data.name,
    imageSize, batchSize, lr, epochs, numClasses, seed, workers, opt: kind, trainSamples: data.train.length, evalSamples: data.eval?.length ?? 0,
  };
  const trainer = new Trainer({
    model, optimizer, schedule, trainLoader, evalLoader, epochs, accumSteps: accum, clipGrad: opts.clipGrad ?? null,
    labelSmoothing: smoothing, ema, outDir: opts.out ?? null, progress: opts.progress, log: opts.log, config, labels: data.classes,
  });
  if (opts.resume) await trainer.resume(opts.resume);
  return {
    trainer, model, data,
    close: async () => {
      await trainLoader.close();
      await evalLoader?.close();
      optimizer.dispose();
      ema?.dispose();
      model.dispose();
    },
  };
}

/** Trains, evaluates each epoch, writes the run folder; returns the history and the final evaluation. */
export async function trainRun(opts: TrainRunOptions): Promise<TrainRunResult> {
  const run = await prepareRun(opts);
  try {
    const history = await run.trainer.fit();
    const last = history[history.length - 1];
    return { history, out: opts.out ?? null, final: last?.emaEval ?? last?.eval ?? null, model: run.model.config.name };
  } finally {
    await run.close();
  }
}

export interface ThroughputResult {
  images: number;
  seconds: number;
  imagesPerSec: number;
  steps: number;
  loss: { first: number; last: number };
  /** Projected seconds per training epoch at this rate. */
  epochSeconds: number;
}

/**
 * Trains for about `seconds` (after `warmupSteps` untimed steps) and reports the training throughput, counting
 * everything the loop does: data loading, forward, backward, clipping and the optimizer update.
 */
export async function measureThroughput(opts: TrainRunOptions, seconds: number, warmupSteps = 3): Promise<ThroughputResult> {
  const run = await prepareRun({ ...opts, out: null, resume: undefined });
  try {
    const t = run.trainer;
    let images = 0, steps = 0, start = 0, first = NaN, last = NaN;
    run.model.train();
    outer: for (;;) {
      for await (const batch of t.trainLoader) {
        const { loss } = t.trainStep(batch, true);
        if (Number.isNaN(first)) first = loss;
        last = loss;
        steps += 1;
        if (steps === warmupSteps) start = performance.now();
        if (steps > warmupSteps) images += batch.labels.length;
        if (start > 0 && performance.now() - start >= seconds * 1000) break outer;
      }
    }
    const elapsed = (performance.now() - start) / 1000;
    const rate = images / elapsed;
    return { images, seconds: elapsed, imagesPerSec: rate, steps, loss: { first, last }, epochSeconds: run.data.train.length / rate };
  } finally {
    await run.close();
  }
}

export interface EvalRunOptions {
  data: string;
  /** A checkpoint (plain weights or a training checkpoint's model weights). */
  weights: string;
  /** The model, when the checkpoint does not record its configuration. */
  model?: string;
  val?: string;
  batchSize?: number;
  workers?: number;
  imageSize?: number;
  evalLimit?: number;
  /** Where the model runs: 'cpu' (default), 'cuda' or 'auto'. */
  device?: DeviceOption;
}

export interface EvalRunResult extends EvalResult {
  model: string;
  data: string;
  seconds: number;
  imagesPerSec: number;
}

/** Evaluates saved weights on the evaluation split of `data`. */
export async function evalRun(opts: EvalRunOptions): Promise<EvalRunResult> {
  if (opts.device !== undefined) resolveDevice(opts.device);
  const cfg = opts.model === undefined ? await readCheckpointConfig(opts.weights) : null;
  let model: MetaFormer;
  if (cfg) model = createModel(resolveConfig(cfg as unknown as CustomModelConfig));
  else if (opts.model !== undefined && TRAIN_PRESETS[opts.model]) {
    throw new Error(expectation('a checkpoint with its configuration (saved by metaformer train) for a preset', 'weights', opts.weights));
  } else if (opts.model !== undefined) model = createModel(opts.model);
  else throw new Error(expectation('--model (the checkpoint records no configuration)', 'model', undefined));
  try {
    await loadWeights(model, opts.weights);
    if (opts.device !== undefined) model.to(opts.device);
    const size = opts.imageSize ?? model.config.inputSize[0];
    const data = setupData(opts.data, { imageSize: size, val: opts.val, evalLimit: opts.evalLimit, cropPct: model.config.cropPct });
    if (!data.eval) throw new Error(expectation('an evaluation split (train/ and val/ folders, or --val)', 'data', opts.data));
    if (data.classes.length !== model.numClasses) {
      throw new Error(expectation(`a model with ${data.classes.length} classes (the data's)`, 'weights', `${model.numClasses} classes`));
    }
    const loader = new DataLoader(data.eval, { batchSize: opts.batchSize ?? 64, workers: opts.workers ?? 1, transform: data.evalSpec });
    try {
      const t0 = performance.now();
      const r = await evaluate(model, loader);
      const seconds = (performance.now() - t0) / 1000;
      return { ...r, model: model.config.name, data: data.name, seconds, imagesPerSec: r.images / seconds };
    } finally {
      await loader.close();
    }
  } finally {
    model.dispose();
  }
}
