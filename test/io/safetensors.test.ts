import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DTYPE_SIZE, DTYPES, type DType, type RawTensor } from '../../lib/dtype.js';
import {
  readSafetensors, readSafetensorsHeader, readSafetensorsSync, writeSafetensors,
} from '../../lib/io/safetensors.js';
import { fixturePath } from '../helpers/fixtures.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-safetensors-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function tensor(dtype: DType, shape: number[], seed: number): RawTensor {
  const n = shape.reduce((a, d) => a * d, 1) * DTYPE_SIZE[dtype];
  const data = new Uint8Array(n);
  for (let i = 0; i < n; i++) data[i] = (seed * 131 + i * 29) & 0xff;
  if (dtype === 'bool') data.forEach((b, i) => { data[i] = b & 1; });
  return { dtype, shape, data };
}

function sample(): Map<string, RawTensor> {
  const m = new Map<string, RawTensor>();
  DTYPES.forEach((dtype, i) => m.set(`t_${dtype}`, tensor(dtype, [3, i + 1], i)));
  m.set('empty', tensor('float32', [0], 0));
  m.set('empty_mid', tensor('int16', [2, 0, 3], 0));
  m.set('scalar', tensor('float64', [], 7));
  m.set('scalar_u8', tensor('uint8', [], 9));
  m.set('a.b/ü name', tensor('float16', [5], 3));
  return m;
}

describe('safetensors round trip', () => {
  it('writes and re-reads every dtype, empty and 0-d tensors, and metadata', async () => {
    const file = path.join(dir, 'all.safetensors');
    const input = sample();
    const metadata = { format: 'pt', note: 'ünïcode "quoted"', '0': 'integer-like key' };
    await writeSafetensors(file, input, metadata);
    const header = await readSafetensorsHeader(file);
    expect(header.metadata).toEqual(metadata);
    const out = await readSafetensors(file);
    expect(new Set(out.keys())).toEqual(new Set(input.keys()));
    for (const [name, t] of input) expect(out.get(name)).toEqual(t);
    expect(readSafetensorsSync(file)).toEqual(out);
  });

  it('lays tensors out by element size (largest first), then name, aligned and without holes', async () => {
    const file = path.join(dir, 'layout.safetensors');
    await writeSafetensors(file, sample());
    const bytes = fs.readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    expect(bytes.subarray(8, 8 + n).toString('utf8')).toMatch(/} *$/);
    const header = await readSafetensorsHeader(file);
    expect(header.dataStart).toBe(8 + n);
    const entries = [...header.tensors];
    const sorted = [...entries].sort(([an, a], [bn, b]) =>
      DTYPE_SIZE[b.dtype] - DTYPE_SIZE[a.dtype] || (an < bn ? -1 : an > bn ? 1 : 0));
    expect(entries.map(([k]) => k)).toEqual(sorted.map(([k]) => k));
    let at = 0;
    for (const [, e] of entries) {
      expect(e.begin).toBe(at);
      expect((header.dataStart + e.begin) % DTYPE_SIZE[e.dtype]).toBe(0);
      at = e.end;
    }
    expect(header.dataStart + at).toBe(bytes.byteLength);
  });

  it('rewrites a file it read byte-identically', async () => {
    const a = path.join(dir, 'a.safetensors');
    const b = path.join(dir, 'b.safetensors');
    await writeSafetensors(a, sample(), { k: 'v' });
    const header = await readSafetensorsHeader(a);
    await writeSafetensors(b, await readSafetensors(a), header.metadata);
    expect(fs.readFileSync(b).equals(fs.readFileSync(a))).toBe(true);
  });

  it('reproduces a fixture file byte for byte (same layout convention)', async () => {
    const src = fixturePath('models', 'caformer_tiny.safetensors');
    const out = path.join(dir, 'fixture_copy.safetensors');
    const header = await readSafetensorsHeader(src);
    // The fixtures follow the same convention: compact JSON, __metadata__ first, space padding to a multiple of 8,
    // tensors by element size (largest first) then name.
    await writeSafetensors(out, await readSafetensors(src), header.metadata);
    expect(fs.readFileSync(out).equals(fs.readFileSync(src))).toBe(true);
  });

  it('accepts an iterable of entries and overwrites an existing file', async () => {
    const file = path.join(dir, 'iter.safetensors');
    fs.writeFileSync(file, 'old content');
    await writeSafetensors(file, [['x', tensor('int32', [2, 2], 1)]]);
    expect((await readSafetensors(file)).get('x')).toEqual(tensor('int32', [2, 2], 1));
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});

describe('safetensors reading options', () => {
  it('reads only the requested names, in the requested order', async () => {
    const file = path.join(dir, 'names.safetensors');
    const input = sample();
    await writeSafetensors(file, input);
    const out = await readSafetensors(file, { names: ['scalar', 't_int8'] });
    expect([...out.keys()]).toEqual(['scalar', 't_int8']);
    expect(out.get('t_int8')).toEqual(input.get('t_int8'));
    await expect(readSafetensors(file, { names: ['nope'] })).rejects.toThrow(/tensor named 'nope'/);
  });

  it('reads into the buffers returned by alloc', async () => {
    const file = path.join(dir, 'alloc.safetensors');
    const input = sample();
    await writeSafetensors(file, input);
    const arena = new Uint8Array(4096);
    let used = 0;
    const calls: string[] = [];
    const out = await readSafetensors(file, {
      alloc: (dtype, shape, byteLength) => {
        calls.push(`${dtype}:${shape.join('x')}:${byteLength}`);
        const b = arena.subarray(used, used + byteLength);
        used += byteLength;
        return b;
      },
    });
    expect(calls).toHaveLength(input.size);
    for (const [name, t] of out) {
      expect(t.data.buffer).toBe(arena.buffer);
      expect(t).toEqual(input.get(name));
    }
    await expect(readSafetensors(file, { alloc: () => new Uint8Array(1) }))
      .rejects.toThrow(/expected alloc\(\) to return a Uint8Array of \d+ bytes but it returned 1 bytes/);
  });

  it('streams tensors larger than one 64 MiB read chunk (async and sync)', async () => {
    const file = path.join(dir, 'big.safetensors');
    const size = 64 * 1024 * 1024 + 4099;
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 4093) data[i] = (i >>> 12) & 0xff;
    data[size - 1] = 0xab;
    await writeSafetensors(file, [['big', { dtype: 'uint8', shape: [size], data }], ['small', tensor('int64', [3], 2)]]);
    for (const out of [await readSafetensors(file), readSafetensorsSync(file)]) {
      const got = out.get('big')!.data;
      expect(got.byteLength).toBe(size);
      expect(Buffer.compare(got, data)).toBe(0);
      expect(out.get('small')).toEqual(tensor('int64', [3], 2));
    }
    fs.rmSync(file);
  });
});

describe('safetensors fixtures', () => {
  it('parses the timm-named checkpoint: F32 weights, 8 Linear weights stored as [out, in, 1, 1]', async () => {
    const file = fixturePath('checkpoints', 'caformer_tiny_timm.safetensors');
    const header = await readSafetensorsHeader(file);
    expect(header.metadata.format).toBe('metaformer-fixture-timm-state-dict-v1');
    const tensors = await readSafetensors(file);
    const reference = await readSafetensorsHeader(fixturePath('models', 'caformer_tiny.safetensors'));
    const params = [...reference.tensors.keys()].filter((k) => k.startsWith('param.'));
    expect(tensors.size).toBe(params.length);
    for (const t of tensors.values()) expect(t.dtype).toBe('float32');
    const reshaped = [0, 1].flatMap((s) => ['token_mixer.pwconv1', 'token_mixer.pwconv2', 'mlp.fc1', 'mlp.fc2']
      .map((m) => `stages.${s}.blocks.0.${m}.weight`));
    for (const name of reshaped) {
      const shape = tensors.get(name)!.shape;
      expect(shape).toHaveLength(4);
      expect(shape.slice(2)).toEqual([1, 1]);
    }
  });

  it('reads the full-size F16 model with every tensor accounted for', async () => {
    const file = fixturePath('models', 'caformer_s18_224.safetensors');
    const header = await readSafetensorsHeader(file);
    let bytes = 0;
    for (const e of header.tensors.values()) bytes += e.end - e.begin;
    expect(header.dataStart + bytes).toBe(header.fileSize);
    const out = await readSafetensors(file, { names: ['stage3'] });
    expect(out.get('stage3')!.shape).toEqual([2, 7, 7, 512]);
  });
});
