/** `metaformer bench [kernels|models|train|profile|all] [...]`: the benchmark suites (bench/run.ts). */
import type { Command } from '../command.js';

export const benchCommand: Command = {
  name: 'bench',
  summary: 'run the benchmarks against onnxruntime-node and PyTorch, or profile a model per layer',
  usage: '[kernels|models|train|profile|all] [--rounds N] [--iters N] [--models a,b] [--batches 1,32] [--precisions float32,bf16] [--model name --batch N --precision float32|bf16] [--threads N] [--gemm-policy auto|own|onednn] [--no-torch] [--no-ort] [--no-write] [--out FILE]',
  details: '`profile` prints where the time of one forward pass goes, per op and per step kind, with GFLOP/s (--model, --batch, --precision). --gemm-policy picks the float32 GEMM kernel (setGemmPolicy).',
  options: {
    rounds: { type: 'string' }, iters: { type: 'string' }, models: { type: 'string' }, batches: { type: 'string' }, precisions: { type: 'string' },
    model: { type: 'string' }, batch: { type: 'string' }, precision: { type: 'string' }, threads: { type: 'string' }, out: { type: 'string' },
    'gemm-policy': { type: 'string' },
    'no-torch': { type: 'boolean' }, 'no-ort': { type: 'boolean' }, 'no-write': { type: 'boolean' },
  },
  async run({ values, positionals, io }) {
    // The benchmarks live beside the library in the built package (dist/bench).
    const { benchMain } = await import('../../../bench/run.js');
    const argv: string[] = [...positionals];
    for (const [k, v] of Object.entries(values)) {
      if (v === true) argv.push(`--${k}`);
      else if (typeof v === 'string') argv.push(`--${k}`, v);
    }
    await benchMain(argv, (s) => io.out(s));
  },
};
