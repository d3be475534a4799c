/**
 * --device / { device } for classify, train and eval (API and the built command). Where a GPU is usable
 * (a real one, or the emulated device of the `emulated-cuda` test project) the results on 'cuda' follow
 * the CPU's; without one, 'cuda' is refused with the reason before any data loads, and 'auto' runs on the
 * CPU. Bad device names are usage errors.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classify } from '../../lib/classify.js';
import { cudaAvailable } from '../../lib/device.js';
import { evalRun, trainRun } from '../../lib/train/recipe.js';
import { writeCornerFolder } from '../helpers/images.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bin', 'metaformer.js');
const built = existsSync(path.join(root, 'dist', 'lib', 'cli', 'commands', 'classify.js'));
const gpu = cudaAvailable();
const tmp = mkdtempSync(path.join(tmpdir(), 'mf-device-'));
const folder = path.join(tmp, 'shapes');
const samples = ['0000-ankle-boot.png', '0018-bag.png', '0002-trouser.png'].map((f) => path.join(root, 'assets', 'samples', f));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

beforeAll(() => writeCornerFolder(folder, { train: 16, val: 8 }, 11));

function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: tmp, encoding: 'utf8', env: { ...process.env, METAFORMER_OFFLINE: '1' }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const run = (device: 'cpu' | 'cuda' | 'auto', out: string) => trainRun({
  data: folder, model: 'caformer_tiny', imageSize: 32, epochs: 2, batchSize: 8, workers: 0, out, device, seed: 3, progress: 'none', log: () => undefined,
});

describe('devices for train, eval and classify', () => {
  it.runIf(gpu)("trains and evaluates on 'cuda' as on the CPU", async () => {
    const a = await run('cpu', path.join(tmp, 'cpu'));
    const b = await run('cuda', path.join(tmp, 'cuda'));
    expect(b.history.length).toBe(2);
    b.history.forEach((h, i) => {
      const want = a.history[i]!;
      expect(Math.abs(h.trainLoss - want.trainLoss), `epoch ${i}`).toBeLessThanOrEqual(2e-3 * Math.max(1, want.trainLoss));
      expect(Math.abs(h.eval!.loss - want.eval!.loss), `epoch ${i}`).toBeLessThanOrEqual(2e-3 * Math.max(1, want.eval!.loss));
    });
    const weights = path.join(tmp, 'cuda', 'model.safetensors');
    const [ec, eg] = [await evalRun({ data: folder, weights, workers: 0 }), await evalRun({ data: folder, weights, workers: 0, device: 'cuda' })];
    expect(eg.images).toBe(8);
    expect(eg.top1).toBe(ec.top1);
    expect(Math.abs(eg.loss - ec.loss)).toBeLessThanOrEqual(1e-4 * Math.max(1, ec.loss));
  });

  it.skipIf(gpu)("refuses 'cuda' without a GPU before loading data, and runs 'auto' on the CPU", async () => {
    await expect(trainRun({ data: path.join(tmp, 'no-such-folder'), model: 'caformer_tiny', device: 'cuda' }))
      .rejects.toThrow(/device 'cuda' is unavailable/);
    await expect(evalRun({ data: path.join(tmp, 'no-such-folder'), weights: 'none.safetensors', device: 'cuda' }))
      .rejects.toThrow(/device 'cuda' is unavailable/);
    await expect(classify(samples, { model: 'caformer_s18', device: 'cuda', offline: true })).rejects.toThrow(/device 'cuda' is unavailable/);
    const r = await run('auto', path.join(tmp, 'auto'));
    expect(r.history.length).toBe(2);
  });

  it('refuses unknown devices', async () => {
    await expect(trainRun({ data: folder, model: 'caformer_tiny', device: 'gpu' as never })).rejects.toThrow(/Expected 'cpu', 'cuda' or 'auto' for device but received "gpu"/);
    await expect(classify(samples, { model: 'caformer_s18', device: 'tpu' as never })).rejects.toThrow(TypeError);
  });

  it.runIf(built)('metaformer classify / eval --device', () => {
    const cpu = cli('classify', ...samples, '--json', '--top', '2');
    expect(cpu.code, cpu.stderr).toBe(0);
    const onGpu = cli('classify', ...samples, '--json', '--top', '2', '--device', 'cuda');
    if (gpu) {
      expect(onGpu.code, onGpu.stderr).toBe(0);
      const [a, b] = [JSON.parse(cpu.stdout), JSON.parse(onGpu.stdout)] as { predictions: { label: string; probability: number }[] }[][];
      b.forEach((o, i) => {
        expect(o.predictions[0]!.label).toBe(a[i]!.predictions[0]!.label);
        expect(Math.abs(o.predictions[0]!.probability - a[i]!.predictions[0]!.probability)).toBeLessThan(1e-4);
      });
    } else {
      expect(onGpu.code).toBe(1);
      expect(onGpu.stderr).toMatch(/device 'cuda' is unavailable/);
    }
    const auto = cli('classify', samples[0]!, '--device', 'auto');
    expect(auto.code, auto.stderr).toBe(0);
    const bad = cli('classify', samples[0]!, '--device', 'gpu');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Expected one of cpu, cuda, auto for --device but received "gpu"/);
    const badEval = cli('eval', '--data', folder, '--weights', 'x.safetensors', '--device', 'npu');
    expect(badEval.code).toBe(2);
    expect(badEval.stderr).toMatch(/Expected one of cpu, cuda, auto for --device/);
  });
});
