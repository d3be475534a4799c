/**
 * classify() on real photos with the tiny CAFormer fixture weights: result shapes, sorted probabilities that
 * sum to at most 1, top-1 equal to the argmax of predict() on the same preprocessed batch, tensor inputs,
 * labels (ImageNet lists, custom, indices), and clear errors for bad images and options.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classify, topKSoftmax, type Prediction } from '../lib/classify.js';
import { preprocessBatch } from '../lib/io/image.js';
import { imagenetLabels, labelsFor } from '../lib/labels.js';
import { createModel, type MetaFormer } from '../lib/models/index.js';
import { Tensor } from '../lib/tensor.js';
import { fixturePath } from './helpers/fixtures.js';
import { loadFixture } from './helpers/tensors.js';

const TINY = { family: 'caformer' as const, depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], numClasses: 10, imageSize: 64 };
const PHOTOS = ['chelsea.png', 'coffee.png', 'astronaut.png', 'rocket.jpg', 'camera.png', 'logo.png'].map((f) => fixturePath('preprocess', 'images', f));

let model: MetaFormer;
let tmp: string;

beforeAll(async () => {
  const fx = await loadFixture('models', 'caformer_tiny.safetensors');
  model = createModel(TINY);
  const sd = new Map<string, Tensor>();
  for (const [k, t] of fx.tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
  model.loadStateDict(sd);
  model.eval();
  for (const t of fx.tensors.values()) t.dispose();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-classify-'));
});

afterAll(() => {
  model.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function argmaxRows(values: Float32Array, cols: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < values.length / cols; ++r) {
    let best = 0;
    for (let c = 1; c < cols; ++c) if (values[r * cols + c]! > values[r * cols + best]!) best = c;
    out.push(best);
  }
  return out;
}

function expectWellFormed(rows: Prediction[][], n: number, k: number): void {
  expect(rows.length).toBe(n);
  for (const row of rows) {
    expect(row.length).toBe(k);
    let sum = 0;
    for (let i = 0; i < row.length; ++i) {
      const p = row[i]!;
      expect(p.probability).toBeGreaterThan(0);
      if (i > 0) expect(p.probability).toBeLessThanOrEqual(row[i - 1]!.probability);
      sum += p.probability;
    }
    expect(sum).toBeLessThanOrEqual(1 + 1e-12);
    expect(new Set(row.map((p) => p.index)).size).toBe(k);
  }
}

describe('classify', () => {
  it('ranks the classes of each photo; top-1 is the argmax of predict on the same preprocessed batch', async () => {
    const rows = await classify(PHOTOS, { model, topK: 3, batchSize: 4 });
    expectWellFormed(rows, PHOTOS.length, 3);
    const cfg = model.config;
    const { data, shape } = await preprocessBatch(PHOTOS, cfg);
    const x = Tensor.from(data, shape);
    const logits = await model.predict(x);
    const expected = argmaxRows(logits.toFloat32Array(), 10);
    expect(rows.map((r) => r[0]!.index)).toEqual(expected);
    // Ten classes: no ImageNet labels, the index stands in.
    expect(rows[0]![0]!.label).toBe(String(rows[0]![0]!.index));
    expect(rows[0]![0]!.synset).toBeUndefined();
    // A preprocessed tensor, alone or as a batch, gives the same answer as the file.
    const single = x.toFloat32Array().subarray(0, 3 * 64 * 64);
    const fromTensor = await classify([Tensor.from(single, [3, 64, 64]), x], { model, topK: 3 });
    expect(fromTensor.length).toBe(1 + PHOTOS.length);
    for (let i = 0; i < 3; ++i) expect(fromTensor[0]![i]!.index).toBe(rows[0]![i]!.index);
    expect(fromTensor[0]![0]!.probability).toBeCloseTo(rows[0]![0]!.probability, 6);
    expect(fromTensor.slice(1).map((r) => r[0]!.index)).toEqual(expected);
    logits.dispose();
    x.dispose();
  });

  it('takes a single path or Buffer, clamps topK to the class count and uses custom labels', async () => {
    const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
    const fromBuffer = await classify(fs.readFileSync(PHOTOS[0]!), { model, topK: 50, labels: names });
    expectWellFormed(fromBuffer, 1, 10);
    const total = fromBuffer[0]!.reduce((s, p) => s + p.probability, 0);
    expect(total).toBeCloseTo(1, 10);
    expect(fromBuffer[0]!.every((p) => p.label === names[p.index])).toBe(true);
    const fromPath = await classify(PHOTOS[0]!, { model, topK: 1 });
    expect(fromPath[0]![0]!.index).toBe(fromBuffer[0]![0]!.index);
  });

  it('labels a 1000-class head with ImageNet synsets and names', async () => {
    const big = createModel({ ...TINY, numClasses: 1000 }).eval();
    try {
      const rows = await classify([PHOTOS[1]!], { model: big, topK: 5 });
      expectWellFormed(rows, 1, 5);
      const table = imagenetLabels('1k');
      for (const p of rows[0]!) {
        expect(p.synset).toBe(table[p.index]!.synset);
        expect(p.label).toBe(table[p.index]!.label);
      }
    } finally {
      big.dispose();
    }
  });

  it('fails with a clear message for bad images, naming the input', async () => {
    const notImage = path.join(tmp, 'notes.jpg');
    fs.writeFileSync(notImage, 'these are not pixels');
    await expect(classify([PHOTOS[0]!, notImage], { model })).rejects.toThrow(/^classify: image 1 \(".*notes\.jpg"\): cannot decode image/);
    await expect(classify(path.join(tmp, 'missing.png'), { model })).rejects.toThrow(/classify: image 0 .*missing\.png/);
    await expect(classify(Buffer.alloc(0), { model })).rejects.toThrow(/classify: image 0 \(a buffer of 0 bytes\): .*empty/);
  });

  it('validates its arguments', async () => {
    await expect(classify(PHOTOS[0]!, { model, topK: 0 })).rejects.toThrow('Expected a positive integer for topK but received 0');
    await expect(classify(PHOTOS[0]!, { model, labels: ['x'] })).rejects.toThrow(/Expected an array of 10 strings \(one per class\) for labels/);
    await expect(classify([42 as unknown as string], { model })).rejects.toThrow('Expected an image path, a Buffer or a preprocessed Tensor for images[0] but received 42');
    const flat = Tensor.zeros([64, 64]);
    await expect(classify(flat, { model })).rejects.toThrow(/Expected a live float tensor \[3, H, W\] or \[N, 3, H, W\]/);
    flat.dispose();
    await expect(classify(PHOTOS[0]!, { model: 7 as unknown as string })).rejects.toThrow('Expected a MetaFormer or a model name for model but received 7');
    await expect(classify(PHOTOS[0]!, { model: 'caformer_s18', offline: true, cacheDir: tmp }))
      .rejects.toThrow(/offline mode: the weights for https?:.*caformer_s18\.pth are not usable from the cache/);
    expect(await classify([], { model })).toEqual([]);
  });
});

describe('labels', () => {
  it('ships the ImageNet-1k and -21k lists in head order', () => {
    const k1 = imagenetLabels('1k');
    expect(k1.length).toBe(1000);
    expect(k1[0]).toEqual({ index: 0, synset: 'n01440764', names: ['tench', 'Tinca tinca'], label: 'tench' });
    expect(k1[999]!.synset).toBe('n15075141');
    const k21 = imagenetLabels('21k');
    expect(k21.length).toBe(21841);
    expect(k21[0]!.synset).toBe('n00004475');
    expect(k21[0]!.label).toBe('organism');
    expect(imagenetLabels('1k')).toBe(k1);
    expect(labelsFor(21841).synset(0)).toBe('n00004475');
    expect(labelsFor(7).label(3)).toBe('3');
    expect(() => imagenetLabels('5k' as '1k')).toThrow('Expected \'1k\' or \'21k\' for kind but received "5k"');
  });

  it('topKSoftmax ranks ties by index and normalises in float64', () => {
    const r = topKSoftmax([1, 3, 3, -1000], 3);
    expect(r.map((x) => x.index)).toEqual([1, 2, 0]);
    expect(r[0]!.probability).toBeCloseTo(Math.exp(0) / (2 + Math.exp(-2)), 12);
  });
});
