import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DTYPE_SIZE, DTYPES, type DType, type RawTensor } from '../../lib/dtype.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../lib/io/halfs.js';
import { PyGlobal, PyObject, PyPersistentId, PyTuple, pickleDump, type PyKey, type PyValue } from '../../lib/io/pickle.js';
import { PthTensor, readPth, readPthObject, writePth } from '../../lib/io/pth.js';
import { readSafetensors, readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { ZipReader, ZipWriter } from '../../lib/io/zip.js';
import { fixturePath } from '../helpers/fixtures.js';
import { craftZip } from '../helpers/zipcraft.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-pth-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Tensor values as JS numbers (bool as 0/1), decoded from little-endian bytes. */
function values(t: RawTensor): number[] {
  const d = t.data.slice(); // copy: aligned for the typed-array views
  const b = d.buffer;
  const decode: Record<DType, () => ArrayLike<number | bigint>> = {
    float32: () => new Float32Array(b), float64: () => new Float64Array(b),
    float16: () => f16ToF32(new Uint16Array(b)), bfloat16: () => bf16ToF32(new Uint16Array(b)),
    int64: () => new BigInt64Array(b), int32: () => new Int32Array(b), int16: () => new Int16Array(b),
    int8: () => new Int8Array(b), uint8: () => d, bool: () => d,
  };
  return Array.from(decode[t.dtype](), Number);
}

function fromValues(dtype: DType, shape: number[], vals: number[]): RawTensor {
  const n = vals.length;
  const make: Record<DType, () => ArrayBufferView> = {
    float32: () => Float32Array.from(vals), float64: () => Float64Array.from(vals),
    float16: () => f32ToF16(Float32Array.from(vals)), bfloat16: () => f32ToBf16(Float32Array.from(vals)),
    int64: () => BigInt64Array.from(vals, (v) => BigInt(v)), int32: () => Int32Array.from(vals),
    int16: () => Int16Array.from(vals), int8: () => Int8Array.from(vals), uint8: () => Uint8Array.from(vals),
    bool: () => Uint8Array.from(vals, (v) => (v ? 1 : 0)),
  };
  const view = make[dtype]();
  expect(view.byteLength).toBe(n * DTYPE_SIZE[dtype]);
  return { dtype, shape, data: new Uint8Array(view.buffer, view.byteOffset, view.byteLength) };
}

/** One tensor per dtype plus 0-d and empty ones, with values every dtype represents exactly. */
function sampleTensors(): Map<string, RawTensor> {
  const m = new Map<string, RawTensor>();
  for (const dtype of DTYPES) {
    const vals = Array.from({ length: 6 }, (_, i) => (dtype === 'bool' ? i % 2 : dtype === 'uint8' ? i * 40 : i * 3 - 7));
    m.set(`layer.${dtype}`, fromValues(dtype, [2, 3], vals));
  }
  m.set('scalar', fromValues('float32', [], [0.25]));
  m.set('scalar_long', fromValues('int64', [], [-123456789012]));
  m.set('empty', fromValues('float16', [0], []));
  m.set('empty_2d', fromValues('int32', [3, 0], []));
  return m;
}

describe('readPth on the checkpoint fixtures', async () => {
  const refFile = fixturePath('models', 'caformer_tiny.safetensors');
  const reference = new Map([...await readSafetensors(refFile)]
    .filter(([k]) => k.startsWith('param.')).map(([k, v]) => [k.slice('param.'.length), v]));
  const config = JSON.parse((await readSafetensorsHeader(refFile)).metadata.config) as { state_dict_keys: string[] };

  it.each(['caformer_tiny', 'caformer_tiny_legacy', 'caformer_tiny_wrapped'])(
    '%s.pth holds the F32 reference parameters byte for byte, in state_dict order', async (name) => {
      const got = await readPth(fixturePath('checkpoints', `${name}.pth`));
      expect([...got.keys()]).toEqual(config.state_dict_keys);
      for (const [key, ref] of reference) {
        const t = got.get(key)!;
        expect(t.dtype).toBe('float32');
        expect(t.shape).toEqual(ref.shape);
        expect(Buffer.compare(t.data, ref.data)).toBe(0);
      }
    });

  it.each([['caformer_tiny_f16', 'float16', f32ToF16], ['caformer_tiny_bf16', 'bfloat16', f32ToBf16]] as const)(
    '%s.pth holds the reference rounded to nearest even %s', async (name, dtype, round) => {
      const got = await readPth(fixturePath('checkpoints', `${name}.pth`));
      expect(new Set(got.keys())).toEqual(new Set(reference.keys()));
      for (const [key, ref] of reference) {
        const t = got.get(key)!;
        expect(t.dtype).toBe(dtype);
        expect(t.shape).toEqual(ref.shape);
        const expected = round(new Float32Array(ref.data.slice().buffer));
        expect(Buffer.compare(t.data, new Uint8Array(expected.buffer))).toBe(0);
      }
    });

  it('keeps non-tensor entries in the object tree (readPthObject)', async () => {
    const root = await readPthObject(fixturePath('checkpoints', 'caformer_tiny_wrapped.pth'));
    expect(root).toBeInstanceOf(Map);
    const top = root as Map<PyKey, PyValue>;
    expect(top.get('epoch')).toBe(3);
    const model = top.get('model') as Map<PyKey, PyValue>;
    expect(model.size).toBe(reference.size);
    const w = model.get('head.fc2.weight');
    expect(w).toBeInstanceOf(PthTensor);
    expect(Buffer.compare((w as PthTensor).data, reference.get('head.fc2.weight')!.data)).toBe(0);
  });

  it('reads into the buffers returned by alloc', async () => {
    const seen: string[] = [];
    const got = await readPth(fixturePath('checkpoints', 'caformer_tiny_legacy.pth'), {
      alloc: (dtype, shape, n) => {
        seen.push(`${dtype} ${shape.join('x')}`);
        return new Uint8Array(new SharedArrayBuffer(n));
      },
    });
    expect(seen).toHaveLength(reference.size);
    for (const [key, t] of got) {
      expect(t.data.buffer).toBeInstanceOf(SharedArrayBuffer);
      expect(Buffer.compare(t.data, reference.get(key)!.data)).toBe(0);
    }
  });
});

describe('writePth', () => {
  it('round-trips every dtype, 0-d and empty tensors through readPth', async () => {
    const file = path.join(dir, 'roundtrip.pth');
    const input = sampleTensors();
    await writePth(file, input);
    const got = await readPth(file);
    expect([...got.keys()]).toEqual([...input.keys()]);
    for (const [k, t] of input) expect(got.get(k)).toEqual(t);
  });

  it('writes the records torch.save writes, each aligned to 64 bytes', async () => {
    const file = path.join(dir, 'layout.pth');
    await writePth(file, sampleTensors());
    const zip = await ZipReader.open(file);
    try {
      const names = [...zip.entries.keys()];
      expect(names[0]).toBe('archive/data.pkl');
      expect(names.at(-1)).toBe('archive/version');
      expect(new TextDecoder().decode(await zip.read('archive/version'))).toBe('3\n');
      expect(new TextDecoder().decode(await zip.read('archive/byteorder'))).toBe('little');
      expect(names.filter((n) => n.startsWith('archive/data/'))).toHaveLength(sampleTensors().size);
      const bytes = fs.readFileSync(file);
      for (const e of zip.entries.values()) {
        const start = e.localHeaderOffset + 30 + bytes.readUInt16LE(e.localHeaderOffset + 26) +
          bytes.readUInt16LE(e.localHeaderOffset + 28);
        expect(start % 64).toBe(0);
      }
    } finally {
      await zip.close();
    }
  });
});

describe('tensor views and containers', () => {
  const G = (m: string, n: string): PyGlobal => new PyGlobal(m, n);
  const OD = G('collections', 'OrderedDict');
  const storage = (type: string, key: string, numel: number): PyPersistentId =>
    new PyPersistentId(new PyTuple(['storage', G('torch', type), key, 'cpu', numel]));
  const view = (s: PyPersistentId, offset: number, size: number[], stride: number[]): PyObject =>
    new PyObject(G('torch._utils', '_rebuild_tensor_v2'),
      [s, offset, new PyTuple(size), new PyTuple(stride), false, new PyObject(OD, [])]);
  const f32 = (...v: number[]): Uint8Array => new Uint8Array(Float32Array.from(v).buffer);

  // storage 0: 0..11 as float32 ([3, 4] row-major); storage 1: int16 0..9
  const s0 = Array.from({ length: 12 }, (_, i) => i);
  const s1 = Array.from({ length: 10 }, (_, i) => i * 100);
  function checkpointObject(): PyObject {
    const st0 = storage('FloatStorage', '0', 12);
    const st1 = storage('ShortStorage', 'x1', 10);
    const stateDict = new Map<PyKey, PyValue>([
      ['full', view(st0, 0, [3, 4], [4, 1])],
      ['transposed', view(st0, 0, [4, 3], [1, 4])],
      ['row1', view(st0, 4, [4], [1])],
      ['col2_offset', view(st0, 2, [3], [4])],
      ['strided3d', view(st0, 1, [2, 2, 2], [6, 1, 2])],
      ['expanded', view(st0, 5, [2, 3], [0, 1])],
      ['scalar', view(st0, 11, [], [])],
      ['every_other', view(st1, 1, [5], [2])],
      ['param', new PyObject(G('torch._utils', '_rebuild_parameter'), [view(st1, 0, [2, 5], [5, 1]), true,
        new PyObject(OD, [])])],
    ]);
    const top = new Map<PyKey, PyValue>([
      ['epoch', 7],
      ['state_dict', new PyObject(OD, [], undefined, stateDict)],
      ['optimizer', new Map<PyKey, PyValue>([['lr', 0.001], ['betas', new PyTuple([0.9, 0.999])]])],
    ]);
    return new PyObject(OD, [], undefined, top);
  }
  const expected: Record<string, [DType, number[], number[]]> = {
    full: ['float32', [3, 4], s0],
    transposed: ['float32', [4, 3], [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]],
    row1: ['float32', [4], [4, 5, 6, 7]],
    col2_offset: ['float32', [3], [2, 6, 10]],
    strided3d: ['float32', [2, 2, 2], [1, 3, 2, 4, 7, 9, 8, 10]],
    expanded: ['float32', [2, 3], [5, 6, 7, 5, 6, 7]],
    scalar: ['float32', [], [11]],
    every_other: ['int16', [5], [100, 300, 500, 700, 900]],
    param: ['int16', [2, 5], s1],
  };
  function checkAll(got: Map<string, RawTensor>): void {
    expect([...got.keys()]).toEqual(Object.keys(expected));
    for (const [k, [dtype, shape, vals]] of Object.entries(expected)) {
      const t = got.get(k)!;
      expect([k, t.dtype, t.shape, values(t)]).toEqual([k, dtype, shape, vals]);
    }
  }
  const storageBytes = (): [Uint8Array, Uint8Array] =>
    [f32(...s0), new Uint8Array(Int16Array.from(s1).buffer)];

  it('gathers strided, offset, expanded and shared-storage views; unwraps state_dict; any archive prefix', async () => {
    const file = path.join(dir, 'views.pth');
    const [b0, b1] = storageBytes();
    const chunks: Uint8Array[] = [];
    const zip = new ZipWriter(async (b) => { chunks.push(b.slice()); });
    await zip.add('some_stem/data.pkl', pickleDump(checkpointObject()));
    await zip.add('some_stem/data/0', b0);
    await zip.add('some_stem/data/x1', b1);
    await zip.add('some_stem/version', new TextEncoder().encode('3\n'));
    await zip.finish();
    fs.writeFileSync(file, Buffer.concat(chunks));
    checkAll(await readPth(file));
    const root = await readPthObject(file) as Map<PyKey, PyValue>;
    expect(root.get('epoch')).toBe(7);
    expect((root.get('optimizer') as Map<PyKey, PyValue>).get('betas')).toEqual(new PyTuple([0.9, 0.999]));
  });

  it('reads deflated storages and ZIP64-style archives', async () => {
    const [b0, b1] = storageBytes();
    for (const zip64 of [false, true]) {
      const file = path.join(dir, `deflated_${zip64}.pth`);
      fs.writeFileSync(file, craftZip([
        { name: 'archive/data.pkl', data: pickleDump(checkpointObject()), method: 8 },
        { name: 'archive/data/0', data: b0, method: 8 },
        { name: 'archive/data/x1', data: b1 },
      ], { zip64 }));
      checkAll(await readPth(file));
    }
  });
});

/**
 * PyTorch interop. CI images do not ship PyTorch, so these run only where some Python can `import torch`: the
 * METAFORMER_PYTHON interpreter, `python3` on PATH, or the system interpreter (Debian's python3-torch installs
 * for it, while a pyenv or venv `python3` on PATH usually lacks it).
 */
function findTorchPython(): string | undefined {
  for (const py of [process.env.METAFORMER_PYTHON, 'python3', '/usr/bin/python3']) {
    if (py && spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore', timeout: 120_000 }).status === 0) return py;
  }
  return undefined;
}
const torchPython = findTorchPython();
const hasTorch = torchPython !== undefined;

function python(script: string, ...args: string[]): string {
  const r = spawnSync(torchPython!, ['-c', script, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

const DUMP = `
import json, sys, torch
def dump(obj):
    return {k: [str(v.dtype).replace('torch.', ''), list(v.shape),
                (v.float() if v.dtype in (torch.float16, torch.bfloat16) else
                 v.int() if v.dtype == torch.bool else v).flatten().tolist()]
            for k, v in obj.items()}
`;

describe('PyTorch interop', () => {
  it.runIf(hasTorch)('torch.load reads what writePth writes', () => {
    const file = path.join(dir, 'for_torch.pth');
    const input = sampleTensors();
    return writePth(file, input).then(() => {
      const out = JSON.parse(python(`${DUMP}
sd = torch.load(sys.argv[1])
assert type(sd).__name__ == 'OrderedDict', type(sd)
print(json.dumps(dump(sd)))`, file)) as Record<string, [string, number[], number[]]>;
      expect(Object.keys(out)).toEqual([...input.keys()]);
      for (const [k, t] of input) {
        const torchName = t.dtype === 'float32' ? 'float32' : t.dtype;
        expect(out[k]).toEqual([torchName, t.shape, values(t)]);
      }
    });
  });

  it.runIf(hasTorch)('readPth reads views, parameters and dtypes that torch.save writes (zip and legacy)', async () => {
    const zipFile = path.join(dir, 'torch_zip.pth');
    const legacyFile = path.join(dir, 'torch_legacy.pth');
    const out = JSON.parse(python(`${DUMP}
torch.manual_seed(0)
base = torch.randn(4, 6)
sd = {
    'base': base, 't': base.t(), 'slice': base[1:3, ::2], 'row': base[2], 'expand': base[0, :3].unsqueeze(0).expand(2, 3),
    'param': torch.nn.Parameter(torch.randn(3, 2)), 'half': base.half()[::2], 'bf16': base.bfloat16().t(),
    'double': torch.randn(2, 2, dtype=torch.float64), 'long': torch.arange(-3, 9).reshape(3, 4)[:, 1::2],
    'int': torch.arange(5, dtype=torch.int32), 'short': torch.arange(4, dtype=torch.int16),
    'char': torch.arange(-2, 2, dtype=torch.int8), 'byte': torch.arange(250, 256, dtype=torch.uint8),
    'bool': torch.tensor([True, False, True]), 'scalar': torch.tensor(2.5), 'empty': torch.zeros(0, 3),
}
torch.save({'state_dict': sd, 'step': 10}, sys.argv[1])
torch.save(sd, sys.argv[2], _use_new_zipfile_serialization=False)
print(json.dumps(dump(sd)))`, zipFile, legacyFile)) as Record<string, [string, number[], number[]]>;
    for (const file of [zipFile, legacyFile]) {
      const got = await readPth(file);
      expect([...got.keys()]).toEqual(Object.keys(out));
      for (const [k, [dtype, shape, vals]] of Object.entries(out)) {
        const t = got.get(k)!;
        expect([k, t.dtype, t.shape, values(t)]).toEqual([k, dtype, shape, vals]);
      }
    }
  });
});
