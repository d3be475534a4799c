/**
 * `metaformer train`: trains (or fine-tunes) a model on Fashion-MNIST or an image folder with the MetaFormer
 * recipe's parts (lib/train/recipe.ts): AdamW / LAMB / SGD, cosine schedule with warmup, label smoothing, mixup /
 * cutmix, drop path, EMA, gradient accumulation and clipping, augmentation in worker threads. The run folder
 * (--out) gets metrics.jsonl, curves.svg, checkpoint.safetensors (resumable with --resume), model.safetensors
 * and model_best.safetensors. The final evaluation is printed as one JSON object.
 */
import { TRAIN_PRESETS, trainRun, type TrainRunOptions } from '../../train/recipe.js';
import type { OptimizerKind } from '../../train/optim.js';
import { choiceOption, DEVICES, intOption, stringOption, UsageError, type Command, type OptionValues } from '../command.js';

/** A finite number option within [min, max]. */
export function numberOption(values: OptionValues, name: string, min = -Infinity, max = Infinity): number | undefined {
  const v = stringOption(values, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(`Expected a number in [${min}, ${max}] for --${name} but received ${JSON.stringify(v)}`);
  }
  return n;
}

/** A non-negative integer option. */
export function countOption(values: OptionValues, name: string): number | undefined {
  const v = stringOption(values, name);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`Expected an integer >= 0 for --${name} but received ${JSON.stringify(v)}`);
  return Number(v);
}

export const trainCommand: Command = {
  name: 'train',
  summary: 'train or fine-tune a model on fashion-mnist or an image folder (checkpoints, metrics, curves)',
  usage: '--data <folder|fashion-mnist> --model <name|preset> [--epochs 10] [--batch-size 64] [--lr] [--opt adamw|lamb|sgd] ' +
    '[--weight-decay 0.05] [--warmup-epochs] [--drop-path 0] [--mixup 0] [--cutmix 0] [--smoothing 0.1] [--ema DECAY] ' +
    '[--accum 1] [--clip-grad] [--workers 1] [--out DIR] [--resume CKPT] [--seed 0] [--deterministic] [--device cpu|cuda|auto] [--json]',
  details: [
    `--data           'fashion-mnist' (METAFORMER_FASHION_MNIST or Debian's /usr/share/datasets/fashion-mnist), or a`,
    '                 folder of class sub-folders; with train/ and val/ inside, those are the splits (else --val DIR)',
    `--model          a registry name (list-models) or a small preset: ${Object.keys(TRAIN_PRESETS).join(', ')}`,
    '--pretrained     start from the registry weights (new head for the data\'s classes); --weights FILE: from a checkpoint',
    '--freeze-stages  freeze the first N stages (and their downsampling layers)',
    '--lr             peak learning rate (default 1e-3 adamw, 4e-3 lamb, 0.05 sgd); --min-lr floor of the cosine',
    '--warmup-epochs  linear warmup (default min(1, epochs / 10)); the schedule steps per optimizer update',
    '--mixup/--cutmix mixup and cutmix alphas (timm: 0.8 and 1.0; 0 = off); --smoothing label smoothing',
    '--drop-path      stochastic depth rate; --head-dropout dropout before the head',
    '--ema            keep an EMA of the weights with this decay (e.g. 0.9998) and evaluate it too',
    '--accum          micro-batches per update; --clip-grad global gradient-norm limit',
    '--aa             RandAugment config (default rand-m9-mstd0.5 for folders, none for fashion-mnist; "none" = off)',
    '--reprob         random erasing probability (default 0.25 for folders, 0 for fashion-mnist)',
    '--crop-padding   fashion-mnist: padding in pixels of the random crop (default 2; 0 = flips only)',
    '--image-size     input size (default: the preset\'s / model\'s; 28 for fashion-mnist with a registry model)',
    '--workers        augmentation worker threads (0 = on the main thread)',
    '--out            run folder (default runs/<model>); --resume continues from a checkpoint.safetensors',
    '--deterministic  one native thread (data, augmentation and dropout are always seeded per batch)',
    '--device         cpu (default), cuda, or auto (the GPU when there is one; the data pipeline stays on the CPU)',
    '--train-limit/--eval-limit  use a fixed random subset of N samples (quick trials)',
  ].join('\n'),
  options: {
    data: { type: 'string', short: 'd' },
    val: { type: 'string' },
    model: { type: 'string', short: 'm' },
    epochs: { type: 'string', short: 'e' },
    'batch-size': { type: 'string', short: 'b' },
    lr: { type: 'string' },
    'min-lr': { type: 'string' },
    opt: { type: 'string' },
    'weight-decay': { type: 'string' },
    'warmup-epochs': { type: 'string' },
    'drop-path': { type: 'string' },
    'head-dropout': { type: 'string' },
    mixup: { type: 'string' },
    cutmix: { type: 'string' },
    smoothing: { type: 'string' },
    ema: { type: 'string' },
    accum: { type: 'string' },
    'clip-grad': { type: 'string' },
    workers: { type: 'string', short: 'j' },
    out: { type: 'string', short: 'o' },
    resume: { type: 'string' },
    seed: { type: 'string' },
    deterministic: { type: 'boolean' },
    device: { type: 'string' },
    'image-size': { type: 'string' },
    aa: { type: 'string' },
    reprob: { type: 'string' },
    'crop-padding': { type: 'string' },
    pretrained: { type: 'boolean' },
    weights: { type: 'string', short: 'w' },
    'freeze-stages': { type: 'string' },
    'train-limit': { type: 'string' },
    'eval-limit': { type: 'string' },
    progress: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals, io }) {
    if (positionals.length > 0) throw new UsageError(`Expected options only but received ${JSON.stringify(positionals[0])}`);
    const data = stringOption(values, 'data');
    const model = stringOption(values, 'model');
    if (data === undefined) throw new UsageError('Expected --data <folder|fashion-mnist> but received none');
    if (model === undefined) throw new UsageError('Expected --model <name|preset> but received none');
    if (values.pretrained === true && stringOption(values, 'weights') !== undefined) throw new UsageError('Expected --pretrained or --weights but received both');
    const aa = stringOption(values, 'aa');
    const opts: TrainRunOptions = {
      data, model,
      val: stringOption(values, 'val'),
      epochs: intOption(values, 'epochs', 10),
      batchSize: intOption(values, 'batch-size', 64),
      lr: numberOption(values, 'lr', 0),
      minLr: numberOption(values, 'min-lr', 0),
      opt: choiceOption(values, 'opt', ['adamw', 'lamb', 'sgd'] as const satisfies readonly OptimizerKind[]),
      weightDecay: numberOption(values, 'weight-decay', 0),
      warmupEpochs: numberOption(values, 'warmup-epochs', 0),
      dropPath: numberOption(values, 'drop-path', 0, 0.99),
      headDropout: numberOption(values, 'head-dropout', 0, 0.99),
      mixup: numberOption(values, 'mixup', 0),
      cutmix: numberOption(values, 'cutmix', 0),
      smoothing: numberOption(values, 'smoothing', 0, 0.99),
      ema: numberOption(values, 'ema', 0, 1) ?? null,
      accum: intOption(values, 'accum', 1),
      clipGrad: numberOption(values, 'clip-grad', 1e-12) ?? null,
      workers: countOption(values, 'workers'),
      out: stringOption(values, 'out') ?? `runs/${model}`,
      resume: stringOption(values, 'resume'),
      seed: countOption(values, 'seed'),
      deterministic: values.deterministic === true,
      device: choiceOption(values, 'device', DEVICES),
      imageSize: intOption(values, 'image-size', 0) || undefined,
      randAugment: aa === undefined ? undefined : aa === 'none' ? null : aa,
      reprob: numberOption(values, 'reprob', 0, 1),
      cropPadding: countOption(values, 'crop-padding'),
      pretrained: values.pretrained === true ? true : stringOption(values, 'weights'),
      freezeStages: countOption(values, 'freeze-stages'),
      trainLimit: countOption(values, 'train-limit'),
      evalLimit: countOption(values, 'eval-limit'),
      progress: choiceOption(values, 'progress', ['auto', 'bar', 'lines', 'none'] as const),
      log: (line) => io.err(line),
    };
    const r = await trainRun(opts);
    const summary = { model: r.model, out: r.out, epochs: r.history.length, ...(r.final ?? {}) };
    io.out(values.json ? JSON.stringify(summary) : JSON.stringify(summary, null, 2));
  },
};
