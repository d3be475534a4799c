/**
 * Data pipeline: augmentations (shapes, value ranges, determinism under a seed, timm parameter rules), mixup /
 * cutmix targets and boxes, IDX parsing (files generated here, plain and gzip), Fashion-MNIST when installed,
 * ImageFolder scanning, and the DataLoader (every sample once per epoch with worker threads, identical batches
 * for any worker count, resumable state).
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../../lib/random.js';
import {
  affine, autoContrast, buildTransform, equalize, hflip, type Image8, parseRandAugment, posterize, randAugment,
  randomCropPad, randomErasing, randomResizedCrop, randomResizedCropBox, rotate, solarize,
} from '../../lib/train/augment.js';
import { fashionMnist, ImageFolder, Subset, TensorDataset } from '../../lib/train/data.js';
import { encodeIdx, hasFashionMnist, parseIdx, readIdx } from '../../lib/train/idx.js';
import { DataLoader, loaderWorkerPath } from '../../lib/train/loader.js';
import { cutmixBox, Mixup, mixupTargets, sampleBeta } from '../../lib/train/mixup.js';
import { existsSync } from 'node:fs';

const tmp = mkdtempSync(path.join(tmpdir(), 'mf-data-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function randomImage(w: number, h: number, c: 1 | 3, seed: number): Image8 {
  const r = new Rng(seed);
  const data = new Uint8Array(w * h * c);
  for (let i = 0; i < data.length; ++i) data[i] = r.int(256);
  return { data, width: w, height: h, channels: c };
}

describe('geometric augmentations', () => {
  it('RandomResizedCrop boxes follow torchvision (area, ratio, inside the image) and fall back to a center crop', () => {
    const rng = new Rng(3);
    for (let i = 0; i < 200; ++i) {
      const b = randomResizedCropBox(64, 48, rng);
      expect(b.left).toBeGreaterThanOrEqual(0);
      expect(b.top).toBeGreaterThanOrEqual(0);
      expect(b.left + b.width).toBeLessThanOrEqual(64);
      expect(b.top + b.height).toBeLessThanOrEqual(48);
      expect(b.width * b.height).toBeGreaterThanOrEqual(Math.floor(0.08 * 64 * 48 * 0.8));
    }
    // an impossible scale forces the fallback: whole image clamped to the ratio range, centered
    const f = randomResizedCropBox(100, 20, rng, [2, 3]);
    expect(f).toEqual({ left: 36, top: 0, width: 27, height: 20 });  // w = round(20 * 4/3), left = (100 - 27) // 2
    const g = randomResizedCropBox(30, 30, rng, [2, 3]);
    expect(g).toEqual({ left: 0, top: 0, width: 30, height: 30 });
  });

  it('RRC, pad-crop, flip, rotate and affine give valid shapes and are deterministic under a seed', () => {
    for (const c of [1, 3] as const) {
      const img = randomImage(37, 29, c, 1);
      const a = randomResizedCrop(img, [16, 20], new Rng(5));
      const b = randomResizedCrop(img, [16, 20], new Rng(5));
      expect([a.width, a.height, a.channels, a.data.length]).toEqual([20, 16, c, 20 * 16 * c]);
      expect(a.data).toEqual(b.data);
      const p = randomCropPad(img, [29, 37], 4, new Rng(9));
      expect(p.data.length).toBe(img.data.length);
      expect(hflip(hflip(img)).data).toEqual(img.data);
      expect(rotate(img, 0, [0, 0, 0]).data).toEqual(img.data);
      expect(affine(img, [1, 0, 0, 0, 1, 0], [0]).data).toEqual(img.data);
      const shifted = affine(img, [1, 0, 2, 0, 1, 0], [7, 7, 7]);  // translate by 2 px: input x = x + 2
      expect(shifted.data[(3 * 37 + 5) * c]).toBe(img.data[(3 * 37 + 7) * c]);
      expect(shifted.data[(3 * 37 + 36) * c]).toBe(7);
    }
    const img = randomImage(8, 6, 1, 2);
    const f = hflip(img);
    expect(f.data[0]).toBe(img.data[7]);
  });
});

describe('pixel ops and RandAugment', () => {
  it('PIL ImageOps semantics: autocontrast, equalize, posterize, solarize', () => {
    const img: Image8 = { data: Uint8Array.from([50, 100, 150, 50]), width: 2, height: 2, channels: 1 };
    expect(Array.from(autoContrast(img).data)).toEqual([0, 127, 255, 0]);
    expect(Array.from(posterize(img, 2).data)).toEqual([0, 64, 128, 0]);
    expect(Array.from(posterize(img, 0).data)).toEqual([0, 0, 0, 0]);
    expect(Array.from(solarize(img, 100).data)).toEqual([50, 155, 105, 50]);
    const flat: Image8 = { data: new Uint8Array(4).fill(9), width: 2, height: 2, channels: 1 };
    expect(Array.from(equalize(flat).data)).toEqual([9, 9, 9, 9]);
    const e = equalize(randomImage(16, 16, 3, 4));
    expect(e.data.length).toBe(16 * 16 * 3);
  });

  it("parses timm's config strings", () => {
    expect(parseRandAugment('rand-m9-mstd0.5')).toMatchObject({ magnitude: 9, magnitudeStd: 0.5, numLayers: 2, prob: 0.5, magnitudeMax: 10 });
    expect(parseRandAugment('rand-m9-mstd0.5-inc1').ops).toContain('PosterizeIncreasing');
    expect(parseRandAugment('rand-m7-n3').numLayers).toBe(3);
    expect(() => parseRandAugment('auto-m9')).toThrow(/Expected a RandAugment config/);
    expect(() => parseRandAugment('rand-x9')).toThrow(/Expected sections/);
  });

  it('rand-m9-mstd0.5 keeps shapes, changes images, and is deterministic under a seed', () => {
    const cfg = parseRandAugment('rand-m9-mstd0.5');
    for (const c of [1, 3] as const) {
      const img = randomImage(24, 24, c, 7);
      let changed = 0;
      for (let s = 0; s < 20; ++s) {
        const a = randAugment(img, cfg, new Rng(s), { fill: [124, 116, 104], translatePct: 0.45 });
        const b = randAugment(img, cfg, new Rng(s), { fill: [124, 116, 104], translatePct: 0.45 });
        expect(a.data).toEqual(b.data);
        expect([a.width, a.height, a.channels]).toEqual([24, 24, c]);
        if (a.data.some((v, i) => v !== img.data[i])) changed++;
      }
      expect(changed).toBeGreaterThan(5);
    }
  });

  it('random erasing writes one box of normal noise with probability p', () => {
    const buf = new Float32Array(3 * 20 * 20).fill(7);
    expect(randomErasing(buf, 0, 3, 20, 20, new Rng(1), { probability: 0 })).toBe(false);
    expect(buf.every((v) => v === 7)).toBe(true);
    expect(randomErasing(buf, 0, 3, 20, 20, new Rng(1), { probability: 1 })).toBe(true);
    const erased = buf.filter((v) => v !== 7).length;
    expect(erased % 3).toBe(0);
    expect(erased / 3).toBeGreaterThanOrEqual(Math.floor(0.02 * 400 * 0.5));
    expect(erased / 3).toBeLessThanOrEqual(Math.ceil(400 / 3) + 40);
    const again = new Float32Array(3 * 20 * 20).fill(7);
    randomErasing(again, 0, 3, 20, 20, new Rng(1), { probability: 1 });
    expect(again).toEqual(buf);
  });

  it('train and eval transforms write normalised 3-channel CHW floats', () => {
    const gray = randomImage(28, 28, 1, 3);
    const out = new Float32Array(2 * 3 * 28 * 28);
    const t = buildTransform({ kind: 'train', size: [28, 28], crop: 'pad', padding: 2, randAugment: 'rand-m9-mstd0.5', reprob: 0.25, mean: [0.286], std: [0.353] });
    t(gray, new Rng(1), out, 3 * 28 * 28);
    expect(out.subarray(0, 3 * 28 * 28).every((v) => v === 0)).toBe(true);
    expect(out.subarray(3 * 28 * 28).every(Number.isFinite)).toBe(true);
    const e = buildTransform({ kind: 'eval', size: [28, 28], mean: [0], std: [1] });
    const o2 = new Float32Array(3 * 28 * 28);
    e(gray, new Rng(0), o2, 0);
    expect(o2[0]).toBeCloseTo(gray.data[0]! / 255, 6);
    expect(o2[28 * 28]).toBe(o2[0]);  // grey replicated
    const rgb = randomImage(50, 40, 3, 5);
    const e2 = buildTransform({ kind: 'eval', size: [32, 32], cropPct: 0.875, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
    const o3 = new Float32Array(3 * 32 * 32);
    e2(rgb, new Rng(0), o3, 0);
    expect(o3.every((v) => v >= -1 && v <= 1)).toBe(true);
  });
});

describe('mixup / cutmix', () => {
  it('soft targets sum to 1 and hold lam and smoothing', () => {
    const t = mixupTargets(Int32Array.from([0, 2, 1]), 4, 0.7, 0.1);
    for (let i = 0; i < 3; ++i) expect(t.subarray(4 * i, 4 * i + 4).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    // row 0: label 0 with lam, flipped label 1 with 1 - lam
    expect(t[0]).toBeCloseTo(0.025 + 0.7 * 0.9, 6);
    expect(t[1]).toBeCloseTo(0.025 + 0.3 * 0.9, 6);
    expect(t[2]).toBeCloseTo(0.025, 6);
  });

  it('cutmix box area matches the corrected lambda', () => {
    const rng = new Rng(11);
    for (let i = 0; i < 100; ++i) {
      const lam0 = rng.random();
      const { box, lam } = cutmixBox(32, 24, lam0, rng);
      expect(box.top).toBeGreaterThanOrEqual(0);
      expect(box.bottom).toBeLessThanOrEqual(32);
      expect(box.right).toBeLessThanOrEqual(24);
      expect(lam).toBeCloseTo(1 - ((box.bottom - box.top) * (box.right - box.left)) / (32 * 24), 12);
      // uncorrected side lengths are int(side * sqrt(1 - lam)), so the area is at most (1 - lam0) of the image
      expect(1 - lam).toBeLessThanOrEqual(1 - lam0 + 1e-12);
    }
  });

  it('Beta samples have the right mean', () => {
    const rng = new Rng(2);
    let s = 0;
    for (let i = 0; i < 4000; ++i) s += sampleBeta(rng, 0.8, 0.8);
    expect(s / 4000).toBeCloseTo(0.5, 1);
    let t = 0;
    for (let i = 0; i < 4000; ++i) t += sampleBeta(rng, 2, 6);
    expect(t / 4000).toBeCloseTo(0.25, 1);
  });

  it('mixes images and targets consistently (timm batch mode)', () => {
    const m = new Mixup({ numClasses: 3, mixupAlpha: 0.8, cutmixAlpha: 1.0, labelSmoothing: 0.1 });
    const modes = new Set<string>();
    for (let s = 0; s < 20; ++s) {
      const imgs = new Float32Array(4 * 1 * 8 * 8);
      for (let b = 0; b < 4; ++b) imgs.fill(b, b * 64, (b + 1) * 64);
      const labels = Int32Array.from([0, 1, 2, 0]);
      const r = m.apply(imgs, [4, 1, 8, 8], labels, new Rng(s));
      modes.add(r.mode);
      for (let b = 0; b < 4; ++b) expect(r.targets.subarray(3 * b, 3 * b + 3).reduce((x, y) => x + y, 0)).toBeCloseTo(1, 5);
      // sample 0 mixed with sample 3: its mean pixel is lam * 0 + (1 - lam) * 3
      const mean0 = imgs.subarray(0, 64).reduce((x, y) => x + y, 0) / 64;
      expect(mean0).toBeCloseTo((1 - r.lam) * 3, 4);
    }
    expect(modes.has('mixup') && modes.has('cutmix')).toBe(true);
    const off = new Mixup({ numClasses: 3, mixupAlpha: 0, cutmixAlpha: 0, labelSmoothing: 0.1 });
    const r = off.apply(new Float32Array(2 * 4), [2, 1, 2, 2], Int32Array.from([1, 2]), new Rng(0));
    expect(r.mode).toBe('none');
    expect(Array.from(r.targets).map((v) => Number(v.toFixed(5)))).toEqual([0.03333, 0.93333, 0.03333, 0.03333, 0.03333, 0.93333]);
  });
});

describe('IDX files', () => {
  it('parses generated files, plain and gzip, and rejects corrupt ones', () => {
    const images = Uint8Array.from({ length: 5 * 4 * 3 }, (_, i) => (i * 7) % 256);
    const labels = Uint8Array.from([3, 1, 4, 1, 5]);
    const fi = path.join(tmp, 'imgs-idx3-ubyte');
    const fl = path.join(tmp, 'labels-idx1-ubyte.gz');
    writeFileSync(fi, encodeIdx(images, [5, 4, 3]));
    writeFileSync(fl, gzipSync(encodeIdx(labels, [5])));
    const a = readIdx(fi);
    expect(a.shape).toEqual([5, 4, 3]);
    expect(a.data).toEqual(images);
    expect(readIdx(fl).data).toEqual(labels);
    const f = parseIdx(encodeIdx(Float32Array.from([1.5, -2]), [2]));
    expect(Array.from(f.data)).toEqual([1.5, -2]);
    const i32 = parseIdx(encodeIdx(Int32Array.from([-7, 1 << 20]), [1, 2]));
    expect(Array.from(i32.data)).toEqual([-7, 1 << 20]);
    expect(() => parseIdx(Uint8Array.from([0, 0, 8, 1, 0, 0, 0, 9, 1]))).toThrow(/Expected 17 bytes/);
    expect(() => parseIdx(Uint8Array.from([1, 0, 8, 1]))).toThrow(/IDX header/);
    expect(() => parseIdx(Uint8Array.from([0, 0, 7, 1]))).toThrow(/IDX type byte/);
  });

  // CI does not install the dataset (Debian's dataset-fashion-mnist); the test runs where it is present.
  it.runIf(hasFashionMnist())('loads Fashion-MNIST (60000 + 10000 28x28 grey images, 10 classes)', () => {
    const test = fashionMnist('test');
    expect(test.length).toBe(10000);
    expect(test.shape).toEqual([10000, 28, 28, 1]);
    expect(test.classes.length).toBe(10);
    const counts = new Array(10).fill(0);
    for (const l of test.labels) counts[l]++;
    expect(counts).toEqual(new Array(10).fill(1000));
    const s = test.get(0);
    expect(s.image.data.length).toBe(784);
    expect(s.label).toBe(9);  // the first test image is an ankle boot
    expect(fashionMnist('train').length).toBe(60000);
  });
});

describe('ImageFolder', () => {
  it('scans sorted class folders recursively with torchvision extensions and decodes RGB', async () => {
    const root = path.join(tmp, 'folder');
    for (const [cls, files] of [['b_cls', ['x.png', 'sub/y.PNG', 'notes.txt']], ['a_cls', ['z.jpg']]] as const) {
      for (const f of files) {
        const p = path.join(root, cls, f);
        mkdirSync(path.dirname(p), { recursive: true });
        if (f.endsWith('.txt')) writeFileSync(p, 'x');
        else {
          const img = sharp({ create: { width: 6, height: 4, channels: 3, background: { r: 200, g: 10, b: 30 } } });
          writeFileSync(p, await (f.endsWith('.jpg') ? img.jpeg() : img.png()).toBuffer());
        }
      }
    }
    const ds = new ImageFolder(root);
    expect(ds.classes).toEqual(['a_cls', 'b_cls']);
    expect(ds.files.map((f) => path.relative(root, f))).toEqual(['a_cls/z.jpg', 'b_cls/x.png', 'b_cls/sub/y.PNG']);
    expect(Array.from(ds.labels)).toEqual([0, 1, 1]);
    const s = await ds.get(1);
    expect([s.image.width, s.image.height, s.image.channels]).toEqual([6, 4, 3]);
    expect(Array.from(s.image.data.subarray(0, 3))).toEqual([200, 10, 30]);
    expect(() => new ImageFolder(path.join(tmp, 'missing'))).toThrow(/Expected an existing folder for root/);
  });
});

/** A dataset whose pixels encode the sample index (for checking coverage through augmentation-free loading). */
function indexedDataset(n: number): TensorDataset {
  const h = 4, w = 4;
  const images = new Uint8Array(n * h * w);
  for (let i = 0; i < n; ++i) {
    images[i * h * w] = i % 256;
    images[i * h * w + 1] = Math.floor(i / 256);
  }
  return new TensorDataset(images, [n, h, w, 1], Int32Array.from({ length: n }, (_, i) => i % 3));
}

const evalSpec = { kind: 'eval', size: [4, 4], mean: [0], std: [1] } as const;

function decodeIndices(images: Float32Array, b: number): number[] {
  const per = 3 * 16;
  return Array.from({ length: b }, (_, j) => Math.round(images[j * per]! * 255) + 256 * Math.round(images[j * per + 1]! * 255));
}

describe('DataLoader', () => {
  it('yields every sample once per epoch in-process, shuffled differently per epoch, with drop_last', async () => {
    const ds = indexedDataset(103);
    const loader = new DataLoader(ds, { batchSize: 10, shuffle: true, seed: 4, transform: { ...evalSpec, size: [4, 4] } });
    expect(loader.length).toBe(11);
    const epochs: number[][] = [];
    for (let e = 0; e < 2; ++e) {
      const seen: number[] = [];
      for await (const b of loader) {
        const idx = decodeIndices(b.images, b.labels.length);
        idx.forEach((i, j) => expect(b.labels[j]).toBe(i % 3));
        seen.push(...idx);
      }
      expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: 103 }, (_, i) => i));
      epochs.push(seen);
    }
    expect(epochs[0]).not.toEqual(epochs[1]);
    expect(loader.epoch).toBe(2);
    const dl = new DataLoader(ds, { batchSize: 10, dropLast: true, transform: { ...evalSpec, size: [4, 4] } });
    let count = 0;
    for await (const b of dl) count += b.labels.length;
    expect(count).toBe(100);
  });

  const haveWorker = existsSync(loaderWorkerPath());
  it.runIf(haveWorker)('with worker threads: every sample once, the same batches as in-process, resumable mid-epoch', async () => {
    const ds = new Subset(indexedDataset(300), Array.from({ length: 257 }, (_, i) => 299 - i));
    const spec = { kind: 'train', size: [4, 4], crop: 'pad', padding: 0, hflip: 0, randAugment: null, reprob: 0.5, mean: [0], std: [1] } as const;
    const mk = (workers: number): DataLoader => new DataLoader(ds, {
      batchSize: 16, shuffle: true, seed: 9, workers, transform: { ...spec, size: [4, 4] },
      mixup: { numClasses: 3, mixupAlpha: 0.8, cutmixAlpha: 1, labelSmoothing: 0.1 },
    });
    const w = mk(2), local = mk(0);
    try {
      const a: Float32Array[] = [], b: Float32Array[] = [];
      const labels: number[] = [];
      for await (const x of w) {
        a.push(x.images, x.targets!);
        labels.push(...x.labels);
      }
      for await (const x of local) b.push(x.images, x.targets!);
      expect(a.length).toBe(2 * 17);
      for (let i = 0; i < a.length; ++i) expect(a[i]).toEqual(b[i]);
      expect(labels.length).toBe(257);
      // mid-epoch resume: a new loader from the state after 5 batches yields the remaining batches
      const it1 = w[Symbol.asyncIterator]();
      const first: Float32Array[] = [];
      for (let i = 0; i < 5; ++i) first.push((await it1.next()).value!.images);
      const st = w.stateDict();
      expect(st).toEqual({ seed: 9, epoch: 1, position: 5 });
      const rest: Float32Array[] = [];
      for (;;) {
        const r = await it1.next();
        if (r.done) break;
        rest.push(r.value.images);
      }
      const r2 = mk(1);
      r2.loadStateDict(st);
      const resumed: Float32Array[] = [];
      for await (const x of r2) resumed.push(x.images);
      await r2.close();
      expect(resumed).toEqual(rest);
    } finally {
      await w.close();
    }
  });

  it('rejects bad options with the project error style', () => {
    const ds = indexedDataset(5);
    expect(() => new DataLoader(ds, { batchSize: 0, transform: { ...evalSpec, size: [4, 4] } })).toThrow(/Expected an integer >= 1 for batchSize but received 0/);
    expect(() => new DataLoader(ds, { batchSize: 8, dropLast: true, transform: { ...evalSpec, size: [4, 4] } })).toThrow(/Expected a dataset of at least 8 samples/);
    expect(() => new DataLoader(ds, { batchSize: 2, transform: { kind: 'eval', size: [4, 0], mean: [0], std: [1] } })).toThrow(/Expected \[height, width\] positive integers for transform.size/);
  });
});
