/** `metaformer export-onnx [out.onnx]`: an ONNX file (opset 17) of a zoo model or a saved checkpoint. */
import { exportOnnx } from '../../io/onnx.js';
import { intOption, stringOption, UsageError, type Command } from '../command.js';
import { modelFromOptions } from '../model-arg.js';

export const exportOnnxCommand: Command = {
  name: 'export-onnx',
  summary: 'write an ONNX file (opset 17) of a model, for onnxruntime and browsers',
  usage: '<out.onnx> [--model NAME] [--weights FILE|URL] [--no-pretrained] [--batch N|dynamic] [--size H[xW]] [--opset 17] [--dtype float32|float16]',
  details: [
    '--model       a registry name (default caformer_s18), with its pretrained weights unless --no-pretrained',
    '--weights     a checkpoint; one saved by this library carries its configuration (no --model needed)',
    '--batch       a fixed batch size (default 1) or "dynamic"',
    '--size        the input size (default: the model\'s)',
  ].join('\n'),
  options: {
    model: { type: 'string', short: 'm' }, weights: { type: 'string' }, 'no-pretrained': { type: 'boolean' },
    batch: { type: 'string' }, size: { type: 'string' }, opset: { type: 'string' }, dtype: { type: 'string' },
    offline: { type: 'boolean' }, 'cache-dir': { type: 'string' },
  },
  async run({ positionals, values, io }) {
    if (positionals.length !== 1) throw new UsageError(`Expected one output file but received ${positionals.length} arguments`);
    const batchArg = stringOption(values, 'batch') ?? '1';
    const batch = batchArg === 'dynamic' ? 'dynamic' as const : Number(batchArg);
    if (batch !== 'dynamic' && (!Number.isSafeInteger(batch) || batch < 1)) throw new UsageError(`Expected a positive integer or "dynamic" for --batch but received ${batchArg}`);
    const sizeArg = stringOption(values, 'size');
    let inputSize: [number, number] | undefined;
    if (sizeArg !== undefined) {
      const m = /^(\d+)(?:x(\d+))?$/.exec(sizeArg);
      if (!m) throw new UsageError(`Expected H or HxW for --size but received ${sizeArg}`);
      inputSize = [Number(m[1]), Number(m[2] ?? m[1])];
    }
    const dtype = stringOption(values, 'dtype');
    if (dtype !== undefined && dtype !== 'float32' && dtype !== 'float16') throw new UsageError(`Expected float32 or float16 for --dtype but received ${dtype}`);
    const { model } = await modelFromOptions(values, { model: 'caformer_s18' }, values['no-pretrained'] !== true);
    try {
      await exportOnnx(model, positionals[0]!, { batch, inputSize, opset: intOption(values, 'opset', 17), dtype });
      io.out(`wrote ${positionals[0]}: ${model.config.name}, batch ${batch}, input ${(inputSize ?? model.config.inputSize).join('x')}`);
    } finally {
      model.dispose();
    }
  },
};
