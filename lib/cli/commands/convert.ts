/** `metaformer convert <in> <out>`: between .pth and .safetensors, with key names mapped and an optional dtype. */
import { formatFromExtension, readCheckpoint, saveCheckpoint, CONFIG_METADATA_KEY, type CheckpointFormat } from '../../io/checkpoint.js';
import { numelOf } from '../../dtype.js';
import { choiceOption, formatCount, UsageError, type Command } from '../command.js';

export const convertCommand: Command = {
  name: 'convert',
  summary: 'convert a checkpoint between .pth and .safetensors (timm names mapped to official)',
  usage: '<in> <out> [--dtype float16|bfloat16|float32] [--format safetensors|pth] [--keys official|timm]',
  details: [
    'The input format is found from the content; the output format from --format or the extension of <out>',
    '(.safetensors; .pth, .pt, .bin, .ckpt). Key names are written as the official ones (or timm\'s with',
    '--keys timm); --dtype converts the floating-point tensors. The output replaces <out> atomically.',
  ].join('\n'),
  options: {
    dtype: { type: 'string' },
    format: { type: 'string' },
    keys: { type: 'string' },
  },
  async run({ positionals, values, io }) {
    if (positionals.length !== 2) throw new UsageError(`Expected an input and an output file but received ${positionals.length} arguments`);
    const [input, output] = positionals as [string, string];
    const dtype = choiceOption(values, 'dtype', ['float16', 'bfloat16', 'float32'] as const);
    const keys = choiceOption(values, 'keys', ['official', 'timm'] as const) ?? 'official';
    const format: CheckpointFormat | null = choiceOption(values, 'format', ['safetensors', 'pth'] as const) ?? formatFromExtension(output);
    if (format === null) throw new UsageError(`Expected an output file ending in .safetensors or .pth (or --format) but received ${JSON.stringify(output)}`);
    const source = await readCheckpoint(input);
    try {
      const config = source.metadata[CONFIG_METADATA_KEY];
      await saveCheckpoint(source.tensors, output, { format, dtype, keys, metadata: config ? { [CONFIG_METADATA_KEY]: config } : undefined });
      const params = [...source.tensors.values()].reduce((n, t) => n + numelOf(t.shape), 0);
      const from = source.detected.convention === keys ? `${keys} names` : `${keys} names (from ${source.detected.convention})`;
      io.out(`wrote ${output}: ${format}, ${source.tensors.size} tensors, ${formatCount(params)} parameters, ${from}` +
        (dtype ? `, ${dtype}` : ''));
    } finally {
      for (const t of source.tensors.values()) t.dispose();
    }
  },
};
