/**
 * The built `metaformer` command (node bin/metaformer.js after `npm run build:ts`), spawned on fixture files:
 * help and version, info on .pth and .safetensors, convert round trips, classify with a checkpoint that
 * carries its config and with the default model, list-models, and bad arguments (non-zero exit, one line).
 * The environment forces offline mode and a private cache, so nothing reaches the network.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classify } from '../../lib/classify.js';
import { readCheckpoint, saveCheckpoint } from '../../lib/io/checkpoint.js';
import { writeSafetensors } from '../../lib/io/tensors.js';
import { createModel } from '../../lib/models/index.js';
import { listModels } from '../../lib/models/zoo.js';
import type { Tensor } from '../../lib/tensor.js';
import { COMMANDS } from '../../lib/cli/commands/index.js';
import { DEFAULT_CLASSIFY_MODEL } from '../../lib/cli/commands/classify.js';
import { fixturePath } from '../helpers/fixtures.js';
import { loadFixture } from '../helpers/tensors.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bin', 'metaformer.js');
const TINY = { family: 'caformer' as const, depths: [1, 1, 2, 1], dims: [16, 32, 48, 64], numClasses: 10, imageSize: 64 };
const PTH = fixturePath('checkpoints', 'caformer_tiny.pth');
const TIMM = fixturePath('checkpoints', 'caformer_tiny_timm.safetensors');
const CAT = fixturePath('preprocess', 'images', 'chelsea.png');
const ROCKET = fixturePath('preprocess', 'images', 'rocket.jpg');

let tmp: string;
let tinyCkpt: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Run {
  const r = spawnSync(process.execPath, [bin, ...args], {
    cwd: tmp,
    encoding: 'utf8',
    env: { ...process.env, METAFORMER_OFFLINE: '1', METAFORMER_CACHE: path.join(tmp, 'cache') },
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function sameTensors(a: Map<string, Tensor>, b: Map<string, Tensor>): Promise<void> {
  expect(new Set(a.keys())).toEqual(new Set(b.keys()));
  for (const [k, t] of a) {
    const u = b.get(k)!;
    expect(u.shape, k).toEqual(t.shape);
    expect(u.dtype, k).toBe(t.dtype);
    expect(Buffer.from(u.toBytes()).equals(Buffer.from(t.toBytes())), k).toBe(true);
  }
}

function disposeAll(...maps: Map<string, Tensor>[]): void {
  for (const m of maps) for (const t of m.values()) t.dispose();
}

beforeAll(async () => {
  // The CLI runs from dist/, which `npm test` builds first (tsc) before vitest starts.
  expect(fs.existsSync(path.join(root, 'dist', 'lib', 'cli', 'main.js'))).toBe(true);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-cli-'));
  const fx = await loadFixture('models', 'caformer_tiny.safetensors');
  const model = createModel(TINY);
  model.loadStateDict(new Map([...fx.tensors].filter(([k]) => k.startsWith('param.')).map(([k, t]) => [k.slice(6), t])));
  tinyCkpt = path.join(tmp, 'tiny.safetensors');
  await saveCheckpoint(model, tinyCkpt);
  model.dispose();
  disposeAll(fx.tensors);
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('metaformer (general)', () => {
  it('prints the command list, per-command help and the version', () => {
    const none = cli();
    expect(none.code).toBe(2);
    const help = cli('--help');
    expect(help.code).toBe(0);
    for (const c of COMMANDS) expect(help.stdout).toContain(`  ${c.name}`);
    const sub = cli('convert', '--help');
    expect(sub.code).toBe(0);
    expect(sub.stdout).toMatch(/^usage: metaformer convert <in> <out>/);
    const helpInfo = cli('help', 'info');
    expect(helpInfo.stdout, helpInfo.stderr).toMatch(/^usage: metaformer info <file>/);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
    expect(cli('--version').stdout.trim()).toBe(pkg.version);
  });

  it('has a registry of uniquely named, documented commands', () => {
    const names = COMMANDS.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toEqual(expect.arrayContaining(['convert', 'info', 'classify', 'list-models']));
    for (const c of COMMANDS) {
      expect(c.summary.length).toBeGreaterThan(10);
      expect(typeof c.run).toBe('function');
    }
  });

  it('rejects bad arguments with a non-zero exit and one clear line, the stack only with --verbose', () => {
    const cases: [string[], number, RegExp][] = [
      [['frobnicate'], 2, /^metaformer: unknown command "frobnicate"; commands: classify, convert, info, list-models/],
      [['convert', PTH], 2, /^metaformer convert: Expected an input and an output file but received 1 arguments \(see metaformer convert --help\)$/],
      [['convert', PTH, 'out.safetensors', '--dtype', 'int8'], 2, /^metaformer convert: Expected one of float16, bfloat16, float32 for --dtype but received "int8"/],
      [['convert', PTH, 'out.weights'], 2, /Expected an output file ending in .safetensors or .pth/],
      [['info', '--bogus', PTH], 2, /^metaformer info: Unknown option '--bogus'/],
      [['info', path.join(tmp, 'missing.pth')], 1, /^metaformer info: Expected a readable checkpoint file for file but received ".*missing\.pth" \(ENOENT\)$/],
      [['info', CAT], 1, /^metaformer info: .*expected a .safetensors or PyTorch .pth checkpoint but found a file starting with 89 50 4e 47/],
      [['classify'], 2, /^metaformer classify: Expected at least one image file but received none/],
      [['classify', CAT, '--top', '0', '--weights', 'x'], 2, /Expected a positive integer for --top but received "0"/],
    ];
    for (const [args, code, message] of cases) {
      const r = cli(...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stdout, args.join(' ')).toBe('');
      expect(r.stderr.trimEnd().split('\n').length, args.join(' ')).toBe(1);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(message);
    }
    const verbose = cli('info', path.join(tmp, 'missing.pth'), '--verbose');
    expect(verbose.code).toBe(1);
    expect(verbose.stderr).toMatch(/\n\s+at /);
  });
});

describe('metaformer info', () => {
  it('describes a .pth file', () => {
    const r = cli('info', PTH);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^format:\s+pth$/m);
    expect(r.stdout).toMatch(/^keys:\s+official/m);
    expect(r.stdout).toMatch(/^tensors:\s+72 \(72 float32\)$/m);
    expect(r.stdout).toMatch(/^parameters:\s+187,672$/m);
    expect(r.stdout).toMatch(/^downsample_layers\.0\.conv\.weight\s+\[16, 3, 7, 7\]\s+float32$/m);
  });

  it('describes a timm .safetensors file as JSON', () => {
    const r = cli('info', TIMM, '--json');
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout) as { format: string; convention: string; parameters: number; tensors: { name: string; shape: number[]; dtype: string }[] };
    expect(info.format).toBe('safetensors');
    expect(info.convention).toBe('timm');
    expect(info.parameters).toBe(187_672);
    expect(info.tensors.length).toBe(72);
    expect(info.tensors.find((t) => t.name === 'stages.0.blocks.0.mlp.fc1.weight')).toEqual(
      { name: 'stages.0.blocks.0.mlp.fc1.weight', shape: [64, 16, 1, 1], dtype: 'float32' });
  });
});

describe('metaformer convert', () => {
  it('round-trips pth -> safetensors -> pth without changing a tensor', async () => {
    const st = path.join(tmp, 'a.safetensors');
    const back = path.join(tmp, 'a.pth');
    const r1 = cli('convert', PTH, st);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stdout).toMatch(/^wrote .*a\.safetensors: safetensors, 72 tensors, 187,672 parameters, official names$/m);
    expect(cli('convert', st, back).code).toBe(0);
    const orig = (await readCheckpoint(PTH)).tensors;
    const mid = await readCheckpoint(st);
    const end = await readCheckpoint(back);
    expect(mid.format).toBe('safetensors');
    expect(end.format).toBe('pth');
    await sameTensors(orig, mid.tensors);
    await sameTensors(orig, end.tensors);
    disposeAll(orig, mid.tensors, end.tensors);
  });

  it('maps timm names to official ones, converts dtypes and can write timm names', async () => {
    const official = path.join(tmp, 'from-timm.pth');
    const half = path.join(tmp, 'half.safetensors');
    const timmAgain = path.join(tmp, 'timm-again.safetensors');
    const r = cli('convert', TIMM, official);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('official names (from timm)');
    expect(cli('convert', official, half, '--dtype', 'float16').code).toBe(0);
    expect(cli('convert', official, timmAgain, '--keys', 'timm').code).toBe(0);
    const orig = (await readCheckpoint(PTH)).tensors;
    const a = await readCheckpoint(official);
    await sameTensors(orig, a.tensors);
    const h = await readCheckpoint(half);
    expect([...h.tensors.values()].every((t) => t.dtype === 'float16')).toBe(true);
    const t1 = (await readCheckpoint(TIMM)).tensors;
    const t2 = await readCheckpoint(timmAgain);
    expect(t2.detected.convention).toBe('timm');
    await sameTensors(t1, t2.tensors);
    disposeAll(orig, a.tensors, h.tensors, t1, t2.tensors);
  });
});

describe('metaformer classify', () => {
  it('classifies with a checkpoint that records its model config, as JSON and text', async () => {
    const r = cli('classify', CAT, ROCKET, '--weights', tinyCkpt, '--top', '3', '--json');
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { image: string; predictions: { index: number; label: string; probability: number }[] }[];
    expect(out.map((o) => o.image)).toEqual([CAT, ROCKET]);
    const model = createModel(TINY, { pretrained: tinyCkpt });
    const expected = await classify([CAT, ROCKET], { model: await model, topK: 3 });
    (await model).dispose();
    out.forEach((o, i) => {
      expect(o.predictions.length).toBe(3);
      expect(o.predictions.map((p) => p.index)).toEqual(expected[i]!.map((p) => p.index));
      expect(o.predictions[0]!.probability).toBeCloseTo(expected[i]![0]!.probability, 6);
    });
    const text = cli('classify', CAT, '--weights', tinyCkpt, '--top', '2');
    expect(text.code).toBe(0);
    expect(text.stdout.trimEnd().split('\n')).toEqual([
      'chelsea.png',
      expect.stringMatching(new RegExp(`^\\s+\\d+\\.\\d\\d%\\s+${expected[0]![0]!.index}$`)),
      expect.stringMatching(new RegExp(`^\\s+\\d+\\.\\d\\d%\\s+${expected[0]![1]!.index}$`)),
    ]);
  });

  it('runs the shipped Fashion-MNIST model by default on the shipped samples, with its class names', () => {
    const samples = fs.readdirSync(path.join(root, 'assets', 'samples')).filter((f) => f.endsWith('.png')).sort();
    expect(samples.length).toBe(10);
    const r = cli('classify', ...samples.map((f) => path.join(root, 'assets', 'samples', f)), '--json', '--top', '1');
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { image: string; predictions: { label: string; probability: number }[] }[];
    // File names carry the true class (the first test image of each class, not chosen by the model).
    const slug = (label: string) => label.toLowerCase().replace(/[^a-z]+/g, '-');
    const correct = out.filter((o) => path.basename(o.image).slice(5, -4) === slug(o.predictions[0]!.label)).length;
    expect(correct, JSON.stringify(out.map((o) => [path.basename(o.image), o.predictions[0]!.label]))).toBeGreaterThanOrEqual(8);
    const text = cli('classify', path.join(root, 'assets', 'samples', samples[0]!));
    expect(text.stdout).toMatch(/%\s+\d+\s+[A-Z]/);  // a class name, not an index
    // bf16: the same top-1 on the shipped samples, probabilities close to float32's
    const b = cli('classify', ...samples.map((f) => path.join(root, 'assets', 'samples', f)), '--json', '--top', '1', '--precision', 'bf16');
    expect(b.code, b.stderr).toBe(0);
    const outB = JSON.parse(b.stdout) as typeof out;
    outB.forEach((o, i) => {
      expect(o.predictions[0]!.label).toBe(out[i]!.predictions[0]!.label);
      expect(Math.abs(o.predictions[0]!.probability - out[i]!.predictions[0]!.probability)).toBeLessThan(0.02);
    });
    const bad = cli('classify', CAT, '--precision', 'fp8');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Expected one of float32, bf16 for --precision but received "fp8"/);
  });

  it(`runs ${DEFAULT_CLASSIFY_MODEL} with given weights and prints ImageNet labels`, async () => {
    const fx = await loadFixture('models', 'caformer_s18_224.safetensors');
    const weights = path.join(tmp, 's18.safetensors');
    await writeSafetensors(weights, [...fx.tensors].filter(([k]) => k.startsWith('param.')).map(([k, t]) => [k.slice(6), t]));
    disposeAll(fx.tensors);
    const r = cli('classify', CAT, '--model', DEFAULT_CLASSIFY_MODEL, '--weights', weights, '--top', '2');
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.length).toBe(3);
    for (const line of lines.slice(1)) expect(line).toMatch(/^\s+\d+\.\d\d%\s+\d+\s+\S.* \(n\d{8}\)$/);
    fs.rmSync(weights);
  });

  it('fails cleanly for a bad image and for missing weights offline', () => {
    const junk = path.join(tmp, 'junk.png');
    fs.writeFileSync(junk, 'not a png');
    const bad = cli('classify', junk, '--weights', tinyCkpt);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trimEnd()).toMatch(/^metaformer classify: classify: image 0 \(".*junk\.png"\): cannot decode image/);
    expect(bad.stderr.trimEnd().split('\n').length).toBe(1);
    const missing = cli('classify', path.join(tmp, 'nope.jpg'));
    expect(missing.code).toBe(1);
    expect(missing.stderr.trimEnd()).toMatch(/^metaformer classify: Expected an image file but received ".*nope\.jpg" \(not found\)$/);
    const offline = cli('classify', CAT, '--model', 'caformer_s18');
    expect(offline.code).toBe(1);
    expect(offline.stderr).toMatch(/^metaformer classify: offline mode: the weights for .*caformer_s18\.pth are not usable from the cache/);
  });
});

describe('metaformer list-models', () => {
  it('lists the registry, filters, and says when nothing matches', () => {
    const all = cli('list-models', '--json');
    expect(all.code).toBe(0);
    expect((JSON.parse(all.stdout) as { name: string }[]).map((m) => m.name)).toEqual(listModels());
    const some = cli('list-models', 'caformer_s18');
    expect(some.code).toBe(0);
    expect(some.stdout.trimEnd().split('\n').length).toBe(1 + listModels('caformer_s18').length);
    const none = cli('list-models', 'nosuchmodel');
    expect(none.code).toBe(1);
    expect(none.stderr.trim()).toBe('no model name contains "nosuchmodel"');
  });
});

describe('metaformer export-onnx and bench', () => {
  it('exports ONNX from a checkpoint that records its config, and rejects a bad batch', () => {
    const out = path.join(tmp, 'tiny.onnx');
    const r = cli('export-onnx', out, '--weights', tinyCkpt, '--batch', 'dynamic');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote .*tiny\.onnx: .*batch dynamic, input 64x64/);
    const bytes = fs.readFileSync(out);
    expect(bytes.length).toBeGreaterThan(180_000 * 4);  // every weight is in the file
    expect(bytes.includes(Buffer.from('metaformer'))).toBe(true);  // producer name
    const bad = cli('export-onnx', out, '--weights', tinyCkpt, '--batch', '0');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--batch/);
  });

  it('profiles a model per op and per step', () => {
    const r = cli('bench', 'profile', '--model', 'poolformerv2_s12', '--no-write');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/profile poolformerv2_s12 batch 1 float32: [\d.]+ ms in \d+ steps/);
    expect(r.stdout).toMatch(/^ {2}fused_linear +[\d.]+ ms +[\d.]+% +[\d.]+ GFLOP\/s$/m);  // per op, with its rate
    expect(r.stdout).toMatch(/by step kind/);
    expect(r.stdout).toMatch(/^ {2}fused_linear \[1,56,56,\d+\] x\d+ +[\d.]+ ms/m);  // per (op, output shape)
    const bad0 = cli('bench', 'profile', '--model', 'identityformer_s12', '--gemm-policy', 'fastest', '--no-write');
    expect(bad0.code).not.toBe(0);
    expect(bad0.stderr).toMatch(/GEMM policy/);
    const b = cli('bench', 'profile', '--model', 'identityformer_s12', '--precision', 'bf16', '--gemm-policy', 'onednn', '--no-write');
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/profile identityformer_s12 batch 1 bf16: [\d.]+ ms in \d+ steps/);
    const bad = cli('bench', 'profile', '--precision', 'fp16', '--no-write');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/Expected 'float32' or 'bf16' for --precision but received "fp16"/);
  });
});
