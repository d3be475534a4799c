/**
 * Checkpoint loading and saving: every .pth fixture variant and the timm safetensors give the official
 * state dict; format sniffing ignores the extension; saving is atomic and round-trips in both formats;
 * loadWeights puts the weights into a model whose logits match the fixture.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONFIG_METADATA_KEY, loadStateDict, loadWeights, readCheckpoint, readCheckpointConfig, saveCheckpoint, sniffFormat,
} from '../../lib/io/checkpoint.js';
import { PyGlobal, PyObject, PyPersistentId, PyTuple, pickleDump, type PyKey, type PyValue } from '../../lib/io/pickle.js';
import { writePth } from '../../lib/io/pth.js';
import { toRaw } from '../../lib/io/tensors.js';
import { createModel } from '../../lib/models/index.js';
import type { Tensor } from '../../lib/tensor.js';
import { fixturePath } from '../helpers/fixtures.js';
import { craftZip } from '../helpers/zipcraft.js';
import { loadFixture, relL2, type Fixture } from '../helpers/tensors.js';

const TINY = { family: 'caformer' as const, depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], numClasses: 10, imageSize: 64 };

let fx: Fixture;
let official: Map<string, Tensor>;
let tmp: string;

beforeAll(async () => {
  fx = await loadFixture('models', 'caformer_tiny.safetensors');
  official = new Map();
  for (const [k, t] of fx.tensors) if (k.startsWith('param.')) official.set(k.slice('param.'.length), t);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-ckpt-'));
});

afterAll(() => {
  for (const t of fx.tensors.values()) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A zip-format torch.save of {'model_ema': state_dict, 'epoch': 3}, built with the pickle writer. */
function emaCheckpoint(sd: Map<string, Tensor>): Uint8Array {
  const od = new PyGlobal('collections', 'OrderedDict');
  const items = new Map<PyKey, PyValue>();
  const records: { name: string; data: Uint8Array }[] = [];
  [...sd].forEach(([k, t], i) => {
    const strides = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, x) => a * x, 1));
    const storage = new PyPersistentId(new PyTuple(['storage', new PyGlobal('torch', 'FloatStorage'), String(i), 'cpu', t.numel]));
    items.set(k, new PyObject(new PyGlobal('torch._utils', '_rebuild_tensor_v2'),
      [storage, 0, new PyTuple([...t.shape]), new PyTuple(strides), false, new PyObject(od, [])]));
    records.push({ name: `ema/data/${i}`, data: t.toBytes() });
  });
  const top = new Map<PyKey, PyValue>([['model_ema', new PyObject(od, [], undefined, items)], ['epoch', 3]]);
  return craftZip([{ name: 'ema/data.pkl', data: pickleDump(top) }, ...records, { name: 'ema/version', data: new TextEncoder().encode('3\n') }]);
}

function expectSameAsOfficial(sd: Map<string, Tensor>, tol = 0): void {
  expect(new Set(sd.keys())).toEqual(new Set(official.keys()));
  for (const [k, ref] of official) {
    const t = sd.get(k)!;
    expect(t.shape, k).toEqual(ref.shape);
    const err = relL2(t.toFloat32Array(), ref.toFloat32Array());
    expect(err, k).toBeLessThanOrEqual(tol);
  }
}

function disposeAll(sd: Map<string, Tensor>): void {
  for (const t of sd.values()) t.dispose();
}

describe('loadStateDict', () => {
  for (const file of ['caformer_tiny.pth', 'caformer_tiny_legacy.pth', 'caformer_tiny_wrapped.pth', 'caformer_tiny_timm.safetensors']) {
    it(`reads ${file} as the official float32 state dict`, async () => {
      const sd = await loadStateDict(fixturePath('checkpoints', file));
      expect([...sd.values()].every((t) => t.dtype === 'float32')).toBe(true);
      expectSameAsOfficial(sd);
      disposeAll(sd);
    });
  }

  it('keeps float16 and bfloat16 as stored unless float32 is asked for', async () => {
    for (const [file, dtype, tol] of [['caformer_tiny_f16.pth', 'float16', 1e-3], ['caformer_tiny_bf16.pth', 'bfloat16', 8e-3]] as const) {
      const stored = await loadStateDict(fixturePath('checkpoints', file));
      expect([...stored.values()].every((t) => t.dtype === dtype)).toBe(true);
      disposeAll(stored);
      const f32 = await loadStateDict(fixturePath('checkpoints', file), { dtype: 'float32' });
      expect([...f32.values()].every((t) => t.dtype === 'float32')).toBe(true);
      expectSameAsOfficial(f32, tol);
      disposeAll(f32);
    }
  });

  it('sniffs the format from the content, whatever the extension', async () => {
    const a = path.join(tmp, 'really-a-pth.safetensors');
    const b = path.join(tmp, 'really-safetensors.bin');
    fs.copyFileSync(fixturePath('checkpoints', 'caformer_tiny.pth'), a);
    fs.copyFileSync(fixturePath('checkpoints', 'caformer_tiny_timm.safetensors'), b);
    expect(await sniffFormat(a)).toBe('pth');
    expect(await sniffFormat(b)).toBe('safetensors');
    expect(await sniffFormat(fixturePath('checkpoints', 'caformer_tiny_legacy.pth'))).toBe('pth');
    const sd = await loadStateDict(b);
    expectSameAsOfficial(sd);
    disposeAll(sd);
  });

  it('strips a DataParallel prefix', async () => {
    const file = path.join(tmp, 'dp.pth');
    await writePth(file, [...official].map(([k, t]) => [`module.${k}`, toRaw(t)] as const));
    const sd = await loadStateDict(file);
    expectSameAsOfficial(sd);
    disposeAll(sd);
  });

  it('unwraps the model_ema entry of a training checkpoint', async () => {
    const file = path.join(tmp, 'ema.pth');
    fs.writeFileSync(file, emaCheckpoint(official));
    const sd = await loadStateDict(file);
    expectSameAsOfficial(sd);
    disposeAll(sd);
  });

  it('rejects missing files, non-checkpoints and bad options with one clear error', async () => {
    await expect(loadStateDict(path.join(tmp, 'nope.pth'))).rejects.toThrow(/Expected a readable checkpoint file for file but received .*nope\.pth.*ENOENT/);
    const junk = path.join(tmp, 'junk.safetensors');
    fs.writeFileSync(junk, 'hello, not a checkpoint');
    await expect(loadStateDict(junk)).rejects.toThrow(/expected a .safetensors or PyTorch .pth checkpoint but found a file starting with 68 65/);
    const empty = path.join(tmp, 'empty.pth');
    fs.writeFileSync(empty, '');
    await expect(loadStateDict(empty)).rejects.toThrow(/found an empty file/);
    await expect(loadStateDict(tmp)).rejects.toThrow(/Expected a regular file for file/);
    await expect(loadStateDict(fixturePath('checkpoints', 'caformer_tiny.pth'), { dtype: 'int8' }))
      .rejects.toThrow(/Expected a floating-point dtype .* for dtype but received "int8"/);
  });
});

describe('saveCheckpoint', () => {
  it('writes a model as safetensors with its config, and as .pth, both reading back exactly', async () => {
    const model = createModel(TINY);
    model.loadStateDict(official);
    const st = path.join(tmp, 'tiny.safetensors');
    const pth = path.join(tmp, 'tiny.pth');
    await saveCheckpoint(model, st, { metadata: { note: 'test' } });
    await saveCheckpoint(model, pth);
    const a = await readCheckpoint(st);
    expect(a.format).toBe('safetensors');
    expect(a.metadata.note).toBe('test');
    expect(a.detected.convention).toBe('official');
    expectSameAsOfficial(a.tensors);
    disposeAll(a.tensors);
    const cfg = await readCheckpointConfig(st);
    expect(cfg).toMatchObject({ family: 'caformer', depths: TINY.depths, dims: TINY.dims, numClasses: 10, inputSize: [64, 64] });
    expect(await readCheckpointConfig(pth)).toBeNull();
    const b = await readCheckpoint(pth);
    expect(b.format).toBe('pth');
    expectSameAsOfficial(b.tensors);
    disposeAll(b.tensors);
    model.dispose();
  });

  it('maps a timm state dict to official names and converts dtypes on the way', async () => {
    const timm = (await readCheckpoint(fixturePath('checkpoints', 'caformer_tiny_timm.safetensors'))).tensors;
    const out = path.join(tmp, 'from-timm.pth');
    await saveCheckpoint(timm, out, { dtype: 'float16' });
    expect([...timm.values()].every((t) => !t.disposed && t.dtype === 'float32')).toBe(true);
    disposeAll(timm);
    const back = await readCheckpoint(out);
    expect(back.detected.convention).toBe('official');
    expect([...back.tensors.values()].every((t) => t.dtype === 'float16')).toBe(true);
    disposeAll(back.tensors);
  });

  it('writes timm names on request, with the 1x1 conv shapes timm expects', async () => {
    const out = path.join(tmp, 'as-timm.safetensors');
    await saveCheckpoint(official, out, { keys: 'timm' });
    const back = await readCheckpoint(out);
    const ref = await readCheckpoint(fixturePath('checkpoints', 'caformer_tiny_timm.safetensors'));
    expect(back.detected.convention).toBe('timm');
    expect(new Set(back.tensors.keys())).toEqual(new Set(ref.tensors.keys()));
    for (const [k, t] of ref.tensors) expect(back.tensors.get(k)!.shape, k).toEqual(t.shape);
    disposeAll(back.tensors);
    disposeAll(ref.tensors);
    await expect(saveCheckpoint(official, out, { keys: 'caffe' as 'timm' })).rejects.toThrow(`Expected 'official' or 'timm' for keys but received "caffe"`);
  });

  it('is atomic: a failed write leaves the existing file intact and no temporary file', async () => {
    const file = path.join(tmp, 'keep.safetensors');
    fs.writeFileSync(file, 'previous content');
    const bad = new Map(official);
    const dead = official.get('norm.weight')!.clone();
    dead.dispose();
    bad.set('norm.weight', dead);
    await expect(saveCheckpoint(bad, file)).rejects.toThrow(/Expected a live tensor for "norm.weight"/);
    expect(fs.readFileSync(file, 'utf8')).toBe('previous content');
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('rejects unknown formats and bad arguments', async () => {
    await expect(saveCheckpoint(official, path.join(tmp, 'x.weights'))).rejects.toThrow(/Expected format 'safetensors' or 'pth'/);
    await expect(saveCheckpoint(42 as unknown as Map<string, Tensor>, path.join(tmp, 'x.pth')))
      .rejects.toThrow('Expected a Module or a Map of name -> Tensor for source but received 42');
    await expect(saveCheckpoint(official, path.join(tmp, 'x.pth'), { metadata: { a: 1 as unknown as string } }))
      .rejects.toThrow(/Expected a string for metadata "a"/);
  });
});

describe('loadWeights', () => {
  it('loads the timm checkpoint into the tiny model, whose logits then match the fixture', async () => {
    const model = createModel(TINY);
    const res = await loadWeights(model, fixturePath('checkpoints', 'caformer_tiny_timm.safetensors'));
    expect(res).toMatchObject({ missing: [], unexpected: [], convention: 'timm' });
    model.eval();
    const logits = await model.predict(fx.get('input'));
    expect(relL2(logits.toFloat32Array(), fx.get('logits').toFloat32Array())).toBeLessThan(3e-5);
    logits.dispose();
    model.dispose();
  });

  it('loads half-precision checkpoints into a float32 model', async () => {
    const model = createModel(TINY);
    await loadWeights(model, fixturePath('checkpoints', 'caformer_tiny_f16.pth'));
    expect(model.parameters().every((p) => p.dtype === 'float32')).toBe(true);
    const w = model.stateDict().get('head.fc2.weight')!;
    expect(relL2(w.toFloat32Array(), official.get('head.fc2.weight')!.toFloat32Array())).toBeLessThan(1e-3);
    model.dispose();
  });

  it('reports every problem of a checkpoint that does not fit, naming the file', async () => {
    const model = createModel({ ...TINY, numClasses: 7 });
    const file = fixturePath('checkpoints', 'caformer_tiny.pth');
    await expect(loadWeights(model, file)).rejects.toThrow(/caformer_tiny\.pth: loadStateDict: .*\n.*shape mismatches \(2\)/);
    const partial = new Map([...official].filter(([k]) => !k.startsWith('head.')));
    const res = await loadWeights(model, partial, { strict: false });
    expect(res.missing.length).toBe(6);
    expect(res.convention).toBe('official');
    expect([...official.values()].every((t) => !t.disposed)).toBe(true);
    await expect(loadWeights({} as never, file)).rejects.toThrow('Expected a Module for model but received Object');
    model.dispose();
  });
});
