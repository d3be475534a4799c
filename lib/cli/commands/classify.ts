/**
 * `metaformer classify <image...>`: the top classes of each image. Without --model or --weights it runs
 * the model shipped in the package: a small CAFormer trained from scratch on Fashion-MNIST
 * (scripts/train-fashion-mnist.mjs), so it works offline with real trained weights.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { classify, type Prediction } from '../../classify.js';
import { packageRoot } from '../../native.js';
import { modelFromOptions } from '../model-arg.js';
import { resolveDevice } from '../../device.js';
import { choiceOption, DEVICES, intOption, UsageError, type Command } from '../command.js';

/** The weights `classify` uses when no model is named: shipped in the package. */
export const DEFAULT_CLASSIFY_WEIGHTS = path.join(packageRoot(), 'assets', 'models', 'fashion-mnist-caformer.safetensors');
/** The registry model `--weights` applies to when the checkpoint does not record its own configuration. */
export const DEFAULT_CLASSIFY_MODEL = 'caformer_s18';

function percent(p: number): string {
  return `${(100 * p).toFixed(2).padStart(6)}%`;
}

export const classifyCommand: Command = {
  name: 'classify',
  summary: 'classify images (default: the shipped Fashion-MNIST CAFormer; registry models download their weights)',
  usage: '<image...> [--model NAME] [--weights FILE|URL] [--top 5] [--precision float32|bf16] [--device cpu|cuda|auto] [--json] [--offline] [--cache-dir DIR]',
  details: [
    '--model      a registry name (see list-models), with its pretrained weights (downloaded and cached);',
    '             default: the Fashion-MNIST CAFormer shipped in the package',
    '--weights    a checkpoint to use instead of the registry weights; one saved by this library carries its',
    '             model configuration, so --model is not needed for it',
    '--top        how many classes to show per image (default 5)',
    '--precision  float32 (default) or bf16: matrix products with bfloat16 operands (fast on CPUs with',
    '             AVX512-BF16/AMX and on GPUs, emulated on other CPUs)',
    '--device     cpu (default), cuda, or auto (the GPU when there is one, else the CPU)',
    '--offline    never download; use the cache (also METAFORMER_OFFLINE=1)',
    '--cache-dir  where downloaded weights live (default METAFORMER_CACHE or ~/.cache/metaformer)',
  ].join('\n'),
  options: {
    model: { type: 'string', short: 'm' },
    weights: { type: 'string', short: 'w' },
    top: { type: 'string', short: 'k' },
    precision: { type: 'string' },
    device: { type: 'string' },
    json: { type: 'boolean' },
    offline: { type: 'boolean' },
    'cache-dir': { type: 'string' },
  },
  async run({ positionals, values, io }) {
    if (positionals.length === 0) throw new UsageError('Expected at least one image file but received none');
    const topK = intOption(values, 'top', 5);
    const precision = choiceOption(values, 'precision', ['float32', 'bf16'] as const) ?? 'float32';
    const device = choiceOption(values, 'device', DEVICES);
    if (device !== undefined) resolveDevice(device);  // before a model (maybe a download) is built
    // Check the images exist before a model (maybe a download) is built for them.
    for (const image of positionals) {
      const st = await fsp.stat(image).catch(() => null);
      if (!st?.isFile()) throw new Error(`Expected an image file but received ${JSON.stringify(image)} (${st ? 'not a file' : 'not found'})`);
    }
    const { model, labels } = await modelFromOptions(values, { file: DEFAULT_CLASSIFY_WEIGHTS });
    let results: Prediction[][];
    try {
      if (device !== undefined) model.to(device);
      model.precision = precision;
      results = await classify(positionals, { model, topK, labels });
    } finally {
      model.dispose();
    }
    if (values.json) {
      io.out(JSON.stringify(positionals.map((image, i) => ({ image, predictions: results[i] })), null, 2));
      return;
    }
    positionals.forEach((image, i) => {
      if (i > 0) io.out('');
      io.out(path.basename(image));
      for (const p of results[i]!) {
        const label = p.label === String(p.index) ? '' : `  ${p.label}${p.synset ? ` (${p.synset})` : ''}`;
        io.out(`  ${percent(p.probability)}  ${String(p.index).padStart(5)}${label}`);
      }
    });
  },
};
