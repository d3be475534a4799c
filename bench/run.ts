/**
 * `npm run bench -- [kernels|models|train|profile|all] [options]` (also `metaformer bench`).
 *   --rounds N        alternating rounds per measurement (default 3)
 *   --iters N         timed runs per round (default 5)
 *   --models a,b      models for the model suite (default: the five S-size models)
 *   --batches 1,32    batch sizes (default 1,32)
 *   --precisions float32,bf16   our precisions in the model suite (default both; the peers run float32)
 *   --model NAME --batch N --precision P   the profile suite's model, batch and precision
 *   --no-torch        skip PyTorch;  --no-ort  skip onnxruntime-node
 *   --out FILE        results file (default bench/RESULTS.md; --no-write to only print)
 *   --threads N       native thread pool size (default: all cores)
 *   --gemm-policy P   the float32 GEMM kernel: auto (default), own or onednn (setGemmPolicy)
 * Results are printed and written into their section of RESULTS.md (and bench/results.svg).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setGemmPolicy, setNumThreads, type GemmPolicy } from '../lib/backend.js';
import { createModel } from '../lib/models/index.js';
import { bf16Native, checkPrecision } from '../lib/plan.js';
import { Tensor } from '../lib/tensor.js';
import { runKernels } from './kernels.js';
import { runModels } from './models.js';
import { kernelsMarkdown, modelsMarkdown, modelsSvg, trainMarkdown, updateResults } from './report.js';
import { fmt, machineInfo } from './lib/timing.js';
import { runTrain } from './train.js';

const S_MODELS = ['identityformer_s12', 'randformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18'];

export async function benchMain(argv: string[], log: (s: string) => void = console.log): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      rounds: { type: 'string', default: '3' }, iters: { type: 'string', default: '5' },
      models: { type: 'string' }, batches: { type: 'string', default: '1,32' }, precisions: { type: 'string', default: 'float32,bf16' },
      'no-torch': { type: 'boolean', default: false }, 'no-ort': { type: 'boolean', default: false },
      out: { type: 'string' }, 'no-write': { type: 'boolean', default: false }, threads: { type: 'string' },
      'gemm-policy': { type: 'string', default: 'auto' }, model: { type: 'string', default: 'caformer_s18' }, batch: { type: 'string', default: '1' },
      precision: { type: 'string', default: 'float32' },
    },
  });
  const suites = positionals.length ? positionals : ['kernels'];
  const rounds = Number(values.rounds), iters = Number(values.iters);
  if (values.threads) setNumThreads(Number(values.threads));
  setGemmPolicy(values['gemm-policy'] as GemmPolicy);
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), fileURLToPath(import.meta.url).includes(`${path.sep}dist${path.sep}`) ? '../..' : '..');
  const out = values.out ?? path.join(root, 'bench', 'RESULTS.md');
  const write = !values['no-write'];
  const m = machineInfo();
  log(`machine: ${m.cpu}, ${m.cores} cores, ${m.flags.join(' ')}`);
  const all = suites.includes('all');
  if (all || suites.includes('kernels')) {
    const r = runKernels({ iters: Math.max(iters, 10), torch: !values['no-torch'], log });
    if (write) updateResults(out, 'kernels', kernelsMarkdown(r, m, bf16Native()));
  }
  if (all || suites.includes('models')) {
    const rows = await runModels({
      models: values.models ? values.models.split(',') : S_MODELS, batches: values.batches!.split(',').map(Number),
      precisions: values.precisions!.split(',').map((p) => checkPrecision(p, '--precisions')),
      rounds, iters, torch: !values['no-torch'], ort: !values['no-ort'], log,
    });
    if (write) {
      updateResults(out, 'models', modelsMarkdown(rows, m, bf16Native()));
      writeFileSync(path.join(path.dirname(out), 'results.svg'), modelsSvg(rows));
    }
  }
  if (all || suites.includes('train')) {
    const r = runTrain({ model: values.model!, batch: 8, size: 224, rounds, iters: Math.max(2, Math.ceil(iters / 2)), torch: !values['no-torch'], log });
    if (write) updateResults(out, 'train', trainMarkdown(r, m));
  }
  if (suites.includes('profile')) {
    const model = createModel(values.model!);
    model.eval();
    const b = Number(values.batch);
    const x = Tensor.zeros([b, 3, 224, 224]);
    const precision = checkPrecision(values.precision, '--precision');
    const plan = model.plan(x.shape, 'logits', precision);
    plan.profile(x);
    const steps = plan.profile(x);
    // per op, and per (op, output shape): time, share, and GFLOP/s where the step multiplies
    const sum = (key: (st: (typeof steps)[number]) => string) => {
      const m = new Map<string, { n: number; s: number; macs: number }>();
      for (const st of steps) {
        const e = m.get(key(st)) ?? { n: 0, s: 0, macs: 0 };
        e.n += 1;
        e.s += st.seconds;
        e.macs += st.macs;
        m.set(key(st), e);
      }
      return [...m].sort((a, c) => c[1].s - a[1].s);
    };
    const total = steps.reduce((t, st) => t + st.seconds, 0);
    const rate = (e: { s: number; macs: number }) => (e.macs > 0 ? `  ${fmt((2 * e.macs) / e.s / 1e9, 1).padStart(6)} GFLOP/s` : '');
    log(`profile ${values.model} batch ${b} ${precision}: ${fmt(total * 1e3, 1)} ms in ${steps.length} steps`);
    for (const [op, e] of sum((st) => st.op)) log(`  ${op.padEnd(14)} ${fmt(e.s * 1e3, 2).padStart(9)} ms  ${fmt((100 * e.s) / total, 1).padStart(5)}%${rate(e)}`);
    log('  by step kind (op, output shape; count):');
    for (const [k, e] of sum((st) => `${st.op} [${st.shape.join(',')}]`).slice(0, 14))
      log(`  ${`${k} x${e.n}`.padEnd(36)} ${fmt(e.s * 1e3, 2).padStart(9)} ms  ${fmt((100 * e.s) / total, 1).padStart(5)}%${rate(e)}`);
    model.dispose();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  benchMain(process.argv.slice(2)).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
