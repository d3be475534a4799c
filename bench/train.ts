/**
 * Training-step benchmark: caformer_s18 at 224x224, batch 8: forward, cross-entropy, backward and an
 * AdamW step, images/s, beside PyTorch 1.13 (same model structure, 2 threads) in the same run.
 */
import { createModel } from '../lib/models/index.js';
import { crossEntropy } from '../lib/ops.js';
import { Tensor, tidy } from '../lib/tensor.js';
import { AdamW } from '../lib/train/optim.js';
import { runTorch } from './lib/peers.js';
import { fmt, median, timeSync } from './lib/timing.js';

export interface TrainRow {
  model: string;
  batch: number;
  oursMs: number;
  torchMs: number;
}

export function runTrain(opts: { model: string; batch: number; size: number; rounds: number; iters: number; torch: boolean; log: (s: string) => void }): TrainRow {
  const model = createModel(opts.model);
  model.train();
  const opt = new AdamW(model, { lr: 1e-3, weightDecay: 0.05 });
  const x = Tensor.zeros([opts.batch, 3, opts.size, opts.size]);
  x.view<'float32'>().forEach((_, i, a) => (a[i] = Math.sin(i * 0.001)));
  const target = Array.from({ length: opts.batch }, (_, i) => (i * 97) % model.numClasses);
  const step = () => tidy(() => {
    opt.zeroGrad();
    const loss = crossEntropy(model.forward(x), target);
    loss.backward();
    opt.step();
  });
  const ours: number[] = [], torch: number[] = [];
  for (let r = 0; r < opts.rounds; ++r) {
    ours.push(...timeSync(step, opts.iters, 1));
    if (opts.torch) {
      const t = runTorch({ kind: 'train', config: { family: model.config.family, depths: model.config.depths, dims: model.config.dims },
        batch: opts.batch, size: opts.size, iters: opts.iters, warmup: 1 });
      if ('times' in t && t.times) torch.push(...t.times);
      else if (r === 0) opts.log(`  PyTorch: ${(t as { error?: string }).error ?? 'no result'}`);
    }
  }
  model.dispose();
  x.dispose();
  const row = { model: opts.model, batch: opts.batch, oursMs: median(ours) * 1e3, torchMs: median(torch) * 1e3 };
  opts.log(`train ${opts.model} b${opts.batch} ${opts.size}px: ours ${fmt(row.oursMs, 0)} ms/step (${fmt((1000 * opts.batch) / row.oursMs, 2)} img/s)` +
    `  PyTorch ${fmt(row.torchMs, 0)} ms/step (${fmt((1000 * opts.batch) / row.torchMs, 2)} img/s)  ratio ${fmt(row.torchMs / row.oursMs, 2)}x`);
  return row;
}
