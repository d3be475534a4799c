/** `metaformer info <file>`: a checkpoint's format, key convention, tensors (name, shape, dtype) and parameter count. */
import * as fsp from 'node:fs/promises';
import { readCheckpoint, sniffFormat, CONFIG_METADATA_KEY } from '../../io/checkpoint.js';
import { detectConvention } from '../../io/keys.js';
import { readSafetensorsHeader } from '../../io/safetensors.js';
import { numelOf, type DType } from '../../dtype.js';
import { formatCount, UsageError, type Command } from '../command.js';

interface TensorInfo {
  name: string;
  shape: number[];
  dtype: DType;
}

async function describeFile(file: string): Promise<{ format: string; tensors: TensorInfo[]; metadata: Record<string, string> }> {
  const format = await sniffFormat(file);
  if (format === 'safetensors') {
    const header = await readSafetensorsHeader(file);  // header only: no tensor data is read
    const tensors = [...header.tensors].map(([name, e]) => ({ name, shape: e.shape, dtype: e.dtype }));
    return { format, tensors, metadata: header.metadata };
  }
  const { tensors } = await readCheckpoint(file);
  const list = [...tensors].map(([name, t]) => ({ name, shape: [...t.shape], dtype: t.dtype }));
  for (const t of tensors.values()) t.dispose();
  return { format, tensors: list, metadata: {} };
}

export const infoCommand: Command = {
  name: 'info',
  summary: 'show the tensors, key convention and parameter count of a checkpoint',
  usage: '<file> [--json]',
  details: 'Reads .safetensors (header only) and PyTorch .pth files, told apart by content.',
  options: {
    json: { type: 'boolean' },
  },
  async run({ positionals, values, io }) {
    if (positionals.length !== 1) throw new UsageError(`Expected one checkpoint file but received ${positionals.length} arguments`);
    const file = positionals[0]!;
    const { format, tensors, metadata } = await describeFile(file);
    const detected = detectConvention(tensors.map((t) => t.name));
    const parameters = tensors.reduce((n, t) => n + numelOf(t.shape), 0);
    const bytes = (await fsp.stat(file)).size;
    const dtypes: Record<string, number> = {};
    for (const t of tensors) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
    if (values.json) {
      io.out(JSON.stringify({
        file, format, bytes, convention: detected.convention, prefix: detected.prefix, parameters, dtypes, metadata, tensors,
      }, null, 2));
      return;
    }
    const keys = detected.convention + (detected.prefix ? ` (prefix ${JSON.stringify(detected.prefix)})` : '') +
      (detected.evidence.length ? `, e.g. ${detected.evidence.join(', ')}` : '');
    io.out(`file:        ${file} (${formatCount(bytes)} bytes)`);
    io.out(`format:      ${format}`);
    io.out(`keys:        ${keys}`);
    io.out(`tensors:     ${tensors.length} (${Object.entries(dtypes).map(([d, n]) => `${n} ${d}`).join(', ')})`);
    io.out(`parameters:  ${formatCount(parameters)}`);
    const meta = Object.entries(metadata);
    if (meta.length) {
      io.out('metadata:');
      for (const [k, v] of meta) {
        const text = v.length > 100 && k !== CONFIG_METADATA_KEY ? `${v.slice(0, 100)}... (${v.length} chars)` : v;
        io.out(`  ${k}: ${text}`);
      }
    }
    const width = Math.max(4, ...tensors.map((t) => t.name.length));
    io.out('');
    io.out(`${'name'.padEnd(width)}  ${'shape'.padEnd(20)}  dtype`);
    for (const t of tensors) io.out(`${t.name.padEnd(width)}  ${`[${t.shape.join(', ')}]`.padEnd(20)}  ${t.dtype}`);
  },
};
