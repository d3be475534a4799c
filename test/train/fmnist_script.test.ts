/**
 * The reproducible Fashion-MNIST script (scripts/train-fashion-mnist.mjs) end to end on a tiny synthetic
 * dataset in the IDX layout (METAFORMER_FASHION_MNIST points at it): one epoch on 64 images, the run folder,
 * result.json with the recipe the script documents, and the shipped copy of the best weights. Needs dist/
 * (built by `npm test` before vitest runs). Also `metaformer train --data fashion-mnist --crop-padding` on the same data.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeIdx } from '../../lib/train/idx.js';
import { setupData } from '../../lib/train/recipe.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mf-fmnist-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** n 28x28 images: class c is a bright horizontal band at rows 2c..2c+5 on dark noise. */
function split(prefix: string, n: number, seed: number): void {
  let s = seed;
  const rand = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const images = new Uint8Array(n * 28 * 28), labels = new Uint8Array(n);
  for (let i = 0; i < n; ++i) {
    const c = i % 10;
    labels[i] = c;
    for (let y = 0; y < 28; ++y) {
      for (let x = 0; x < 28; ++x) images[(i * 28 + y) * 28 + x] = y >= 2 * c && y < 2 * c + 6 ? 200 + Math.floor(40 * rand()) : Math.floor(40 * rand());
    }
  }
  writeFileSync(path.join(tmp, `${prefix}-images-idx3-ubyte`), encodeIdx(images, [n, 28, 28]));
  writeFileSync(path.join(tmp, `${prefix}-labels-idx1-ubyte`), encodeIdx(labels, [n]));
}

describe('scripts/train-fashion-mnist.mjs', () => {
  it.runIf(existsSync(path.join(root, 'dist/lib/train/index.js')))('trains one epoch, writes the run folder and ships the best weights', () => {
    split('train', 64, 1);
    split('t10k', 32, 2);
    const out = path.join(tmp, 'run'), ship = path.join(tmp, 'shipped.safetensors');
    const r = spawnSync(process.execPath, [path.join(root, 'scripts/train-fashion-mnist.mjs'), '--epochs', '1', '--batch-size', '16',
      '--workers', '0', '--out', out, '--ship', ship], { env: { ...process.env, METAFORMER_FASHION_MNIST: tmp }, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const result = JSON.parse(readFileSync(path.join(out, 'result.json'), 'utf8'));
    expect(result.images).toBe(32);
    expect(result.top1).toBeGreaterThanOrEqual(0);
    expect(result.epochs).toBe(1);
    expect(result.recipe).toMatchObject({ model: 'caformer_fmnist', dropPath: 0, cropPadding: 1, smoothing: 0.1, lr: 0.002 });
    for (const f of ['metrics.jsonl', 'curves.svg', 'model_best.safetensors']) expect(existsSync(path.join(out, f)), f).toBe(true);
    expect(readFileSync(ship).equals(readFileSync(path.join(out, 'model_best.safetensors'))), 'shipped copy').toBe(true);
  });

  it.runIf(existsSync(path.join(root, 'dist/lib/cli/commands/train.js')))('--crop-padding: the CLI option, its checks, and the crop it gives', () => {
    const env = { ...process.env, METAFORMER_FASHION_MNIST: tmp };
    const bin = path.join(root, 'bin', 'metaformer.js'), out = path.join(tmp, 'cli');
    const r = spawnSync(process.execPath, [bin, 'train', '--data', 'fashion-mnist', '--model', 'caformer_fmnist', '--crop-padding', '0',
      '--epochs', '1', '--batch-size', '16', '--workers', '0', '--out', out, '--json'], { env, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).images).toBe(32);
    const start = JSON.parse(readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').split('\n')[0]!);
    expect(start.config.cropPadding).toBe(0);
    const bad = spawnSync(process.execPath, [bin, 'train', '--data', 'fashion-mnist', '--model', 'caformer_fmnist', '--crop-padding=1.5'],
      { env, encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/Expected an integer >= 0 for --crop-padding but received "1.5"/);
    const prev = process.env.METAFORMER_FASHION_MNIST;
    process.env.METAFORMER_FASHION_MNIST = tmp;
    try {
      expect(() => setupData('fashion-mnist', { imageSize: 28, cropPadding: -1 })).toThrow(/Expected a non-negative integer for cropPadding but received -1/);
      expect(setupData('fashion-mnist', { imageSize: 28, cropPadding: 0 }).trainSpec.crop).toBe('none');
      expect(setupData('fashion-mnist', { imageSize: 56, cropPadding: 1 }).trainSpec).toMatchObject({ crop: 'pad', padding: 2 });
    } finally {
      if (prev === undefined) delete process.env.METAFORMER_FASHION_MNIST;
      else process.env.METAFORMER_FASHION_MNIST = prev;
    }
  });
});
