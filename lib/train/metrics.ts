/**
 * Classification metrics: top-k correct counts from logits, running means, and an evaluation loop over a loader
 * (top-1, top-5, mean cross-entropy, image count) with the model in eval mode and autograd off.
 */
import { noGrad } from '../autograd/node.js';
import { crossEntropy } from '../ops.js';
import type { Module } from '../nn/module.js';
import { expectation, onDevice, Tensor, tidy } from '../tensor.js';
import type { Batch } from './data.js';

/** How many rows of `logits` [B, K] have their label among the k largest values, for each k in ks. */
export function topkCorrect(logits: Float32Array, numClasses: number, labels: ArrayLike<number>, ks: readonly number[] = [1, 5]): number[] {
  const b = labels.length;
  if (logits.length !== b * numClasses) throw new RangeError(expectation(`${b * numClasses} logits`, 'logits', logits.length));
  const out = ks.map(() => 0);
  for (let i = 0; i < b; ++i) {
    const row = logits.subarray(i * numClasses, (i + 1) * numClasses);
    const y = labels[i]!;
    const v = row[y]!;
    // rank = classes scoring strictly higher, plus ties before y (the order a stable sort would give)
    let rank = 0;
    for (let k = 0; k < numClasses; ++k) if (row[k]! > v || (row[k] === v && k < y)) rank++;
    ks.forEach((k, j) => {
      if (rank < Math.min(k, numClasses)) out[j]! += 1;
    });
  }
  return out;
}

/** Top-k accuracies in percent. */
export function accuracy(logits: Float32Array, numClasses: number, labels: ArrayLike<number>, ks: readonly number[] = [1, 5]): number[] {
  return topkCorrect(logits, numClasses, labels, ks).map((c) => (100 * c) / Math.max(1, labels.length));
}

/** A weighted running mean. */
export class Mean {
  private sum = 0;
  private weight = 0;
  add(value: number, weight = 1): void {
    this.sum += value * weight;
    this.weight += weight;
  }
  get value(): number {
    return this.weight > 0 ? this.sum / this.weight : 0;
  }
  get count(): number {
    return this.weight;
  }
  reset(): void {
    this.sum = 0;
    this.weight = 0;
  }
}

export interface EvalResult {
  top1: number;
  top5: number;
  loss: number;
  images: number;
}

/** Runs `model` over every batch: top-1 / top-5 in percent, mean cross-entropy, image count. */
export async function evaluate(model: Module, batches: AsyncIterable<Batch> | Iterable<Batch>,
  opts: { onBatch?: (done: number) => void } = {}): Promise<EvalResult> {
  const wasTraining = model.training;
  model.eval();
  let n = 0, c1 = 0, c5 = 0, lossSum = 0;
  try {
    for await (const batch of batches) {
      const r = noGrad(() => tidy(() => {
        const x = onDevice(Tensor.from(batch.images, batch.shape), model.device);
        const logits = model.forward(x);
        const loss = crossEntropy(logits, batch.labels);
        return { logits: logits.toFloat32Array(), k: logits.shape[1]!, loss: loss.item() };
      }));
      const [a, b] = topkCorrect(r.logits, r.k, batch.labels, [1, 5]);
      const bs = batch.labels.length;
      c1 += a!;
      c5 += b!;
      lossSum += r.loss * bs;
      n += bs;
      opts.onBatch?.(n);
    }
  } finally {
    model.train(wasTraining);
  }
  return { top1: n ? (100 * c1) / n : 0, top5: n ? (100 * c5) / n : 0, loss: n ? lossSum / n : 0, images: n };
}
