/**
 * The user's path on a GPU: `model.predict()` of a model created with { device: 'cuda' } (a compiled plan
 * on the device, run from a worker thread, one launch per step), timed to completion after warm-up, input
 * already on the device. Run by bench/gpu/check.sh beside the checker's plan replays.
 *
 *   node dist/bench/gpu/node_models.js OUT.jsonl [--models caformer_s18,convformer_s18] [--batches 1,64,256]
 *        [--precisions float32,bf16] [--seconds 2]
 *
 * Appends one JSON object per figure to OUT.jsonl: { bench: 'node-model', name, precision, batch, ms, img_per_s }
 * ('node-model-graphs' unless METAFORMER_CUDA_GRAPHS=0: plans recorded once as CUDA graphs and replayed).
 */
import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cudaAvailable, cudaInfo, cudaSynchronize } from '../../lib/device.js';
import { createModel } from '../../lib/models/index.js';
import { checkPrecision } from '../../lib/plan.js';
import { Tensor } from '../../lib/tensor.js';
import { median } from '../lib/timing.js';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      models: { type: 'string', default: 'caformer_s18,convformer_s18' }, batches: { type: 'string', default: '1,64,256' },
      precisions: { type: 'string', default: 'float32,bf16' }, seconds: { type: 'string', default: '2' },
    },
  });
  const out = positionals[0];
  if (!out) throw new Error('usage: node_models OUT.jsonl [--models a,b] [--batches 1,64] [--precisions float32,bf16] [--seconds 2]');
  if (!cudaAvailable()) throw new Error(`node_models: no usable CUDA device (${cudaInfo().reason})`);
  const budget = Number(values.seconds) * 1000;
  const precisions = values.precisions!.split(',').map((p) => checkPrecision(p, '--precisions'));
  const graphs = process.env.METAFORMER_CUDA_GRAPHS !== '0';
  for (const name of values.models!.split(',')) {
    const model = createModel(name, { device: 'cuda' });
    try {
      for (const batch of values.batches!.split(',').map(Number)) {
        const host = Tensor.from(new Float32Array(batch * 3 * 224 * 224).map((_, i) => Math.sin(i * 0.001)), [batch, 3, 224, 224]);
        const x = host.to('cuda');
        host.dispose();
        try {
          for (const precision of precisions) {
            model.precision = precision;
            const once = async (): Promise<number> => {
              const t0 = performance.now();
              (await model.predict(x)).dispose();
              cudaSynchronize();
              return performance.now() - t0;
            };
            for (let w = 0; w < 3; ++w) await once();
            const times: number[] = [];
            const start = performance.now();
            while (times.length < 5 || (performance.now() - start < budget && times.length < 200)) times.push(await once());
            const ms = median(times);
            const rec = { bench: graphs ? 'node-model-graphs' : 'node-model', name: `${name}_b${batch}`, precision: precision === 'float32' ? 'fp32' : 'bf16', batch, ms, img_per_s: (1000 * batch) / ms };
            appendFileSync(out, `${JSON.stringify(rec)}\n`);
            console.log(`${graphs ? 'NODEG' : 'NODE '} ${name.padEnd(16)} ${rec.precision} B=${String(batch).padEnd(4)} ${ms.toFixed(3).padStart(9)} ms ${rec.img_per_s.toFixed(1).padStart(9)} img/s (${times.length} runs)`);
          }
        } finally {
          x.dispose();
        }
      }
    } finally {
      model.dispose();
    }
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
