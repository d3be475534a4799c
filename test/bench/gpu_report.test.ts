/**
 * The GPU check's scripts cannot run here (no GPU), so they are kept from rotting: the shell scripts
 * parse, and bench/gpu/report.py turns a synthetic run (every kind of record check.sh collects) into the
 * RESULTS-gpu.md tables with the right ratios and verdicts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cudaAvailable } from '../../lib/device.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mf-gpu-report-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

describe('the GPU check scripts', () => {
  it('parse (bash -n)', () => {
    for (const f of ['check.sh', 'prepare.sh', 'host_cpu.sh']) {
      const r = spawnSync('bash', ['-n', path.join(root, 'bench', 'gpu', f)], { encoding: 'utf8' });
      expect(r.status, `${f}: ${r.stderr}`).toBe(0);
    }
  });

  const dist = path.join(root, 'dist', 'bench', 'gpu', 'node_models.js');
  it.runIf(existsSync(dist))("node_models times predict() on 'cuda' (here the emulated device) and refuses without one", () => {
    const out = path.join(tmp, 'node.jsonl');
    const args = [dist, out, '--models', 'identityformer_s12', '--batches', '1', '--precisions', 'float32,bf16', '--seconds', '0.01'];
    // plans as graphs (the default) or step by step (METAFORMER_CUDA_GRAPHS=0), labelled accordingly
    for (const [graphs, bench] of [[undefined, 'node-model-graphs'], ['0', 'node-model']] as const) {
      const env: NodeJS.ProcessEnv = { ...process.env, METAFORMER_EMULATE_CUDA: '1' };
      if (graphs === undefined) delete env.METAFORMER_CUDA_GRAPHS;
      else env.METAFORMER_CUDA_GRAPHS = graphs;
      const r = spawnSync(process.execPath, args, { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      const rows = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { bench: string; name: string; precision: string; ms: number });
      expect(rows.map((x) => [x.bench, x.name, x.precision])).toEqual([
        [bench, 'identityformer_s12_b1', 'fp32'], [bench, 'identityformer_s12_b1', 'bf16']]);
      expect(rows.every((x) => x.ms > 0)).toBe(true);
      rmSync(out);
    }
    if (!cudaAvailable()) {  // (on a GPU machine the real device answers instead)
      const env = { ...process.env };
      delete env.METAFORMER_EMULATE_CUDA;
      const none = spawnSync(process.execPath, [dist, out], { encoding: 'utf8', env });
      expect(none.status).toBe(1);
      expect(none.stderr).toMatch(/node_models: no usable CUDA device/);
    }
  });

  it('report.py builds RESULTS-gpu.md from a run', () => {
    writeFileSync(path.join(tmp, 'env.txt'), 'gpu: NVIDIA H200, 580.159.04\n');
    writeFileSync(path.join(tmp, 'stages.tsv'), 'build\tPASS\t36 objects\nops\tFAIL\t169 passed, 1 failed\n');
    writeFileSync(path.join(tmp, 'ours.jsonl'), jsonl([
      { check: 'linear fwd x[3,5,37] N=19 bias', output: 0, rel_l2: 1e-7, tol: 1e-5, ok: true },
      { check: 'attention bwd B2 N35', output: 0, rel_l2: 3e-4, tol: 1e-5, ok: false },
      { model: 'caformer_tiny_logits', output: 'logits', precision: 'fp32', rel_l2: 2e-7, tol: 6e-6, judged: true, ok: true },
      { model: 'caformer_tiny_features', output: 'stage0', precision: 'bf16', rel_l2: 3e-2, tol: 2e-2, judged: false, ok: false },
      { bench: 'dwconv7x7', dir: 'fwd', shape: '[B,56,56,128]', batch: 256, ms: 0.5, gbps: 1644 },
      { bench: 'attention', dir: 'fwd', precision: 'fp32', shape: 'N=196 heads=10', batch: 256, ms: 0.6, gbps: 400 },
      { bench: 'attention', dir: 'fwd', precision: 'bf16', shape: 'N=196 heads=10', batch: 256, ms: 0.2, gbps: 1200 },
      { bench: 'model', name: 'caformer_s18_b256', precision: 'fp32', batch: 256, ms: 100, img_per_s: 2560 },
      { bench: 'model', name: 'caformer_s18_b256', precision: 'bf16', batch: 256, ms: 50, img_per_s: 5120 },
      { bench: 'node-model', name: 'caformer_s18_b256', precision: 'fp32', batch: 256, ms: 104, img_per_s: 2461.5 },
      { bench: 'node-model', name: 'caformer_s18_b256', precision: 'bf16', batch: 256, ms: 52, img_per_s: 4923.1 },
      { bench: 'node-model-graphs', name: 'caformer_s18_b256', precision: 'fp32', batch: 256, ms: 103, img_per_s: 2485.4 },
      { profile: 'caformer_s18_b256', precision: 'bf16', batch: 256, ops: { fused_linear: 30, attention: 10, layernorm: 10 } },
    ]));
    writeFileSync(path.join(tmp, 'torch.jsonl'), jsonl([
      { kind: 'dwconv7x7', dir: 'fwd', shape: '[B,56,56,128]', batch: 256, dtype: 'float32', variant: 'cudnn', ms: 1.0 },
      { kind: 'attention', dir: 'fwd', shape: 'N=196 heads=10', batch: 256, dtype: 'float32', variant: 'sdpa', ms: 1.2 },
      { kind: 'attention', dir: 'fwd', shape: 'N=196 heads=10', batch: 256, dtype: 'bfloat16', variant: 'sdpa', ms: 0.3 },
      { kind: 'model', model: 'caformer_s18', batch: 256, dtype: 'float32', variant: 'eager', ms: 128, img_per_s: 2000 },
      { kind: 'model', model: 'caformer_s18', batch: 256, dtype: 'bfloat16', variant: 'eager', ms: 40, img_per_s: 6400 },
    ]));
    writeFileSync(path.join(tmp, 'hostcpu.txt'), 'flags: amx_bf16 avx512_bf16\nbf16Native: true\n');
    writeFileSync(path.join(tmp, 'check.log'), '== ncu: PASS\nNCU  dw7_forward_kernel<7, 7>  123.45 us  mem  45.23%\n');
    const r = spawnSync('python3', [path.join(root, 'bench', 'gpu', 'report.py'), '--out', tmp], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const md = readFileSync(path.join(tmp, 'RESULTS-gpu.md'), 'utf8');
    expect(md).toContain('| ops | FAIL | 169 passed, 1 failed |');
    expect(md).toContain('1 checks passed, 1 failed');
    expect(md).toContain('- FAILED: attention bwd B2 N35');
    expect(md).toContain('| caformer_tiny_logits | fp32 | logits | 2.00e-07 | 6.0e-06 | yes |');
    expect(md).toContain('| caformer_tiny_features | bf16 | stage0 | 3.00e-02 | 2.0e-02 | — |');  // shown, not judged
    expect(md).toContain('| dwconv7x7 | fwd | [B,56,56,128] | 256 | 0.5000 | 1644 | 1.0000 | 2.00 | — | — | — |');
    // our bf16 attention beside PyTorch's bf16 (its own row is not listed again)
    expect(md).toContain('| attention | fwd | N=196 heads=10 | 256 | 0.6000 | 400 | 1.2000 | 2.00 | 0.2000 | 0.3000 | 1.50 |');
    expect(md.match(/\| attention \| fwd \|/g)).toHaveLength(1);
    // ours / PyTorch eager in the same precision, and the Node column
    expect(md).toContain('| caformer_s18 | 256 | 2560.0 | 2000.0 | 1.28 | 5120.0 | 6400.0 | 0.80 | — | 2461.5 / 4923.1 | 2485.4 / — |');
    expect(md).toContain('| caformer_s18_b256 | bf16 | 256 | fused_linear 30.00 (60%), attention 10.00 (20%), layernorm 10.00 (20%) |');
    expect(md).toMatch(/## This machine's CPU: bf16 mode[\s\S]*amx_bf16 avx512_bf16/);
    expect(md).toMatch(/## Hardware profile \(Nsight Compute[\s\S]*\ndw7_forward_kernel<7, 7>  123.45 us  mem  45.23%\n/);
    const json = JSON.parse(readFileSync(path.join(tmp, 'results.json'), 'utf8')) as { failed_checks: string[]; models: unknown[] };
    expect(json.failed_checks).toEqual(['attention bwd B2 N35']);
    expect(json.models.length).toBe(2);
  });
});
