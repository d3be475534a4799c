/**
 * Whole runs and fine-tuning: a model loaded from the caformer_tiny .pth fixture with a new 3-class head and two
 * frozen stages trains without touching the frozen weights; a run on a small image folder (train/ and val/) via
 * trainRun writes its folder and evalRun reproduces its final evaluation; the built `metaformer train` and
 * `metaformer eval` commands do the same from the command line (skipped without dist/).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { createModel } from '../../lib/models/index.js';
import { manualSeed } from '../../lib/random.js';
import { Tensor, tidy } from '../../lib/tensor.js';
import { crossEntropy } from '../../lib/ops.js';
import { prepareFinetune } from '../../lib/train/finetune.js';
import { createOptimizer } from '../../lib/train/optim.js';
import { evalRun, trainRun } from '../../lib/train/recipe.js';
import { fixturePath } from '../helpers/fixtures.js';
import { writeCornerFolder } from '../helpers/images.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mf-recipe-'));
const folder = path.join(tmp, 'shapes');
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** train/ and val/ with two classes: a bright square in the top-left or the bottom-right corner of 24x24 noise. */
beforeAll(() => writeCornerFolder(folder));

describe('fine-tuning', () => {
  it('loads the official tiny checkpoint, replaces the head, freezes stages, and trains only the rest', async () => {
    manualSeed(3);
    const model = createModel({ family: 'caformer', depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], numClasses: 10, imageSize: 64 });
    await prepareFinetune(model, { weights: fixturePath('checkpoints', 'caformer_tiny.pth'), numClasses: 3, freezeStages: 2 });
    expect(model.numClasses).toBe(3);
    const sd = model.stateDict();
    expect(sd.get('head.fc2.weight')!.shape).toEqual([3, 256]);
    const frozen = ['downsample_layers.0.conv.weight', 'stages.1.0.mlp.fc1.weight'];
    for (const k of frozen) expect(sd.get(k)!.requiresGrad, k).toBe(false);
    expect(sd.get('stages.2.0.mlp.fc1.weight')!.requiresGrad).toBe(true);
    const before = new Map(frozen.map((k) => [k, sd.get(k)!.toFloat32Array()]));
    const trained = sd.get('stages.2.0.mlp.fc1.weight')!.toFloat32Array();
    const opt = createOptimizer('adamw', model, { lr: 1e-2 });
    expect(opt.parameters().some((p) => p === sd.get(frozen[0]!))).toBe(false);
    const x = Tensor.from(new Float32Array(2 * 3 * 64 * 64).map((_, i) => Math.sin(i)), [2, 3, 64, 64]);
    for (let i = 0; i < 2; ++i) {
      tidy(() => crossEntropy(model.forward(x), [0, 2]).backward());
      opt.step();
      opt.zeroGrad();
    }
    for (const k of frozen) expect(sd.get(k)!.toFloat32Array(), k).toEqual(before.get(k));
    expect(sd.get('stages.2.0.mlp.fc1.weight')!.toFloat32Array()).not.toEqual(trained);
    x.dispose();
    opt.dispose();
    model.dispose();
  });
});

describe('whole runs', () => {
  it('trainRun on an image folder writes the run folder; evalRun reproduces the final evaluation', async () => {
    const out = path.join(tmp, 'run');
    const r = await trainRun({
      data: folder, model: { family: 'convformer', depths: [1, 1, 1, 1], dims: [8, 16, 24, 32] }, imageSize: 32,
      epochs: 3, batchSize: 8, lr: 3e-3, workers: 1, out, progress: 'none', log: () => undefined, randAugment: 'rand-m9-mstd0.5', ema: 0.9,
    });
    expect(r.history.length).toBe(3);
    expect(r.final!.images).toBe(8);
    for (const f of ['checkpoint.safetensors', 'metrics.jsonl', 'curves.svg', 'model.safetensors', 'model_best.safetensors', 'model_ema.safetensors']) {
      expect(existsSync(path.join(out, f)), f).toBe(true);
    }
    const meta = (await readSafetensorsHeader(path.join(out, 'model.safetensors'))).metadata;
    expect(JSON.parse(meta.metaformer_labels!)).toEqual(['corner_a', 'corner_b']);
    expect(JSON.parse(meta.metaformer_config!).inputSize).toEqual([32, 32]);
    const e = await evalRun({ data: folder, weights: path.join(out, 'model.safetensors'), workers: 0 });
    expect(e.top1).toBe(r.history[2]!.eval!.top1);
    expect(e.loss).toBeCloseTo(r.history[2]!.eval!.loss, 5);
    expect(e.images).toBe(8);
  });

  const bin = path.join(root, 'bin', 'metaformer.js');
  const built = existsSync(path.join(root, 'dist', 'lib', 'cli', 'commands', 'train.js'));
  it.runIf(built)('metaformer train and eval from the command line', () => {
    const out = path.join(tmp, 'cli');
    const t = spawnSync(process.execPath, [bin, 'train', '--data', folder, '--model', 'caformer_tiny', '--image-size', '32', '--epochs', '1',
      '--batch-size', '8', '--workers', '0', '--out', out, '--json'], { encoding: 'utf8' });
    expect(t.status, t.stderr).toBe(0);
    const summary = JSON.parse(t.stdout) as { top1: number; images: number; epochs: number };
    expect(summary.images).toBe(8);
    expect(summary.epochs).toBe(1);
    expect(readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')).toContain('"kind":"epoch"');
    const e = spawnSync(process.execPath, [bin, 'eval', '--data', folder, '--weights', path.join(out, 'model.safetensors'), '--json'], { encoding: 'utf8' });
    expect(e.status, e.stderr).toBe(0);
    const r = JSON.parse(e.stdout) as { top1: number; top5: number; loss: number; images: number };
    expect(r.top1).toBe(summary.top1);
    expect(r.top5).toBe(100);
    expect(r.images).toBe(8);
    const bad = spawnSync(process.execPath, [bin, 'train', '--data', folder, '--model', 'nope', '--out', out], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/Expected a registry model \(list-models\) or a preset .* for model but received "nope"/);
    const usage = spawnSync(process.execPath, [bin, 'eval', '--data', folder], { encoding: 'utf8' });
    expect(usage.status).toBe(2);
    expect(usage.stderr).toMatch(/Expected --weights FILE/);
  });
});
