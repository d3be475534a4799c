/**
 * The addon keeps per-environment state in N-API instance data, so it loads and computes inside
 * worker_threads, alongside the main thread. The worker runs the built package (dist/, made by
 * `npm run build:ts`, which `npm ci` runs through `prepare`).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { Tensor } from '../../lib/tensor.js';
import { linear } from '../../lib/ops.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dist = path.join(root, 'dist', 'lib', 'index.js');

const workerSource = `
import { parentPort, workerData } from 'node:worker_threads';
const mf = await import(workerData.dist);
const x = mf.Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
const w = mf.Tensor.from(new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]), [4, 3]);
const y = mf.ops.linear(x, w, null);
const out = Array.from(y.toFloat32Array());
y.dispose(); x.dispose(); w.dispose();
parentPort.postMessage(out);
`;

function runWorker(): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerSource, { eval: true, workerData: { dist: 'file://' + dist } });
    w.once('message', (m: number[]) => resolve(m));
    w.once('error', reject);
    w.once('exit', (code) => {
      if (code !== 0) reject(new Error(`worker exited with ${code}`));
    });
  });
}

describe('worker_threads', () => {
  it('loads the addon and runs ops in several workers at once, and on the main thread', async () => {
    expect(existsSync(dist), 'dist/ is missing: run npm run build:ts').toBe(true);
    const results = await Promise.all([runWorker(), runWorker(), runWorker()]);
    for (const r of results) expect(r).toEqual([1, 2, 3, 6, 4, 5, 6, 15]);
    const x = Tensor.from(new Float32Array([1, 2, 3]), [1, 3]);
    const w = Tensor.from(new Float32Array([1, 1, 1]), [1, 3]);
    expect(Array.from(linear(x, w).toFloat32Array())).toEqual([6]);
  });
});
