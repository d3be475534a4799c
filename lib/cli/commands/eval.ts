/**
 * `metaformer eval`: top-1 / top-5 accuracy and mean cross-entropy of saved weights on Fashion-MNIST's test split
 * or an image folder's val/ split (lib/train/recipe.ts evalRun). Prints one JSON object with --json.
 */
import { evalRun } from '../../train/recipe.js';
import { choiceOption, DEVICES, intOption, stringOption, UsageError, type Command } from '../command.js';
import { countOption } from './train.js';

export const evalCommand: Command = {
  name: 'eval',
  summary: 'evaluate weights on fashion-mnist or an image folder (top-1, top-5, loss)',
  usage: '--data <folder|fashion-mnist> --weights FILE [--model NAME] [--val DIR] [--batch-size 64] [--workers 1] [--image-size N] [--limit N] [--device cpu|cuda|auto] [--json]',
  details: [
    '--weights   a checkpoint; one written by `metaformer train` carries its model configuration',
    '--model     the registry model, for checkpoints without a configuration (e.g. official .pth files)',
    '--data      fashion-mnist (its test split) or a folder (its val/ split, or the folder given by --val)',
    '--limit     evaluate a fixed random subset of N images',
    '--device    cpu (default), cuda, or auto (the GPU when there is one, else the CPU)',
    '--json      one JSON object: top1, top5, loss, images, model, data, seconds, imagesPerSec',
  ].join('\n'),
  options: {
    data: { type: 'string', short: 'd' },
    weights: { type: 'string', short: 'w' },
    model: { type: 'string', short: 'm' },
    val: { type: 'string' },
    'batch-size': { type: 'string', short: 'b' },
    workers: { type: 'string', short: 'j' },
    'image-size': { type: 'string' },
    limit: { type: 'string' },
    device: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals, io }) {
    if (positionals.length > 0) throw new UsageError(`Expected options only but received ${JSON.stringify(positionals[0])}`);
    const data = stringOption(values, 'data');
    const weights = stringOption(values, 'weights');
    if (data === undefined) throw new UsageError('Expected --data <folder|fashion-mnist> but received none');
    if (weights === undefined) throw new UsageError('Expected --weights FILE but received none');
    const r = await evalRun({
      data, weights, model: stringOption(values, 'model'), val: stringOption(values, 'val'),
      batchSize: intOption(values, 'batch-size', 64), workers: countOption(values, 'workers'),
      imageSize: intOption(values, 'image-size', 0) || undefined, evalLimit: countOption(values, 'limit'),
      device: choiceOption(values, 'device', DEVICES),
    });
    if (values.json) io.out(JSON.stringify(r));
    else io.out(`${r.model} on ${r.data}: top-1 ${r.top1.toFixed(2)}%  top-5 ${r.top5.toFixed(2)}%  loss ${r.loss.toFixed(4)}  (${r.images} images, ${r.imagesPerSec.toFixed(1)} img/s)`);
  },
};
